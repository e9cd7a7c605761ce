"""One scorer per model: the single ranking that validation, test.py and retrieve.py all go through.

A scorer is built from a checkpoint (or from a model while it trains) and knows what ranking needs: its feature
folders and their provenance, its scoring and its rerank depth. `embed_library` embeds a library of whole tracks
once (exactly what an index file stores), `embed_query_set` the queries, and every track is scored for a query:

    pooled   cosine of the pooled query and track vectors;
    aligned  the query's pooled top `rerank` candidates (all tracks when rerank <= 0) are scored by moment
             search (vmr.moments): the best offset at which the video fits in the track, the mean cosine of
             their per-second vectors there (the whole track at offset 0 when it is the shorter), placed
             RERANK_OFFSET above every pooled score.

`score_rows` gives the (queries, tracks) matrix of the protocol's whole-gallery ranks, `answers` each query's top
k as retrieve.py prints them, and `moments` the seconds of each answered track that fit the video: the offset
moment search found (aligned), or the window of the video's length whose pooled vector is closest to the
video's (pooled scorings). Ties: answers list equal scores in library order; the protocol's ranks count every
tie against the model (vmr.metrics.gt_ranks).

The model packages implement Scorer (vmnet/scorer.py, transformer/scorer.py; the zero-shot and linear baselines
in vmr/zeroshot.py and vmr/baselines.py); nothing here imports them.
"""
import numpy as np
import torch

from vmr.metrics import check_finite, top_k
from vmr.moments import best_window, pair_moment_scores, window_means
from vmr.search import search

RERANK_OFFSET = 3.0  # rescored candidates (pair scores in [-1, 1]) stay above every pooled score (<= 1)
RETRIEVE_SCRIPT = {"vmnet": "vmnet/retrieve.py", "transformer": "transformer/retrieve.py", "zeroshot": "zeroshot/retrieve.py"}


class Scorer:
    """The interface every model implements (see the module docstring). Attributes:

    kind            "vmnet", "transformer", "zeroshot" or a baseline's name; name: shown in tables and answers
    scoring         "pooled" or "aligned"; rerank: aligned candidates per query (<= 0: every track)
    video_features  feature folders whose rows, concatenated, are the video input (e.g. ["clip"])
    audio_feature   the feature folder of the music rows (e.g. "vggish")
    provenance      {"video": record, "audio": record}: the _feature.json records of the training features
    max_seconds     rows beyond this many seconds are ignored (None: all)
    flow_segments   whether queries are cut at their flow segments (boundaries passed to embed_queries)
    video_dim, audio_dim   input widths
    """

    kind, name, scoring, rerank = None, None, "pooled", 0
    flow_segments = False
    video_features, audio_feature, provenance, max_seconds = (), None, None, None
    video_dim = audio_dim = None
    checkpoint_sha256 = None

    def embed_tracks(self, rows, paths=None):
        """rows: sequence of (T, audio_dim) arrays (a list, or a split folder's lazy rows) -> library dict with
        "pooled" (N, E) float32 unit rows, for aligned scorings "seq"/"seq_offsets" (pack_sequences of the
        per-second vectors), and what window_vectors reads."""
        raise NotImplementedError

    def embed_queries(self, rows, boundaries=None):
        """rows: list of (T, video_dim) arrays; boundaries: per query the flow-segment boundaries (seconds) or
        None -> dict with "pooled" (n, E) unit rows and, for aligned scorings, "seq": a list of (T, E) arrays."""
        raise NotImplementedError

    def window_vectors(self, library, j, length):
        """Pooled vectors of every window of `length` seconds of track j (pooled scorings' moments); by default the
        renormalised means of its per-second vectors."""
        return window_means(track_sequence(library, j), length)

    def record(self):
        """What an index or metrics.json records about this scorer."""
        return {"model": self.name, "kind": self.kind, "scoring": self.scoring, "rerank": self.rerank,
                "video_features": list(self.video_features), "audio_feature": self.audio_feature,
                "max_seconds": self.max_seconds, "checkpoint_sha256": self.checkpoint_sha256}

    def cut(self, rows):
        """The rows this scorer reads of one item: float32, the first max_seconds."""
        rows = np.asarray(rows, np.float32)
        return rows[:self.max_seconds] if self.max_seconds else rows


class AlignedScoring:
    """Moment search over per-second unit vectors, for scorers whose embeddings have "seq" (a mixin)."""

    def pair_scores(self, queries, library, rows, cols):
        """(scores (P,), offsets (P,)) of the pairs (query rows[p], track cols[p]) by moment search."""
        tracks = {c: track_sequence(library, c) for c in np.unique(cols)}
        return pair_moment_scores([np.asarray(s, np.float32) for s in queries["seq"]], tracks, rows, cols)

    def all_scores(self, queries, library, block=1024):
        """(n, N) scores of every pair. When no track is longer than any query there is one offset, 0, and the
        scores are matrix products over blocks of `block` queries and tracks zero-padded past their ends
        (memory: two blocks, whatever the gallery); otherwise moment search of every pair."""
        n_tracks, n = len(library["seq_offsets"]) - 1, len(queries["seq"])
        if np.diff(library["seq_offsets"]).max() > min(len(s) for s in queries["seq"]):
            rows, cols = np.repeat(np.arange(n), n_tracks), np.tile(np.arange(n_tracks), n)
            return self.pair_scores(queries, library, rows, cols)[0].reshape(n, n_tracks)
        out = np.empty((n, n_tracks), np.float32)
        for g0 in range(0, n_tracks, block):
            g, g_len = _padded([track_sequence(library, j) for j in range(g0, min(g0 + block, n_tracks))])
            for q0 in range(0, n, block):
                q, q_len = _padded([np.asarray(s, np.float32) for s in queries["seq"][q0:q0 + block]])
                width = min(q.shape[1], g.shape[1])
                common = np.minimum(q_len[:, None], g_len[None, :])
                products = q[:, :width].reshape(len(q), -1) @ g[:, :width].reshape(len(g), -1).T
                out[q0:q0 + len(q), g0:g0 + len(g)] = products / np.maximum(common, 1)
        return out


def _padded(sequences):
    lengths = np.array([len(s) for s in sequences])
    out = np.zeros((len(sequences), lengths.max(), sequences[0].shape[1]), np.float32)
    for i, s in enumerate(sequences):
        out[i, :len(s)] = s
    return out, lengths


def pooled_vectors(sequences):
    """(n, E) renormalised means of per-second vectors."""
    means = np.stack([np.asarray(s, np.float32).mean(0) for s in sequences])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def pack_sequences(sequences, key="seq"):
    """{key: (R, E) float16, key_offsets: (N + 1,)}: the per-second vectors (or rows) of every track, as an index
    stores them. Scores are always computed from these float16 values, in tests and retrieval alike."""
    return {key: np.concatenate(sequences).astype(np.float16),
            f"{key}_offsets": np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)}


def track_sequence(library, j, key="seq"):
    """Track j's per-second vectors (or rows) (float32) from a packed library."""
    offsets = library[f"{key}_offsets"]
    return library[key][offsets[j]:offsets[j + 1]].astype(np.float32)


def embed_library(scorer, rows, paths=None):
    """scorer.embed_tracks, with each track's seconds ("seconds")."""
    library = scorer.embed_tracks(rows, paths)
    library["seconds"] = np.array([len(scorer.cut(r)) for r in rows] if not hasattr(rows, "lengths")
                                  else np.minimum(rows.lengths(), scorer.max_seconds or np.iinfo(np.int64).max), np.int64)
    return library


def embed_query_set(scorer, rows, boundaries=None):
    """scorer.embed_queries, with each query's seconds ("seconds")."""
    queries = scorer.embed_queries(rows, boundaries)
    queries["seconds"] = np.array([len(scorer.cut(r)) for r in rows], np.int64)
    return queries


def candidates(scorer, queries, library, k, index=None):
    """(n, m) track indices: each query's pooled top max(k, rerank) (every track when rerank <= 0 or the library
    is small enough), by exact search or through a FAISS index over library["pooled"] (-1 = none found)."""
    n_tracks = len(library["pooled"])
    depth = n_tracks if scorer.scoring == "aligned" and scorer.rerank <= 0 else max(k, scorer.rerank)
    if index is not None:
        return search(library["pooled"], queries["pooled"], min(depth, n_tracks), index)[0]
    if depth >= n_tracks:
        return np.tile(np.arange(n_tracks), (len(queries["pooled"]), 1))
    return top_k(queries["pooled"] @ library["pooled"].T, depth)  # equal scores at the cut: the lower index, as answers


def candidate_scores(scorer, queries, library, cand):
    """(n, m) final scores of the candidates: pooled cosines (gathered, so exact and FAISS search give the same
    values), or RERANK_OFFSET + the moment-search score for aligned scorings. -inf where cand is -1."""
    n, m = cand.shape
    if scorer.scoring == "aligned" and m == len(library["pooled"]) and (cand == np.arange(m)).all():
        return RERANK_OFFSET + check_finite(scorer.all_scores(queries, library), f"{scorer.name}: scores")  # every pair
    valid = cand >= 0
    rows = np.repeat(np.arange(n), m)[valid.ravel()]
    cols = cand.ravel()[valid.ravel()]
    out = np.full((n, m), -np.inf, np.float32)
    if scorer.scoring == "aligned":
        values = RERANK_OFFSET + scorer.pair_scores(queries, library, rows, cols)[0]
    else:
        values = np.einsum("pe,pe->p", queries["pooled"][rows], library["pooled"][cols])
    out[valid] = check_finite(values, f"{scorer.name}: scores")
    return out


def answers(scorer, queries, library, k, index=None):
    """(indices (n, k), scores (n, k)): each query's k best tracks, best first, equal scores in library order."""
    cand = candidates(scorer, queries, library, k, index)
    scores = candidate_scores(scorer, queries, library, cand)
    order = np.lexsort((np.where(cand >= 0, cand, np.iinfo(np.int64).max), -scores), axis=1)[:, :k]
    return np.take_along_axis(cand, order, 1), np.take_along_axis(scores, order, 1)


def score_rows(scorer, queries, library):
    """(n, N) float32: every track's score for every query, with exact search. Under an aligned scoring, tracks
    outside a query's candidates keep their pooled cosine (below every candidate)."""
    pooled = check_finite(queries["pooled"] @ library["pooled"].T, f"{scorer.name}: pooled scores")
    if scorer.scoring == "aligned":
        cand = candidates(scorer, queries, library, 1)
        np.put_along_axis(pooled, cand, candidate_scores(scorer, queries, library, cand), 1)
    return pooled


def moments(scorer, queries, library, rows, cols):
    """(P, 2) [start, end) seconds of track cols[p] that fit query rows[p]: min(T_video, T_track) seconds from the
    offset moment search finds (aligned), or from the best window of that length (pooled: best_window of the
    query's pooled vector against scorer.window_vectors)."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    length = np.minimum(queries["seconds"][rows], library["seconds"][cols])
    if scorer.scoring == "aligned":
        offsets = scorer.pair_scores(queries, library, rows, cols)[1]
    else:
        offsets = np.array([best_window(queries["pooled"][r], scorer.window_vectors(library, c, t))[1]
                            for r, c, t in zip(rows, cols, length)], np.int64)
    return np.stack([offsets, offsets + length], axis=1)


def gallery_recall(scorer, gallery, boundaries=None):
    """(video -> music block of the scorer, of the pooled cosine) on a vmr.data.Gallery: validation and baseline
    tuning rank as test.py does."""
    from vmr.metrics import gt_ranks, recall_block

    library, queries = embed_library(scorer, gallery.track_rows), embed_query_set(scorer, gallery.videos, boundaries)
    pooled = queries["pooled"] @ library["pooled"].T
    block = recall_block(gt_ranks(score_rows(scorer, queries, library), gt=gallery.gt), with_ranks=False)
    return block, recall_block(gt_ranks(pooled, gt=gallery.gt), with_ranks=False)


def shown(scorer, score):
    """A score as the scoring defines it (RERANK_OFFSET removed)."""
    return float(score - RERANK_OFFSET) if scorer.scoring == "aligned" and score > RERANK_OFFSET - 1.5 else float(score)


def read_checkpoint(path, expected):
    """A checkpoint dict (weights_only) of the kind `expected` ("vmnet" or "transformer"); a checkpoint of the other
    model is an error naming the script that serves it. VM-NET checkpoints written before "model_type" was
    recorded count as "vmnet"."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise ValueError(f"{path}: not a checkpoint written by vmnet/train.py or transformer/train.py")
    kind = ckpt.get("model_type", "vmnet")
    if kind != expected:
        raise ValueError(f"{path} is a {kind} checkpoint, not a {expected} one; use {kind}/ scripts "
                         f"(e.g. {RETRIEVE_SCRIPT.get(kind, kind)})")
    return ckpt
