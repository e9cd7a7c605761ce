"""VM-NET benchmarks: training throughput against the matmul FLOP bound, and retrieval latency.

- training: samples/s of full steps (forward, backward, Adam) at batch 1024 with CLIP-sized
  video (512) and VGGish audio (128), against the bound = measured matmul FLOP/s divided by
  the FLOPs of one sample (3 x 2 x multiply-adds of the linear layers), in the same run;
- retrieval: one query against 10k and 200k random unit 512-d tracks, exact numpy search and
  each FAISS index (flat, ivf, hnsw), median latency over queries, build time, and recall@10
  of ivf/hnsw against exact search. Random data is the hard case for approximate indexes.

Sizes: BENCH_VMNET_SIZES=10000,200000 (comma list); BENCH_VMNET_STEPS=5.
"""
import os
import sys
import time

import numpy as np
import torch

from vmnet.losses import vmnet_loss
from vmr.metrics import normalize_rows
from vmnet.model import VMNet
from vmr.search import build_faiss, search


def matmul_flops_per_s(device, n=2048, repeats=5):
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def training(device, steps, batch=1024, video_dim=512, audio_dim=128):
    torch.manual_seed(0)
    model = VMNet(video_dim, audio_dim).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    v = torch.randn(batch, video_dim, device=device)
    a = torch.randn(batch, audio_dim, device=device)
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    flops_per_sample = 3 * 2 * macs  # forward + backward (two matmuls per layer)

    def step():
        ve, ae = model(v, a)
        loss, _ = vmnet_loss(a, v, ae, ve)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    samples_per_s = steps * batch / (time.perf_counter() - t0)
    peak = matmul_flops_per_s(device)
    bound = peak / flops_per_sample
    return {"device": str(device), "batch": batch, "steps": steps, "samples_per_s": samples_per_s,
            "matmul_gflops": peak / 1e9, "flops_per_sample": flops_per_sample, "bound_samples_per_s": bound,
            "fraction_of_bound": samples_per_s / bound}


def median_seconds(fn, queries):
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q[None])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def retrieval(n, n_queries=50, k=10, dim=512):
    rng = np.random.default_rng(0)
    emb = normalize_rows(rng.standard_normal((n, dim), dtype=np.float32))
    queries = normalize_rows(rng.standard_normal((n_queries, dim), dtype=np.float32))
    exact_idx, _ = search(emb, queries, k)
    out = {"tracks": n, "dim": dim, "queries": n_queries,
           "exact": {"query_seconds": median_seconds(lambda q: search(emb, q, k), queries)}}
    for kind in ("flat", "ivf", "hnsw"):
        t0 = time.perf_counter()
        index = build_faiss(emb, kind)
        build = time.perf_counter() - t0
        idx, _ = search(emb, queries, k, index)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact_idx, idx)]))
        out[kind] = {"build_seconds": build, "query_seconds": median_seconds(lambda q: search(emb, q, k, index), queries),
                     "recall@10_vs_exact": recall}
    for kind in ("flat", "ivf", "hnsw"):
        out[kind]["speedup_vs_exact"] = out["exact"]["query_seconds"] / out[kind]["query_seconds"]
    return out


def run():
    steps = int(os.environ.get("BENCH_VMNET_STEPS", "5"))
    sizes = [int(s) for s in os.environ.get("BENCH_VMNET_SIZES", "10000,200000").split(",")]
    result = {"training": [training(torch.device("cpu"), steps)]}
    if torch.cuda.is_available():
        result["training"].append(training(torch.device("cuda"), steps * 10))
    result["retrieval"] = [retrieval(n) for n in sizes]
    return result


if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
