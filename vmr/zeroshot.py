"""Zero-shot retrieval with Wav2CLIP: the shared space, and its scorer (vmr.scorer), used by zeroshot/retrieve.py,
zeroshot/evaluate.py and the zero-shot row of every model's evaluation.

Wav2CLIP's audio_transform output was trained (clip_loss_x) against the mean CLIP image embedding of
a clip's frames, so a video is represented the same way: the mean of its `clip` (or `clip_l2`) rows,
each made unit length first so that both folders give the same vector. A track is its whole-track
Wav2CLIP embedding (`wav2clip_track/<id>.npy`, what the published model computes for one clip), or,
with music="rows", the mean of its unit per-second rows. Scores are cosines.

The scorer ranks by that cosine, and keeps each library second for the best library second of each query second.
"""
from pathlib import Path

import numpy as np

from vmr.data import read_rows
from vmr.metrics import normalize_rows
from vmr.moments import window_means
from vmr.scorer import Scorer

DIM = 512
ROWS, TRACK = "wav2clip", "wav2clip_track"  # feature folders written by the wav2clip token
MUSIC = ("track", "rows")


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
    track = read_rows(path, DIM)
    if len(track) != 1:
        raise ValueError(f"{path}: expected one (1, {DIM}) whole-track row, got shape {track.shape}")
    return normalize_rows(track)[0]



class ZeroShotScorer(Scorer):
    kind, name, scoring = "zeroshot", "Wav2CLIP zero-shot", "pooled"
    video_features, audio_feature, video_dim, audio_dim = ("clip",), ROWS, DIM, DIM

    def __init__(self, music="track"):
        self.music = music

    def record(self):
        return {**super().record(), "music": self.music}

    def embed_tracks(self, rows, paths=None):
        """paths: each track's wav2clip rows file (its whole-track embedding is found beside it)."""
        rows = [np.asarray(r, np.float32) for r in rows]
        vectors = [music_vector(None if paths is None else paths[i], r, self.music) for i, r in enumerate(rows)]
        return {"pooled": np.stack(vectors).astype(np.float32),
                "seg_track": np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)]).astype(np.int32),
                "seg_start": np.concatenate([np.arange(len(r)) for r in rows]).astype(np.int32),
                "seg_end": np.concatenate([np.arange(1, len(r) + 1) for r in rows]).astype(np.int32),
                "seg_emb": normalize_rows(np.concatenate(rows))}

    def window_vectors(self, library, j, length):
        """Means of the track's unit per-second rows over every window of `length` seconds."""
        first, last = np.searchsorted(library["seg_track"], [j, j + 1])
        return window_means(library["seg_emb"][first:last], length)

    def embed_queries(self, rows, boundaries=None):
        rows = [np.asarray(r, np.float32) for r in rows]
        return {"pooled": np.stack([mean_direction(r) for r in rows]), "unit": [normalize_rows(r) for r in rows]}

    def segment_matches(self, queries, library, i, ids, index=None, chunk=64):
        """For each second of query i, the library second whose Wav2CLIP row has the highest cosine with its CLIP row."""
        unit, out = queries["unit"][i], []
        for start in range(0, len(unit), chunk):  # (chunk, M) cosines at a time: memory stays bounded
            cosines = unit[start:start + chunk] @ library["seg_emb"].T
            for t, j in enumerate(cosines.argmax(axis=1), start):
                out.append({"start": t, "end": t + 1, "track": ids[library["seg_track"][j]],
                            "track_start": int(library["seg_start"][j]), "track_end": int(library["seg_end"][j]),
                            "score": float(cosines[t - start, j])})
        return out
