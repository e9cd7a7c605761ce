"""The data layer both models stand on: DIR/video/<id>.npy (T, Dv), DIR/audio/<id>.npy (T, Da), id lists, groups.

A split folder written by vmr/splits.py (vmnet/prepare.py --split_format mmap) is accepted wherever DIR is.

A CSV has a header `ID` and one id per line; the original project's headerless `<id>.npy`
lines are accepted too. Training reads rows [0, min(T_video, T_audio)) of a pair (both streams start at
t = 0, one row per second); evaluation reads each video and each track whole (load_gallery), as retrieval does. A bad row (missing, empty, NaN or wrong-dimension file, or an id
that is not a plain file name) is reported as `id: reason` on stderr and skipped.
"""
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feature_extraction.base import time_axis_warning


def read_ids(csv_path):
    """Ids listed in a CSV (header `ID`, first column) or a headerless `<id>.npy` list."""
    ids = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or not row[0].strip():
                continue
            value = row[0].strip()
            if i == 0 and value == "ID":
                continue
            ids.append(value[:-4] if value.endswith(".npy") else value)
    return ids


def write_ids(csv_path, ids):
    from feature_extraction.atomic import write_text

    write_text(csv_path, "ID\n" + "".join(f"{vid}\n" for vid in ids))


def bad_id_reason(vid):
    """Why `vid` cannot name a file in a feature folder, or None if it can."""
    if not vid or vid in (".", "..") or "/" in vid or "\\" in vid or "\0" in vid or vid.startswith("."):
        return "not a plain file name"
    return None


def _load_rows(path, dim):
    if not path.is_file():
        return None, f"missing {path}"
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:  # a truncated or foreign file is one bad row, not a crash
        return None, f"unreadable {path} ({type(e).__name__})"
    if x.ndim != 2 or x.shape[0] == 0:
        return None, f"{path.parent.name} array has shape {x.shape}, expected (T, D) with T >= 1"
    if dim is not None and x.shape[1] != dim:
        return None, f"{path.parent.name} dimension {x.shape[1]}, expected {dim}"
    if not np.isfinite(x).all():
        return None, f"{path.parent.name} array contains NaN or inf"
    return x, None


def read_moments(data_dir):
    """{id: (start, end, track)} from DATA/moments.csv (header ID,start,end[,track]: the seconds of its track the
    video shows, and the track, DATA/audio/<track>.npy; track defaults to the id), or {} without the file.
    Seconds may have decimals (MGSV-EC's); rows are aligned from round(start)."""
    path = Path(data_dir) / "moments.csv"
    if not path.is_file():
        return {}
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), 2):
            try:
                start, end = float(row["start"]), float(row["end"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}:{line}: expected columns ID,start,end[,track] with numbers, got {row}") from None
            if not 0 <= start < end:
                raise ValueError(f"{path}:{line}: moment [{start}, {end}) is empty or negative")
            out[row["ID"]] = (start, end, (row.get("track") or "").strip() or row["ID"])
    return out


def read_rows(path, dim):
    """(T, dim) float32 rows of a feature file; ValueError naming what it holds instead (NaN or inf included)."""
    x = np.load(path, allow_pickle=False)
    if x.ndim != 2 or x.shape[1] != dim or len(x) == 0:
        raise ValueError(f"expected ({'T'}, {dim}) features, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{int(x.size - np.isfinite(x).sum())} values are NaN or inf")
    return x.astype(np.float32)


def load_pair(data_dir, vid, max_seconds=None, dims=None, moment=None):
    """(video (T, Dv), audio (T, Da)) float32, paired second by second: rows [0, min(Tv, Ta[, max_seconds])) of
    DATA/video/<id>.npy and DATA/audio/<id>.npy, or with a moment (start, end, track) (read_moments) the
    video's rows against the track's rows from round(start) on, as long as both last.

    dims = (Dv, Da) to enforce. A bad row prints `vid: reason` to stderr and returns None.
    """
    reason = bad_id_reason(vid) or (bad_id_reason(moment[2]) if moment else None)
    arrays = []
    if reason is None:
        for kind, name, dim in zip(("video", "audio"), (vid, moment[2] if moment else vid), dims or (None, None)):
            x, reason = _load_rows(Path(data_dir) / kind / f"{name}.npy", dim)
            if reason:
                break
            arrays.append(x)
    if reason is None and moment:
        start = int(round(moment[0]))
        if start >= len(arrays[1]):
            reason = f"moment starts at {start} s, after the end of track {moment[2]} ({len(arrays[1])} s)"
        arrays[1] = arrays[1][start:start + max(1, int(round(moment[1])) - start)]
    if reason:
        from tqdm import tqdm

        tqdm.write(f"{vid}: {reason}", file=sys.stderr)  # keeps the line clear of a running progress bar
        return None
    t = min(len(arrays[0]), len(arrays[1]))
    warning = time_axis_warning(vid, len(arrays[0]), len(arrays[1]))
    if warning:
        from tqdm import tqdm

        tqdm.write(warning, file=sys.stderr)
    if max_seconds is not None:
        t = min(t, int(max_seconds))
    return arrays[0][:t].astype(np.float32), arrays[1][:t].astype(np.float32)


def load_sequences(data_dir, ids, max_seconds=None, dims=None, desc="loading"):
    """Per-second rows of every good id: (ids, list of video (T, Dv), list of audio (T, Da)) float32.

    DATA_DIR may also be a split folder (vmr/splits.py): the lists are then vmr.splits.LazyRows, which read
    an item's rows when it is indexed or iterated over and keep nothing.

    Widths are enforced: `dims` = (Dv, Da), or the first good pair's. Bad ids print `id: reason` and are
    skipped; raises ValueError when nothing is left.
    """
    from tqdm import tqdm

    from vmr.splits import is_split, load_split_sequences

    if is_split(data_dir):  # a split folder (vmr/splits.py): lazy per-item views, read on access
        kept, video, audio = load_split_sequences(data_dir, ids, max_seconds, dims)
        if not kept:
            raise ValueError(f"{data_dir}: no usable id out of {len(ids)}")
        if len(kept) < len(ids):
            print(f"{data_dir}: {len(ids) - len(kept)} of {len(ids)} ids skipped", file=sys.stderr)
        return kept, video, audio
    kept, video, audio = [], [], []
    moments = read_moments(data_dir)
    for vid in tqdm(ids, desc=desc, unit="id", leave=False):
        pair = load_pair(data_dir, vid, max_seconds, dims, moments.get(vid))
        if pair is None:
            continue
        dims = dims or (pair[0].shape[1], pair[1].shape[1])
        kept.append(vid)
        video.append(pair[0])
        audio.append(pair[1])
    if not kept:
        raise ValueError(f"{data_dir}: no usable id out of {len(ids)}")
    if len(kept) < len(ids):
        print(f"{data_dir}: {len(ids) - len(kept)} of {len(ids)} ids skipped", file=sys.stderr)
    return kept, video, audio


def check_overlap(train_ids, test_ids):
    """Raise ValueError naming the ids that are in both the train and the test list."""
    both = sorted(set(train_ids) & set(test_ids))
    if both:
        shown = ", ".join(both[:20]) + (" ..." if len(both) > 20 else "")
        raise ValueError(f"{len(both)} ids are in both the train and the test CSV: {shown}")


def read_groups(csv_path):
    """{id: group} from a CSV with columns ID,group (ids sharing a track share a group)."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        return {row["ID"]: row["group"] for row in csv.DictReader(f)}


def feature_names(data_dir):
    """{"video", "audio"} names from DATA/features.json (vmnet/prepare.py), else the folders' _feature.json."""
    info = Path(data_dir) / "features.json"
    if info.is_file():
        meta = json.loads(info.read_text())
        return {"video": meta.get("video"), "audio": meta.get("audio")}
    out = {}
    for kind in ("video", "audio"):
        prov = Path(data_dir) / kind / "_feature.json"
        out[kind] = json.loads(prov.read_text()).get("model") if prov.is_file() else None
    return out


def check_dims(data_dir, ids, dims):
    """Raise ValueError when the first readable id of `ids` in DATA_DIR has other widths than dims = (Dv, Da)."""
    from vmr.splits import Split, is_split

    if is_split(data_dir):
        found = Split(data_dir).dims
        if tuple(found) != tuple(dims):
            raise ValueError(f"{data_dir}: video/audio widths {found[0]}/{found[1]}, the training data {dims[0]}/{dims[1]}")
        return
    for vid in ids:
        paths = [Path(data_dir) / kind / f"{vid}.npy" for kind in ("video", "audio")]
        if bad_id_reason(vid) or not all(p.is_file() for p in paths):
            continue
        found = tuple(np.load(p, mmap_mode="r").shape[-1] for p in paths)
        if found != tuple(dims):
            raise ValueError(f"{data_dir}: {vid} has video/audio widths {found[0]}/{found[1]}, "
                             f"the training data {dims[0]}/{dims[1]}")
        return


@dataclass
class Gallery:
    """A test split as evaluation reads it: its query videos, and its library of unique whole tracks."""
    ids: list  # query video ids
    videos: list  # whole video rows of each query
    tracks: list  # the library: unique track ids, sorted (retrieve.py's library order)
    track_rows: object  # whole rows of each track: a list, or a split folder's lazy rows
    gt: np.ndarray  # (n,) index into tracks of each query's track
    moments: np.ndarray  # (n, 2) seconds of its track each query shows ([0, min(T_video, T_track)) without moments.csv)


def paired_gallery(videos, tracks):
    """A Gallery of paired items: video i's track is track i, its moment the first seconds they share."""
    return Gallery(list(range(len(videos))), videos, list(range(len(tracks))), tracks, np.arange(len(videos)),
                   np.array([[0.0, min(len(v), len(t))] for v, t in zip(videos, tracks)]))


def load_gallery(data_dir, ids, dims=None, desc="test features"):
    """The Gallery of `ids`: every good id's whole video rows, and the unique tracks they show (DATA/moments.csv's
    track column, else the id's own DATA/audio/<id>.npy), each whole, as retrieval reads a video and a library.
    A split folder (vmr/splits.py) gives its stored, paired rows, lazily. Bad ids print `id: reason`; ValueError
    when none is left."""
    from tqdm import tqdm

    from vmr.splits import LazyRows, is_split, load_split_sequences

    if is_split(data_dir):
        kept, video, audio = load_split_sequences(data_dir, ids, None, dims)
        order = np.argsort(np.array(kept, dtype=object), kind="stable")
        tracks = [kept[i] for i in order]
        track_rows = LazyRows(audio.split, "audio", audio.indices[order], audio.stops[order])
        moments = np.stack([np.zeros(len(kept)), video.lengths()], axis=1)  # paired rows: the same length
        return Gallery(kept, video, tracks, track_rows, np.argsort(order), moments)
    moments_csv = read_moments(data_dir)
    kept, video, moments, rows = [], [], [], {}
    for vid in tqdm(ids, desc=desc, unit="id", leave=False):
        start, end, track = moments_csv.get(vid, (None, None, vid))
        reason = bad_id_reason(vid) or bad_id_reason(track)
        x, reason = (None, reason) if reason else _load_rows(Path(data_dir) / "video" / f"{vid}.npy", dims and dims[0])
        if reason is None and track not in rows:
            rows[track], reason = _load_rows(Path(data_dir) / "audio" / f"{track}.npy", dims and dims[1])
            if reason:
                del rows[track]
        if reason:
            tqdm.write(f"{vid}: {reason}", file=sys.stderr)
            continue
        dims = dims or (x.shape[1], rows[track].shape[1])
        kept.append(vid)
        video.append(x.astype(np.float32))
        moments.append((start, end, track) if start is not None else (0.0, float(min(len(x), len(rows[track]))), track))
    if not kept:
        raise ValueError(f"{data_dir}: no usable id out of {len(ids)}")
    if len(kept) < len(ids):
        print(f"{data_dir}: {len(ids) - len(kept)} of {len(ids)} ids skipped", file=sys.stderr)
    tracks = sorted({m[2] for m in moments})
    index = {t: i for i, t in enumerate(tracks)}
    return Gallery(kept, video, tracks, [rows[t].astype(np.float32) for t in tracks],
                   np.array([index[m[2]] for m in moments]), np.array([m[:2] for m in moments], np.float64))


def data_groups(data_dir):
    """{id: group} from DATA/groups.csv (vmnet/prepare.py: ids sharing a track), or None when there is none."""
    path = Path(data_dir) / "groups.csv"
    return read_groups(path) if path.is_file() else None
