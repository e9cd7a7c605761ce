"""Moments: where in a longer track a video's music fits, and how MGSV-EC scores tracks and moments.

Moment search. A query is T_q per-second unit rows, a track T_c unit rows. At offset o the video lies
on seconds [o, o + T_q) of the track and scores the mean cosine of its seconds with those of the track;
a track scores its best offset (the earliest on ties). A track shorter than the query is scored once,
at offset 0, over the seconds they share. The fast path computes one matrix product of the query with
all candidates' rows laid end to end and sums its diagonals through a strided view (no copy): entry
(t, j) of a (T_q, L) row-major matrix sits at t * L + j, so the diagonal starting at column j is every
(L + 1)-th element from j. Diagonals that cross from one track into the next are never read.

Metrics follow the official MGSV-EC code (reference/mgsv_ec.md section 4): IoU of [start, end) seconds
with the prediction clipped to the track, R@K over unique tracks, mIoU of the moment found on the true
track, MoR@K = the true track within the first K and IoU > threshold (strict).
"""
import numpy as np

# Elements of one block's cosine matrix and of its copy of the candidates' rows: bounds the fast path's
# memory (64 MiB of float32 each) and keeps the copy small enough to be reused, not page-faulted anew.
BLOCK_ELEMENTS = 1 << 24


def exact_moment_scores(query, tracks):
    """Reference for moment_scores: a plain loop over tracks and offsets in float64."""
    query = np.asarray(query, np.float64)
    scores, offsets = np.empty(len(tracks), np.float32), np.zeros(len(tracks), np.int64)
    for i, track in enumerate(tracks):
        track = np.asarray(track, np.float64)
        if len(track) < len(query):
            scores[i] = np.sum(query[: len(track)] * track) / len(track)
            continue
        best = -np.inf
        for o in range(len(track) - len(query) + 1):
            score = np.sum(query * track[o: o + len(query)]) / len(query)
            if score > best:
                best, offsets[i] = score, o
        scores[i] = best
    return scores, offsets


def _block_scores(query, tracks):
    """moment_scores for one block of tracks, all in one (T_q, L) cosine matrix."""
    n_q = len(query)
    lengths = np.array([len(t) for t in tracks], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    sims = query @ np.concatenate(tracks).T  # (T_q, L) float32
    total = sims.shape[1]
    scores, offsets = np.empty(len(tracks), np.float32), np.zeros(len(tracks), np.int64)
    long = lengths >= n_q
    if long.any():
        item = sims.itemsize
        diagonals = np.lib.stride_tricks.as_strided(sims, (n_q, total - n_q + 1), ((total + 1) * item, item),
                                                    writeable=False).sum(axis=0) / np.float32(n_q)
        ids = np.flatnonzero(long)
        counts = lengths[ids] - n_q + 1  # offsets of each long track
        owner = np.repeat(np.arange(len(ids)), counts)
        position = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        values = diagonals[np.repeat(starts[ids], counts) + position]
        best = np.maximum.reduceat(values, np.cumsum(counts) - counts)
        hit = np.flatnonzero(values == best[owner])
        first = hit[np.unique(owner[hit], return_index=True)[1]]  # earliest best offset of each track
        scores[ids], offsets[ids] = best, position[first]
    for i in np.flatnonzero(~long):  # shorter than the query: the Tc seconds they share, at offset 0
        seconds = np.arange(lengths[i])
        scores[i] = sims[seconds, starts[i] + seconds].sum() / np.float32(lengths[i])
    return scores, offsets


def moment_scores(query, tracks):
    """Best moment of each track for one query.

    query: (T_q, E) unit rows, one per second; tracks: a list of (T_c, E) unit rows.
    Returns (scores (N,) float32, offsets (N,) int64): score = max over o in [0, T_c - T_q] of
    mean_t cos(query[t], track[o + t]), offset = its argmax (earliest on ties); a track shorter than the
    query scores the mean of its T_c diagonal cosines at offset 0.
    """
    query = np.ascontiguousarray(query, np.float32)
    tracks = [np.asarray(t, np.float32) for t in tracks]
    scores, offsets = np.empty(len(tracks), np.float32), np.zeros(len(tracks), np.int64)
    if not tracks:
        return scores, offsets
    budget = max(1, BLOCK_ELEMENTS // max(len(query), query.shape[1], 1))  # rows: bounds the cosines and the copy
    first = 0
    while first < len(tracks):  # consecutive tracks, up to `budget` rows (at least one track) per block
        last, rows = first, 0
        while last < len(tracks) and (last == first or rows + len(tracks[last]) <= budget):
            rows += len(tracks[last])
            last += 1
        scores[first:last], offsets[first:last] = _block_scores(query, tracks[first:last])
        first = last
    return scores, offsets


def pair_moment_scores(queries, tracks, rows, cols):
    """moment_scores for P (query, track) pairs: (queries[rows[p]], tracks[cols[p]]), e.g. a rerank of
    each query's pooled candidates. Returns (scores (P,) float32, offsets (P,) int64)."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    scores, offsets = np.empty(len(rows), np.float32), np.zeros(len(rows), np.int64)
    order = np.argsort(rows, kind="stable")
    queries_in_order, first = np.unique(rows[order], return_index=True)
    for q, pairs in zip(queries_in_order, np.split(order, first[1:])):
        scores[pairs], offsets[pairs] = moment_scores(queries[q], [tracks[c] for c in cols[pairs]])
    return scores, offsets


def window_means(rows, length):
    """(T, D) -> (T - length + 1, D) means of every window of `length` consecutive rows (prefix sums in
    float64); a track shorter than `length` is one window, its mean."""
    rows = np.asarray(rows)
    if len(rows) < length:
        return rows.mean(axis=0, keepdims=True).astype(np.float32)
    sums = np.concatenate([np.zeros((1, rows.shape[1])), np.cumsum(rows, axis=0, dtype=np.float64)])
    return ((sums[length:] - sums[:-length]) / length).astype(np.float32)


def best_window(query_vector, window_vectors):
    """(score, offset): the cosine of a pooled query with each window mean (window_means), its best window
    (earliest on ties). Pooled scorings use it to give their answer a moment."""
    q = np.asarray(query_vector, np.float64)
    w = np.asarray(window_vectors, np.float64)
    cosines = w @ q / np.maximum(np.linalg.norm(w, axis=1) * np.linalg.norm(q), 1e-12)
    offset = int(np.argmax(cosines))
    return float(cosines[offset]), offset


# ---------------------------------------------------------------------------------------------- metrics

def iou(pred, gt, track_lengths=None):
    """(n,) IoU of [start, end) intervals in seconds, pred and gt (n, 2), as MGSV-EC's span_utils: the
    prediction clipped to [0, track length] first; 0 when the gt has start >= end or the union is <= 0."""
    pred = np.array(pred, np.float64).reshape(-1, 2)
    gt = np.asarray(gt, np.float64).reshape(-1, 2)
    upper = np.inf if track_lengths is None else np.asarray(track_lengths, np.float64)
    pred[:, 0] = np.clip(pred[:, 0], 0, upper)
    pred[:, 1] = np.clip(pred[:, 1], 0, upper)
    inter = np.clip(np.minimum(pred[:, 1], gt[:, 1]) - np.maximum(pred[:, 0], gt[:, 0]), 0, None)
    union = (pred[:, 1] - pred[:, 0]) + (gt[:, 1] - gt[:, 0]) - inter
    ok = (gt[:, 0] < gt[:, 1]) & (union > 0)
    return np.where(ok, inter / np.where(ok, union, 1), 0.0)


def _key(k, thr, retrieved=False):
    return f"MoR@{k} IoU>{thr}" + (" retrieved" if retrieved else "")


def library_metrics(ranks, gt_moments, gt_track_moments, top_tracks=None, top_moments=None, gt_tracks=None,
                    track_lengths=None, ks=(1, 5, 10, 100), mor_ks=(1, 10, 100), thresholds=(0.5, 0.7)):
    """MGSV-EC's library metrics, as fractions.

    ranks: (n,) 1-based rank of the true track among unique tracks; gt_moments: (n, 2) true moments;
    gt_track_moments: (n, 2) the moment the model finds on the true track; track_lengths: (n,) seconds of
    each true track (clips predictions). Keys: "R@K", "MedR", "mIoU", "IoU@0.3/0.5/0.7" (IoU > thr),
    "MoR@K IoU>thr" (official: rank <= K and the moment on the true track has IoU > thr). With top_tracks
    (n, W) ids of each query's answers, top_moments (n, W, 2) and gt_tracks (n,) ids, also
    "MoR@K IoU>thr retrieved" for K <= W: the true track is among the first K answers and the moment
    attached to that answer has IoU > thr (what a user who takes the answer's moment gets).
    """
    ranks = np.asarray(ranks)
    ious = iou(gt_track_moments, gt_moments, track_lengths)
    out = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    out["MedR"] = float(np.median(ranks))
    out["mIoU"] = float(ious.mean())
    out.update({f"IoU@{t}": float(np.mean(ious > t)) for t in (0.3, 0.5, 0.7)})
    out.update({_key(k, t): float(np.mean((ranks <= k) & (ious > t))) for k in mor_ks for t in thresholds})
    if top_tracks is not None:
        top_tracks = np.asarray(top_tracks)
        top_moments = np.asarray(top_moments, np.float64)
        found = top_tracks == np.asarray(gt_tracks)[:, None]  # (n, W): at most one True per row
        position = np.where(found.any(axis=1), found.argmax(axis=1), top_tracks.shape[1])
        answer = top_moments[np.arange(len(ranks)), np.minimum(position, top_tracks.shape[1] - 1)]
        answer_ious = np.where(position < top_tracks.shape[1], iou(answer, gt_moments, track_lengths), 0.0)
        for k in mor_ks:
            if k <= top_tracks.shape[1]:
                out.update({_key(k, t, True): float(np.mean((position < k) & (answer_ious > t))) for t in thresholds})
    return out


def library_chance(n_tracks, gt_moments, track_lengths, ks=(1, 5, 10, 100), mor_ks=(1, 10, 100),
                   thresholds=(0.5, 0.7)):
    """Chance level of library_metrics' keys (exact, no sampling): a random ranking of n_tracks unique
    tracks (R@K = K / N, MedR = (N + 1) / 2) and a moment of the query's length placed at a whole-second
    offset drawn uniformly from [0, track length - query length] on the true track (offset 0 when the
    query is longer); the rank and the moment are independent, so MoR@K = R@K * P(IoU > thr). The
    "retrieved" reading has the same chance level as the official one."""
    gt = np.asarray(gt_moments, np.float64).reshape(-1, 2)
    lengths = np.asarray(track_lengths, np.float64)
    mean_iou, above = np.empty(len(gt)), {t: np.empty(len(gt)) for t in (0.3, 0.5, 0.7, *thresholds)}
    for i, ((start, end), track) in enumerate(zip(gt, lengths)):
        width = end - start
        starts = np.arange(int(np.floor(max(track - width, 0))) + 1, dtype=np.float64)
        ious = iou(np.stack([starts, starts + width], axis=1), np.tile([start, end], (len(starts), 1)),
                   np.full(len(starts), track))
        mean_iou[i] = ious.mean()
        for t in above:
            above[t][i] = np.mean(ious > t)
    recall = {k: min(k, n_tracks) / n_tracks for k in sorted({*ks, *mor_ks})}
    out = {f"R@{k}": recall[k] for k in ks}
    out["MedR"] = (n_tracks + 1) / 2
    out["mIoU"] = float(mean_iou.mean())
    out.update({f"IoU@{t}": float(above[t].mean()) for t in (0.3, 0.5, 0.7)})
    out.update({_key(k, t, retrieved): recall[k] * float(above[t].mean()) for k in mor_ks for t in thresholds
                for retrieved in (False, True)})
    return out


def paired_bootstrap_hits(hits_a, hits_b, n_boot=10000, seed=0, chunk=500):
    """(mean of a - b, low, high): the 95% percentile interval of the mean difference of two per-query
    scores (e.g. hits of MoR@1) over n_boot resamplings of the queries, both systems resampled together."""
    diff = np.asarray(hits_a, np.float64) - np.asarray(hits_b, np.float64)
    rng = np.random.default_rng(seed)
    means = np.concatenate([diff[rng.integers(0, len(diff), size=(min(chunk, n_boot - first), len(diff)))].mean(axis=1)
                            for first in range(0, n_boot, chunk)])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def paired_bootstrap(ranks_a, ranks_b, k=1, n_boot=10000, seed=0):
    """(mean difference of R@k between systems a and b, low, high), paired 95% bootstrap interval."""
    return paired_bootstrap_hits(np.asarray(ranks_a) <= k, np.asarray(ranks_b) <= k, n_boot=n_boot, seed=seed)
