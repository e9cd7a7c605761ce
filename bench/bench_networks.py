"""Network speed of ResNet-101, CLIP ViT-B/32 and VGGish as extract.py runs them, against plain eager float32 at
batch 1 (how video_features runs them), in the same run, with random weights (same cost as the official ones).

Per network, on the same random inputs, items (frames or 0.96 s examples) per CPU second of this process for:
- `eager_b1`: the eager float32 module, one item per call, under torch.no_grad (the baseline);
- `eager_batch`: the same module at BENCH_BATCH items per call (default 16, extract.py's --batch_size);
- `ours`: inference.prepare's callable at that batch (channels_last, traced and frozen with oneDNN fusion,
  inference_mode), with `speedup` = ours / eager_b1, the seconds it takes to prepare (`prepare_s`, start-up
  cost), and its largest difference from the eager output (relative to the output's largest magnitude);
- `compiled` (BENCH_COMPILE=1, off by default: up to two minutes of compiling per network on 2 cores):
  torch.compile of the channels_last module at that batch, with its compile seconds (`compile_s`).
The variants take turns, one pass over the BENCH_ITEMS items (default 32) each, for BENCH_ROUNDS rounds
(default 3); each keeps its best round. Torch runs on BENCH_THREADS threads (default 1), and speed is
counted in CPU seconds (`wall_speedup` gives the wall-clock one): on a busy machine a thread waiting for a
core costs wall time but no CPU time, and each multi-threaded operator would wait for the scheduler (about
7 ms per operator at batch 1 on a loaded 2-core machine), which would measure the load, not the networks.

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
    """{name: (eager float32 module, shape of one item)} from the random checkpoints in `cache`/random."""
    from feature_extraction import clip, resnet, vggish

    random = Path(cache) / "random"
    return {"resnet101": (resnet.load_model(random / "resnet101-63fe2227.pth", 101), (3, 224, 224)),
            "clip_vit_b32": (clip.load_visual(random / "ViT-B-32.pt"), (3, 224, 224)),
            "vggish": (vggish.load_model(random / "vggish-10086976.pth"), (96, 64))}


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


def run():
    import tempfile

    import torch

    from feature_extraction import inference

    sys.path.insert(0, str(REPO / "bench"))
    from bench_features import random_weights_cache

    n, batch = int(os.environ.get("BENCH_ITEMS", 32)), int(os.environ.get("BENCH_BATCH", 16))
    rounds = int(os.environ.get("BENCH_ROUNDS", 3))
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", 1)))
    compile_too = os.environ.get("BENCH_COMPILE", "0") == "1"
    out = {"torch_threads": torch.get_num_threads(), "items": n, "batch": batch, "rounds": rounds}
    with tempfile.TemporaryDirectory() as tmp:
        models = networks(random_weights_cache(tmp))
    for name, (model, shape) in models.items():
        x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
        row = {}
        start = time.perf_counter()
        ours = inference.prepare(copy.deepcopy(model), x[:1], "cpu")
        row["prepare_s"] = round(time.perf_counter() - start, 2)

        def eager(inputs):
            with torch.no_grad():
                return model(inputs)

        variants = {"eager_b1": (eager, 1), "eager_batch": (eager, batch), "ours": (ours, batch)}
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
        row["speedup"] = round(row["ours"] / row["eager_b1"], 2)
        row["batching_alone"] = round(row["eager_batch"] / row["eager_b1"], 2)
        row["wall_speedup"] = round(best["eager_b1"][0] / best["ours"][0], 2)
        want = eager(x[:batch])
        row["ours_max_rel_diff"] = float(f"{float((ours(x[:batch]) - want).abs().max() / want.abs().max()):.2e}")
        out[name] = row
        print(name, row, flush=True)
    return out


if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
