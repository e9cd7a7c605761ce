"""Zero-shot music retrieval for a video with Wav2CLIP: no training and no paired data.

Wav2CLIP embeds audio in the image-embedding space of OpenAI CLIP ViT-B/32, the encoder of our `clip`
feature, so a music library's Wav2CLIP features can be compared directly with a video's CLIP rows.
Build an index of the library once (music/video files, extracted here into INDEX_features/, or the
wav2clip feature files of `vggishProcessor.py --features wav2clip`), then query with video files
(their `clip` rows are extracted first) or `clip` / `clip_l2` feature files:

    python zeroshot/retrieve.py --build_index --library music/ --index ZEROSHOT_INDEX.npz
    python zeroshot/retrieve.py --index ZEROSHOT_INDEX.npz --query clip.mp4 [--top_k 5] [--json]

Track score: the cosine of the video vector (mean of its unit CLIP rows) and the track vector (its
whole-track Wav2CLIP embedding; --music rows: the mean of its unit per-second rows). For each second
of the query, the library second whose Wav2CLIP row has the highest cosine with that CLIP row.

INDEX.npz is VM-NET's format with one segment per library second: ids (N,), track_emb (N, 512) unit
rows, seg_track/seg_start/seg_end (M,) int32 seconds, seg_emb (M, 512) unit rows, meta = JSON
{model, music, audio_folder, E, features}, plus track_file (N,): where each track's rows came from.
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

from feature_extraction.atomic import atomic_path
from vmnet.retrieve import RetrievalError, list_library, search
from vmr.metrics import normalize_rows
from zeroshot.embeddings import DIM, MUSIC, ROWS, load_rows, mean_direction, music_vector

MODEL = "Wav2CLIP zero-shot"


def extract_features(paths, token, work_dir, extract_args):
    """feature_extraction/extract.py on media files; a bad file prints `path: reason` and the others go on."""
    from feature_extraction import extract

    argv = ["--videos", *map(str, paths), "--out", str(work_dir), "--features", token, *extract_args]
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is kept for the results (--json)
            extract.main(argv)
    except SystemExit as e:  # run-level problems (weights, folders) stop extract.py with a message
        if e.code not in (None, 0, 1):
            raise RetrievalError(str(e.code)) from None


def feature_info(rows_files):
    """{folder: its _feature.json} for the folders the library's rows come from (weights, checkpoint sha256)."""
    info = {}
    for f in rows_files:
        meta = Path(f).resolve().parent / "_feature.json"
        if str(meta.parent) not in info and meta.is_file():
            info[str(meta.parent)] = json.loads(meta.read_text(encoding="utf-8"))
    return info


def build_index(library, index_path, music="track", extract_args=()):
    """Embed every library track once and write the index; returns the number of tracks that failed."""
    npy_files, media = list_library(library)
    files, failed = {p.stem: p for p in npy_files}, 0
    if media:  # kept beside the index, so an interrupted build resumes where it stopped
        work_dir = Path(index_path).with_name(Path(index_path).stem + "_features")
        extract_features(media, "wav2clip", work_dir, list(extract_args))
        for p in media:
            rows = work_dir / ROWS / f"{p.stem}.npy"
            if rows.is_file():
                files[p.stem] = rows
            else:
                failed += 1  # extract.py said why
    ids, track_files, track_emb, seg_track, seg_emb = [], [], [], [], []
    for vid in sorted(files):
        try:
            rows = load_rows(files[vid])
            vector = music_vector(files[vid], rows, music)
        except (OSError, ValueError) as e:
            print(f"{files[vid]}: {e}", file=sys.stderr)
            failed += 1
            continue
        seg_track.append(np.full(len(rows), len(ids), np.int32))
        ids.append(vid)
        track_files.append(str(Path(files[vid]).resolve()))
        track_emb.append(vector)
        seg_emb.append(normalize_rows(rows))
    if not ids:
        raise RetrievalError(f"{library}: no usable music track")
    seg_track = np.concatenate(seg_track)
    seg_start = np.concatenate([np.arange(len(s), dtype=np.int32) for s in seg_emb])
    meta = {"model": MODEL, "music": music, "audio_folder": ROWS, "E": DIM, "features": feature_info(track_files)}
    with atomic_path(index_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=np.array(ids), track_emb=np.stack(track_emb).astype(np.float32), seg_track=seg_track,
                     seg_start=seg_start, seg_end=seg_start + 1, seg_emb=np.concatenate(seg_emb).astype(np.float32),
                     meta=np.array(json.dumps(meta)), track_file=np.array(track_files))
    print(f"{index_path}: {len(ids)} tracks, {len(seg_track)} seconds, {DIM}-d, track vectors: {music}", file=sys.stderr)
    return failed


def load_index(index_path):
    """The index arrays as a dict; refuses an index that the trained models' retrieve.py wrote."""
    with np.load(index_path, allow_pickle=False) as z:
        index = {key: z[key] for key in z.files}
    meta = json.loads(str(index["meta"]))
    if meta.get("model") != MODEL:
        raise RetrievalError(f"{index_path} was built by the {meta.get('model', '?')} retrieval, not the zero-shot one; "
                             "build one with zeroshot/retrieve.py --build_index")
    if any(info.get("weights") == "random" for info in meta["features"].values()):
        print(f"warning: {index_path} holds features made with seeded random weights (tests and demos only)",
              file=sys.stderr)
    index["ids"] = [str(i) for i in index["ids"]]
    index["meta"] = meta
    return index


def query_rows(paths, extract_args=()):
    """{path: (T, 512) CLIP rows} for video files (extracted here) and clip feature files; seconds spent."""
    started, rows = time.perf_counter(), {}
    media = [Path(p) for p in paths if Path(p).suffix != ".npy"]
    if media:
        with tempfile.TemporaryDirectory(prefix="vmr_query_") as tmp:
            extract_features(media, "clip", tmp, list(extract_args))
            for p in media:
                if (Path(tmp) / "clip" / f"{p.stem}.npy").is_file():
                    rows[str(p)] = load_rows(Path(tmp) / "clip" / f"{p.stem}.npy")
    for p in paths:
        if Path(p).suffix == ".npy":
            try:
                rows[str(p)] = load_rows(p)
            except (OSError, ValueError) as e:
                print(f"{p}: {e}", file=sys.stderr)
    return {str(p): rows[str(p)] for p in paths if str(p) in rows}, time.perf_counter() - started


def answer(index, rows, top_k=5, chunk=64):
    """Top tracks by the cosine of the video and track vectors, and the best library second for each query second."""
    idx, scores = search(index["track_emb"], mean_direction(rows)[None], top_k)
    top = [{"id": index["ids"][i], "score": float(s)} for i, s in zip(idx[0], scores[0])]
    unit, segments = normalize_rows(rows), []
    for start in range(0, len(unit), chunk):  # (chunk, M) cosines at a time: memory stays bounded
        cosines = unit[start:start + chunk] @ index["seg_emb"].T
        best = cosines.argmax(axis=1)
        for t, j in enumerate(best, start):
            segments.append({"start": t, "end": t + 1, "track": index["ids"][index["seg_track"][j]],
                             "track_start": int(index["seg_start"][j]), "track_end": int(index["seg_end"][j]),
                             "score": float(cosines[t - start, j])})
    return top, segments


def print_table(result, n_tracks, extraction_seconds):
    print(f"{result['query']}: top {len(result['top'])} of {n_tracks} tracks (exact search "
          f"{result['search_seconds'] * 1000:.1f} ms, extraction {extraction_seconds:.2f} s)")
    print(f"  {'rank':>4}  {'score':>7}  track")
    for rank, t in enumerate(result["top"], 1):
        print(f"  {rank:>4}  {t['score']:7.4f}  {t['id']}")
    print(f"  {'video s':>9}  {'cosine':>7}  best library second")
    for s in result["segments"]:
        print(f"  {s['start']:>4}-{s['end']:<4}  {s['score']:7.4f}  {s['track']} {s['track_start']}-{s['track_end']} s")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", default="ZEROSHOT_INDEX.npz",
                   help="index file to write (--build_index) or to search (default ZEROSHOT_INDEX.npz)")
    p.add_argument("--build_index", action="store_true", help="embed the --library tracks and write --index")
    p.add_argument("--library", help="folder or list file of music/video files (Wav2CLIP extracted into "
                                     "INDEX_features/) and/or wav2clip feature files (.npy, (T, 512), with "
                                     "wav2clip_track/<id>.npy beside their folder)")
    p.add_argument("--music", choices=MUSIC, default="track",
                   help="track vector: the whole-track Wav2CLIP embedding (track, default: what the model computes "
                        "for a clip) or the mean of the unit per-second rows (rows)")
    p.add_argument("--query", nargs="+", help="video files (CLIP rows extracted first) or clip/clip_l2 feature files (.npy)")
    p.add_argument("--top_k", type=int, default=5, help="tracks to return per query (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document (results with extraction and search "
                                                       "seconds) instead of a table")
    p.add_argument("--weights", choices=("official", "random"), default="official",
                   help="weights for on-the-fly extraction (default official; random: tests and demos only)")
    p.add_argument("--extract_args", default="",
                   help="extra extract.py arguments for on-the-fly extraction, e.g. '--device cuda' (default none)")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    extract_args = ["--weights", args.weights, *shlex.split(args.extract_args)]
    try:
        if args.build_index:
            if not args.library:
                p.error("--build_index needs --library")
            failed = build_index(args.library, args.index, args.music, extract_args)
            if failed:
                print(f"{failed} failed", file=sys.stderr)
            if not args.query:
                return 1 if failed else 0
        if not args.query:
            p.error("give --query (or --build_index)")
        started = time.perf_counter()
        index = load_index(args.index)
        index_seconds = time.perf_counter() - started
        queries, extraction_seconds = query_rows(args.query, extract_args)
    except (RetrievalError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    results = []
    for path, rows in queries.items():
        started = time.perf_counter()
        top, segments = answer(index, rows, args.top_k)
        results.append({"query": path, "search_seconds": time.perf_counter() - started, "top": top, "segments": segments})
    if args.json:
        print(json.dumps({"index": str(args.index), "tracks": len(index["ids"]), "segments": len(index["seg_track"]),
                          "search": "exact", "music": index["meta"]["music"], "extraction_seconds": extraction_seconds,
                          "index_seconds": index_seconds, "results": results}, indent=2))
    else:
        for result in results:
            print_table(result, len(index["ids"]), extraction_seconds)
    failed = len(args.query) - len(results)
    if failed:
        print(f"{failed} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
