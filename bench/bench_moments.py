"""Moment search speed and agreement (vmr/moments.py): the rerank of one query's pooled candidates in a
200k-track library, i.e. every offset of every candidate track scored by the mean per-second cosine.

Three ways on the same generated workload, in the same run: the fast path (one matrix product of the
query with all candidates' rows, diagonals summed through a strided view), an FFT cross-correlation over
time (kept here only for the comparison) and the exact float64 loop. Reports ms per query for each, the
speed-ups over the exact loop, the largest score difference and whether the offsets are equal.
Sizes: BENCH_MOMENTS_CANDIDATES (tracks per query, default 1000, 30-300 s each), BENCH_MOMENTS_DIM
(default 64), BENCH_MOMENTS_QUERIES (queries of 10-60 s for the fast path and the FFT, default 20),
BENCH_MOMENTS_EXACT (of those, queries also run through the exact loop, default 3: about 1 s each).
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
    n_exact = min(n_queries, int(os.environ.get("BENCH_MOMENTS_EXACT", "3")))
    rng = np.random.default_rng(0)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    workload = [(unit(rng.normal(size=(int(rng.integers(10, 61)), dim))),
                 [unit(rng.normal(size=(int(n), dim))) for n in rng.integers(30, 301, size=n_candidates)])
                for _ in range(n_queries)]

    def timed(method, items):
        started = time.perf_counter()
        results = [method(query, tracks) for query, tracks in items]
        return results, (time.perf_counter() - started) / len(items) * 1000

    fast, fast_ms = timed(moment_scores, workload)
    fft, fft_ms = timed(fft_moment_scores, workload)
    exact, exact_ms = timed(exact_moment_scores, workload[:n_exact])
    fast_exact_ms = timed(moment_scores, workload[:n_exact])[1]  # the same queries as the exact loop
    difference = lambda a, b: float(max(np.abs(x[0] - y[0]).max() for x, y in zip(a, b)))
    same_offsets = lambda a, b: f"{sum(int((x[1] == y[1]).sum()) for x, y in zip(a, b))} of {sum(len(x[1]) for x in b)}"
    return {"candidates_per_query": n_candidates, "dim": dim, "queries": n_queries, "exact_queries": n_exact,
            "track_seconds": "30-300", "query_seconds": "10-60",
            "fast_ms_per_query": round(fast_ms, 1), "fft_ms_per_query": round(fft_ms, 1),
            "exact_ms_per_query": round(exact_ms, 1),
            "speedup_fast_vs_exact": round(exact_ms / fast_exact_ms, 1),
            "speedup_fast_vs_fft": round(fft_ms / fast_ms, 2),
            "max_abs_difference_fast_exact": difference(fast[:n_exact], exact),
            "offsets_equal_fast_exact": same_offsets(fast[:n_exact], exact),
            "max_abs_difference_fft_exact": difference(fft[:n_exact], exact),
            "offsets_equal_fft_exact": same_offsets(fft[:n_exact], exact)}


if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
