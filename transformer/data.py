"""Items for the segment Transformer: per-second rows of a video and its music, each with its own segments.

An item's rows are [0, T) with T = min(T_video, T_audio) (read by vmr.data.load_pair, so both models
see the same rows; with DATA/moments.csv the music rows are the video's moment of its track); the seconds after the last flow boundary belong to the last segment. Video parts come from its optical-flow
segments (flowProcessor's ranks.csv, or with `--segments_from features` from the video features' own
change points). Music parts come from the music alone (vmr.segments.music_segments), never from the
paired video: a gallery track is cut exactly as a library track without video would be. Segments longer
than max_seq_len seconds are split into near-equal parts.
"""
import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from feature_extraction.flowProcessor import feature_trajectory, rank_segments, read_ranks_csv
from vmr.data import bad_id_reason, load_pair, read_moments
from vmr.splits import LazyRows, Split, is_split
from vmr.segments import MIN_SECONDS, N_BKPS, change_points, music_segments


@dataclass
class Item:
    id: str
    video: np.ndarray  # (T, Dv) float32
    audio: np.ndarray  # (T, Da) float32, same T
    video_parts: np.ndarray  # (S, 2) [start, end) seconds, flow segments split to <= max_seq_len
    music_parts: np.ndarray  # (M, 2) music segments (from the music alone) split to <= max_seq_len
    top: tuple  # [start, end) of the rank-1 (most motion) flow segment
    bottom: tuple  # [start, end) of the last-rank flow segment
    n_segments: int  # flow segments; flow-rank triplets need >= 2


def split_parts(boundaries, max_seq_len, n_rows):
    """Boundaries (seconds, with 0 and the end) -> (P, 2) [start, end) parts of at most max_seq_len rows,
    clipped to n_rows; empty segments are dropped."""
    parts = []
    for s, e in zip(boundaries[:-1], boundaries[1:]):
        s, e = int(min(s, n_rows)), int(min(e, n_rows))
        if e <= s:
            continue
        cuts = np.linspace(s, e, -(-(e - s) // max_seq_len) + 1).round().astype(int)
        parts += list(zip(cuts[:-1], cuts[1:]))
    return np.array(parts, np.int64).reshape(-1, 2)


def video_segments(video, n_bkps=N_BKPS, min_seconds=MIN_SECONDS):
    """Boundaries and ranks of a video without a ranks.csv row, cut where its features change."""
    trajectory = feature_trajectory(video, smooth=10)
    boundaries = change_points(trajectory, n_bkps, min_seconds)
    ranks, _ = rank_segments(trajectory, 1, boundaries)
    return boundaries, ranks


def covering(boundaries, n_rows):
    """Segment boundaries whose last segment reaches the last row: the seconds after the last flow boundary
    belong to the last segment, so a video is always encoded and scored whole (as a query in retrieval is)."""
    boundaries = [int(b) for b in boundaries]
    if n_rows < 1:
        raise ValueError("no feature rows")
    boundaries[-1] = max(boundaries[-1], n_rows)
    return boundaries


def make_item(vid, video, audio, boundaries, ranks, max_seq_len, n_bkps=N_BKPS, min_seconds=MIN_SECONDS):
    """An Item over rows [0, min(T_video, T_audio)), its last segment extended to the end (covering)."""
    n_rows = min(len(video), len(audio))
    boundaries = covering(boundaries, n_rows)
    kept = [(int(s), min(int(e), n_rows), int(r)) for s, e, r in zip(boundaries[:-1], boundaries[1:], ranks) if s < n_rows]
    top = min(kept, key=lambda k: k[2])
    bottom = max(kept, key=lambda k: k[2])
    audio = audio[:n_rows]
    return Item(vid, video[:n_rows], audio, split_parts(boundaries, max_seq_len, n_rows),
                split_parts(music_segments(audio, n_bkps, min_seconds), max_seq_len, n_rows),
                top[:2], bottom[:2], len(kept))


class SplitItem:
    """An Item whose rows stay in a split folder (vmr/splits.py): .video and .audio read them on each access
    (fresh float32 arrays, nothing kept), so a list of 20,000 items holds only their segments."""

    def __init__(self, item, split, index):
        self.id, self.video_parts, self.music_parts = item.id, item.video_parts, item.music_parts
        self.top, self.bottom, self.n_segments = item.top, item.bottom, item.n_segments
        self.split, self.index, self.n_rows = split, index, len(item.video)

    @property
    def video(self):
        return self.split.rows("video", self.index, self.n_rows)

    @property
    def audio(self):
        return self.split.rows("audio", self.index, self.n_rows)

    def __repr__(self):
        return f"SplitItem({self.id!r}, {self.n_rows} rows of {self.split.folder})"


def item_rows(items, kind):
    """[it.video for it in items] (kind "video") or their audio; items all from one split give a lazy
    vmr.splits.LazyRows (read one item at a time) instead of a list of arrays."""
    if items and all(isinstance(it, SplitItem) for it in items) and len({id(it.split) for it in items}) == 1:
        return LazyRows(items[0].split, kind, [it.index for it in items], [it.n_rows for it in items])
    return [getattr(it, kind) for it in items]


def load_items(data_dir, ids, flow_ranks=None, segments_from="ranks", max_seq_len=200, max_seconds=None,
               n_bkps=N_BKPS, min_seconds=MIN_SECONDS, dims=None):
    """Items for `ids`; bad or unsegmentable ids print `id: reason` and are skipped.

    segments_from: "ranks" (ids missing from ranks.csv are skipped) or "features"
    (ids missing from ranks.csv, or all ids without a ranks.csv, are cut from their video features).
    dims = (Dv, Da) to enforce (a checkpoint's), else the first good item's.
    DATA_DIR may be a split folder (vmr/splits.py): the items are then SplitItems, whose rows are read on access.
    """
    if segments_from not in ("ranks", "features"):
        raise ValueError(f"segments_from must be 'ranks' or 'features', not {segments_from!r}")
    if flow_ranks is None and segments_from == "ranks":
        raise ValueError("--flow_ranks is required unless --segments_from features")
    table = read_ranks_csv(flow_ranks) if flow_ranks is not None else {}
    split = Split(data_dir) if is_split(data_dir) else None
    if split is not None and dims is not None and tuple(split.dims) != tuple(dims):
        raise ValueError(f"{data_dir}: video/audio widths {split.dims[0]}/{split.dims[1]}, expected {dims[0]}/{dims[1]}")
    items, moments = [], ({} if split is not None else read_moments(data_dir))
    for vid in tqdm(ids, desc=f"loading {data_dir}", unit="id", leave=False):
        if bad_id_reason(vid):
            print(f"{vid}: {bad_id_reason(vid)}", file=sys.stderr)
            continue
        if vid not in table and segments_from == "ranks":
            print(f"{vid}: not in {flow_ranks}, skipped (use --segments_from features to segment it)", file=sys.stderr)
            continue
        if split is not None:
            if vid not in split.index:
                print(f"{vid}: not in the split {data_dir}", file=sys.stderr)
                continue
            video, audio = (split.rows(kind, split.index[vid], max_seconds) for kind in ("video", "audio"))
        else:
            pair = load_pair(data_dir, vid, max_seconds, dims, moments.get(vid))  # prints `id: reason` when bad
            if pair is None:
                continue
            video, audio = pair
        dims = (video.shape[1], audio.shape[1])
        try:
            boundaries, ranks = (table[vid]["segments"], table[vid]["ranks"]) if vid in table else video_segments(video, n_bkps, min_seconds)
            item = make_item(vid, video, audio, boundaries, ranks, max_seq_len, n_bkps, min_seconds)
            items.append(item if split is None else SplitItem(item, split, split.index[vid]))
        except ValueError as error:
            print(f"{vid}: {error}", file=sys.stderr)
    if not items:
        raise ValueError(f"{data_dir}: no usable id out of {len(ids)}")
    return items


@dataclass
class Parts:
    """Parts of several tracks of one modality, padded together, with where each lands on its track's time axis."""
    x: torch.Tensor  # (P, L, D)
    pad: torch.Tensor  # (P, L) True = padding
    owner: torch.Tensor  # (P,) track index
    start: torch.Tensor  # (P,) first second of the part


def cut_parts(sources, parts_of, bucket_positions=4096):
    """sources: list of (T, D) arrays; parts_of: list of (P_i, 2) [start, end) -> list of Parts.

    Parts are sorted by length and grouped so that each group, padded to its own longest part, holds
    about bucket_positions positions: padding stays a small share of the work.
    """
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts_of)])
    parts = np.concatenate(parts_of)
    lengths = parts[:, 1] - parts[:, 0]
    order = np.argsort(-lengths, kind="stable")
    buckets, first = [], 0
    while first < len(order):
        size = max(1, bucket_positions // int(lengths[order[first]]))
        chosen = order[first:first + size]
        first += size
        x = np.zeros((len(chosen), lengths[chosen[0]], sources[0].shape[1]), np.float32)
        pad = np.ones(x.shape[:2], bool)
        for k, j in enumerate(chosen):
            s, e = parts[j]
            x[k, :e - s] = sources[owner[j]][s:e]
            pad[k, :e - s] = False
        buckets.append(Parts(torch.from_numpy(x), torch.from_numpy(pad), torch.from_numpy(owner[chosen]),
                             torch.from_numpy(parts[chosen, 0])))
    return buckets


def encode_timeline(encoder, buckets, n_tracks, length, device="cpu"):
    """Encode every bucket of parts and lay the per-position outputs on the tracks' time axes:
    (n_tracks, length, E), zero where a track has no second."""
    values, targets = [], []
    for parts in buckets:
        out = encoder(parts.x.to(device), parts.pad.to(device)).cpu()
        valid = ~parts.pad
        position = parts.start.unsqueeze(1) + torch.arange(out.shape[1]).unsqueeze(0)
        targets.append((parts.owner.unsqueeze(1) * length + position)[valid])
        values.append(out[valid])
    values = torch.cat(values)
    flat = values.new_zeros(n_tracks * length, values.shape[1]).index_copy(0, torch.cat(targets), values)
    return flat.view(n_tracks, length, values.shape[1])


@dataclass
class Batch:
    video: list  # of Parts
    audio: list
    lengths: torch.Tensor  # (B,) seconds of each item
    top: torch.Tensor  # (B, 2) [start, end) of each item's rank-1 flow segment
    bottom: torch.Tensor  # (B, 2)
    n_segments: torch.Tensor  # (B,)


def collate(items):
    """Video parts and music parts of the items (each padded within its modality)."""
    return Batch(cut_parts([it.video for it in items], [it.video_parts for it in items]),
                 cut_parts([it.audio for it in items], [it.music_parts for it in items]),
                 torch.tensor([it.n_rows if isinstance(it, SplitItem) else len(it.video) for it in items]),  # no second read
                 torch.tensor([it.top for it in items]), torch.tensor([it.bottom for it in items]),
                 torch.tensor([it.n_segments for it in items]))
