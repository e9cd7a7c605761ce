"""Embedding tracks and scoring them, shared by validation, test.py, retrieve.py and the benchmark.

Each track is embedded once, on its own segments (video: flow segments; music: its own change points),
into one unit vector per second. From those:
    pooled(q, c)  = cosine of the renormalised means of the per-second vectors;
    aligned(q, c) = mean over t < min(T_q, T_c) of cos(q(t), c(t)), the candidate laid under the video
                    from its start.
Neither re-encodes anything per pair: aligned is one matrix product over the padded per-second vectors
(vmr.baselines.aligned_scores, the same code as the time-aligned linear baseline). On a large gallery,
aligned rescoring runs on each query's pooled top `rerank` candidates only.
"""
import numpy as np
import torch

from transformer.data import cut_parts, encode_timeline, item_rows
from vmr.baselines import aligned_scores, pad_sequences
from vmr.metrics import check_finite, normalize_rows

RERANK_OFFSET = 3.0  # added to aligned scores so reranked candidates stay above every pooled score (<= 1)


@torch.no_grad()
def embed_tracks(encoder, sources, parts_of, batch_tracks=64):
    """List of (T_i, E) float32 per-second unit vectors of each source (T_i, D), encoded on its parts."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for first in range(0, len(sources), batch_tracks):
        chunk = list(sources[first:first + batch_tracks])  # a LazyRows (split folder) reads just these tracks
        length = max(len(s) for s in chunk)
        timeline = encode_timeline(encoder, cut_parts(chunk, parts_of[first:first + batch_tracks]), len(chunk), length, device).numpy()
        out += [timeline[i, :len(s)] for i, s in enumerate(chunk)]
    return out


def pool(sequences):
    """(n, E) renormalised means of per-second vectors."""
    return normalize_rows(np.stack([s.mean(0) for s in sequences]))


def embed_items(model, items, batch_tracks=64):
    """Per-second and pooled embeddings of both modalities of test items (music cut from the music alone)."""
    video = embed_tracks(model.video, item_rows(items, "video"), [it.video_parts for it in items], batch_tracks)
    audio = embed_tracks(model.audio, item_rows(items, "audio"), [it.music_parts for it in items], batch_tracks)
    return dict(video_seq=video, audio_seq=audio, video=pool(video), audio=pool(audio))


def score_matrices(video_seq, audio_seq, video, audio, scoring="aligned", rerank=1000, what="Transformer"):
    """(video_to_music (n, N), music_to_video (N, n)) score matrices, ground truth on the diagonal.

    pooled: cosine of the pooled vectors. aligned: each query's pooled top `rerank` candidates
    (all of them when rerank <= 0 or >= the gallery) get RERANK_OFFSET + their aligned score.
    """
    check_finite(video, f"{what}: video embeddings")
    check_finite(audio, f"{what}: music embeddings")
    pooled = video @ audio.T
    if scoring == "pooled":
        return pooled, pooled.T
    q, q_len = pad_sequences(video_seq)
    g, g_len = pad_sequences(audio_seq)
    n, m = pooled.shape
    if rerank <= 0 or rerank >= max(n, m):
        full = aligned_scores(q, q_len, g, g_len)
        return full, full.T
    return (rescore_top(pooled, rerank, lambda rows, cols: pair_scores(q, q_len, g, g_len, rows, cols)),
            rescore_top(pooled.T, rerank, lambda rows, cols: pair_scores(q, q_len, g, g_len, cols, rows)))


def pair_scores(q, q_len, g, g_len, rows, cols, chunk=4096):
    """(P,) aligned scores of the pairs (query rows[k], gallery cols[k]) from pad_sequences outputs."""
    width = min(q.shape[1], g.shape[1])
    out = np.empty(len(rows), np.float32)
    for s in range(0, len(rows), chunk):
        r, c = rows[s:s + chunk], cols[s:s + chunk]
        out[s:s + chunk] = np.einsum("ptd,ptd->p", q[r, :width], g[c, :width]) / np.maximum(np.minimum(q_len[r], g_len[c]), 1)
    return out


def rescore_top(pooled, k, score_pairs):
    """Pooled scores with each row's top k replaced by RERANK_OFFSET + score_pairs(rows, cols)."""
    k = min(k, pooled.shape[1])
    cols = np.argpartition(-pooled, k - 1, axis=1)[:, :k].ravel()
    rows = np.repeat(np.arange(len(pooled)), k)
    out = pooled.astype(np.float32).copy()
    out[rows, cols] = RERANK_OFFSET + score_pairs(rows, cols)
    return out


def shown_score(score):
    """A score from a rescored matrix as the scoring defines it (the offset removed)."""
    return float(score - RERANK_OFFSET) if score > RERANK_OFFSET - 1.5 else float(score)


def segment_vectors(seq, parts):
    """(P, E) renormalised means of per-second vectors over [start, end) parts."""
    return normalize_rows(np.stack([seq[s:e].mean(0) for s, e in parts]))


def best_segments(items, embedded, ids):
    """For each query video segment: the gallery music segment (cut from the music alone) with the highest cosine."""
    gallery = [(i, s, e) for i, it in enumerate(items) for s, e in it.music_parts]
    g = np.concatenate([segment_vectors(seq, it.music_parts) for seq, it in zip(embedded["audio_seq"], items)])
    out = []
    for seq, it in zip(embedded["video_seq"], items):
        sims = segment_vectors(seq, it.video_parts) @ g.T
        out.append([{"start": int(s), "end": int(e), "track": ids[gallery[j][0]], "track_start": int(gallery[j][1]),
                     "track_end": int(gallery[j][2]), "score": float(sims[k, j])}
                    for k, ((s, e), j) in enumerate(zip(it.video_parts, sims.argmax(1)))])
    return out
