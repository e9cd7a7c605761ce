"""Music retrieval for a new video with a trained VM-NET.

Build an index of a music library once (feature files, or music/video files whose VGGish
features are extracted on the fly by feature_extraction/extract.py):

    python vmnet/retrieve.py --build_index --library music/ --checkpoint runs/vmnet/best.pt --index INDEX.npz

Query with a video file (its features are extracted first) or a video feature file (.npy):

    python vmnet/retrieve.py --index INDEX.npz --checkpoint runs/vmnet/best.pt --query clip.mp4 [--json] [--faiss hnsw]

INDEX.npz: ids (N,) str, track_emb (N, E) float32 unit rows, seg_track/seg_start/seg_end (M,)
int32 seconds and seg_emb (M, E) (M = 0 for VM-NET), meta = JSON {model, checkpoint_sha256,
audio_folder, E}. An index built with another checkpoint is refused.
"""
import argparse
import contextlib
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from feature_extraction.atomic import atomic_path
from feature_extraction.cli import HelpFormatter
from vmr.metrics import normalize_rows
from vmnet.model import embed_rows, model_from_checkpoint
from vmr.evaluation import sha256_file
from vmr.runs import check_folder
from vmr.search import add_search_arguments, index_for, search
from vmr.splits import Split, is_split

# feature folder name -> (extract.py token, extra flags) that produce it
EXTRACT_ARGS = {
    "clip": ("clip", []), "clip_l2": ("clip", ["--clip_l2"]),
    "resnet101": ("resnet", []), "resnet50": ("resnet", ["--resnet", "50"]),
    "vggish": ("vggish", []), "vggish_pca": ("vggish", ["--pca"]),
    "i3d_rgb": ("i3d", []), "i3d_flow": ("i3d", []), "i3d": ("i3d", ["--i3d_concat"]),
}
LIBRARY_SUFFIXES = {".mp3", ".m4a", ".wav", ".flac", ".ogg", ".opus", ".aac", ".webm", ".mp4", ".mkv", ".mov", ".avi"}
AUDIO_ONLY_SUFFIXES = {".mp3", ".m4a", ".wav", ".flac", ".ogg", ".opus", ".aac"}


class RetrievalError(Exception):
    """A problem the user can fix (wrong checkpoint, wrong dimensions, missing files)."""


def extract(paths, folders, work_dir, extract_args):
    """Run the extraction pass on media files; returns {folder: {stem: (T, D) array}} for those that worked."""
    from feature_extraction import extract as extract_mod

    unknown = [f for f in folders if f not in EXTRACT_ARGS]
    if unknown:
        raise RetrievalError(f"do not know how to extract feature folder {unknown[0]!r}; pass precomputed .npy files")
    tokens = dict.fromkeys(EXTRACT_ARGS[f][0] for f in folders)
    flags = [flag for f in folders for flag in EXTRACT_ARGS[f][1]]
    # `--flag=value` forms: a file name such as "-x8Yq.mp4" is never read as a flag
    args = [*(f"--videos={p}" for p in paths), f"--out={work_dir}", "--features", *tokens, *flags, *extract_args]
    try:
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the results (--json)
            extract_mod.run(args)  # prints `path: reason` for failures and goes on; the caller counts them
    except SystemExit as e:  # extract.py stops with a message for run-level problems (weights, folders)
        if e.code not in (None, 0, 1):
            raise RetrievalError(str(e.code)) from None
    out = {}
    for folder in folders:
        out[folder] = {p.stem: np.load(p) for p in (Path(work_dir) / folder).glob("*.npy")}
    return out


def list_library(library):
    """Feature files (.npy) and media files of a folder or a list file (one path per line)."""
    library = Path(library)
    if library.is_dir():
        paths = sorted(p for p in library.iterdir() if not p.name.startswith("."))  # ids may start with "_"
    else:
        paths = [Path(line.strip()) for line in library.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [p for p in paths if p.suffix == ".npy"], [p for p in paths if p.suffix.lower() in LIBRARY_SUFFIXES]


def check_queries(queries):
    """Refuse a folder given as --query before anything is extracted."""
    for query in queries or []:
        if Path(query).is_dir():
            raise RetrievalError(f"--query {query}: a folder; give its video files (e.g. --query {query}/*.mp4) "
                                 "or video feature files (.npy)")


def video_queries(paths):
    """The queries that can be videos; each audio file is reported (music belongs in the library) and left out."""
    for p in paths:
        if Path(p).suffix.lower() in AUDIO_ONLY_SUFFIXES:
            print(f"{p}: an audio file; a query is a video, and music goes into the library "
                  "(--build_index --library FOLDER)", file=sys.stderr)
    return [p for p in paths if Path(p).suffix.lower() not in AUDIO_ONLY_SUFFIXES]


def load_checkpoint(path):
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    return ckpt, model_from_checkpoint(ckpt)


def pooled(rows, max_seconds):
    rows = np.asarray(rows, np.float32)
    return (rows[:max_seconds] if max_seconds else rows).mean(axis=0)


def build_index(library, checkpoint, index_path, extract_args=(), work_dir=None):
    """Embed every library track once and write INDEX.npz; returns the number of tracks that failed."""
    ckpt, model = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    audio_folder = (ckpt.get("features") or {}).get("audio") or "vggish"
    max_seconds = ckpt["args"].get("max_seconds")
    tracks, failed = {}, 0
    if is_split(library):  # a split folder (vmr/splits.py): its tracks, read one at a time
        split = Split(library)
        check_folder(ckpt.get("provenance"), "audio", [split.folder / "audio"], "index")
        if split.dims[1] != cfg["audio_dim"]:
            raise RetrievalError(f"{library}: audio width {split.dims[1]}, the checkpoint's {cfg['audio_dim']}")
        tracks = {vid: pooled(split.rows("audio", i), max_seconds) for i, vid in enumerate(split.ids)}
        npy_files, media = [], []
    else:
        npy_files, media = list_library(library)
    check_folder(ckpt.get("provenance"), "audio", [p.parent for p in npy_files], "index")
    for p in npy_files:
        x = np.load(p)
        if x.ndim != 2 or x.shape[1] != cfg["audio_dim"] or len(x) == 0 or not np.isfinite(x).all():
            print(f"{p}: expected finite ({'T'}, {cfg['audio_dim']}) audio features, got shape {x.shape}", file=sys.stderr)
            failed += 1
            continue
        tracks[p.stem] = pooled(x, max_seconds)
    if media:
        with tempfile.TemporaryDirectory() as tmp:
            feats = extract(media, [audio_folder], work_dir or tmp, list(extract_args))[audio_folder]
            check_folder(ckpt.get("provenance"), "audio", [Path(work_dir or tmp) / audio_folder], "index")
        for p in media:
            if p.stem in feats:
                tracks[p.stem] = pooled(feats[p.stem], max_seconds)
            else:
                failed += 1
    if not tracks:
        raise RetrievalError(f"{library}: no usable music track")
    ids = sorted(tracks)
    emb = normalize_rows(embed_rows(model.embed_music, np.stack([tracks[i] for i in ids])))
    e = emb.shape[1]
    meta = {"model": "VM-NET", "checkpoint_sha256": sha256_file(checkpoint), "audio_folder": audio_folder, "E": e}
    with atomic_path(index_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=np.array(ids), track_emb=emb.astype(np.float32),
                     seg_track=np.zeros(0, np.int32), seg_start=np.zeros(0, np.int32), seg_end=np.zeros(0, np.int32),
                     seg_emb=np.zeros((0, e), np.float32), meta=np.array(json.dumps(meta)))
    print(f"{index_path}: {len(ids)} tracks, {e}-d", file=sys.stderr)
    return failed


def load_index(index_path, checkpoint):
    """(ids, track_emb, meta); refuses an index built with another checkpoint."""
    with np.load(index_path, allow_pickle=False) as z:
        ids, emb, meta = list(z["ids"]), z["track_emb"], json.loads(str(z["meta"]))
    sha = sha256_file(checkpoint)
    if meta.get("checkpoint_sha256") != sha:
        raise RetrievalError(f"{index_path} was built with checkpoint sha256 {meta.get('checkpoint_sha256', '?')[:12]}..., "
                             f"but {checkpoint} is {sha[:12]}...; rebuild it with --build_index")
    return ids, emb, meta


def query_features(paths, ckpt, extract_args=()):
    """{path: pooled video vector} for .npy feature files and media files (extracted here); seconds spent."""
    cfg = ckpt["config"]
    folders = ((ckpt.get("features") or {}).get("video") or "clip").split("+")
    max_seconds = ckpt["args"].get("max_seconds")
    out, t0 = {}, time.perf_counter()
    paths = video_queries(paths)
    media = [Path(p) for p in paths if Path(p).suffix != ".npy"]
    npy = [Path(p) for p in paths if Path(p).suffix == ".npy"]
    check_folder(ckpt.get("provenance"), "video", [p.parent for p in npy], "query")
    for p in npy:
        out[str(p)] = np.load(p)
    if media:
        with tempfile.TemporaryDirectory() as tmp:
            feats = extract(media, folders, tmp, list(extract_args))
            if len(folders) == 1:  # fused folders (clip+resnet101) are checked against the fusion's record by prepare.py
                check_folder(ckpt.get("provenance"), "video", [Path(tmp) / folders[0]], "query")
        for p in media:
            if all(p.stem in feats[f] for f in folders):
                parts = [feats[f][p.stem] for f in folders]
                t = min(len(x) for x in parts)
                out[str(p)] = np.concatenate([x[:t] for x in parts], axis=1)
    for p, x in list(out.items()):
        if x.ndim != 2 or x.shape[1] != cfg["video_dim"] or len(x) == 0:
            print(f"{p}: expected ({'T'}, {cfg['video_dim']}) video features for this checkpoint, got shape {x.shape}", file=sys.stderr)
            del out[p]
            continue
        out[p] = pooled(x, max_seconds)
    return out, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt written by vmnet/train.py")
    p.add_argument("--index", default="INDEX.npz", help="index file to write (--build_index) or to search")
    p.add_argument("--build_index", action="store_true", help="embed the --library tracks and write --index")
    p.add_argument("--library", help="folder or list file of music feature files (.npy, (T, 128)) or music/video files (extracted), "
                                     "or a split folder (vmnet/prepare.py --split_format mmap: its tracks, read one at a time)")
    p.add_argument("--query", nargs="+", help="video files (features extracted first) or video feature files (.npy)")
    p.add_argument("--top_k", type=int, default=5, help="tracks to return per query")
    add_search_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON (results with extraction and search seconds) instead of a table")
    p.add_argument("--weights", choices=("official", "random"), default="official",
                   help="weights for on-the-fly extraction (random: tests and demos only)")
    p.add_argument("--extract_args", default="", help="extra extract.py arguments for on-the-fly extraction, e.g. '--device cuda'")
    args = p.parse_args(argv)
    extract_args = ["--weights", args.weights, *shlex.split(args.extract_args)]
    try:
        check_queries(args.query)
        if args.build_index:
            if not args.library:
                p.error("--build_index needs --library")
            failed = build_index(args.library, args.checkpoint, args.index, extract_args)
            if failed:
                print(f"{failed} failed", file=sys.stderr)
            if not args.query:
                return 1 if failed else 0
        if not args.query:
            p.error("give --query (or --build_index)")
        ckpt, model = load_checkpoint(args.checkpoint)
        ids, emb, meta = load_index(args.index, args.checkpoint)
        feats, extraction_seconds = query_features(args.query, ckpt, extract_args)
    except (RetrievalError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    index = index_for(emb, args)
    index_seconds = time.perf_counter() - t0
    results = []
    for path, vec in feats.items():
        t0 = time.perf_counter()
        q = normalize_rows(embed_rows(model.embed_video, vec[None]))
        idx, scores = search(emb, q, args.top_k, index)
        results.append({"query": path, "search_seconds": time.perf_counter() - t0,
                        "top": [{"id": ids[i], "score": float(s)} for i, s in zip(idx[0], scores[0]) if i >= 0]})
    summary = {"index": str(args.index), "tracks": len(ids), "search": args.faiss or "exact",
               "extraction_seconds": extraction_seconds, "index_seconds": index_seconds, "results": results}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for r in results:
            print(f"{r['query']}: top {len(r['top'])} of {len(ids)} tracks ({summary['search']} search {r['search_seconds'] * 1000:.1f} ms, "
                  f"extraction {extraction_seconds:.2f} s)")
            print(f"  {'rank':>4}  {'score':>7}  track")
            for rank, t in enumerate(r["top"], 1):
                print(f"  {rank:>4}  {t['score']:7.4f}  {t['id']}")
    failed = len(args.query) - len(results)
    if failed:
        print(f"{failed} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
