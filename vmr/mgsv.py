"""MGSV-EC (Music Grounding by Short Video, ICCV 2025): fetch the public release, convert it to a data folder, train
and test both models on it, and write the report beside the published results.

    python -m vmr.mgsv --out mgsv [--source URL|FOLDER] [--epochs N] [--device cuda] [--convert_only]

Train and test. After the conversion, VM-NET (vmnet/train.py) and the segment Transformer (transformer/train.py,
video segments cut where the CLIP rows change: the release has no optical flow) train on the train split and
choose everything on the published val split (--val_csv_path), then test.py ranks the test split's 2,000 query
videos against its unique whole tracks, with moment search, the tuned baselines and chance, under MGSV-EC's
metrics (vmr.moments; R@K over unique tracks, mIoU on the true track, MoR@K at IoU > 0.7). Each command is printed
before it runs; a rerun resumes the trainings (--resume) and tests again. OUT/report.html shows both models, their
baselines and chance beside every published row (OUT/published.json, with its source).

Fetch. The annotation CSVs `dataset/MGSV-EC/{train,val,test}_data.csv` and the feature archive
`MGSV_feature.zip` are downloaded from --source (default: the HF dataset xxayt/MGSV-EC; the paths are taken
from its dataset card and the code repository's README) into $VMR_CACHE/mgsv (default ~/.cache/vmr/mgsv) with
feature_extraction.weights.download (resumable, atomic rename). No official sha256 is published, so the first
download records each file's size and sha256 in CACHE/manifest.json and every later run checks them: a changed
file is an error naming it and both hashes. The archive is read in place (never unpacked). A local FOLDER laid
out as the release unpacks (the three CSVs anywhere below it, and the folders vit_feature1/ and ast_feature2p5/
with their vit_feature, vit_mask, ast_feature, ast_mask sub-folders of .pt files; or the zip itself) is read by
the same code. The feature folders are found by searching, never by assuming the archive's root folder name.

Convert. OUT/data is a data folder as the models read it:
    video/<video_id>.npy   (T, 512) CLIP ViT-B/32 rows at 1 fps; row i = second floor(video_start) + i of the
                           source video. Only the rows whose mask is 1: the release pads every clip to 50 rows
                           with embeddings of black frames (not zeros), and those pad rows are dropped.
    audio/<music_id>.npy   (T, 768) AST rows of the whole track, one per second (see "Audio axis"), `+` kept.
    train.csv, val.csv, test.csv   header ID: the video ids of each split (strings, as in the CSVs)
    moments.csv            header ID,start,end,track: the ground-truth moment (music_start, music_end, seconds
                           on the track, verbatim from the CSV) and the track id of every converted video
                           (a run with fewer --splits into the same OUT keeps the other splits' rows)
    video/_feature.json, audio/_feature.json   where the rows come from and how they were converted
and OUT/LICENSE-DATA.txt holds the data's licence notice (also printed by every run).

Audio axis. The release's AST rows are 10 s windows centred every 2.5 s (window j at 2.5 j s, masked beyond the
track's end); both models pair per-second rows of video and music, and moments are given in seconds. So the
rows are mapped onto the per-second axis: audio row t (second [t, t+1), as everywhere in the toolkit) is the
linear interpolation of the unmasked windows at the second's centre t + 0.5 s (held at the first and last
window's value outside their centres), for t < floor(min(music_total_duration, 240)). Keeping the 2.5 s rate
instead would need a rows-per-second factor in every model, moment search and metric; interpolation adds no
information (the windows are 10 s wide, so neighbouring seconds were already close) but costs nothing downstream.

Bad input is reported as `<file>: reason`, counted and skipped (a missing or unreadable .pt file, a wrong
shape, a bad CSV row); the run goes on and exits 1 with `N failed`. Departures from the release's own rules
(mask sums against the CSV's durations, masks that are not a prefix) are reported as `warning: <file>: ...`
and the file is converted anyway. Every file is written atomically and a rerun skips finished files.
"""
import argparse
import csv
import io
import json
import math
import os
import sys
import time
import zipfile
from collections import namedtuple
from functools import partial
from pathlib import Path

import numpy as np
from filelock import FileLock
from tqdm import tqdm

from feature_extraction.atomic import save_npy, write_json, write_text
from feature_extraction.cli import HelpFormatter
from feature_extraction.weights import WeightsError, cache_dir, download, file_hashes
from vmr.data import bad_id_reason, read_ids, write_ids

HF_BASE = "https://huggingface.co/datasets/xxayt/MGSV-EC/resolve/main"
SPLITS = ("train", "val", "test")
ARCHIVE = "MGSV_feature.zip"
DEFAULT_OUT = "mgsv"

# The annotation columns of the release (all 16), and those the conversion needs.
COLUMNS = ("video_id", "music_id", "video_start", "video_end", "music_start", "music_end", "music_total_duration",
           "video_segment_duration", "music_segment_duration", "music_path", "video_total_duration", "video_width",
           "video_height", "video_total_frames", "video_frame_rate", "video_category")
REQUIRED = COLUMNS[:7]

# Release sub-folder -> the feature folder it lives in, and the shapes the release's code writes.
FEATURE_DIRS = {"vit_feature": "vit_feature1", "vit_mask": "vit_feature1",
                "ast_feature": "ast_feature2p5", "ast_mask": "ast_feature2p5"}
VIDEO_ROWS, VIDEO_DIM = 50, 512  # max_v_frames 50 (scripts/*.sh), CLIP ViT-B/32
AUDIO_ROWS, AUDIO_DIM = 96, 768  # windows every 2.5 s over 240 s, AST
AUDIO_HOP, MAX_TRACK_SECONDS = 2.5, 240.0

LICENCE = """\
MGSV-EC data licence notice (vmr.mgsv)

The MGSV-EC annotations and features (Xin et al., "Music Grounding by Short Video", ICCV 2025; HF dataset
xxayt/MGSV-EC, code github.com/xxayt/MGSV) are NOT part of VMR and are never committed or shipped with it.
They were downloaded by you from the authors' host. The sources disagree on their licence:
  - the code repository's README (HEAD 8a1462b) says CC BY-NC-ND 4.0, "see DATA-LICENSE", but that DATA-LICENSE
    file holds the text of CC BY-ND 4.0;
  - an earlier README (commit 691b9b4) said CC BY-NC 4.0, for non-commercial academic research and
    educational purposes only;
  - the HF dataset card (xxayt/MGSV-EC) says cc-by-nc-4.0 (the feature archive has no licence of its own);
  - the raw media (HF xxayt/MGSV-EC-Raw, gated, not used here) are cc-by-nc-nd-4.0.
Every version asks you to contact the authors for commercial use. Read them in the strictest way:
non-commercial research only, no redistribution of the annotations, the features or anything converted from
them (this folder included). The MGSV code is MIT (c) 2025 Zijie Xin.
"""

PublishedRow = namedtuple("PublishedRow", "model params_m miou r1 r5 r10 mor1 mor10 mor100")
PUBLISHED_SOURCE = ("Xin et al., Music Grounding by Short Video, ICCV 2025 (arXiv 2408.16990): results table on the "
                    "project page, image static/images/Overall results.png, github.com/RUCMM/MGSV at 9072396")
PUBLISHED_PROTOCOL = ("test split, 2,000 queries against the split's 2,000 unique tracks, ranks de-duplicated by "
                      "track; R@k and MoR@k in %, SmG mIoU a fraction (moment on the ground-truth track); MoR@k = "
                      "ground-truth track within the top k and IoU > 0.7 (threshold inferred from the official "
                      "code, github.com/xxayt/MGSV 8a1462b, not read in the paper); #params in millions, frozen "
                      "encoders excluded; None = not applicable")
# Section 5 of the MGSV-EC reference: every row of the published table, MaDe (the authors' model) last.
PUBLISHED = (
    PublishedRow("TR-DETR (AAAI'24)", 7.8, 0.393, None, None, None, None, None, None),
    PublishedRow("QD-DETR (CVPR'23)", 6.9, 0.423, None, None, None, None, None, None),
    PublishedRow("EaTR (ICCV'23)", 8.5, 0.588, None, None, None, None, None, None),
    PublishedRow("Moment-DETR (NeurIPS'21)", 4.3, 0.630, None, None, None, None, None, None),
    PublishedRow("TR-DETR+", 6.2, 0.630, None, None, None, None, None, None),
    PublishedRow("QD-DETR+", 5.4, 0.634, None, None, None, None, None, None),
    PublishedRow("UVCOM (CVPR'24)", 14.5, 0.652, None, None, None, None, None, None),
    PublishedRow("UVCOM+", 12.9, 0.661, None, None, None, None, None, None),
    PublishedRow("MVPt (CVPR'22)", 3.6, None, 2.4, 6.8, 9.4, None, None, None),
    PublishedRow("MVPt+", 3.6, None, 6.7, 11.9, 14.9, None, None, None),
    PublishedRow("MVPt+ / UVCOM+", 16.5, 0.661, 6.7, 11.9, 14.9, 5.4, 11.8, 23.0),
    PublishedRow("CONQUER (MM'21)", 39.4, 0.572, 5.8, 11.0, 13.5, 4.4, 9.6, 18.4),
    PublishedRow("MaDe", 10.5, 0.722, 8.8, 16.3, 19.8, 8.3, 17.6, 30.7),
)
MADE = PUBLISHED[-1]


class MgsvError(Exception):
    """A source that cannot be had or read (one-line message); the run stops."""


# Times in seconds as floats, except the moment: music_start and music_end are kept as written (checked to be numbers).
Row = namedtuple("Row", "video_id music_id video_start video_end music_start music_end duration")


# ---- fetch -------------------------------------------------------------------------------------------------

def release_paths(splits):
    """{cache file name: path inside the release} of the files a run needs: the split CSVs and the archive.

    The one place that names the release's files (HF card `data_files` and the repo README)."""
    return {**{f"{s}_data.csv": f"dataset/MGSV-EC/{s}_data.csv" for s in splits}, ARCHIVE: ARCHIVE}


def is_url(source):
    return str(source).startswith(("http://", "https://"))


def fetch(base, name, relpath, cache):
    """CACHE/<name>, downloaded from BASE/<relpath> when missing, checked against the manifest (size, sha256)
    recorded when it was first fetched; returns its path."""
    cache.mkdir(parents=True, exist_ok=True)
    dest, manifest_path = cache / name, cache / "manifest.json"
    url = f"{base.rstrip('/')}/{relpath}"
    with FileLock(cache / ".manifest.lock"):
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        entry = manifest.get(name)
        if dest.exists() and entry:
            size = dest.stat().st_size
            if size == entry["size"]:
                tqdm.write(f"checking sha256 of {dest} ({size / 2**20:.1f} MiB)", file=sys.stderr)
            sha = file_hashes(dest)[0]
            if size != entry["size"] or sha != entry["sha256"]:
                raise MgsvError(f"{dest}: sha256 {sha} ({size} bytes) differs from {entry['sha256']} ({entry['size']} "
                                f"bytes) recorded in {manifest_path} when it was first fetched; delete the file to "
                                "download it again")
            return dest
        try:
            sha = download(url, dest, "unpublished")
        except WeightsError as e:
            raise MgsvError(str(e)) from None
        size = dest.stat().st_size
        if entry and (size, sha) != (entry["size"], entry["sha256"]):
            raise MgsvError(f"{dest}: downloaded again from {url}, sha256 {sha} ({size} bytes) differs from "
                            f"{entry['sha256']} ({entry['size']} bytes) recorded in {manifest_path}: the host's file "
                            "changed; remove its entry from the manifest to accept the new one")
        manifest[name] = {"url": url, "size": size, "sha256": sha, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(manifest_path, manifest)
        return dest


def locate(source, splits, cache, features=True):
    """({split: annotation CSV path}, feature source: a folder or the zip) for a URL or a local FOLDER."""
    if is_url(source):
        paths = {name: rel for name, rel in release_paths(splits).items() if features or name != ARCHIVE}
        files = {name: fetch(source, name, rel, cache) for name, rel in paths.items()}
        return {s: files[f"{s}_data.csv"] for s in splits}, files.get(ARCHIVE)
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise MgsvError(f"{folder}: --source is neither a URL nor a folder")
    found, roots = {}, []
    for parent, dirs, names in os.walk(folder):
        roots += [d for d in dirs if d in FEATURE_DIRS.values()]
        dirs[:] = [d for d in dirs if d not in FEATURE_DIRS.values() and d != "__MACOSX"]  # no walk over .pt files
        for n in names:
            found.setdefault(n, []).append(Path(parent) / n)
    csvs = {}
    for s in splits:
        hits = found.get(f"{s}_data.csv", [])
        if len(hits) != 1:
            raise MgsvError(f"{folder}: {len(hits)} files named {s}_data.csv below it ({', '.join(map(str, hits))}); "
                            "expected exactly one")
        csvs[s] = hits[0]
    if not features:
        return csvs, None
    zips = found.get(ARCHIVE, [])
    return csvs, zips[0] if zips and not roots else folder  # the unpacked folders, else the zip placed there


# ---- the release's feature files -----------------------------------------------------------------------------

def feature_roots(folder):
    """{feature folder name: path} of vit_feature1/ and ast_feature2p5/ found below FOLDER (at most one each)."""
    roots = {}
    for parent, dirs, _ in os.walk(folder):
        for d in [d for d in dirs if d in FEATURE_DIRS.values()]:
            if d in roots:
                raise MgsvError(f"{folder}: two {d}/ folders ({roots[d]}, {Path(parent) / d})")
            roots[d] = Path(parent) / d
        dirs[:] = [d for d in dirs if d not in FEATURE_DIRS.values() and d != "__MACOSX"]
    return roots


class Release:
    """The release's .pt files, in an unpacked FOLDER or read in place from the zip (nothing is unpacked)."""

    def __init__(self, source):
        self.source = Path(source)
        self.zip = zipfile.ZipFile(self.source) if self.source.is_file() else None
        if self.zip is None:
            self.roots = {name: str(path) for name, path in feature_roots(self.source).items()}
        else:
            self.members = set(self.zip.namelist())
            self.roots = {}
            for member in self.members:
                parts = member.split("/")
                if parts[0] == "__MACOSX":
                    continue
                for i, part in enumerate(parts[:-1]):
                    if part in FEATURE_DIRS.values():
                        root = "/".join(parts[: i + 1])
                        if self.roots.setdefault(part, root) != root:
                            raise MgsvError(f"{self.source}: two {part}/ folders ({self.roots[part]}, {root})")
        missing = [d for d in dict.fromkeys(FEATURE_DIRS.values()) if d not in self.roots]
        if missing:
            raise MgsvError(f"{self.source}: no {' or '.join(d + '/' for d in missing)} folder found in it")
        folders = [f"{self.roots[d]}/{sub}" for sub, d in FEATURE_DIRS.items()]
        if self.zip is None:
            missing = [f for f in folders if not os.path.isdir(f)]
        else:
            missing = [f for f in folders if not any(m.startswith(f + "/") for m in self.members)]
        if missing:
            raise MgsvError(f"{self.source}: no folder {', '.join(missing)} (expected vit_feature, vit_mask, "
                            "ast_feature and ast_mask of .pt files)")

    def name(self, sub, item_id):
        """The file's name in messages: a path, or ARCHIVE:member."""
        member = f"{self.roots[FEATURE_DIRS[sub]]}/{sub}/{item_id}.pt"
        return f"{self.source}:{member}" if self.zip else member

    def load(self, sub, item_id):
        """The tensor in <sub>/<item_id>.pt as a float32 array; raises ValueError('missing'|'unreadable ...')."""
        import torch

        member = f"{self.roots[FEATURE_DIRS[sub]]}/{sub}/{item_id}.pt"
        if self.zip is not None:
            if member not in self.members:
                raise ValueError("missing")
            data = io.BytesIO(self.zip.read(member))
        else:
            if not os.path.isfile(member):
                raise ValueError("missing")
            data = member
        try:
            x = torch.load(data, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file is one bad item, not a crash
            raise ValueError(f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"holds a {type(x).__name__}, expected a tensor")
        return x.detach().float().numpy()


def load_masked(release, kind, item_id, rows, dim):
    """(feature (rows, dim), mask (rows,) bool) of one item; raises ValueError('<file>: reason')."""
    feature_sub, mask_sub = (("vit_feature", "vit_mask") if kind == "video" else ("ast_feature", "ast_mask"))
    arrays = []
    for sub, shape in ((feature_sub, (rows, dim)), (mask_sub, (rows,))):
        try:
            x = release.load(sub, item_id)
        except ValueError as e:
            raise ValueError(f"{release.name(sub, item_id)}: {e}") from None
        if x.shape != shape:
            raise ValueError(f"{release.name(sub, item_id)}: shape {tuple(x.shape)}, expected {shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{release.name(sub, item_id)}: contains NaN or inf")
        arrays.append(x)
    feature, mask = arrays[0], arrays[1] != 0
    if not mask.any():
        raise ValueError(f"{release.name(mask_sub, item_id)}: every row masked")
    return feature, mask


def mask_warnings(name, mask, expected, why):
    """Departures from the release's mask rules: the sum expected from the CSV, and a prefix of ones."""
    out = []
    if int(mask.sum()) != expected:
        out.append(f"warning: {name}: mask sum {int(mask.sum())}, expected {expected} from {why}")
    if not mask[: int(mask.sum())].all():
        out.append(f"warning: {name}: mask is not a prefix of ones; only the rows with mask 1 are used")
    return out


def video_rows(release, row):
    """(rows (T, 512) float32 of the unmasked frames, warnings)."""
    feature, mask = load_masked(release, "video", row.video_id, VIDEO_ROWS, VIDEO_DIM)
    expected = min(VIDEO_ROWS, math.floor(row.video_end) - math.floor(row.video_start) + 1)
    warnings = mask_warnings(release.name("vit_mask", row.video_id), mask, expected,
                             f"video_start {row.video_start:g}, video_end {row.video_end:g}")
    return feature[mask], warnings


def per_second(windows, centres, seconds):
    """Rows at second centres t + 0.5 (t < seconds), linearly interpolated between windows at `centres` (s),
    held constant beyond the first and last centre (np.interp's rule, for every column at once)."""
    x = np.arange(seconds) + 0.5
    if len(centres) == 1:
        return np.repeat(windows[:1], seconds, axis=0)
    hi = np.clip(np.searchsorted(centres, x, side="right"), 1, len(centres) - 1)
    lo = hi - 1
    w = np.clip((x - centres[lo]) / (centres[hi] - centres[lo]), 0.0, 1.0)[:, None]
    return (1 - w) * windows[lo] + w * windows[hi]


def audio_rows(release, music_id, duration):
    """(rows (T, 768) float32 on the per-second axis, T = floor(min(duration, 240)), warnings)."""
    feature, mask = load_masked(release, "audio", music_id, AUDIO_ROWS, AUDIO_DIM)
    seconds = math.floor(min(duration, MAX_TRACK_SECONDS))
    if seconds < 1:
        raise ValueError(f"{release.name('ast_feature', music_id)}: music_total_duration {duration:g} s, no whole second")
    expected = min(AUDIO_ROWS, math.floor(duration / AUDIO_HOP) + 1)
    warnings = mask_warnings(release.name("ast_mask", music_id), mask, expected, f"music_total_duration {duration:g}")
    centres = AUDIO_HOP * np.flatnonzero(mask)
    return per_second(feature[mask], centres, seconds).astype(np.float32), warnings


# ---- annotations ---------------------------------------------------------------------------------------------

def read_annotations(path):
    """(rows, problems): the CSV's rows with ids as strings (verbatim, `+` kept) and the columns converted to
    float; each bad row is one `path:line: reason` in problems. A CSV without a needed column raises MgsvError."""
    rows, problems = [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise MgsvError(f"{path}: no column {', '.join(missing)} (header: {','.join(reader.fieldnames or [])})")
        for record in reader:
            line = reader.line_num
            ids = [(record[c] or "").strip() for c in ("video_id", "music_id")]
            reason = next((f"{c} {v!r}: {bad_id_reason(v)}" for c, v in zip(("video_id", "music_id"), ids)
                           if bad_id_reason(v)), None)
            texts = [(record[c] or "").strip() for c in REQUIRED[2:]]
            try:
                values = [float(t) for t in texts]
            except ValueError:
                reason = reason or "a start, end or duration is not a number: " + ", ".join(
                    f"{c}={t!r}" for c, t in zip(REQUIRED[2:], texts))
            if reason:
                problems.append(f"{path}:{line}: {reason}")
                continue
            rows.append(Row(*ids, values[0], values[1], texts[2], texts[3], values[4]))
    return rows, problems


# ---- convert -------------------------------------------------------------------------------------------------

def write_changed(path, text):
    """Write the file (atomically) unless it already holds TEXT, so that a rerun leaves finished files alone."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_text(path, text)


def provenance(kind, dtype, archive):
    """The _feature.json of OUT/data/<kind>; `options` must match for a rerun to add to the folder."""
    if kind == "video":
        model = "CLIP ViT-B/32 image embedding (MGSV-EC release, vit_feature1)"
        rows = ("1 fps; row i = second floor(video_start) + i of the source video (the query segment); only the "
                "rows with vit_mask 1 (the release's pad rows, embeddings of black frames, dropped); at most 50")
    else:
        model = "AST AudioSet audioset_0.4593, mean of CLS and distillation tokens (MGSV-EC release, ast_feature2p5)"
        rows = ("whole track, one row per second: row t = linear interpolation of the unmasked 10 s windows "
                "(centred every 2.5 s) at t + 0.5 s; t < floor(min(music_total_duration, 240))")
    return {"model": model, "rate": 1.0, "rows": rows, "source": archive,
            "options": {"dtype": dtype, "converter": "vmr.mgsv", "audio_axis": "per-second, linear interpolation"}}


def check_provenance(path, wanted):
    """Write OUT/data/<kind>/_feature.json, or stop when the folder was made with other options."""
    if path.exists():
        made = json.loads(path.read_text()).get("options")
        if made != wanted["options"]:
            raise MgsvError(f"{path.parent}: made with {made}, this run uses {wanted['options']}. Nothing was "
                            "changed; use another --out")
    else:
        write_json(path, wanted)


def convert(csvs, release, out, dtype="float32"):
    """Write the data folder OUT/data for the splits in CSVS {split: path}; returns (failed, skipped rows)."""
    data = out / "data"
    archive = str(release.source.name if release.zip else release.source)
    for kind in ("video", "audio"):
        check_provenance(data / kind / "_feature.json", provenance(kind, dtype, archive))
    failed, warnings, splits, seen = 0, 0, {}, {}
    for split, path in csvs.items():
        try:
            rows, problems = read_annotations(path)
        except (MgsvError, OSError) as e:
            tqdm.write(str(e), file=sys.stderr)
            failed += 1
            continue
        for problem in problems:
            tqdm.write(problem, file=sys.stderr)
        failed += len(problems)
        kept = []
        for row in rows:
            if row.video_id in seen:
                tqdm.write(f"{path}: video_id {row.video_id} already in {seen[row.video_id]}; skipped", file=sys.stderr)
                failed += 1
                continue
            seen[row.video_id] = path
            kept.append(row)
        splits[split] = kept

    durations = {}
    for row in (r for rows in splits.values() for r in rows):
        if abs(durations.setdefault(row.music_id, row.duration) - row.duration) > 0.01:
            tqdm.write(f"warning: track {row.music_id}: music_total_duration {row.duration:g} and "
                       f"{durations[row.music_id]:g} in different rows; {durations[row.music_id]:g} used", file=sys.stderr)
            warnings += 1

    def convert_items(kind, items):
        """{item id: True if its .npy is there} after converting the missing ones; items: (id, () -> (rows, warnings))."""
        nonlocal failed, warnings
        ok, done = {}, 0
        for item_id, rows_of in tqdm(items, desc=kind, unit="file"):
            dest = data / kind / f"{item_id}.npy"
            if dest.exists():
                ok[item_id] = True
                continue
            try:
                x, notes = rows_of()
            except ValueError as e:
                tqdm.write(str(e), file=sys.stderr)
                failed += 1
                ok[item_id] = False
                continue
            for note in notes:
                tqdm.write(note, file=sys.stderr)
            warnings += len(notes)
            save_npy(dest, x.astype(dtype))
            ok[item_id], done = True, done + 1
        print(f"{kind}: {done} converted, {sum(ok.values()) - done} already done, {len(ok) - sum(ok.values())} failed",
              file=sys.stderr)
        return ok

    audio_ok = convert_items("audio", [(mid, partial(audio_rows, release, mid, d)) for mid, d in sorted(durations.items())])
    video_ok = convert_items("video", [(row.video_id, partial(video_rows, release, row))
                                       for rows in splits.values() for row in rows])

    skipped, moments = 0, []
    for split, rows in splits.items():
        good = []
        for row in rows:
            if video_ok[row.video_id] and audio_ok[row.music_id]:
                good.append(row.video_id)
                moments.append((row.video_id, row.music_start, row.music_end, row.music_id))
            else:
                skipped += 1
        if not (data / f"{split}.csv").exists() or read_ids(data / f"{split}.csv") != good:  # a rerun changes nothing
            write_ids(data / f"{split}.csv", good)
        print(f"{split}: {len(good)} of {len(rows)} videos", file=sys.stderr)
    # moments.csv covers every split converted into DATA so far: the rows of this run's splits replace their old ones
    ours, kept = {row.video_id for rows in splits.values() for row in rows}, []
    if (data / "moments.csv").exists():
        with open(data / "moments.csv", newline="", encoding="utf-8") as f:
            kept = [(r["ID"], r["start"], r["end"], r["track"]) for r in csv.DictReader(f) if r["ID"] not in ours]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["ID", "start", "end", "track"])
    writer.writerows(kept + moments)
    write_changed(data / "moments.csv", text.getvalue())
    if warnings:
        print(f"{warnings} warning(s) about the release's own rules (see `warning:` lines)", file=sys.stderr)
    if skipped:
        print(f"{skipped} row(s) left out of the splits (their video or track failed)", file=sys.stderr)
    return failed, skipped


def published_rows():
    """The published table as report rows: metric keys of vmr.moments.library_metrics, fractions."""
    keys = {"r1": "R@1", "r5": "R@5", "r10": "R@10", "mor1": "MoR@1 IoU>0.7", "mor10": "MoR@10 IoU>0.7", "mor100": "MoR@100 IoU>0.7"}
    return [{"name": row.model, "source": "Xin et al., ICCV 2025", "mIoU": row.miou,
             **{key: None if getattr(row, field) is None else getattr(row, field) / 100 for field, key in keys.items()}}
            for row in PUBLISHED]


MODEL_NAMES = {"vmnet": "VM-NET", "transformer": "Transformer"}


def run_models(out, models, epochs=None, threads=None, device="cpu", seed=0):
    """Train each model on OUT/data (validation: the published val split), test it, and write OUT/report.html with the
    published rows. Each command is printed, then run as its own process; returns the number that failed."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    data = (out / "data").resolve()
    common = ["--train_data_dir", data, "--train_csv_path", data / "train.csv", "--val_csv_path", data / "val.csv",
              "--test_csv_path", data / "test.csv", "--device", device, "--seed", seed, "--resume"]
    common += (["--epochs", epochs] if epochs else []) + (["--threads", threads] if threads else [])
    extra = {"vmnet": [], "transformer": ["--segments_from", "features"]}
    failed, runs = 0, []
    for model in models:
        argv = [sys.executable, f"{model}/train.py", *common, *extra[model], "--save_dir", (out / model).resolve()]
        print("$ " + " ".join(map(str, argv[1:])), flush=True)
        if subprocess.run(list(map(str, argv)), cwd=repo).returncode:
            print(f"{model}/train.py failed (see above)", file=sys.stderr)
            failed += 1
            continue
        runs += ["--run", f"{MODEL_NAMES[model]}={(out / model).resolve()}"]
    if runs:
        write_json(out / "published.json", published_rows())
        argv = [sys.executable, "-m", "vmr.report", *runs, "--published", (out / "published.json").resolve(),
                "--out", (out / "report.html").resolve(), "--title", "MGSV-EC test split"]
        print("$ " + " ".join(map(str, argv[1:])), flush=True)
        failed += subprocess.run(list(map(str, argv)), cwd=repo).returncode != 0
    return failed


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                   help="output folder: OUT/data (the data folder) and OUT/LICENSE-DATA.txt; never commit it")
    p.add_argument("--source", default=HF_BASE,
                   help="base URL of the release (BASE/dataset/MGSV-EC/<split>_data.csv, BASE/MGSV_feature.zip), or a "
                        "local FOLDER laid out as the release unpacks (or holding MGSV_feature.zip)")
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="splits to fetch and convert")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="dtype of the written .npy rows (float16 halves the disk; the models read either as float32)")
    p.add_argument("--cache", type=Path, default=None,
                   help="download cache with manifest.json (default: $VMR_CACHE/mgsv, else ~/.cache/vmr/mgsv)")
    p.add_argument("--download_only", action="store_true",
                   help="fetch and check the files, convert nothing (e.g. on a login node before a Slurm job)")
    p.add_argument("--convert_only", action="store_true", help="fetch and convert; train and test nothing")
    p.add_argument("--models", nargs="+", choices=("vmnet", "transformer"), default=["vmnet", "transformer"],
                   help="models to train and test")
    p.add_argument("--epochs", type=int, help="training epochs of both models (default: each model's own)")
    p.add_argument("--device", default="cpu", help="cpu or cuda, for training and testing")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="training seed of both models")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    print(LICENCE)
    cache = args.cache or cache_dir() / "mgsv"
    try:
        csvs, features = locate(args.source, args.splits, cache)
        if args.download_only:
            print(f"fetched and checked: {', '.join(str(p) for p in [*csvs.values(), features])}")
            return 0
        release = Release(features)
        write_changed(args.out / "LICENSE-DATA.txt", LICENCE)
        failed, _ = convert(csvs, release, args.out, args.dtype)
    except (MgsvError, zipfile.BadZipFile, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"data folder: {args.out / 'data'}")
    if not args.convert_only and set(args.splits) == set(SPLITS):
        failed += run_models(args.out, args.models, args.epochs, args.threads, args.device, args.seed)
        print(f"report: {args.out / 'report.html'}")
    if failed:
        print(f"{failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
