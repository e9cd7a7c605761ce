"""Music segments from the music alone: the one segmentation the protocol uses for every track.

A track's per-second features become a 1-D change signal (distance between consecutive rows, moving
average of 10, feature_extraction.flowProcessor.feature_trajectory); its change points are the optimal
partition into n_bkps + 1 segments of at least min_seconds under a Gaussian likelihood cost, the cost of
ruptures' Dynp(model="normal", jump=1): cost(a, b) = (b - a) * log(var(x[a:b]) + 1e-6), var with ddof 0.

Dynp recurses over a Python cost function (about 5 s for a 360-row track); the same dynamic programme
written over prefix sums as whole-array numpy steps gives the same boundaries in about a millisecond
(tests/test_segments.py checks them against ruptures). Tracks longer than MAX_ROWS seconds are segmented
on a block mean of the signal (factor ceil(T / MAX_ROWS)), which keeps the cost bounded; ruptures' Dynp
is not run there either (flowProcessor switches to Binseg above 600 s).
"""
import numpy as np

from feature_extraction.flowProcessor import feature_trajectory

MAX_ROWS = 600
N_BKPS = 7
MIN_SECONDS = 10


def segment_costs(signal, min_size):
    """(n + 1, n + 1) matrix: cost of segment [a, b) for b - a >= min_size, +inf elsewhere."""
    x = np.asarray(signal, np.float64)
    x = x - x.mean()
    s1 = np.concatenate([[0.0], np.cumsum(x)])
    s2 = np.concatenate([[0.0], np.cumsum(x * x)])
    index = np.arange(len(x) + 1, dtype=np.float64)
    length = np.maximum(index[None, :] - index[:, None], 1.0)
    var = np.maximum((s2[None, :] - s2[:, None]) / length - ((s1[None, :] - s1[:, None]) / length) ** 2, 0.0)
    cost = length * np.log(var + 1e-6)
    cost[np.tri(len(index), k=min_size - 1, dtype=bool)] = np.inf  # b - a < min_size
    return cost


def optimal_partition(signal, n_bkps, min_size):
    """Interior change points (sample indices) of the optimal partition into n_bkps + 1 segments."""
    n = len(signal)
    cost = segment_costs(signal, min_size)
    best = cost[0].copy()  # best[t]: optimal cost of x[0:t] with k breakpoints
    choice = []
    for _ in range(n_bkps):
        total = best[:, None] + cost  # last segment [s, t)
        choice.append(np.argmin(total, axis=0))  # the first minimum, as Dynp's min() keeps the first
        best = total[choice[-1], np.arange(n + 1)]
    bkps, t = [], n
    for k in reversed(range(n_bkps)):
        t = int(choice[k][t])
        bkps.append(t)
    return sorted(bkps)


def change_points(signal, n_bkps=N_BKPS, min_seconds=MIN_SECONDS):
    """Boundaries in seconds [0, ..., T] of a 1 Hz change signal; n_bkps is capped so every segment holds min_seconds."""
    n = len(signal)
    factor = -(-n // MAX_ROWS)
    if factor > 1:
        usable = n // factor * factor
        signal = np.asarray(signal[:usable], np.float64).reshape(-1, factor).mean(1)
    min_size = max(int(round(min_seconds / factor)), 2)
    n_bkps = min(n_bkps, len(signal) // min_size - 1)
    if n_bkps <= 0 or n == 0:
        return [0, n]
    interior = [b * factor for b in optimal_partition(signal, n_bkps, min_size)]
    return [0] + sorted(set(interior) - {0, n}) + [n]


def music_segments(audio, n_bkps=N_BKPS, min_seconds=MIN_SECONDS):
    """Boundaries (seconds, with 0 and T) of a track's (T, D) per-second features, from the music alone."""
    return change_points(feature_trajectory(audio, smooth=10), n_bkps, min_seconds)
