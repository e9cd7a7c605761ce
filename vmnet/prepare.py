"""Arrange extracted features into a VM-NET data folder with a seeded train/test split.

    python vmnet/prepare.py --features features --video clip --audio vggish --out data/clip_vggish

DATA/video/<id>.npy and DATA/audio/<id>.npy are symlinks (absolute paths) into the feature
folders; `--video clip,resnet101` concatenates folders row-wise (rows [0, min T)) into real
files instead. ids = the sorted intersection of the folders. Writes DATA/train.csv and
DATA/test.csv (header ID), DATA/features.json, a copy of each folder's _feature.json
(DATA/video/_feature.json, DATA/audio/_feature.json), and DATA/groups.csv listing duplicate
tracks (identical audio features, the same URL under two ids with --status, and the groups of
--groups FILE). The split keeps every group on one side (no track both trained on and tested).

--split_format mmap also writes each split once as a memory-mappable split folder (vmr/splits.py):
DATA/train/ and DATA/test/ with video.npy and audio.npy (the rows of all items concatenated, --dtype
float32 or float16), offsets.npy, ids.csv, split.json and the two _feature.json provenance records, each
folder written beside its place and renamed in when complete. Pass DATA/train (DATA/test) as the data
folder to the train, test and retrieve scripts: they read one item at a time (peak memory flat in the
number of items). The folder-of-npy layout is written either way and stays accepted.
"""
import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from feature_extraction.atomic import atomic_path, save_npy, write_json, write_text
from vmr.data import bad_id_reason, check_overlap, read_groups, read_ids, write_ids


def feature_ids(folder):
    return {p.stem for p in Path(folder).glob("*.npy")}


def link(target, path):
    """Point `path` at `target` (absolute), replacing an existing file or link atomically."""
    tmp = path.with_name(f".{path.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(Path(target).resolve(), tmp)
    os.replace(tmp, path)


def fuse(folders, vid):
    """Row-wise concatenation of one id's arrays from several folders (rows [0, min T))."""
    arrays = [np.load(Path(f) / f"{vid}.npy", allow_pickle=False) for f in folders]
    for f, x in zip(folders, arrays):
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"{Path(f).name} array has shape {x.shape}")
    t = min(len(x) for x in arrays)
    return np.concatenate([x[:t].astype(np.float32) for x in arrays], axis=1)


def split_ids(ids, test_fraction, seed, groups=None):
    """Seeded split with numpy's default_rng permutation -> (train, test), both sorted.

    The test split takes the ids in the permutation's order, each with its whole group (`groups`:
    {id: group}; an id not in it is alone), while it has room for round(test_fraction * len(ids)) ids;
    then one more group if that brings its size closer to that number. Without groups this is the
    permutation's first round(test_fraction * len(ids)) ids.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"--test_fraction must be in [0, 1], got {test_fraction}")
    n_test = int(round(test_fraction * len(ids)))
    order = np.random.default_rng(seed).permutation(len(ids))
    groups = groups or {}
    members = {}  # unit (a group, or an id alone) -> its ids, in the permutation's order of their first id
    for i in order:
        vid = ids[i]
        members.setdefault(("group", groups[vid]) if vid in groups else ("id", vid), []).append(vid)
    test, left = [], []
    for unit in members.values():
        if len(test) + len(unit) <= n_test:
            test += unit
        else:
            left.append(unit)
    gap = n_test - len(test)
    smallest = min(left, key=len, default=[])
    if gap and len(smallest) < 2 * gap:  # overshooting by len - gap is closer than falling short by gap
        test += smallest
    return sorted(set(ids) - set(test)), sorted(test)


def duplicate_groups(audio_dir, ids, status_csv=None, groups_csv=None):
    """{id: group} for ids whose audio features are identical, whose URL repeats (status_csv) or that share a
    group in groups_csv (columns ID,group); groups of >= 2 of `ids`, named by their smallest id."""
    buckets, wanted = {}, set(ids)
    for vid in ids:
        x = np.load(Path(audio_dir) / f"{vid}.npy", allow_pickle=False)
        buckets.setdefault(("audio", hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()), []).append(vid)
    if status_csv:
        with open(status_csv, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("id") in wanted and row.get("url"):
                    buckets.setdefault(("url", row["url"].strip()), []).append(row["id"])
    if groups_csv:
        try:
            listed = read_groups(groups_csv)
        except KeyError as e:
            raise ValueError(f"{groups_csv}: no column {e} (a groups file has the columns ID,group)") from None
        for vid, group in listed.items():
            if vid in wanted:
                buckets.setdefault(("file", group), []).append(vid)
    # union of overlapping buckets: the group name is the smallest id
    parent = {}

    def find(v):
        while parent.get(v, v) != v:
            v = parent[v]
        return v

    for members in buckets.values():
        for other in members[1:]:
            a, b = sorted((find(members[0]), find(other)))
            if a != b:
                parent[b] = a
    return {v: find(v) for v in parent.keys() | set(parent.values())}


def copy_provenance(folders, dest):
    """DATA/<kind>/_feature.json: the folder's own file, or {"fusion": [...], "parts": {...}}."""
    files = [Path(f) / "_feature.json" for f in folders]
    if len(folders) == 1:
        if files[0].is_file():
            with atomic_path(dest) as tmp:
                shutil.copyfile(files[0], tmp)
        return
    parts = {Path(f).name: (json.loads(p.read_text()) if p.is_file() else None) for f, p in zip(folders, files)}
    write_json(dest, {"fusion": [Path(f).name for f in folders], "parts": parts})


def prepare(args):
    """Build the data folder; returns the number of ids that failed."""
    features = Path(args.features)
    video_names = [v for v in args.video.split(",") if v]
    video_dirs = [features / v for v in video_names]
    audio_dir = features / args.audio
    for folder in video_dirs + [audio_dir]:
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such feature folder")
    if args.groups and not Path(args.groups).is_file():
        raise ValueError(f"{args.groups}: no such groups file")
    ids = set(feature_ids(audio_dir))
    for folder in video_dirs:
        ids &= feature_ids(folder)
    ids = sorted(ids)

    out = Path(args.out)
    (out / "video").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    good, failed = [], 0
    for vid in tqdm(ids, desc="linking", unit="id"):
        reason = bad_id_reason(vid)
        try:
            if reason is None:
                if len(video_dirs) == 1:
                    link(video_dirs[0] / f"{vid}.npy", out / "video" / f"{vid}.npy")
                else:
                    save_npy(out / "video" / f"{vid}.npy", fuse(video_dirs, vid))
                link(audio_dir / f"{vid}.npy", out / "audio" / f"{vid}.npy")
        except (OSError, ValueError) as e:
            reason = str(e)
        if reason:
            print(f"{vid}: {reason}", file=sys.stderr)
            failed += 1
        else:
            good.append(vid)
    if not good:
        raise ValueError(f"no id is present in all of {', '.join(str(f) for f in video_dirs + [audio_dir])}")

    groups = duplicate_groups(audio_dir, good, args.status, args.groups)
    if args.split_from:
        train = [v for v in read_ids(args.split_from[0]) if v in set(good)]
        test = [v for v in read_ids(args.split_from[1]) if v in set(good)]
        check_overlap(train, test)
        print(f"split from {args.split_from[0]} / {args.split_from[1]}: {len(train)} train, {len(test)} test of {len(good)} ids")
    else:
        train, test = split_ids(good, args.test_fraction, args.seed, groups)
    write_ids(out / "train.csv", train)
    write_ids(out / "test.csv", test)
    copy_provenance(video_dirs, out / "video" / "_feature.json")
    copy_provenance([audio_dir], out / "audio" / "_feature.json")

    write_text(out / "groups.csv", "ID,group\n" + "".join(f"{v},{g}\n" for v, g in sorted(groups.items())))
    n_groups = len(set(groups.values()))
    if groups:
        print(f"{len(groups)} ids share a track with another id ({n_groups} groups), listed in {out / 'groups.csv'}; "
              f"evaluate with --groups {out / 'groups.csv'}")
        test_set = set(test)
        split_groups = sorted({g for v, g in groups.items() if v in test_set} & {g for v, g in groups.items() if v not in test_set})
        if split_groups:
            print(f"warning: {len(split_groups)} duplicate groups have ids in both train and test (e.g. {split_groups[0]})", file=sys.stderr)
    if args.split_format == "mmap":
        from vmr.splits import split_from_folder

        for name, members in (("train", train), ("test", test)):
            if members:
                n = split_from_folder(out, members, out / name, args.dtype)
                print(f"{out / name}: split folder of {n} items ({args.dtype})")
    write_json(out / "features.json", {
        "video": "+".join(video_names), "audio": args.audio, "features_dir": str(features.resolve()), "seed": args.seed,
        "test_fraction": None if args.split_from else args.test_fraction,
        "split_from": [str(p) for p in args.split_from] if args.split_from else None,
        "groups": str(args.groups) if args.groups else None,
        "n_train": len(train), "n_test": len(test), "duplicate_groups": n_groups,
        "split_format": args.split_format, "dtype": args.dtype if args.split_format == "mmap" else None,
    })
    print(f"{out}: {len(train)} train, {len(test)} test ids")
    return failed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", default="features", help="extraction output folder (OUT of extract.py)")
    p.add_argument("--video", default="clip", help="video feature folder(s) in FEATURES; comma-separated folders are concatenated row-wise")
    p.add_argument("--audio", default="vggish", help="audio feature folder in FEATURES")
    p.add_argument("--out", default="data/vmnet", help="data folder to write")
    p.add_argument("--test_fraction", type=float, default=0.1,
                   help="fraction of ids in the test split; 1.0 = all-test (e.g. SymMV). The ids of a group (DATA/groups.csv: "
                        "duplicate tracks, --status URLs, --groups) all go to one side, so the test split is as close to "
                        "this fraction as whole groups allow (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of numpy's default_rng permutation for the split")
    p.add_argument("--split_from", nargs=2, metavar=("TRAIN", "TEST"), help="reuse existing id lists instead of a new split")
    p.add_argument("--status", help="downloader status.csv (columns id,url): ids with the same URL are duplicates (one group)")
    p.add_argument("--groups", help="CSV with columns ID,group (e.g. another data folder's groups.csv, or ids known to "
                   "share a track): each group is kept on one side of the split and added to DATA/groups.csv (default: "
                   "only the duplicates found here)")
    p.add_argument("--split_format", choices=("files", "mmap"), default="files",
                   help="files (default): DATA/video/<id>.npy and DATA/audio/<id>.npy only; mmap: also DATA/train/ and "
                        "DATA/test/ split folders, each split's rows in one memory-mappable array per kind (vmr/splits.py)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="row type of the split folders with --split_format mmap (default float32: bit for bit the "
                        "folder-of-npy rows; float16: half the disk, relative error about 5e-4)")
    args = p.parse_args(argv)
    try:
        failed = prepare(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if failed:
        print(f"{failed} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
