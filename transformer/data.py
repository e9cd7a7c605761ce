"""Motion segments for the segment Transformer.

An item is one video with its music: per-second video and audio rows [0, min(T_video, T_audio))
(read by vmnet.data.load_pair, so both models see the same rows) cut at the boundaries of its
optical-flow segments. Boundaries come from flowProcessor's ranks.csv, or, with
`--segments_from features`, from the features themselves (distance between consecutive rows,
moving average 10, the same Dynp at 1 Hz), which is also how library tracks without video are cut.

Segments longer than `max_seq_len` seconds are split into near-equal parts that inherit the
parent's rank; the flow-rank triplets use the first part of the rank-1 ("top") and of the
last-rank ("bottom") parent.
"""
import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from feature_extraction.flowProcessor import feature_trajectory, rank_segments, read_ranks_csv, segment_signal
from vmnet.data import bad_id_reason, check_overlap, load_pair, read_ids


@dataclass
class Item:
    id: str
    video: np.ndarray  # (T, Dv) float32
    audio: np.ndarray  # (T, Da) float32, same T
    starts: np.ndarray  # (S,) int64 seconds, segment s covers rows [starts[s], ends[s])
    ends: np.ndarray
    ranks: np.ndarray  # (S,) rank of the parent segment (1 = most motion)
    top: int  # first part of the rank-1 parent
    bottom: int  # first part of the last-rank parent
    n_parents: int  # segments before splitting; triplets need >= 2


def split_segments(boundaries, ranks, max_seq_len, n_rows):
    """Boundaries (seconds, with 0 and the end) and parent ranks -> parts of at most max_seq_len rows.

    Boundaries are clipped to the n_rows available; parents left empty are dropped.
    Returns starts, ends, ranks (inherited), parent index (into the kept parents) per part.
    """
    starts, ends, part_ranks, parents = [], [], [], []
    kept = 0
    for s, e, r in zip(boundaries[:-1], boundaries[1:], ranks):
        s, e = int(min(s, n_rows)), int(min(e, n_rows))
        if e <= s:
            continue
        n_parts = -(-(e - s) // max_seq_len)
        cuts = np.linspace(s, e, n_parts + 1).round().astype(int)
        for a, b in zip(cuts[:-1], cuts[1:]):
            starts.append(a)
            ends.append(b)
            part_ranks.append(int(r))
            parents.append(kept)
        kept += 1
    return np.array(starts, np.int64), np.array(ends, np.int64), np.array(part_ranks, np.int64), np.array(parents, np.int64)


def feature_segments(features, n_bkps=7, min_seconds=10):
    """Boundaries (seconds) and ranks of a (T, D) per-second feature array, cut where the features change."""
    trajectory = feature_trajectory(features, smooth=10)
    boundaries, _ = segment_signal(trajectory, rate=1, n_bkps=n_bkps, min_seconds=min_seconds, jump_samples=1)
    ranks, _ = rank_segments(trajectory, 1, boundaries)
    return list(boundaries), list(ranks)


def make_item(vid, video, audio, boundaries, ranks, max_seq_len):
    """An Item over rows [0, min(T_video, T_audio)); raises ValueError when no segment is left."""
    n_rows = min(len(video), len(audio))
    starts, ends, part_ranks, parents = split_segments(boundaries, ranks, max_seq_len, n_rows)
    if len(starts) == 0:
        raise ValueError("no segment covers the feature rows")
    first_part = {}
    for index, parent in enumerate(parents):
        first_part.setdefault(int(parent), index)
    parent_rank = {int(p): int(r) for p, r in zip(parents, part_ranks)}
    top_parent = min(parent_rank, key=lambda p: (parent_rank[p], p))
    bottom_parent = max(parent_rank, key=lambda p: (parent_rank[p], -p))
    return Item(vid, video[:n_rows], audio[:n_rows], starts, ends, part_ranks,
                first_part[top_parent], first_part[bottom_parent], len(parent_rank))


def load_items(data_dir, ids, flow_ranks=None, segments_from="ranks", max_seq_len=200, max_seconds=None,
               n_bkps=7, min_seconds=10):
    """Items for `ids`; bad or unsegmentable ids print `id: reason` and are skipped.

    segments_from: "ranks" (ids missing from ranks.csv are skipped) or "features"
    (ids missing from ranks.csv, or all ids without a ranks.csv, are cut from their video features).
    """
    if segments_from not in ("ranks", "features"):
        raise ValueError(f"segments_from must be 'ranks' or 'features', not {segments_from!r}")
    if flow_ranks is None and segments_from == "ranks":
        raise ValueError("--flow_ranks is required unless --segments_from features")
    table = read_ranks_csv(flow_ranks) if flow_ranks is not None else {}
    items, dims = [], None
    for vid in tqdm(ids, desc=f"loading {data_dir}", unit="id", leave=False):
        if bad_id_reason(vid):
            print(f"{vid}: {bad_id_reason(vid)}", file=sys.stderr)
            continue
        if vid not in table and segments_from == "ranks":
            print(f"{vid}: not in {flow_ranks}, skipped (use --segments_from features to segment it)", file=sys.stderr)
            continue
        pair = load_pair(data_dir, vid, max_seconds=max_seconds, dims=dims)  # prints `id: reason` when bad
        if pair is None:
            continue
        video, audio = pair
        dims = (video.shape[1], audio.shape[1])
        try:
            if vid in table:
                boundaries, ranks = table[vid]["segments"], table[vid]["ranks"]
            else:
                boundaries, ranks = feature_segments(video, n_bkps, min_seconds)
            items.append(make_item(vid, video, audio, boundaries, ranks, max_seq_len))
        except ValueError as error:
            print(f"{vid}: {error}", file=sys.stderr)
    if not items:
        raise ValueError(f"{data_dir}: no usable id out of {len(ids)}")
    return items


def training_ids(train_csv, test_csv=None):
    """The train CSV's ids; an overlap with the test CSV raises (vmnet.data.check_overlap)."""
    train_ids = read_ids(train_csv)
    if test_csv is not None:
        check_overlap(train_ids, read_ids(test_csv))
    return train_ids


def cut_segments(sources, owners, starts, ends):
    """Rows [starts[k], ends[k]) of sources[owners[k]] -> (S, L, D) float tensor zero-padded, (S, L) bool True = padding.

    A segment running past its source's end keeps the rows that exist; callers drop empty ones.
    """
    lengths = [max(0, min(int(e), len(sources[o])) - int(s)) for o, s, e in zip(owners, starts, ends)]
    width = max(lengths) if lengths else 0
    dim = sources[0].shape[1]
    out = np.zeros((len(lengths), max(width, 1), dim), np.float32)
    pad = np.ones((len(lengths), max(width, 1)), bool)
    for k, (o, s, n) in enumerate(zip(owners, starts, lengths)):
        out[k, :n] = sources[o][int(s): int(s) + n]
        pad[k, :n] = False
    return torch.from_numpy(out), torch.from_numpy(pad)


@dataclass
class Batch:
    video: torch.Tensor  # (S, L, Dv)
    audio: torch.Tensor  # (S, L, Da)
    pad: torch.Tensor  # (S, L) True = padding, the same for both modalities
    owner: torch.Tensor  # (S,) item index within the batch
    top: torch.Tensor  # (B,) global segment index of each item's top part
    bottom: torch.Tensor  # (B,)
    n_parents: torch.Tensor  # (B,)


def collate(items):
    """All segments of the items, padded to the longest; both modalities share one mask."""
    owners = np.concatenate([np.full(len(it.starts), i) for i, it in enumerate(items)])
    starts = np.concatenate([it.starts for it in items])
    ends = np.concatenate([it.ends for it in items])
    video, pad = cut_segments([it.video for it in items], owners, starts, ends)
    audio, _ = cut_segments([it.audio for it in items], owners, starts, ends)
    offsets = np.concatenate([[0], np.cumsum([len(it.starts) for it in items])[:-1]])
    return Batch(video, audio, pad, torch.from_numpy(owners).long(),
                 torch.tensor([o + it.top for o, it in zip(offsets, items)]),
                 torch.tensor([o + it.bottom for o, it in zip(offsets, items)]),
                 torch.tensor([it.n_parents for it in items]))
