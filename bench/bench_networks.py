"""Network speed of ResNet-101, CLIP ViT-B/32 and VGGish as extract.py runs them, against plain eager float32 at
batch 1 (how video_features runs them), in the same run, with random weights (same cost as the official ones).

Per network, on the same random inputs, items (frames or 0.96 s examples) per second for:
- `eager_b1`: the eager float32 module, one item per call, under torch.no_grad (the baseline);
- `eager_batch`: the same module at --batch_size items per call (BENCH_BATCH, default 16, extract.py's default);
- `ours`: inference.prepare's callable at that batch (channels_last, traced and frozen with oneDNN fusion,
  inference_mode), with `speedup` = ours / eager_b1, the seconds it takes to prepare (`prepare_s`, start-up
  cost), and its largest difference from the eager output (relative to the output's largest magnitude);
- `compiled` (BENCH_COMPILE=1, off by default: up to a minute of compiling per network on 2 cores):
  torch.compile of the channels_last module at that batch, with its compile seconds.
Torch runs on BENCH_THREADS threads (default 1): on a busy machine each multi-threaded operator waits for
the scheduler (about 7 ms per operator at batch 1 on a loaded 2-core machine), which would measure the
machine's load, not the networks.

    python bench/bench_networks.py
    BENCH_ITEMS=16 BENCH_COMPILE=1 python bench/run.py --only networks
"""
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def networks(cache):
    """{name: (eager float32 module, shape of one item)} from the random checkpoints in `cache`/random."""
    from feature_extraction import clip, resnet, vggish

    random = Path(cache) / "random"
    return {"resnet101": (resnet.load_model(random / "resnet101-63fe2227.pth", 101), (3, 224, 224)),
            "clip_vit_b32": (clip.load_visual(random / "ViT-B-32.pt"), (3, 224, 224)),
            "vggish": (vggish.load_model(random / "vggish-10086976.pth"), (96, 64))}


def items_per_second(fn, x, batch, repeats=2):
    """Best of `repeats` passes over the items of `x`, `batch` per call (one warm-up call first)."""
    fn(x[:batch])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            fn(x[i : i + batch])
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def run():
    import tempfile

    import torch

    from feature_extraction import inference

    sys.path.insert(0, str(REPO / "bench"))
    from bench_features import random_weights_cache

    n, batch = int(os.environ.get("BENCH_ITEMS", 32)), int(os.environ.get("BENCH_BATCH", 16))
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", 1)))
    compile_too = os.environ.get("BENCH_COMPILE", "0") == "1"
    out = {"torch_threads": torch.get_num_threads(), "items": n, "batch": batch}
    with tempfile.TemporaryDirectory() as tmp:
        models = networks(random_weights_cache(tmp))
    for name, (model, shape) in models.items():
        x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            eager = lambda inputs: model(inputs)  # noqa: E731 (the module as video_features calls it)
            row = {"eager_b1": items_per_second(eager, x, 1), "eager_batch": items_per_second(eager, x, batch)}
            want = model(x[:batch])
        start = time.perf_counter()
        ours = inference.prepare(model, x[:1], "cpu")
        row["prepare_s"] = time.perf_counter() - start
        row["ours"] = items_per_second(ours, x, batch)
        row["ours_max_rel_diff"] = float((ours(x[:batch]) - want).abs().max() / want.abs().max())
        if compile_too:
            compiled = torch.compile(model.to(memory_format=torch.channels_last))
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(inference.channels_last(x[:batch]))
            row["compile_s"] = time.perf_counter() - start
            with torch.inference_mode():
                row["compiled"] = items_per_second(lambda v: compiled(inference.channels_last(v)), x, batch)
        row = {k: round(v, 3) if "diff" not in k else float(f"{v:.2e}") for k, v in row.items()}
        row["speedup"] = round(row["ours"] / row["eager_b1"], 2)
        row["batching_alone"] = round(row["eager_batch"] / row["eager_b1"], 2)
        out[name] = row
        print(name, row, flush=True)
    return out


if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
