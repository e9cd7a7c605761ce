"""How the networks run: oneDNN fusion on CPU, a chosen precision on CUDA, and batches shared by the
videos that extract.py decodes at once (--parallel).

`prepare(model, example, device, precision)` turns an eval-mode network into the callable the
extractors call with float32 inputs (first dimension = batch); it returns float32 outputs.
- CPU (float32 only): 4-D inputs and weights in channels_last, the network traced and frozen with
  torch.jit.freeze, so BatchNorm is folded into the convolutions and oneDNN fuses conv + ReLU; run
  under torch.inference_mode. Outputs equal the eager float32 network within
  assert_close(rtol=1e-4, atol=1e-5) (tests/test_backbones.py, tests/test_vggish.py).
  torch.compile ran within 15 % of this speed after 11-125 s of compiling on 2 cores (tracing and
  freezing take 0.6-7 s), so it is not used (bench/bench_networks.py measures both). The heap that
  loading and freezing leave free is handed back to the OS afterwards (release_freed_memory).
- CUDA: channels_last and torch.autocast to float16 or bfloat16 when `precision` says so
  (LayerNorm, softmax and reductions stay in float32 under autocast).
The callable is a `SharedBatches`: calls from several threads (one per video in flight) that wait
while a batch runs go through the network together as the next batch.
"""
import ctypes
import gc
import threading
import warnings

import torch

PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_arguments(parser):
    parser.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                        help="precision of the frame networks (resnet, clip) on CUDA: float16 and bfloat16 are "
                             "faster, with rows at cosine >= 0.99 of float32 (bench/gpu.py measures it); the CPU "
                             "runs float32")


def check_precision(precision, device):
    """Stop with one line when `precision` cannot run on `device` (half precision is for CUDA)."""
    if precision != "float32" and torch.device(device).type != "cuda":
        raise SystemExit(f"--precision {precision} needs --device cuda; the CPU runs float32")


def release_freed_memory():
    """Collect garbage and hand the free heap back to the OS (glibc's malloc_trim; elsewhere only the collection).

    Loading a checkpoint, tracing and freezing (BatchNorm folded into new weight tensors) free hundreds of MB
    in pieces that glibc keeps mapped: without this, extract.py's resnet clip vggish pass peaked 0.5 GB higher
    (2.52 against 2.01 GB on a 8 s clip)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def channels_last(x):
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def prepare(model, example, device="cpu", precision="float32"):
    """A SharedBatches running `model` (moved and converted in place) on `device` in `precision`; `example`
    is one float32 input batch (on the CPU) that the float32 CPU network is traced with."""
    device, dtype = torch.device(device), PRECISIONS[precision]
    network = model.eval().to(device, memory_format=torch.channels_last)
    if dtype == torch.float32 and device.type == "cpu":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks torch.jit deprecated; it is pinned
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # MultiheadAttention's checks of fixed sizes
            network = torch.jit.freeze(torch.jit.trace(network, channels_last(example), check_trace=False))
        release_freed_memory()

        def run(*inputs):
            with torch.inference_mode():
                return network(*map(channels_last, inputs))
    else:
        def run(*inputs):
            with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype != torch.float32):
                return network(*(channels_last(x.to(device)) for x in inputs)).float()
    shared = SharedBatches(run)
    shared.network = network  # what runs: the frozen graph on the CPU
    return shared


class _Call:
    def __init__(self, inputs):
        self.inputs, self.output, self.error, self.done = inputs, None, None, False
        self.key = tuple((x.shape[1:], x.dtype, x.device) for x in inputs)


class SharedBatches:
    """`fn(*inputs)` callable from several threads at once, the waiting calls batched together.

    Each call passes tensors whose first dimension is its batch and gets back its own rows of the
    output. While one batch runs, other calls wait; the next caller to find the network free runs all
    waiting calls whose other dimensions, dtypes and devices match the oldest one's as one batch. With
    one thread this is a plain call. `batches` counts the network calls, `shared` those that served
    more than one caller.
    """

    def __init__(self, fn):
        self.fn = fn
        self.cond = threading.Condition()
        self.waiting, self.running = [], False
        self.batches = self.shared = 0

    def __call__(self, *inputs):
        call = _Call(inputs)
        with self.cond:
            self.waiting.append(call)
        while True:
            with self.cond:
                while self.running and not call.done:
                    self.cond.wait()
                if call.done:
                    break
                batch = [c for c in self.waiting if c.key == self.waiting[0].key]
                self.waiting = [c for c in self.waiting if c.key != batch[0].key]
                self.running = True
            try:
                self._run(batch)
            finally:
                with self.cond:
                    self.running = False
                    self.cond.notify_all()
        if call.error is not None:
            raise call.error
        return call.output

    def _run(self, batch):
        try:
            sizes = [len(c.inputs[0]) for c in batch]
            joined = [parts[0] if len(parts) == 1 else torch.cat(parts) for parts in zip(*(c.inputs for c in batch))]
            for c, rows in zip(batch, self.fn(*joined).split(sizes)):
                c.output = rows
        except BaseException as e:  # every caller of the batch gets the error, on its own thread
            for c in batch:
                c.error = e
        self.batches += 1
        self.shared += len(batch) > 1
        for c in batch:
            c.done = True
