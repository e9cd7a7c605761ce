"""Embedding and track scoring, shared by validation, test.py, retrieve.py and the benchmark.

pooled(q, c)  = cosine of the track embeddings (renormalised means of segment embeddings).
aligned(q, c) = mean over the query video's segments of cos(video segment, candidate music over
                the same seconds): the candidate is laid under the video from its start and cut at
                the query's boundaries. A query segment that starts after the candidate ends scores 0.
Aligned costs an audio-encoder pass per (pair, segment), so it reranks the pooled top R.
Everything runs in eval mode under no_grad.
"""
import numpy as np
import torch
from tqdm import tqdm

from transformer.data import cut_segments, feature_segments, split_segments
from transformer.model import track_embeddings

RERANK_OFFSET = 3.0  # added to aligned scores so reranked candidates stay above every pooled score (<= 1)


def item_segments(items):
    """(owner, start, end) int arrays over all segments of `items`, in item order."""
    owner = np.concatenate([np.full(len(it.starts), i) for i, it in enumerate(items)])
    return owner, np.concatenate([it.starts for it in items]), np.concatenate([it.ends for it in items])


@torch.no_grad()
def embed_segments(encoder, sources, owner, start, end, batch_size=256):
    """(M, E) float32 embeddings of rows [start, end) of sources[owner]; batches of similar length."""
    encoder.eval()
    device = next(encoder.parameters()).device
    lengths = np.minimum(end, [len(sources[o]) for o in owner]) - start
    order = np.argsort(lengths, kind="stable")
    out = torch.empty(len(order), encoder.output.out_features)
    for first in range(0, len(order), batch_size):
        chunk = order[first:first + batch_size]
        x, pad = cut_segments(sources, owner[chunk], start[chunk], end[chunk])
        out[torch.from_numpy(chunk)] = encoder(x.to(device), pad.to(device)).cpu()
    return out


def embed_items(model, items, batch_size=256):
    """Segment and track embeddings of both modalities, each track cut at its own video's boundaries."""
    owner, start, end = item_segments(items)
    video_seg = embed_segments(model.video, [it.video for it in items], owner, start, end, batch_size)
    audio_seg = embed_segments(model.audio, [it.audio for it in items], owner, start, end, batch_size)
    return dict(owner=owner, start=start, end=end, video_seg=video_seg, audio_seg=audio_seg,
                video=track_embeddings(video_seg, owner, len(items)),
                audio=track_embeddings(audio_seg, owner, len(items)))


def embed_video_item(model, item, batch_size=256):
    """Video segment and track embeddings of one query item (a video without music)."""
    owner, start, end = item_segments([item])
    video_seg = embed_segments(model.video, [item.video], owner, start, end, batch_size)
    return dict(owner=owner, start=start, end=end, video_seg=video_seg, video=track_embeddings(video_seg, owner, 1))


@torch.no_grad()
def aligned_scores(audio_encoder, query_emb, query_owner, query_start, query_end, music, pairs, batch_size=256):
    """(P,) aligned scores for pairs (P, 2) of (query index, candidate index into `music`).

    query_emb (M, E) video segment embeddings with their owner/start/end; music: list of (T, Da) arrays.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    segments_of = [np.flatnonzero(query_owner == q) for q in range(int(query_owner.max()) + 1)]
    pair_index = np.concatenate([np.full(len(segments_of[q]), p) for p, (q, _) in enumerate(pairs)] + [np.zeros(0, np.int64)])
    segment = np.concatenate([segments_of[q] for q, _ in pairs] + [np.zeros(0, np.int64)])
    candidate = pairs[pair_index, 1]
    has_music = query_start[segment] < np.array([len(music[c]) for c in candidate], np.int64)
    pair_index, segment, candidate = pair_index[has_music], segment[has_music], candidate[has_music]
    total = torch.zeros(len(pairs))
    if len(segment):
        emb = embed_segments(audio_encoder, music, candidate, query_start[segment], query_end[segment], batch_size)
        cosine = (emb * query_emb[torch.from_numpy(segment)]).sum(1)
        total.index_add_(0, torch.from_numpy(pair_index), cosine)
    counts = np.array([len(segments_of[q]) for q, _ in pairs], np.float32)
    return (total / torch.from_numpy(counts)).numpy()


def top_columns(scores, k):
    """(n, k) column indices of each row's k highest scores (unordered)."""
    k = min(k, scores.shape[1])
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def aligned_matrices(model, pooled, embedded, music, rerank=100, batch_size=256):
    """Score matrices (rows = queries, ground truth on the diagonal) for the aligned scoring.

    pooled (n, n) video x music pooled scores; embedded: embed_items() of the same n items;
    music: the n (T, Da) arrays. Returns (video_to_music (n, n), music_to_video (n, n) with music
    queries as rows): the pooled scores, with each query's pooled top `rerank` candidates replaced
    by RERANK_OFFSET + aligned score (every candidate when rerank <= 0 or >= n). Both directions
    use the same pair score aligned(video i, music j).
    """
    n = len(pooled)
    rerank = n if rerank <= 0 else min(rerank, n)
    rows = np.repeat(np.arange(n), rerank)
    v2m_cols = top_columns(pooled, rerank).ravel()
    m2v_rows = top_columns(pooled.T, rerank).ravel()  # music query j: its pooled top videos
    pairs = np.unique(np.concatenate([np.stack([rows, v2m_cols], 1), np.stack([m2v_rows, rows], 1)]), axis=0)
    values = aligned_scores(model.audio, embedded["video_seg"], embedded["owner"], embedded["start"],
                            embedded["end"], music, pairs, batch_size)
    table = np.full((n, n), np.nan)
    table[pairs[:, 0], pairs[:, 1]] = values
    v2m, m2v = pooled.astype(np.float64), pooled.T.astype(np.float64)
    v2m[rows, v2m_cols] = RERANK_OFFSET + table[rows, v2m_cols]
    m2v[rows, m2v_rows] = RERANK_OFFSET + table[m2v_rows, rows]
    return v2m, m2v


def shown_score(score):
    """A score from a rerank matrix as the scoring defines it (the offset removed)."""
    return float(score - RERANK_OFFSET) if score > RERANK_OFFSET - 1.5 else float(score)


def library_segments(audio_list, max_seq_len=200, n_bkps=7, min_seconds=10):
    """(owner, start, end) of tracks without video, cut where their audio features change (Dynp at 1 Hz)."""
    owner, start, end = [], [], []
    for i, audio in enumerate(tqdm(audio_list, desc="segmenting tracks", unit="track", leave=False)):
        boundaries, ranks = feature_segments(audio, n_bkps, min_seconds)
        s, e, _, _ = split_segments(boundaries, ranks, max_seq_len, len(audio))
        owner.append(np.full(len(s), i))
        start.append(s)
        end.append(e)
    return np.concatenate(owner), np.concatenate(start), np.concatenate(end)


def embed_library(model, audio_list, max_seq_len=200, n_bkps=7, min_seconds=10, batch_size=256):
    """Segments (cut from the audio itself) and track embeddings of music without video."""
    owner, start, end = library_segments(audio_list, max_seq_len, n_bkps, min_seconds)
    seg = embed_segments(model.audio, audio_list, owner, start, end, batch_size)
    return dict(owner=owner, start=start, end=end, seg=seg, track=track_embeddings(seg, owner, len(audio_list)))


def best_segments(query_emb, gallery_emb):
    """For each query segment: (index of the gallery segment with the highest cosine, that cosine)."""
    sim = query_emb @ gallery_emb.T
    score, index = sim.max(1)
    return index.numpy(), score.numpy()
