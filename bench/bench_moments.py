"""Moment search speed and agreement (vmr/moments.py): the rerank of one query's pooled candidates in a
200k-track library, i.e. every offset of every candidate track scored by the mean per-second cosine.

Three ways on the same generated workload, in the same run: the fast path (one matrix product of the
query with all candidates' rows, diagonals summed through a strided view), an FFT cross-correlation over
time (kept here only for the comparison) and the exact float64 loop. Reports ms per query for each, the
speed-ups on the same queries (run interleaved, query by query, so that load on a shared machine
slows all three alike), the largest score difference and whether the offsets are equal.
Sizes: BENCH_MOMENTS_CANDIDATES (tracks per query, default 1000, 30-300 s each), BENCH_MOMENTS_DIM
(default 64), BENCH_MOMENTS_QUERIES (queries of 10-60 s for the fast path, default 20), BENCH_MOMENTS_EXACT (of
those, queries also run through the FFT and the exact loop, default 3: about 1 s each for each).
"""
import os
import sys
import time

import numpy as np


def fft_moment_scores(query, tracks):
    """moment_scores by FFT: the diagonal sums of query @ tracks.T are the cross-correlation over time of
    the concatenated tracks with the query, summed over embedding dimensions (no ties rule beyond argmax)."""
    n_q = len(query)
    lengths = np.array([len(t) for t in tracks])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = np.concatenate(tracks)
    size = 1 << int(np.ceil(np.log2(len(rows) + n_q)))
    spectrum = np.fft.rfft(rows, size, axis=0) * np.conj(np.fft.rfft(query, size, axis=0))
    diagonals = np.fft.irfft(spectrum.sum(axis=1), size)[: len(rows)] / n_q
    scores, offsets = np.empty(len(tracks), np.float32), np.zeros(len(tracks), np.int64)
    for i, (start, length) in enumerate(zip(starts, lengths)):
        if length < n_q:
            scores[i] = np.sum(query[:length] * tracks[i]) / length
        else:
            window = diagonals[start: start + length - n_q + 1]
            offsets[i] = int(np.argmax(window))
            scores[i] = window[offsets[i]]
    return scores, offsets


def run():
    from vmr.moments import exact_moment_scores, moment_scores

    n_candidates = int(os.environ.get("BENCH_MOMENTS_CANDIDATES", "1000"))
    dim = int(os.environ.get("BENCH_MOMENTS_DIM", "64"))
    n_queries = int(os.environ.get("BENCH_MOMENTS_QUERIES", "20"))
    n_slow = min(n_queries, int(os.environ.get("BENCH_MOMENTS_EXACT", "3")))
    rng = np.random.default_rng(0)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    workload = [(unit(rng.normal(size=(int(rng.integers(10, 61)), dim))),
                 [unit(rng.normal(size=(int(n), dim))) for n in rng.integers(30, 301, size=n_candidates)])
                for _ in range(n_queries)]
    methods = {"fast": moment_scores, "fft": fft_moment_scores, "exact": exact_moment_scores}
    results, ms = {name: [] for name in methods}, {name: [] for name in methods}
    moment_scores(*workload[0])  # warm-up: the first call's buffers are page-faulted in
    for i, (query, tracks) in enumerate(workload):  # interleaved, so that load on the machine hits all alike
        for name, method in methods.items():
            if name == "fast" or i < n_slow:
                started = time.perf_counter()
                results[name].append(method(query, tracks))
                ms[name].append((time.perf_counter() - started) * 1000)
    fast_on_slow = sum(ms["fast"][:n_slow])
    difference = lambda name: float(max(np.abs(x[0] - y[0]).max() for x, y in zip(results[name], results["exact"])))
    same_offsets = lambda name: f"{sum(int((x[1] == y[1]).sum()) for x, y in zip(results[name], results['exact']))} of {n_slow * n_candidates}"
    return {"candidates_per_query": n_candidates, "dim": dim, "queries": n_queries, "fft_and_exact_queries": n_slow,
            "track_seconds": "30-300", "query_seconds": "10-60",
            "fast_ms_per_query": round(float(np.mean(ms["fast"])), 1), "fft_ms_per_query": round(float(np.mean(ms["fft"])), 1),
            "exact_ms_per_query": round(float(np.mean(ms["exact"])), 1),
            "speedup_fast_vs_exact": round(sum(ms["exact"]) / fast_on_slow, 1),  # on the same queries
            "speedup_fast_vs_fft": round(sum(ms["fft"]) / fast_on_slow, 1),
            "max_abs_difference_fast_exact": difference("fast"), "offsets_equal_fast_exact": same_offsets("fast"),
            "max_abs_difference_fft_exact": difference("fft"), "offsets_equal_fft_exact": same_offsets("fft")}

if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
