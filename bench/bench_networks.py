"""Network speed of ResNet-101, CLIP ViT-B/32 and VGGish per precision, as extract.py runs them, against plain
eager float32 at batch 1 (how video_features runs them), in the same run, with random weights (same cost as the
official ones), and the CPU flags that decide what --precision auto picks.

Per network, on the same random inputs, items (frames or 0.96 s examples) per CPU second of this process for:
- `eager_b1`: the eager float32 module, one item per call, under torch.no_grad (the baseline);
- `eager_batch`: the same module at BENCH_BATCH items per call (default 16, extract.py's --batch_size);
- `frozen_float32`: what shipped before --precision came to the CPU: channels_last, torch.jit.trace +
  torch.jit.freeze (BatchNorm folded, oneDNN fusion; deprecated in torch 2.14), at that batch;
- `float32`, `bfloat16`: inference.prepare's callable in that precision (BatchNorm folded, channels_last,
  eager), with its prepare seconds (`prepare_s`: start-up cost) and its cosine to the eager float32 rows;
- `int8` (ResNet and VGGish): --precision int8, feature_extraction/int8.py's chains of oneDNN int8 operators,
  with the seconds of its first prepare (`int8_calibrate_s`: calibrating the ranges) and of a second one
  (`int8_prepare_s`: the ranges read back), and its cosine;
- `int8_dynamic`: torch.ao.quantization.quantize_dynamic (int8 weights, activations quantised per call) of the
  Linear layers (deprecated; convolutions stay float32, so it is not measured for ResNet), with its cosine;
- `int8_static`: torch.ao's static FX quantisation (x86 backend, deprecated), calibrated on the very inputs it is
  measured on (its cosine is an upper bound), with its quantising seconds: the speed int8.py should match;
- `compiled` (BENCH_COMPILE=1, off by default: up to two minutes of compiling per network on 2 cores):
  torch.compile of the channels_last module at that batch, with its compile seconds (`compile_s`).
`speedup_*` = that variant / eager_b1; `bfloat16_over_frozen` = bfloat16 / frozen_float32; `int8_over_bfloat16`.
The variants take turns, one pass over the BENCH_ITEMS items (default 32) each, for BENCH_ROUNDS rounds
(default 3); each keeps its best round. Torch runs on BENCH_THREADS threads (default 1), and speed is
counted in CPU seconds (`wall_speedup` gives the wall-clock one of bfloat16): on a busy machine a thread
waiting for a core costs wall time but no CPU time, and each multi-threaded operator would wait for the
scheduler (about 7 ms per operator at batch 1 on a loaded 2-core machine), which would measure the load.

    python bench/bench_networks.py
    BENCH_ITEMS=16 BENCH_COMPILE=1 python bench/run.py --only networks
"""
import copy
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def networks(cache):
    """{name: (eager float32 module, shape of one item, checkpoint)} from the random checkpoints in `cache`/random."""
    from feature_extraction import clip, resnet, vggish

    random = Path(cache) / "random"
    paths = {"resnet101": random / "resnet101-63fe2227.pth", "clip_vit_b32": random / "ViT-B-32.pt",
             "vggish": random / "vggish-10086976.pth"}
    return {"resnet101": (resnet.load_model(paths["resnet101"], 101), (3, 224, 224), paths["resnet101"]),
            "clip_vit_b32": (clip.load_visual(paths["clip_vit_b32"]), (3, 224, 224), paths["clip_vit_b32"]),
            "vggish": (vggish.load_model(paths["vggish"]), (96, 64), paths["vggish"])}


def best_passes(variants, x, rounds):
    """{name: (best wall seconds, best CPU seconds)} of one pass over the items of `x` per variant
    {name: (fn, items per call)}, the variants taking turns each round (after one warm-up call each)."""
    for fn, batch in variants.values():
        fn(x[:batch])
    best = {name: (float("inf"), float("inf")) for name in variants}
    for _ in range(rounds):
        for name, (fn, batch) in variants.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(x), batch):
                fn(x[i : i + batch])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def cpu_flags():
    """The CPU flags that decide --precision auto, and what it picks on this machine."""
    from feature_extraction import inference

    flags = inference.cpu_flags()
    return {"flags": [f for f in CPU_FLAGS if f in flags], "auto_picks": inference.resolve("auto", "cpu", "resnet")}


def frozen(model, example):
    """channels_last, traced and frozen: the CPU's float32 path before --precision (torch.jit, deprecated)."""
    import warnings

    import torch

    from feature_extraction import inference

    network = model.eval().to(memory_format=torch.channels_last)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = torch.jit.freeze(torch.jit.trace(network, inference.channels_last(example), check_trace=False))

    def run(inputs):
        with torch.inference_mode():
            return network(inference.channels_last(inputs))
    return run


def int8_dynamic(model):
    """torch.ao's dynamic int8 of the Linear layers (its deprecation warnings silenced), or None without any."""
    import warnings

    import torch

    if not any(isinstance(m, torch.nn.Linear) for m in model.modules()):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)

    def run(inputs):
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return network(inputs)
    return run


def int8_static(model, calibration):
    """torch.ao's static int8 (FX graph mode, x86 backend: int8 weights per channel and int8 activations with
    ranges calibrated on `calibration`), its deprecation warnings silenced. Calibrated on the very items it is
    then measured on, its cosine is an upper bound. (run function, seconds to quantise)."""
    import warnings

    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from feature_extraction import inference

    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model.eval(), get_default_qconfig_mapping("x86"), example_inputs=(calibration[:1],))
        prepared(calibration)
        network = convert_fx(prepared)
    seconds = round(time.perf_counter() - start, 1)

    def run(inputs):
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return network(inference.channels_last(inputs))
    return run, seconds


def run():
    import tempfile

    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from bench_features import random_weights_cache

    n, batch = int(os.environ.get("BENCH_ITEMS", 32)), int(os.environ.get("BENCH_BATCH", 16))
    rounds = int(os.environ.get("BENCH_ROUNDS", 3))
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", 1)))
    compile_too = os.environ.get("BENCH_COMPILE", "0") == "1"
    out = {"cpu": cpu_flags(), "torch_threads": torch.get_num_threads(), "items": n, "batch": batch, "rounds": rounds}
    print("cpu", out["cpu"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        models = networks(random_weights_cache(tmp))
        for name, (model, shape, checkpoint) in models.items():
            out[name] = network_row(name, model, shape, checkpoint, n, batch, rounds, compile_too)
    return out


def network_row(name, model, shape, checkpoint, n, batch, rounds, compile_too):
    """One network's row of the table (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    from feature_extraction import inference, int8, resnet, vggish

    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
    row = {}

    def eager(inputs):
        with torch.no_grad():
            return model(inputs)

    want = eager(x[:batch])
    variants = {"eager_b1": (eager, 1), "eager_batch": (eager, batch),
                "frozen_float32": (frozen(copy.deepcopy(model), x[:1]), batch)}
    for precision in ("float32", "bfloat16"):
        start = time.perf_counter()
        variants[precision] = (inference.prepare(copy.deepcopy(model), "cpu", precision), batch)
        row[f"{precision}_prepare_s"] = round(time.perf_counter() - start, 2)
    calibration = {"resnet101": resnet.int8_calibration, "vggish": vggish.int8_calibration}.get(name)
    if calibration:  # int8.py's chains; the first prepare calibrates, the second reads the ranges
        for key in ("int8_calibrate_s", "int8_prepare_s"):
            start = time.perf_counter()
            variants["int8"] = (int8.prepare(copy.deepcopy(model), checkpoint, calibration), batch)
            row[key] = round(time.perf_counter() - start, 2)
    quantised = int8_dynamic(copy.deepcopy(model))
    if quantised is not None:
        variants["int8_dynamic"] = (quantised, batch)
    quantised, row["int8_static_quantise_s"] = int8_static(copy.deepcopy(model), x[:batch])
    variants["int8_static"] = (quantised, batch)
    for variant in ("float32", "bfloat16", "int8", "int8_dynamic", "int8_static"):
        if variant in variants:
            cos = F.cosine_similarity(variants[variant][0](x[:batch]).double(), want.double(), dim=-1)
            row[f"{variant}_cosine_min"] = round(float(cos.min()), 6)
    if compile_too:
        compiled = torch.compile(copy.deepcopy(model).to(memory_format=torch.channels_last))

        def run_compiled(inputs):
            with torch.inference_mode():
                return compiled(inference.channels_last(inputs))

        start = time.perf_counter()
        run_compiled(x[:batch])
        row["compile_s"] = round(time.perf_counter() - start, 1)
        variants["compiled"] = (run_compiled, batch)
    best = best_passes(variants, x, rounds)
    row.update({k: round(n / cpu, 2) for k, (_, cpu) in best.items()})
    for variant in best:
        if variant != "eager_b1":
            row[f"speedup_{variant}"] = round(row[variant] / row["eager_b1"], 2)
    row["bfloat16_over_frozen"] = round(row["bfloat16"] / row["frozen_float32"], 2)
    if "int8" in row:
        row["int8_over_bfloat16"] = round(row["int8"] / row["bfloat16"], 2)
    row["wall_speedup"] = round(best["eager_b1"][0] / best["bfloat16"][0], 2)
    print(name, row, flush=True)
    return row


if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
