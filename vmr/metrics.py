"""Evaluation metrics shared by VM-NET, the segment Transformer and the report.

Retrieval is always ranked against the whole gallery; ties count against the model
(pessimistic rule): rank = 1 + #{j != gt : s_j >= s_gt}. A collapsed model (all scores
equal) therefore gets rank N, never rank 1. Recalls are fractions in [0, 1].

FAD follows google-research's frechet_audio_distance (unbiased covariance in float64,
sqrtm of the product, 1e-7 I when it is not finite, error on a large imaginary part).
AV-Align follows TempoTokens' av_align.py: "2025" matches each video peak at most once,
"2023" lets one video peak match several audio peaks (scores can exceed 1).
"""
import json
from pathlib import Path

import numpy as np

KS = (1, 5, 10, 20, 25, 50, 100)
BATCH_LABEL = "batch-level recall over seeded random batches; for comparison with VM-NET papers only, not a whole-gallery metric"


def gt_ranks(scores, relevant=None, groups=None, chunk=1024, gt=None):
    """1-based rank of the ground truth in each row of `scores` (n, N), pessimistic ties.

    Without `relevant` the ground truth of row i is column i, or column gt[i] with `gt` ((n,) indices: a
    library of unique tracks, several queries per track). With `relevant` (n, N) bool (e.g. ids sharing a
    track), the best-scoring relevant column counts and only non-relevant columns scoring >= it are ranked
    above it. `groups` ((n,) labels, with n == N; with `gt`, (N,) labels of the columns) gives the same result
    as relevant = group_relevance(groups) without building the (n, N) matrix.

    Computed `chunk` rows at a time in the scores' own dtype (float32 scores stay float32): besides
    the scores themselves, memory is a few (chunk, N) blocks, never an (n, N) float64 or bool matrix.
    """
    scores = np.asarray(scores)
    n, n_gallery = scores.shape
    if relevant is not None:
        relevant = np.asarray(relevant, dtype=bool)
    if groups is not None:
        groups = np.asarray(groups)
    ranks = np.empty(n, np.int64)
    bad, missing = 0, False
    for first in range(0, n, chunk):
        rows = np.arange(first, min(first + chunk, n))
        block = scores[rows]
        bad += int(block.size - np.isfinite(block).sum())
        if bad:
            continue
        if relevant is not None:
            rel = relevant[rows]
        elif gt is not None:
            truth = np.asarray(gt)[rows]
            rel = (groups[truth][:, None] == groups[None, :]) if groups is not None else (truth[:, None] == np.arange(n_gallery))
        elif groups is not None:
            rel = groups[rows][:, None] == groups[None, :]
        else:
            rel = np.zeros(block.shape, dtype=bool)
            rel[np.arange(len(rows)), rows] = True
        if not rel.any(axis=1).all():
            missing = True
            continue
        best = np.where(rel, block, -np.inf).max(axis=1, keepdims=True)
        ranks[rows] = 1 + ((block >= best) & ~rel).sum(axis=1)
    if bad:
        raise ValueError(f"{bad} non-finite scores (NaN or inf) would rank as hits")
    if missing:
        raise ValueError("every query needs at least one relevant gallery item")
    return ranks


def top_k(scores, k, chunk=256):
    """(n, min(k, N)) column indices of each row's k best scores, best first, ties by the lower index:
    exactly np.argsort(-scores, axis=1, kind="stable")[:, :k], computed with a partition per row chunk
    (no (n, N) index matrix)."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    out = np.empty((len(scores), k), np.int64)
    for first in range(0, len(scores), chunk):
        neg = -scores[first:first + chunk]
        kth = np.partition(neg, k - 1, axis=1)[:, k - 1:k]
        for r, (row, limit) in enumerate(zip(neg, kth)):
            cand = np.flatnonzero(row <= limit[0])  # every score >= the k-th best, ties included, by index
            out[first + r] = cand[np.argsort(row[cand], kind="stable")[:k]]
    return out


def recall_block(ranks, ks=KS, with_ranks=True):
    """{"R@K": fraction of ranks <= K, ..., "MedR", "MeanR"(, "ranks")}."""
    ranks = np.asarray(ranks)
    block = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    block["MedR"] = float(np.median(ranks))
    block["MeanR"] = float(np.mean(ranks))
    if with_ranks:
        block["ranks"] = [int(r) for r in ranks]
    return block


def selection_key(block):
    """What model and baseline selection maximise on validation: R@1 + R@5 + R@10 (one direction's block),
    ties broken by the lower mean rank."""
    return (block["R@1"] + block["R@5"] + block["R@10"], -block["MeanR"])


def check_finite(array, what):
    """Raise ValueError "WHAT: N non-finite values of M" unless every value of `array` is finite."""
    array = np.asarray(array)
    bad = int(array.size - np.isfinite(array).sum())
    if bad:
        raise ValueError(f"{what}: {bad} non-finite values (NaN or inf) of {array.size}; evaluation stopped")
    return array


def normalize_rows(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def group_relevance(groups):
    """(N, N) bool: items i and j belong to the same group (e.g. the same track)."""
    groups = np.asarray(groups)
    return groups[:, None] == groups[None, :]


def score_metrics(scores, relevant=None, with_ranks=True):
    """Both directions from a video x music score matrix (row i = video i, column j = track j)."""
    rel_t = None if relevant is None else np.asarray(relevant).T  # a view: no copy
    return {
        "video_to_music": recall_block(gt_ranks(scores, relevant), with_ranks=with_ranks),
        "music_to_video": recall_block(gt_ranks(np.asarray(scores).T, rel_t), with_ranks=with_ranks),
    }


def _chunked_ranks(queries, gallery, groups, chunk=256):
    """gt_ranks of queries (n, E) against gallery (N, E) rows, `chunk` queries at a time (bounded memory)."""
    ranks = []
    for start in range(0, len(queries), chunk):
        rows = np.arange(start, min(start + chunk, len(queries)))
        if groups is None:
            relevant = np.zeros((len(rows), len(gallery)), dtype=bool)
            relevant[np.arange(len(rows)), rows] = True
        else:
            relevant = groups[rows][:, None] == groups[None, :]
        ranks.append(gt_ranks(queries[rows] @ gallery.T, relevant))
    return np.concatenate(ranks)


def retrieval_metrics(video_emb, music_emb, groups=None, with_ranks=True):
    """Whole-gallery metrics for paired embeddings (row i of each belongs to item i), cosine scores.

    groups: optional (N,) labels; items with the same label all count as hits.
    """
    v, m = normalize_rows(video_emb), normalize_rows(music_emb)
    groups = None if groups is None else np.asarray(groups)
    return {
        "video_to_music": recall_block(_chunked_ranks(v, m, groups), with_ranks=with_ranks),
        "music_to_video": recall_block(_chunked_ranks(m, v, groups), with_ranks=with_ranks),
    }


def batch_metrics(video_emb, music_emb, batch=1024, seed=0, repeats=5):
    """Recall inside seeded random batches (as VM-NET papers report), averaged over batches.

    Each repeat is one seeded permutation cut into full batches; a gallery smaller than
    `batch` is one batch of all items. A labelled extra, never the headline number.
    """
    n = len(video_emb)
    size = min(batch, n)
    rng = np.random.default_rng(seed)
    blocks = {"video_to_music": [], "music_to_video": []}
    for _ in range(repeats):
        order = rng.permutation(n)
        for start in range(0, n - size + 1, size):
            idx = order[start:start + size]
            result = retrieval_metrics(video_emb[idx], music_emb[idx], with_ranks=False)
            for direction, block in result.items():
                blocks[direction].append(block)
    out = {"label": BATCH_LABEL, "batch_size": size, "n_batches": len(blocks["video_to_music"]), "seed": seed}
    for direction, items in blocks.items():
        out[direction] = {key: float(np.mean([b[key] for b in items])) for key in items[0]}
    return out


def chance_block(N, groups=None, ks=KS, gt=None):
    """Expected metrics of a random ranking of a gallery of N. Without groups each query has one relevant item;
    with groups ((N,) labels of the gallery) a query's relevant items are its group's g members and its rank is
    that of the best of them: P(rank > K) = C(N - g, K) / C(N, K), E[rank] = (N + 1) / (g + 1), and MedR is the
    median over queries of the smallest rank m with P(rank <= m) >= 1/2 ((N + 1) / 2 without groups). The
    queries are the gallery's items, or with gt ((n,) gallery index of each query's truth) those n queries."""
    if groups is None:
        sizes, counts = np.array([1]), np.array([N if gt is None else len(gt)])
    else:
        _, inverse, group_sizes = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
        per_query = group_sizes[inverse] if gt is None else group_sizes[inverse][np.asarray(gt)]
        sizes, counts = np.unique(per_query, return_counts=True)  # each query's g, and how many queries have it

    def miss(g, k):  # C(N - g, k) / C(N, k): no relevant item within the first k
        i = np.arange(min(k, N))
        return float(np.prod(np.clip((N - g - i) / (N - i), 0, None)))

    def hit(g, k):
        return min(k, N) / N if g == 1 else 1 - miss(g, k)

    n = counts.sum()
    block = {f"R@{k}": float(sum(c * hit(g, k) for g, c in zip(sizes, counts)) / n) for k in ks}
    if groups is None:
        block["MedR"] = (N + 1) / 2
    else:
        medians = [next(m for m in range(1, N + 1) if miss(g, m) <= 0.5) for g in sizes]
        block["MedR"] = float(np.median(np.repeat(medians, counts)))
    block["MeanR"] = float(sum(c * (N + 1) / (g + 1) for g, c in zip(sizes, counts)) / n)
    return block


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Frechet distance of two Gaussians, as google-research's fad_utils computes it."""
    import scipy.linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    diff = mu1 - mu2
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = np.eye(len(sigma1)) * 1e-7
        root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: imaginary component {np.max(np.abs(root.imag)):.3g} in sqrtm")
        root = root.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def gaussian_stats(rows):
    """Mean and unbiased covariance (float64) of embedding rows (n, D), n >= 2."""
    rows = np.asarray(rows, np.float64)
    if rows.ndim != 2 or len(rows) < 2:
        raise ValueError(f"FAD needs at least 2 embedding rows, got shape {rows.shape}")
    return rows.mean(axis=0), np.cov(rows, rowvar=False)


def fad(reference_rows, evaluated_rows):
    """FAD between two sets of embedding rows (all rows of all files of a set pooled)."""
    return frechet_distance(*gaussian_stats(reference_rows), *gaussian_stats(evaluated_rows))


def av_align(audio_peaks, video_peaks, fps, variant="2025"):
    """IoU of audio onsets and video motion peaks (seconds), window v - 1/fps < a < v + 1/fps.

    2025: each audio peak (in time order) takes the first unused matching video peak.
    2023: an audio peak matches if any video peak is in its window (reuse allowed).
    Score = matches / (|A| + |V| - matches); 0 when both sets are empty.
    """
    if variant not in ("2025", "2023"):
        raise ValueError(f"unknown AV-Align variant {variant!r} (2025 or 2023)")
    audio = np.sort(np.atleast_1d(np.asarray(audio_peaks, np.float64)))
    video = list(np.atleast_1d(np.asarray(video_peaks, np.float64)))
    window = 1.0 / fps
    used = [False] * len(video)
    matches = 0
    for a in audio:
        for j, v in enumerate(video):
            if v - window < a < v + window and (variant == "2023" or not used[j]):
                used[j] = True
                matches += 1
                break
    union = len(audio) + len(video) - matches
    return matches / union if union else 0.0


def _load_peaks(peaks_dir, kind, vid):
    path = Path(peaks_dir) / kind / f"{vid}.npy"
    return np.atleast_1d(np.load(path)) if path.is_file() else None


def av_align_report(query_ids, retrieved_ids, peaks_dir, variant="2025", seed=0, truth_ids=None, starts=None):
    """Mean AV-Align of each query video against its top-1 retrieved track, its own track
    (the ground-truth ceiling) and a seeded shuffled track (the chance level).

    peaks_dir holds video/<id>.npy, video/<id>.json {"fps", "duration"} and audio/<id>.npy (seconds).
    truth_ids: each query's track (default: the query's id). starts: {"retrieved": (n,), "ground_truth": (n,)}
    seconds where the moment laid under the video begins on each track (default 0); a track's peaks are
    shifted by it, and peaks outside [0, the video's duration] are dropped before matching, so a track's
    length beyond the moment never changes its score. Returns None when no query has peaks; queries without
    peak files are listed in "missing".
    """
    query_ids, retrieved_ids = list(query_ids), list(retrieved_ids)
    truth_ids = list(truth_ids) if truth_ids is not None else query_ids
    shuffled = [truth_ids[i] for i in np.random.default_rng(seed).permutation(len(truth_ids))]
    starts = {key: list((starts or {}).get(key, np.zeros(len(query_ids)))) for key in ("retrieved", "ground_truth")}
    scores = {"retrieved": [], "ground_truth": [], "shuffled": []}
    missing = []
    for i, (q, r, t, s) in enumerate(zip(query_ids, retrieved_ids, truth_ids, shuffled)):
        video = _load_peaks(peaks_dir, "video", q)
        meta = Path(peaks_dir) / "video" / f"{q}.json"
        audio = {key: _load_peaks(peaks_dir, "audio", a) for key, a in (("retrieved", r), ("ground_truth", t), ("shuffled", s))}
        if video is None or not meta.is_file() or any(a is None for a in audio.values()):
            missing.append(q)
            continue
        info = json.loads(meta.read_text())
        if "duration" not in info:
            raise ValueError(f"{meta}: no video duration (written by an older avpeaks); extract avpeaks again")
        for key, peaks in audio.items():
            peaks = peaks - (starts[key][i] if key in starts else 0)
            scores[key].append(av_align(peaks[(peaks >= 0) & (peaks <= float(info["duration"]))], video, float(info["fps"]), variant))
    if not scores["retrieved"]:
        return None
    out = {key: float(np.mean(vals)) for key, vals in scores.items()}
    out.update(variant=variant, n=len(scores["retrieved"]), missing=missing)
    return out


def fad_report(fad_dir, query_ids, top1_ids, gallery_ids, max_seconds=None, seeds=5):
    """FAD between the ground-truth tracks of the queries and their top-1 retrieved tracks, in fad_dir's space.

    All per-second rows of the tracks of a set are pooled (a track retrieved twice counts twice). The
    chance level draws each query's track uniformly with replacement from the gallery, as a top-1 list of a
    random retriever does, over `seeds` seeds (mean and std). FAD measures whether the retrieved tracks are
    distributed like the true ones, not whether each one is right.
    """
    cache = {}

    def rows(ids):
        for vid in set(ids) - set(cache):
            x = np.load(Path(fad_dir) / f"{vid}.npy")
            cache[vid] = (x[:max_seconds] if max_seconds else x).astype(np.float64)
        return np.concatenate([cache[vid] for vid in ids])

    reference = rows(query_ids)
    gallery_ids = list(gallery_ids)
    chance = [fad(reference, rows([gallery_ids[i] for i in np.random.default_rng(seed).integers(0, len(gallery_ids), len(query_ids))]))
              for seed in range(seeds)]
    return {"space": str(fad_dir), "top1": fad(reference, rows(top1_ids)), "ground_truth": 0.0,
            "chance": {"mean": float(np.mean(chance)), "std": float(np.std(chance)), "seeds": seeds,
                       "rule": "top-1 tracks drawn uniformly with replacement from the gallery"},
            "n_queries": len(query_ids), "n_reference_rows": len(reference)}


def recall_curve_png(metrics, path):
    """Recall@K curves (both directions, chance and CCA where present) as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend (notebooks)

    def curve(block):
        ks = sorted(int(k[2:]) for k in block if k.startswith("R@"))
        return ks, [block[f"R@{k}"] for k in ks]

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for direction, style in (("video_to_music", "-o"), ("music_to_video", "-s")):
        if metrics.get(direction):
            ax.plot(*curve(metrics[direction]), style, label=f"{metrics.get('model', 'model')} {direction.replace('_', ' ')}")
        cca = (metrics.get("baselines") or {}).get("cca")
        if cca and cca.get(direction):
            ax.plot(*curve(cca[direction]), style, alpha=0.5, label=f"CCA {direction.replace('_', ' ')}")
    chance = (metrics.get("baselines") or {}).get("chance")
    if chance:
        ax.plot(*curve(chance), "k--", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1)
    ax.set_title(f"whole gallery, N = {metrics.get('gallery', '?')}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from feature_extraction.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)
