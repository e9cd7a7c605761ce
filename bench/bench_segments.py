"""Music segmentation speed and agreement: vmr.segments (prefix-sum dynamic programme in numpy) against
ruptures' Dynp(model="normal", jump=1), the reference, on the same 360-row change signals of generated tracks.

Reports ms per track for both (one thread, same run), their ratio, the share of tracks with identical
boundaries, and the mean absolute boundary difference in seconds where they differ.
Sizes: BENCH_SEGMENTS_TRACKS (tracks for vmr.segments, default 200), BENCH_SEGMENTS_REFERENCE (tracks also
run through ruptures, default 5: about 5 s each).
"""
import os
import sys
import time
import warnings

import numpy as np


def run():
    import ruptures

    from feature_extraction.flowProcessor import feature_trajectory
    from vmr.segments import MIN_SECONDS, N_BKPS, change_points
    from vmr.synthetic import Settings, generate

    n_tracks = int(os.environ.get("BENCH_SEGMENTS_TRACKS", "200"))
    n_reference = int(os.environ.get("BENCH_SEGMENTS_REFERENCE", "5"))
    pairs = generate(Settings(n=n_tracks, min_len=360, max_len=360, seed=1))
    signals = [feature_trajectory(p.audio, smooth=10) for p in pairs]
    started = time.perf_counter()
    ours = [change_points(s, N_BKPS, MIN_SECONDS) for s in signals]
    ours_ms = (time.perf_counter() - started) / len(signals) * 1000
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference = [[0, *ruptures.Dynp(model="normal", min_size=MIN_SECONDS, jump=1).fit(s).predict(n_bkps=N_BKPS)]
                     for s in signals[:n_reference]]
    reference_ms = (time.perf_counter() - started) / n_reference * 1000
    same = [a == b for a, b in zip(ours, reference)]
    differences = [np.abs(np.array(a) - np.array(b)).mean() for a, b in zip(ours, reference) if a != b and len(a) == len(b)]
    return {"rows_per_track": 360, "tracks": n_tracks, "ms_per_track": round(ours_ms, 3),
            "ruptures_dynp_ms_per_track": round(reference_ms, 1), "speedup": round(reference_ms / ours_ms),
            "goal_ms_per_track": 20, "identical_boundaries": f"{sum(same)} of {len(same)}",
            "mean_abs_difference_seconds": float(np.mean(differences)) if differences else 0.0}


if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
