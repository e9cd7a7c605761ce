"""How the networks run: a precision chosen per network and machine, and batches shared by the videos that
extract.py decodes at once (--parallel).

`--precision auto|float32|float16|bfloat16|int8` (default auto) is resolved per network by `resolve`:
- CPU, auto: bfloat16 where the CPU has bfloat16 units (the avx512_bf16 or amx_bf16 flags: Zen 4 and later,
  Sapphire Rapids and later) for the networks whose bfloat16 rows pass the accuracy bar on the test clips
  (tests/test_precision.py: mean row cosine to float32 >= 0.995, none below 0.98; VGGish's PCA bytes >= 99 %
  equal): ResNet, CLIP, VGGish, Wav2CLIP, I3D. float32 elsewhere; RAFT always runs float32 on the CPU (its 20
  refinement steps are not checked in bfloat16). Without those flags bfloat16 is emulated and slower.
- CPU, int8 (asked for; auto does not pick it): ResNet and VGGish as chains of oneDNN's int8 operators
  (feature_extraction/int8.py: about twice bfloat16's speed, rows within the int8 bar of float32 on the test
  clips), on CPUs with int8 dot products (avx512_vnni, avx_vnni or amx_int8; stops with one line elsewhere and
  on CUDA). The other networks run in what auto picks for them (CLIP's static int8 rows fell to cosine 0.83).
  auto does not pick int8 because its activation ranges come from a synthetic calibration set whose fit to the
  official weights on real video could not be checked here; bfloat16 needs no calibration.
- CUDA: auto is float32 (half precision is opt-in: its rows were checked at cosine 0.99, not at this bar);
  float16 and bfloat16 run under torch.autocast, as before.

`prepare(model, device, precision)` turns an eval-mode network into the callable the extractors
call with float32 inputs (first dimension = batch); it returns float32 outputs.
- CPU: BatchNorm folded into the convolution before it, 4-D inputs and weights in channels_last, the weights
  in `precision` (bfloat16: oneDNN's bfloat16 kernels; LayerNorm and softmax accumulate in float32), run
  eagerly under torch.inference_mode. Eager with folded BatchNorm runs as fast as the traced and frozen
  graph shipped before (torch.jit, deprecated in torch 2.14) and starts in well under a second, where
  torch.compile took 11-125 s to compile on 2 cores (bench/bench_networks.py measures both).
- CUDA: channels_last and torch.autocast to float16 or bfloat16 when `precision` says so.
The heap that loading and folding leave free is handed back to the OS afterwards (release_freed_memory).
The callable is a `SharedBatches`: calls from several threads (one per video in flight) that wait while a
batch runs go through the network together as the next batch.
"""
import ctypes
import gc
import threading
import zipfile
from pathlib import Path

import torch
from torch import nn

PRECISIONS = ("auto", "float32", "float16", "bfloat16", "int8")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BF16_FLAGS = {"avx512_bf16", "amx_bf16"}
BF16_NETWORKS = {"resnet", "clip", "vggish", "wav2clip", "i3d"}  # bfloat16 rows within the bar (test_precision.py)
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # int8 dot products; without them int8 is slower
INT8_NETWORKS = {"resnet", "vggish"}  # with an int8 path (int8.py) whose rows pass the bar


def add_arguments(parser):
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="precision of the networks. auto (default): on the CPU bfloat16 where it has bfloat16 "
                             "units (avx512_bf16 or amx_bf16 flags) for resnet, clip, vggish, wav2clip and i3d "
                             "(rows at mean cosine >= 0.995 of float32), float32 elsewhere (RAFT: always); on CUDA "
                             "float32. float16 is for CUDA (resnet, clip); bfloat16 runs on both. int8 (CPUs with "
                             "avx512_vnni, avx_vnni or amx_int8): resnet and vggish as int8 chains with activation "
                             "ranges calibrated on a synthetic set, about twice bfloat16's speed, rows at mean cosine "
                             ">= 0.99 of float32 on the test clips; the other features run what auto picks; auto "
                             "never picks int8. The folder's _feature.json records the precision used")


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (an empty set where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def resolve(precision, device, network):
    """The precision `network` ("resnet", "clip", "vggish", "wav2clip", "i3d") runs in on `device`;
    stops with one line for a precision the device cannot run. int8 gives "int8" for INT8_NETWORKS only."""
    cuda = torch.device(device).type == "cuda"
    if precision == "int8":
        if cuda:
            raise SystemExit("--precision int8 is for the CPU; on CUDA use float32, float16 or bfloat16")
        if not cpu_flags() & VNNI_FLAGS:
            raise SystemExit("--precision int8 needs a CPU with int8 dot products (avx512_vnni, avx_vnni or "
                             "amx_int8 flags); this one has none, where int8 runs slower than float32: use auto")
        return "int8" if network in INT8_NETWORKS else resolve("auto", device, network)
    if precision == "float16" and not cuda:
        raise SystemExit("--precision float16 needs --device cuda; the CPU runs float32 or bfloat16")
    if precision != "auto":
        return precision
    if not cuda and network in BF16_NETWORKS and cpu_flags() & BF16_FLAGS:
        return "bfloat16"
    return "float32"


def read_checkpoint(path):
    """torch.load(path) of a checkpoint of tensors (weights_only), mapped from the file where its format allows
    (zip, torch >= 1.6): the tensors are then read from the page cache as the network is converted, not copied
    first. Legacy files (the hassony2 I3D ones) are read whole."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def release_freed_memory():
    """Collect garbage and hand the free heap back to the OS (glibc's malloc_trim; elsewhere only the collection).

    Loading a checkpoint and folding BatchNorm (new weight tensors) free hundreds of MB in pieces that glibc
    keeps mapped: without this, extract.py's resnet clip vggish pass peaked 0.5 GB higher."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def channels_last(x):
    """4-D tensors in channels_last, 5-D in channels_last_3d (oneDNN's fast layouts); others unchanged."""
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def fold_batchnorm(model):
    """`model` with each BatchNorm folded into the convolution registered just before it in the same module,
    the BatchNorm replaced by Identity. Sound for networks that apply each such BatchNorm right after that
    convolution, as ours do (ResNet's convK/bnK and downsample, torchvision's ResNet in Wav2CLIP, I3D's
    conv3d/batch3d); the tests compare the folded networks with the eager ones."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in list(model.modules()):
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (isinstance(conv, nn.modules.conv._ConvNd) and isinstance(bn, nn.modules.batchnorm._BatchNorm)
                    and conv.out_channels == bn.num_features):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return model


def for_cpu(model, precision):
    """The eval-mode `model`, converted in place for the CPU: BatchNorm folded, weights in `precision` and in
    channels_last."""
    network = fold_batchnorm(model.eval()).to(DTYPES[precision])
    for p in network.parameters():
        p.data = channels_last(p.data)
    release_freed_memory()
    return network


def prepare(model, device="cpu", precision="float32"):
    """A SharedBatches running `model` (moved and converted in place) on `device` in `precision` (resolved:
    not auto). It takes and returns float32 tensors."""
    device = torch.device(device)
    if device.type == "cpu":
        network, dtype = for_cpu(model, precision), DTYPES[precision]

        def run(*inputs):
            with torch.inference_mode():
                return network(*(channels_last(x.to(dtype)) for x in inputs)).float()
    else:
        dtype = DTYPES[precision]
        network = model.eval().to(device, memory_format=torch.channels_last)

        def run(*inputs):
            with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype != torch.float32):
                return network(*(channels_last(x.to(device)) for x in inputs)).float()
    shared = SharedBatches(run)
    shared.network = network  # what runs
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
