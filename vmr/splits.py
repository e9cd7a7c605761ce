"""Memory-mappable splits: every item's per-second rows of one split in two arrays, read one item at a time.

    python -m vmr.splits --data DATA --csv DATA/train.csv --out DATA/train [--dtype float16]

A split folder holds
    video.npy    (R, Dv) float32 or float16: the rows of all items, concatenated in ids.csv order
    audio.npy    (R, Da) the same rows of the music
    offsets.npy  (n + 1,) int64: item i is rows [offsets[i], offsets[i + 1])
    ids.csv      header ID, one id per item
    split.json   dtype, sizes, where the rows came from
    video/_feature.json, audio/_feature.json   the provenance of the feature folders (vmr.runs reads them here)
Item i's rows are exactly what vmr.data.load_pair returns for it from the folder-of-npy layout (rows
[0, min(T_video, T_audio)), bad items left out with `id: reason`), so with float32 a split reads back bit
for bit; float16 halves the disk and page cache at a relative error of about 5e-4.

The folder is written in a temp folder beside OUT and renamed into place when complete: a killed or failed
write leaves no split (or the old one). Readers find the arrays' shape, dtype and data offset with
np.load(mmap_mode="r") and read an item's rows with os.pread into a fresh array: nothing stays mapped, so a
process that streams over 20,000 items keeps the RSS of one item (the rows sit in the page cache, shared
and reclaimable, not in the process). vmr.data.load_sequences and transformer.data.load_items accept a
split folder wherever they take a data folder (detected by its offsets.npy and ids.csv).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

KINDS = ("video", "audio")
DTYPES = ("float32", "float16")
HEADER_BYTES = 128  # fixed .npy header (format 1.0), rewritten with the final shape when the split is complete


def is_split(folder):
    """True for a folder written by write_split (it has offsets.npy and ids.csv)."""
    folder = Path(folder)
    return (folder / "offsets.npy").is_file() and (folder / "ids.csv").is_file()


def _header(dtype, shape):
    d = f"{{'descr': '{np.lib.format.dtype_to_descr(np.dtype(dtype))}', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    body = d.ljust(HEADER_BYTES - 10 - 1) + "\n"
    if len(body) != HEADER_BYTES - 10:
        raise ValueError(f"npy header too long for shape {shape}")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


class _RowWriter:
    """Appends (T, D) blocks to an .npy file whose header is written last (streaming, constant memory)."""

    def __init__(self, path, dtype):
        self.path, self.dtype, self.rows, self.dim = Path(path), np.dtype(dtype), 0, None
        self.f = open(path, "wb")
        self.f.write(_header(self.dtype, (0, 0)))

    def append(self, x):
        if self.dim is None:
            self.dim = x.shape[1]
        elif x.shape[1] != self.dim:
            raise ValueError(f"{self.path.name}: width {x.shape[1]}, earlier items {self.dim}")
        with np.errstate(over="ignore"):
            y = np.ascontiguousarray(x, self.dtype)
        if not np.isfinite(y).all():  # float16 overflows past 65504: refuse rather than store inf
            raise ValueError(f"{self.path.name}: values beyond the range of {self.dtype} (largest {np.abs(x).max():.4g}); use float32")
        self.f.write(y.tobytes())
        self.rows += len(x)

    def close(self):
        self.f.seek(0)
        self.f.write(_header(self.dtype, (self.rows, self.dim or 0)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def write_split(out, items, dtype="float32", provenance=None, source=None):
    """Write a split folder from `items`, an iterable of (id, video (T, Dv), audio (T, Da)) with the same T.

    provenance: {"video": dict or None, "audio": dict or None} (vmr.runs.feature_provenance of the source).
    Everything goes into a temp folder beside OUT, renamed onto OUT when complete; returns the number of items.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        writers = {kind: _RowWriter(tmp / f"{kind}.npy", dtype) for kind in KINDS}
        ids, offsets = [], [0]
        for vid, video, audio in items:
            if len(video) != len(audio) or len(video) == 0:
                raise ValueError(f"{vid}: video has {len(video)} rows and audio {len(audio)}; a split item needs the same T >= 1")
            writers["video"].append(video)
            writers["audio"].append(audio)
            ids.append(vid)
            offsets.append(offsets[-1] + len(video))
        for w in writers.values():
            w.close()
        if not ids:
            raise ValueError(f"{out}: no item to write")
        np.save(tmp / "offsets.npy", np.asarray(offsets, np.int64))
        (tmp / "ids.csv").write_text("ID\n" + "".join(f"{v}\n" for v in ids), encoding="utf-8")
        for kind in KINDS:
            (tmp / kind).mkdir()
            if provenance and provenance.get(kind) is not None:
                (tmp / kind / "_feature.json").write_text(json.dumps(provenance[kind], indent=2, sort_keys=True) + "\n")
        info = {"dtype": dtype, "n_items": len(ids), "rows": offsets[-1], "video_dim": writers["video"].dim,
                "audio_dim": writers["audio"].dim, "source": None if source is None else str(source)}
        (tmp / "split.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(ids)


def items_from_folder(data_dir, ids, max_seconds=None):
    """(id, video, audio) of every good id of a folder-of-npy DATA (vmr.data.load_pair: bad ids print a reason)."""
    from vmr.data import load_pair, read_moments

    dims, moments = None, read_moments(data_dir)
    for vid in ids:
        pair = load_pair(data_dir, vid, max_seconds, dims, moments.get(vid))
        if pair is None:
            continue
        dims = (pair[0].shape[1], pair[1].shape[1])
        yield vid, pair[0], pair[1]


def split_from_folder(data_dir, ids, out, dtype="float32"):
    """Write DATA's `ids` (folder-of-npy layout) as the split folder OUT, with DATA's provenance."""
    from vmr.runs import feature_provenance

    return write_split(out, items_from_folder(data_dir, ids), dtype, feature_provenance(data_dir), source=Path(data_dir).resolve())


def _npy_layout(path):
    """(shape, dtype, byte offset of the data) of an .npy file, read with np.load(mmap_mode="r") and unmapped."""
    m = np.load(path, mmap_mode="r")
    layout = (m.shape, m.dtype, m.offset)
    del m
    return layout


class Split:
    """A split folder opened for reading: ids, offsets, and one item's rows at a time (float32 copies)."""

    def __init__(self, folder):
        from vmr.data import read_ids

        self.folder = Path(folder)
        self.ids = read_ids(self.folder / "ids.csv")
        self.offsets = np.load(self.folder / "offsets.npy")
        if len(self.offsets) != len(self.ids) + 1:
            raise ValueError(f"{self.folder}: offsets.npy has {len(self.offsets)} entries for {len(self.ids)} ids")
        self.index = {vid: i for i, vid in enumerate(self.ids)}
        self.layout = {kind: _npy_layout(self.folder / f"{kind}.npy") for kind in KINDS}
        for kind, (shape, _, _) in self.layout.items():
            if len(shape) != 2 or shape[0] != self.offsets[-1]:
                raise ValueError(f"{self.folder}: {kind}.npy has shape {shape}, offsets end at {self.offsets[-1]}")
        self._fds = {}

    @property
    def dims(self):
        return self.layout["video"][0][1], self.layout["audio"][0][1]

    def length(self, i):
        return int(self.offsets[i + 1] - self.offsets[i])

    def _fd(self, kind):
        fd = self._fds.get((kind, os.getpid()))
        if fd is None:  # one descriptor per process (DataLoader workers fork)
            fd = self._fds[(kind, os.getpid())] = os.open(self.folder / f"{kind}.npy", os.O_RDONLY)
        return fd

    def rows(self, kind, i, stop=None):
        """Item i's rows [0, stop) of `kind` as a new float32 array (os.pread: nothing stays mapped)."""
        (_, dim), dtype, offset = self.layout[kind][0], self.layout[kind][1], self.layout[kind][2]
        first, end = int(self.offsets[i]), int(self.offsets[i + 1])
        if stop is not None:
            end = min(end, first + int(stop))
        size = (end - first) * dim * dtype.itemsize
        buf = bytearray(size)
        view, got, fd = memoryview(buf), 0, self._fd(kind)
        while got < size:
            n = os.preadv(fd, [view[got:]], offset + first * dim * dtype.itemsize + got)
            if n == 0:
                raise OSError(f"{self.folder / (kind + '.npy')}: truncated at item {self.ids[i]}")
            got += n
        x = np.frombuffer(buf, dtype).reshape(end - first, dim)
        return x.astype(np.float32) if dtype != np.float32 else x

    def close(self):
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class LazyRows:
    """A list-like view of some items' rows of one kind in a split: each access reads that item (float32 copy).

    stops: per-item number of rows to read (None: all). Iterating streams over the items; nothing is cached,
    so holding a LazyRows costs its index only.
    """

    def __init__(self, split, kind, indices, stops=None):
        self.split, self.kind, self.indices = split, kind, np.asarray(indices, np.int64)
        self.stops = np.diff(split.offsets)[self.indices] if stops is None else np.asarray(stops, np.int64)

    def __len__(self):
        return len(self.indices)

    def lengths(self):
        return self.stops.copy()

    def __getitem__(self, k):
        if isinstance(k, slice):
            return LazyRows(self.split, self.kind, self.indices[k], self.stops[k])
        return self.split.rows(self.kind, int(self.indices[k]), int(self.stops[k]))

    def __iter__(self):
        for i, stop in zip(self.indices, self.stops):
            yield self.split.rows(self.kind, int(i), int(stop))


def load_split_sequences(folder, ids, max_seconds=None, dims=None):
    """(kept ids, LazyRows video, LazyRows audio) for `ids` in a split; ids not in it print `id: reason`."""
    split = Split(folder)
    if dims is not None and tuple(split.dims) != tuple(dims):
        raise ValueError(f"{folder}: video/audio widths {split.dims[0]}/{split.dims[1]}, expected {dims[0]}/{dims[1]}")
    kept, indices = [], []
    for vid in ids:
        i = split.index.get(vid)
        if i is None:
            print(f"{vid}: not in the split {folder} (left out when it was written, or another split's id)", file=sys.stderr)
            continue
        kept.append(vid)
        indices.append(i)
    stops = np.diff(split.offsets)[np.asarray(indices, np.int64)]
    if max_seconds is not None:
        stops = np.minimum(stops, int(max_seconds))
    return kept, LazyRows(split, "video", indices, stops), LazyRows(split, "audio", indices, stops)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder-of-npy data folder (DATA/video/<id>.npy, DATA/audio/<id>.npy, vmnet/prepare.py)")
    p.add_argument("--csv", required=True, help="CSV of the split's ids (header ID), e.g. DATA/train.csv")
    p.add_argument("--out", required=True, help="split folder to write (replaced atomically when it exists)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="row type on disk (default float32: reads back bit for bit)")
    args = p.parse_args(argv)
    from vmr.data import read_ids

    try:
        n = split_from_folder(args.data, read_ids(args.csv), args.out, args.dtype)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {n} items ({args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
