"""The shared space of zero-shot retrieval, and how a video and a track become one vector in it.

Wav2CLIP's audio_transform output was trained (clip_loss_x) against the mean CLIP image embedding of
a clip's frames, so a video is represented the same way: the mean of its `clip` (or `clip_l2`) rows,
each made unit length first so that both folders give the same vector. A track is its whole-track
Wav2CLIP embedding (`wav2clip_track/<id>.npy`, what the published model computes for one clip), or,
with music="rows", the mean of its unit per-second rows. Scores are cosines.
"""
from pathlib import Path

import numpy as np

from vmr.metrics import normalize_rows

DIM = 512
ROWS, TRACK = "wav2clip", "wav2clip_track"  # feature folders written by the wav2clip token
MUSIC = ("track", "rows")


def load_rows(path, dim=DIM):
    """(T, dim) float32 feature rows, or ValueError saying what the file holds instead."""
    x = np.load(path, allow_pickle=False)
    if x.ndim != 2 or x.shape[1] != dim or len(x) == 0 or not np.isfinite(x).all():
        raise ValueError(f"expected finite (T, {dim}) features, got shape {x.shape}")
    return x.astype(np.float32)


def track_file(rows_path):
    """wav2clip_track/<id>.npy beside the folder holding `rows_path` (symlinks followed, as vmnet/prepare.py makes them)."""
    rows_path = Path(rows_path)
    return rows_path.resolve().parent.with_name(TRACK) / rows_path.name


def mean_direction(rows):
    """(T, D) -> (D,) unit vector: the mean of the unit rows."""
    return normalize_rows(normalize_rows(rows).mean(axis=0, keepdims=True))[0]


def music_vector(rows_path, rows, music="track"):
    """A track's vector: its whole-track embedding (music="track") or the mean of its unit rows ("rows")."""
    if music == "rows":
        return mean_direction(rows)
    if music != "track":
        raise ValueError(f"music must be one of {MUSIC}, got {music!r}")
    path = track_file(rows_path)
    if not path.is_file():
        raise ValueError(f"no whole-track embedding {path} (extract with --features wav2clip, or use the mean of the "
                         "rows: --music rows)")
    track = load_rows(path)
    if len(track) != 1:
        raise ValueError(f"{path}: expected one (1, {DIM}) whole-track row, got shape {track.shape}")
    return normalize_rows(track)[0]
