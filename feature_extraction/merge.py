"""Rebuild the derived files of a feature folder from the per-video files (atomically).

    python -m feature_extraction.merge OUT

OUT/manifest.json lists, per sub-folder with a _feature.json, its settings and the shape of every
array; OUT/flow/ranks.csv is rebuilt from OUT/flow/<id>.json. Extraction runs this at the end of
every run; after parallel jobs (e.g. a Slurm array) run it once more, since no job edits these
files in place.
"""
import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from feature_extraction.atomic import write_json, write_text

RANKS_HEADER = ["vid", "ranks", "segments", "top_start", "top_end", "bottom_start", "bottom_end"]


def array_shape(path):
    """Shape from the .npy header, without reading the data."""
    return list(np.load(path, mmap_mode="r").shape)


def rebuild_manifest(out):
    """{"folders": {folder: {"feature": _feature.json, "count": n, "arrays": {id: shape}}}}.

    Array keys are paths under the folder without ".npy" (the id, or e.g. "video/<id>" in av_peaks).
    """
    out = Path(out)
    folders = {}
    for meta_path in sorted(out.glob("*/_feature.json")):
        folder = meta_path.parent
        arrays = {}
        for npy in sorted(folder.rglob("*.npy")):
            if not npy.name.startswith("."):
                try:
                    arrays[npy.relative_to(folder).with_suffix("").as_posix()] = array_shape(npy)
                except (OSError, ValueError):
                    continue  # unreadable: left out, and rewritten by the next run that needs it
        folders[folder.name] = {"feature": json.loads(meta_path.read_text(encoding="utf-8")),
                                "count": len(arrays), "arrays": arrays}
    path = out / "manifest.json"
    write_json(path, {"folders": folders})
    return path


def ranks_row(result):
    """One ranks.csv row (dict) from a flow/<id>.json result."""
    seg, ranks = result["segments"], result["ranks"]
    top, bottom = ranks.index(1), ranks.index(max(ranks))
    return {"vid": result["vid"], "ranks": " ".join(map(str, ranks)), "segments": " ".join(map(str, seg)),
            "top_start": seg[top], "top_end": seg[top + 1], "bottom_start": seg[bottom], "bottom_end": seg[bottom + 1]}


def rebuild_ranks_csv(flow_dir):
    """Write flow_dir/ranks.csv from every flow_dir/<id>.json, sorted by id, atomically. Returns its path."""
    flow_dir = Path(flow_dir)
    rows = []
    for path in sorted(flow_dir.glob("*.json")):
        if path.name == "_feature.json":  # the folder's settings; ids may start with "_" too
            continue
        rows.append(ranks_row(json.loads(path.read_text(encoding="utf-8"))))
    rows.sort(key=lambda r: r["vid"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RANKS_HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out = flow_dir / "ranks.csv"
    write_text(out, buf.getvalue())
    return out


def merge(out):
    """Rebuild OUT/manifest.json and, when OUT/flow exists, OUT/flow/ranks.csv."""
    out = Path(out)
    written = [rebuild_manifest(out)]
    if (out / "flow").is_dir():
        written.append(rebuild_ranks_csv(out / "flow"))
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="feature folder (the --out of extract.py)")
    args = p.parse_args(argv)
    if not Path(args.out).is_dir():
        raise SystemExit(f"{args.out}: not a folder")
    for path in merge(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
