"""Music retrieval for a new video with a trained segment Transformer, down to the segment.

Build an index of a music library once (feature files, or music/video files whose audio features
are extracted on the fly); each track is cut where its audio features change (no video needed):

    python transformer/retrieve.py --build_index --library music/ --checkpoint runs/transformer/best.pt --index INDEX.npz

Query with a video file (features and flow segments extracted first) or a video feature file
with its segments (--flow_ranks ranks.csv, or --segments_from features):

    python transformer/retrieve.py --index INDEX.npz --checkpoint runs/transformer/best.pt --query clip.mp4 [--json] [--faiss hnsw]

Every track is embedded once: its music is cut at its own change points (vmr.segments, stored in the
index so nothing is segmented twice) and encoded into one vector per second. The pooled track vectors find
each query's top --rerank candidates; the aligned score (mean cosine of the time-aligned per-second
vectors, no encoder pass per pair) orders them; and for each query segment the library segment with the
highest cosine is shown with its start and end seconds. Both searches are exact, or approximate through
FAISS (--faiss ivf|hnsw) for libraries of hundreds of thousands of tracks.

INDEX.npz holds ids, track_emb (N, E) pooled, seq_emb (sum T, E) float16 per-second vectors with
seq_offsets (N + 1,), the music segments seg_track / seg_start / seg_end with seg_emb, and meta.
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
from tqdm import tqdm

from transformer.data import split_parts, video_segments
from transformer.model import load_model
from transformer.scoring import embed_tracks, pair_scores, pool, segment_vectors
from vmnet.retrieve import EXTRACT_ARGS, RetrievalError, check_queries, list_library, video_queries
from vmr.baselines import pad_sequences
from vmr.evaluation import sha256_file
from vmr.runs import check_folder
from vmr.search import add_search_arguments, index_for, search
from vmr.segments import music_segments
from vmr.splits import LazyRows, Split, is_split


def run_extraction(paths, tokens, flags, work_dir, extract_args):
    """feature_extraction/extract.py on media files (failures print `path: reason` and the run goes on)."""
    from feature_extraction import extract as extract_mod

    # `--flag=value` forms: a file name such as "-x8Yq.mp4" is never read as a flag
    args = [*(f"--videos={p}" for p in paths), f"--out={work_dir}", "--features", *dict.fromkeys(tokens), *flags,
            *extract_args]
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the results alone (--json)
            extract_mod.run(args)  # failures are counted by the caller
    except SystemExit as error:  # run-level problems (weights, folders) stop extract.py with a message
        if error.code not in (None, 0, 1):
            raise RetrievalError(str(error.code)) from None


def folder_tokens(folders):
    unknown = [f for f in folders if f not in EXTRACT_ARGS]
    if unknown:
        raise RetrievalError(f"do not know how to extract feature folder {unknown[0]!r}; pass precomputed .npy files")
    return [EXTRACT_ARGS[f][0] for f in folders], [flag for f in folders for flag in EXTRACT_ARGS[f][1]]


def load_rows(path, dim, max_seconds):
    x = np.load(path, allow_pickle=False)
    if x.ndim != 2 or x.shape[1] != dim or len(x) == 0 or not np.isfinite(x).all():
        raise ValueError(f"expected finite (T, {dim}) features for this checkpoint, got shape {x.shape}")
    return x[:max_seconds].astype(np.float32) if max_seconds else x.astype(np.float32)


def build_index(library, checkpoint, index_path, extract_args=(), batch_tracks=64):
    """Segment and embed every library track and write INDEX.npz; returns the number of tracks that failed."""
    model, ckpt = load_model(checkpoint)
    cfg, run_args = ckpt["config"], ckpt["run_args"]
    audio_folder = (ckpt.get("features") or {}).get("audio") or "vggish"
    split = Split(library) if is_split(library) else None  # a split folder (vmr/splits.py): tracks read one at a time
    npy_files, media = list_library(library) if split is None else ([], [])
    check_folder(ckpt.get("provenance"), "audio", [p.parent for p in npy_files] + ([split.folder / "audio"] if split else []), "index")
    files = {p.stem: p for p in npy_files}
    failed = 0
    ids, tracks = [], []
    with tempfile.TemporaryDirectory(prefix="vmr_library_") as tmp:
        if split is not None:
            if split.dims[1] != cfg["audio_dim"]:
                raise RetrievalError(f"{library}: audio width {split.dims[1]}, the checkpoint's {cfg['audio_dim']}")
            order = sorted(range(len(split.ids)), key=lambda i: split.ids[i])
            stops = [split.length(i) if not run_args.get("max_seconds") else min(split.length(i), run_args["max_seconds"]) for i in order]
            ids, tracks = [split.ids[i] for i in order], LazyRows(split, "audio", order, stops)
        if media:
            tokens, flags = folder_tokens([audio_folder])
            run_extraction(media, tokens, flags, Path(tmp), list(extract_args))
            check_folder(ckpt.get("provenance"), "audio", [Path(tmp) / audio_folder], "index")
            for p in media:
                path = Path(tmp) / audio_folder / f"{p.stem}.npy"
                if path.is_file():
                    files[p.stem] = path
                else:
                    failed += 1
        for vid in sorted(files):
            try:
                tracks.append(load_rows(files[vid], cfg["audio_dim"], run_args.get("max_seconds")))
            except (OSError, ValueError) as error:
                print(f"{files[vid]}: {error}", file=sys.stderr)
                failed += 1
                continue
            ids.append(vid)
    if not ids:
        raise RetrievalError(f"{library}: no usable music track")
    parts = [split_parts(music_segments(t, run_args["n_bkps"], run_args["min_seconds"]), cfg["max_seq_len"], len(t)) for t in
             tqdm(tracks, desc="segmenting tracks", unit="track", leave=False)]
    seq = embed_tracks(model.audio, tracks, parts, batch_tracks)
    seg_track = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    seg = np.concatenate(parts)
    meta = {"model": "Transformer", "checkpoint_sha256": sha256_file(checkpoint), "audio_folder": audio_folder,
            "E": cfg["embed_dim"], "provenance": (ckpt.get("provenance") or {}).get("audio")}
    with atomic_path(index_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=np.array(ids), track_emb=pool(seq), seq_emb=np.concatenate(seq).astype(np.float16),
                     seq_offsets=np.concatenate([[0], np.cumsum([len(x) for x in seq])]),
                     seg_track=seg_track.astype(np.int32), seg_start=seg[:, 0].astype(np.int32), seg_end=seg[:, 1].astype(np.int32),
                     seg_emb=np.concatenate([segment_vectors(x, p) for x, p in zip(seq, parts)]), meta=np.array(json.dumps(meta)))
    print(f"{index_path}: {len(ids)} tracks, {len(seg_track)} segments, {cfg['embed_dim']}-d", file=sys.stderr)
    return failed


def load_index(index_path, checkpoint):
    """The index arrays as a dict; refuses an index built with another checkpoint or by VM-NET."""
    with np.load(index_path, allow_pickle=False) as z:
        index = {key: z[key] for key in z.files}
    meta = json.loads(str(index["meta"]))
    sha = sha256_file(checkpoint)
    if meta.get("checkpoint_sha256") != sha:
        raise RetrievalError(f"{index_path} was built with checkpoint sha256 {meta.get('checkpoint_sha256', '?')[:12]}..., "
                             f"but {checkpoint} is {sha[:12]}...; rebuild it with --build_index")
    if "seq_emb" not in index:
        raise RetrievalError(f"{index_path} has no per-second vectors (not built by this transformer/retrieve.py); rebuild it")
    index["ids"] = [str(i) for i in index["ids"]]
    return index


def query_items(paths, ckpt, flow_ranks=None, segments_from="ranks", extract_args=()):
    """Items (video rows cut into segments) for video files (extracted here, flow segments included) and
    video feature files (segments from --flow_ranks by file stem, or from the features); seconds spent."""
    from feature_extraction.flowProcessor import read_ranks_csv

    cfg, run_args = ckpt["config"], ckpt["run_args"]
    max_seconds = run_args.get("max_seconds")
    started = time.perf_counter()
    check_folder(ckpt.get("provenance"), "video", [Path(p).parent for p in paths if Path(p).suffix == ".npy"], "query")
    table = read_ranks_csv(flow_ranks) if flow_ranks else {}
    paths = video_queries(paths)
    media = [Path(p) for p in paths if Path(p).suffix != ".npy"]
    extracted = {}
    if media:
        folders = ((ckpt.get("features") or {}).get("video") or "clip").split("+")
        tokens, flags = folder_tokens(folders)
        with tempfile.TemporaryDirectory(prefix="vmr_query_") as tmp:
            work_dir = Path(tmp)
            run_extraction(media, tokens + ["flow"], flags, work_dir, list(extract_args))
            for p in media:
                parts = [work_dir / f / f"{p.stem}.npy" for f in folders]
                flow = work_dir / "flow" / f"{p.stem}.json"
                if all(x.is_file() for x in parts) and flow.is_file():
                    rows = [np.load(x) for x in parts]
                    t = min(len(x) for x in rows)
                    extracted[str(p)] = (np.concatenate([x[:t] for x in rows], axis=1), json.loads(flow.read_text()))
    items = []
    for p in paths:
        try:
            if str(p) in extracted:
                video, result = extracted[str(p)]
                boundaries, ranks = result["segments"], result["ranks"]
            elif Path(p).suffix == ".npy":
                video = np.load(p, allow_pickle=False)
                stem = Path(p).stem
                if stem in table:
                    boundaries, ranks = table[stem]["segments"], table[stem]["ranks"]
                elif segments_from == "features":
                    boundaries, ranks = video_segments(video, run_args["n_bkps"], run_args["min_seconds"])
                else:
                    raise ValueError("no segments: give --flow_ranks with this id, or --segments_from features")
            else:
                continue  # extraction already printed why
            if video.ndim != 2 or video.shape[1] != cfg["video_dim"] or len(video) == 0:
                raise ValueError(f"expected (T, {cfg['video_dim']}) video features for this checkpoint, got shape {video.shape}")
            video = video[:max_seconds].astype(np.float32) if max_seconds else video.astype(np.float32)
            items.append((str(p), (video, split_parts(boundaries, cfg["max_seq_len"], len(video)))))
        except (OSError, ValueError) as error:
            print(f"{p}: {error}", file=sys.stderr)
    return items, time.perf_counter() - started


def answer(model, index, query, top_k=5, rerank=100, track_index=None, segment_index=None):
    """Top tracks (pooled search of max(top_k, rerank) candidates, ordered by the aligned score) and the
    best library segment for each query segment. track_index / segment_index: FAISS indexes over the
    index's track_emb / seg_emb (vmr.search.index_for), or None for exact search."""
    video, parts = query
    seq = embed_tracks(model.video, [video], [parts])[0]
    idx, pooled = search(index["track_emb"], pool([seq]), max(top_k, rerank), track_index)
    found = idx[0] >= 0  # FAISS marks missing results with -1
    candidates, pooled = idx[0][found], pooled[0][found]
    offsets = index["seq_offsets"]
    tracks = [index["seq_emb"][offsets[c]:offsets[c + 1]].astype(np.float32) for c in candidates]
    q, q_len = pad_sequences([seq])
    g, g_len = pad_sequences(tracks)
    aligned = pair_scores(q, q_len, g, g_len, np.zeros(len(tracks), int), np.arange(len(tracks)))
    order = np.argsort(-aligned, kind="stable")[:top_k]
    top = [{"id": index["ids"][candidates[j]], "score": float(aligned[j]), "pooled": float(pooled[j])} for j in order]
    best, best_scores = search(index["seg_emb"], segment_vectors(seq, parts), 1, segment_index)
    segments = [{"start": int(s), "end": int(e), "track": index["ids"][index["seg_track"][j]],
                 "track_start": int(index["seg_start"][j]), "track_end": int(index["seg_end"][j]), "score": float(score)}
                for (s, e), j, score in zip(parts, best[:, 0], best_scores[:, 0]) if j >= 0]
    return top, segments


def print_table(result, n_tracks):
    print(f"{result['query']}: top {len(result['top'])} of {n_tracks} tracks ({result['search']} pooled search, aligned rerank of "
          f"{result['reranked']}; {result['search_seconds'] * 1000:.1f} ms)")
    print(f"  {'rank':>4}  {'aligned':>7}  {'pooled':>7}  track")
    for rank, t in enumerate(result["top"], 1):
        print(f"  {rank:>4}  {t['score']:7.4f}  {t['pooled']:7.4f}  {t['id']}")
    print(f"  {'video s':>9}  {'cosine':>7}  best library segment")
    for s in result["segments"]:
        print(f"  {s['start']:>4}-{s['end']:<4}  {s['score']:7.4f}  {s['track']} {s['track_start']}-{s['track_end']} s")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt written by transformer/train.py")
    p.add_argument("--index", default="INDEX.npz", help="index file to write (--build_index) or to search")
    p.add_argument("--build_index", action="store_true", help="segment and embed the --library tracks and write --index")
    p.add_argument("--library", help="folder or list file of music feature files (.npy, (T, 128)) or music/video files (extracted), "
                                     "or a split folder (vmnet/prepare.py --split_format mmap: its tracks, read one at a time)")
    p.add_argument("--query", nargs="+", help="video files (features and flow segments extracted first) or video feature files (.npy)")
    p.add_argument("--flow_ranks", help="ranks.csv giving the segments of .npy queries (looked up by file stem)")
    p.add_argument("--segments_from", choices=["ranks", "features"], default="ranks",
                   help="features: .npy queries missing from --flow_ranks are cut where their features change (default ranks)")
    p.add_argument("--top_k", type=int, default=5, help="tracks to return per query (default 5)")
    p.add_argument("--rerank", type=int, default=100,
                   help="pooled candidates reordered by the aligned score (default 100; at least --top_k)")
    add_search_arguments(p)  # the pooled track search and the segment search
    p.add_argument("--json", action="store_true", help="print JSON (results with extraction and search seconds) instead of a table")
    p.add_argument("--weights", choices=("official", "random"), default="official",
                   help="weights for on-the-fly extraction (random: tests and demos only)")
    p.add_argument("--extract_args", default="", help="extra extract.py arguments for on-the-fly extraction, e.g. '--device cuda'")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    extract_args = ["--weights", args.weights, *shlex.split(args.extract_args)]
    try:
        failed = 0
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
        model, ckpt = load_model(args.checkpoint)
        index = load_index(args.index, args.checkpoint)
        items, extraction_seconds = query_items(args.query, ckpt, args.flow_ranks, args.segments_from, extract_args)
        started = time.perf_counter()
        track_index, segment_index = index_for(index["track_emb"], args), index_for(index["seg_emb"], args)
        index_seconds = time.perf_counter() - started
        results = []
        for path, item in items:
            started = time.perf_counter()
            top, segments = answer(model, index, item, args.top_k, args.rerank, track_index, segment_index)
            results.append({"query": path, "search": args.faiss or "exact", "search_seconds": time.perf_counter() - started,
                            "top": top, "segments": segments, "reranked": min(max(args.rerank, args.top_k), len(index["ids"]))})
    except (RetrievalError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"index": str(args.index), "tracks": len(index["ids"]), "segments": len(index["seg_track"]),
                          "search": args.faiss or "exact", "extraction_seconds": extraction_seconds, "index_seconds": index_seconds,
                          "results": results}, indent=2))
    else:
        for result in results:
            print_table(result, len(index["ids"]))
    failed = len(args.query) - len(results)
    if failed:
        print(f"{failed} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
