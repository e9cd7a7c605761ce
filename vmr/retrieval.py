"""Music for a new video: the retrieve.py command line of every model. vmnet/retrieve.py, transformer/retrieve.py and
zeroshot/retrieve.py each pass their scorer (vmr.scorer); everything else is here, so the three rank, check and
print alike, and exactly as their test.py ranks a test split of the same tracks.

Build an index of a music library once (music feature files, music or video files whose features are extracted
on the fly into INDEX_features/ beside the index, so a killed build resumes, or a split folder), then query it
with video files (features extracted first) or video feature files (.npy). INDEX.npz holds what the scorer's
embed_tracks returned (pooled vectors, per-second vectors, segments), ids, each track's file and seconds, and
meta: the scorer's record (model, scoring, feature folders, checkpoint sha256) and the music's provenance. An
index built by another model or checkpoint is refused.
"""
import argparse
import contextlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from feature_extraction.atomic import atomic_path
from feature_extraction.cli import HelpFormatter
from vmr.data import read_rows
from vmr.runs import check_folder
from vmr.scorer import answers, embed_library, embed_query_set, moments, shown
from vmr.search import add_search_arguments, index_for
from vmr.splits import LazyRows, Split, is_split

# feature folder name -> (extract.py token, extra flags) that produce it
EXTRACT_ARGS = {
    "clip": ("clip", []), "clip_l2": ("clip", ["--clip_l2"]),
    "resnet101": ("resnet", []), "resnet50": ("resnet", ["--resnet", "50"]),
    "vggish": ("vggish", []), "vggish_pca": ("vggish", ["--pca"]),
    "i3d_rgb": ("i3d", []), "i3d_flow": ("i3d", []), "i3d": ("i3d", ["--i3d_concat"]),
    "wav2clip": ("wav2clip", []),
}
AUDIO_SUFFIXES = {".mp3", ".m4a", ".wav", ".flac", ".ogg", ".opus", ".aac"}
VIDEO_SUFFIXES = {".webm", ".mp4", ".mkv", ".mov", ".avi", ".m4v"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
INDEX_FORMAT = 2
NOTES = """Rows are one per whole second: a video's last partial second is not used (`seconds` in the answers says
how many were). The index stores what the model's scorer computes for each whole track, and a query is ranked
exactly as test.py ranks a test video. --weights official (the default) needs the official checkpoints in the
weights cache ($VMR_CACHE; `make weights` downloads them); random is for tests and demos only."""


class RetrievalError(Exception):
    """A problem the user can fix (wrong checkpoint or index, wrong widths, missing files)."""


def extract(paths, folders, work_dir, extract_args, flow=False):
    """feature_extraction/extract.py on media files into WORK_DIR (a finished file is not extracted again);
    failures print `path: reason` and the others go on. Returns the folders' names."""
    from feature_extraction import extract as extract_mod

    unknown = [f for f in folders if f not in EXTRACT_ARGS]
    if unknown:
        raise RetrievalError(f"do not know how to extract feature folder {unknown[0]!r}; pass precomputed .npy files")
    tokens = list(dict.fromkeys(EXTRACT_ARGS[f][0] for f in folders)) + (["flow"] if flow else [])
    flags = [flag for f in folders for flag in EXTRACT_ARGS[f][1]]
    # `--flag=value` forms: a file name such as "-x8Yq.mp4" is never read as a flag
    argv = [*(f"--videos={p}" for p in paths), f"--out={work_dir}", "--features", *tokens, *flags, *extract_args]
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the results alone (--json)
            extract_mod.run(argv)
    except SystemExit as e:  # extract.py stops with a message for run-level problems (weights, folders)
        if e.code not in (None, 0, 1):
            raise RetrievalError(str(e.code)) from None


def list_library(library):
    """(feature files .npy, media files) of a folder or a list file (one path per line); any other file is
    reported with a line and left out."""
    library = Path(library)
    if not library.exists():
        raise RetrievalError(f"--library {library}: no such folder or list file")
    if library.is_dir():
        paths = sorted(p for p in library.iterdir() if p.is_file() and not p.name.startswith("."))  # ids may start with "_"
    else:
        paths = [Path(line.strip()) for line in library.read_text(encoding="utf-8").splitlines() if line.strip()]
    media = [p for p in paths if p.suffix.lower() in AUDIO_SUFFIXES | VIDEO_SUFFIXES]
    npy = [p for p in paths if p.suffix == ".npy"]
    for p in paths:
        if p not in media and p not in npy and not p.name.startswith("_"):
            print(f"{p}: not a supported music file ({', '.join(sorted(AUDIO_SUFFIXES | VIDEO_SUFFIXES))}) or "
                  "feature file (.npy); left out", file=sys.stderr)
    return npy, media


def check_queries(paths):
    """The query paths that can be videos. A folder is an error before anything is extracted; an audio file or
    an image is reported (one line each) and left out."""
    usable = []
    for query in paths:
        p = Path(query)
        if p.is_dir():
            raise RetrievalError(f"--query {query}: a folder; give its video files (e.g. --query '{query}'/*.mp4) "
                                 "or video feature files (.npy)")
        if p.suffix.lower() in AUDIO_SUFFIXES:
            print(f"{p}: an audio file; a query is a video, and music goes into the library "
                  "(--build_index --library FOLDER)", file=sys.stderr)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            print(f"{p}: an image; a query is a video (or a video feature file .npy)", file=sys.stderr)
        else:
            usable.append(str(query))
    return usable


def check_provenance(scorer, kind, folders, what):
    if scorer.provenance is not None or scorer.checkpoint_sha256 is not None:  # zero-shot has no training record
        check_folder(scorer.provenance, kind, folders, what)


def library_tracks(scorer, library, extract_args, work_dir):
    """(ids, rows, files, sources, failed) of a library: rows a list of arrays, or a split folder's lazy rows;
    files the feature files the rows were read from, sources the library's own files (media or .npy)."""
    if is_split(library):  # a split folder (vmr/splits.py): its tracks, read one at a time
        split = Split(library)
        check_provenance(scorer, "audio", [split.folder / "audio"], "index")
        if split.dims[1] != scorer.audio_dim:
            raise RetrievalError(f"{library}: audio width {split.dims[1]}, the model's {scorer.audio_dim}")
        order = sorted(range(len(split.ids)), key=lambda i: split.ids[i])
        files = [str(split.folder / "audio.npy")] * len(order)
        return [split.ids[i] for i in order], LazyRows(split, "audio", order), files, files, 0
    npy, media = list_library(library)
    files, failed = {p.stem: p for p in npy}, 0
    sources = {p.stem: p for p in npy + media}
    check_provenance(scorer, "audio", [p.parent for p in npy], "index")
    if media:
        extract(media, [scorer.audio_feature], work_dir, extract_args)
        if (Path(work_dir) / scorer.audio_feature).is_dir():
            check_provenance(scorer, "audio", [Path(work_dir) / scorer.audio_feature], "index")
        for p in media:
            rows = Path(work_dir) / scorer.audio_feature / f"{p.stem}.npy"
            if rows.is_file():
                files[p.stem] = rows
            else:
                failed += 1  # extract.py said why
    ids, rows, paths = [], [], []
    for vid in sorted(files):
        try:
            rows.append(read_rows(files[vid], scorer.audio_dim))
        except (OSError, ValueError) as e:
            print(f"{files[vid]}: {e}", file=sys.stderr)
            failed += 1
            continue
        ids.append(vid)
        paths.append(str(Path(files[vid]).resolve()))
    return ids, rows, paths, [str(Path(sources[vid]).resolve()) for vid in ids], failed


def build_index(scorer, library, index_path, extract_args=()):
    """Embed every library track once and write INDEX.npz; returns the number of tracks that failed."""
    work_dir = Path(index_path).with_name(Path(index_path).stem + "_features")
    ids, rows, paths, sources, failed = library_tracks(scorer, library, list(extract_args), work_dir)
    if not ids:
        raise RetrievalError(f"{library}: no usable music track")
    embedded = embed_library(scorer, rows, paths)
    meta = {**scorer.record(), "index_format": INDEX_FORMAT, "audio_provenance": (scorer.provenance or {}).get("audio"),
            "features": feature_records(paths)}
    with atomic_path(index_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=np.array(ids), files=np.array(paths), sources=np.array(sources), meta=np.array(json.dumps(meta)),
                     **embedded)
    print(f"{index_path}: {len(ids)} tracks, {scorer.name} ({scorer.scoring} scoring)", file=sys.stderr)
    return failed


def feature_records(paths):
    """{folder: its _feature.json} for the folders the library's rows come from (weights, checkpoint sha256)."""
    out = {}
    for f in paths:
        meta = Path(f).parent / "_feature.json"
        if str(meta.parent) not in out and meta.is_file():
            out[str(meta.parent)] = json.loads(meta.read_text(encoding="utf-8"))
    return out


def load_index(index_path, scorer, script):
    """(ids, library arrays, meta) of an index built with this scorer; refuses another model's or checkpoint's."""
    if not Path(index_path).is_file():
        raise RetrievalError(f"--index {index_path}: no such index; build it first with {script} --build_index "
                             f"--library FOLDER --index {index_path}")
    with np.load(index_path, allow_pickle=False) as z:
        library = {key: z[key] for key in z.files}
    meta = json.loads(str(library.pop("meta")))
    if meta.get("index_format") != INDEX_FORMAT:
        raise RetrievalError(f"{index_path} was written by an older retrieve.py; rebuild it with {script} --build_index")
    if meta.get("kind") != scorer.kind:
        raise RetrievalError(f"{index_path} was built by {meta.get('model')} retrieval, not {scorer.name}; "
                             f"query it with {meta.get('kind')}/retrieve.py, or build one with {script} --build_index")
    if meta.get("checkpoint_sha256") != scorer.checkpoint_sha256:
        raise RetrievalError(f"{index_path} was built with checkpoint sha256 {str(meta.get('checkpoint_sha256'))[:12]}..., "
                             f"this checkpoint is {str(scorer.checkpoint_sha256)[:12]}...; rebuild it with --build_index")
    if meta.get("music") != scorer.record().get("music"):  # zero-shot: the track vectors the index stores
        raise RetrievalError(f"{index_path} was built with --music {meta.get('music')}; query it with the same")
    if any(info.get("weights") == "random" for info in meta.get("features", {}).values()):
        print(f"warning: {index_path} holds features made with seeded random weights (tests and demos only)", file=sys.stderr)
    return [str(i) for i in library.pop("ids")], library, meta


def query_inputs(scorer, paths, extract_args=(), flow_ranks=None):
    """[(path, rows (T, video_dim), flow boundaries or None)] for video files (extracted here, with their flow
    segments when the scorer uses them) and video feature files (.npy, segments from --flow_ranks by file stem);
    a query that fails prints `path: reason`. Seconds spent."""
    import tempfile

    from feature_extraction.flowProcessor import read_ranks_csv

    started, found = time.perf_counter(), {}
    table = read_ranks_csv(flow_ranks) if flow_ranks else {}
    media = [Path(p) for p in paths if Path(p).suffix != ".npy"]
    npy = [Path(p) for p in paths if Path(p).suffix == ".npy"]
    check_provenance(scorer, "video", [p.parent for p in npy], "query")
    if media:
        with tempfile.TemporaryDirectory(prefix="vmr_query_") as tmp:
            extract(media, scorer.video_features, tmp, list(extract_args), flow=scorer.flow_segments)
            folder = Path(tmp) / scorer.video_features[0]
            if len(scorer.video_features) == 1 and folder.is_dir():  # fused folders (clip+resnet101) are checked against the fusion's record by prepare.py
                check_provenance(scorer, "video", [folder], "query")
            for p in media:
                parts = [Path(tmp) / f / f"{p.stem}.npy" for f in scorer.video_features]
                flow = Path(tmp) / "flow" / f"{p.stem}.json"
                if all(x.is_file() for x in parts) and (flow.is_file() or not scorer.flow_segments):
                    rows = [np.load(x) for x in parts]
                    t = min(len(x) for x in rows)
                    found[str(p)] = (np.concatenate([x[:t] for x in rows], axis=1),
                                     json.loads(flow.read_text())["segments"] if scorer.flow_segments else None)
    out = []
    for p in paths:
        try:
            if Path(p).suffix == ".npy":
                rows, boundaries = read_rows(p, scorer.video_dim), (table.get(Path(p).stem) or {}).get("segments")
            elif str(p) in found:
                rows, boundaries = found[str(p)]
                if rows.shape[1] != scorer.video_dim or not np.isfinite(rows).all():
                    raise ValueError(f"extracted features of shape {rows.shape} do not fit this model's {scorer.video_dim}")
            else:
                continue  # extraction already printed why
            out.append((str(p), rows.astype(np.float32), boundaries))
        except (OSError, ValueError) as error:
            print(f"{p}: {error}", file=sys.stderr)
    return out, time.perf_counter() - started


def retrieve(scorer, ids, library, inputs, top_k, track_index=None, segment_index=None):
    """One result per query: the top_k tracks (rank, id, score, the moment start-end in seconds of the track, its
    file, source and seconds) and, where the scorer gives them, segment matches."""
    results = []
    for path, rows, boundaries in inputs:
        started = time.perf_counter()
        queries = embed_query_set(scorer, [rows], [boundaries])
        idx, scores = answers(scorer, queries, library, top_k, track_index)
        keep = [(j, s) for j, s in zip(idx[0], scores[0]) if j >= 0 and np.isfinite(s)]
        found = moments(scorer, queries, library, np.zeros(len(keep), np.int64), [j for j, _ in keep])
        top = [{"rank": r, "id": ids[j], "score": shown(scorer, s), "start": int(m[0]), "end": int(m[1]),
                "file": str(library["files"][j]), "source": str(library["sources"][j]), "seconds": int(library["seconds"][j])}
               for r, ((j, s), m) in enumerate(zip(keep, found), 1)]
        result = {"query": path, "seconds": int(queries["seconds"][0]), "top": top}
        if hasattr(scorer, "segment_matches"):
            result["segments"] = scorer.segment_matches(queries, library, 0, ids, segment_index)
        result["search_seconds"] = time.perf_counter() - started
        results.append(result)
    return results


def write_previews(results, folder, count):
    """For each media query, its `count` best tracks whose source is a media file: the query video with the
    answer's moment laid under it (vmr.preview), named so that the files sort by query and rank. Returns the
    number that failed (each printed)."""
    from vmr.preview import preview_name, write_preview

    failed = 0
    for result in results:
        if Path(result["query"]).suffix.lower() not in VIDEO_SUFFIXES:
            print(f"{result['query']}: a feature file; previews need the video (--query clip.mp4)", file=sys.stderr)
            continue
        for t in result["top"][:count]:
            if Path(t["source"]).suffix.lower() not in AUDIO_SUFFIXES | VIDEO_SUFFIXES:
                print(f"{t['source']}: not a media file; no preview for track {t['id']}", file=sys.stderr)
                continue
            out = Path(folder) / preview_name(Path(result["query"]).stem, t["rank"], t["id"], t["start"], t["end"])
            try:
                write_preview(result["query"], t["source"], t["start"], t["end"], out)
                t["preview"] = str(out)
            except (OSError, ValueError) as error:
                print(f"error: {error}", file=sys.stderr)
                failed += 1
    return failed


def print_table(result, summary):
    print(f"{result['query']}: {result['seconds']} s of video, top {len(result['top'])} of {summary['tracks']} tracks "
          f"({summary['model']}, {summary['scoring']} scoring, {summary['search']} search, "
          f"{result['search_seconds'] * 1000:.1f} ms)")
    print(f"  {'rank':>4}  {'score':>7}  {'moment s':>9}  track (seconds, source)")
    for t in result["top"]:
        print(f"  {t['rank']:>4}  {t['score']:7.4f}  {t['start']:>4}-{t['end']:<4}  {t['id']}  ({t['seconds']} s, {t['source']})"
              + (f"  preview {t['preview']}" if "preview" in t else ""))
    if result.get("segments"):
        print(f"  {'video s':>9}  {'cosine':>7}  best library segment")
        for s in result["segments"]:
            print(f"  {s['start']:>4}-{s['end']:<4}  {s['score']:7.4f}  {s['track']} {s['track_start']}-{s['track_end']} s")


def build_parser(doc, kind):
    """retrieve.py's flags; kind "vmnet", "transformer" or "zeroshot" adds its own (checkpoint, segments, music)."""
    p = argparse.ArgumentParser(description=doc.rstrip() + "\n\n" + NOTES, formatter_class=HelpFormatter)
    if kind != "zeroshot":
        p.add_argument("--checkpoint", required=True, help=f"best.pt (or last.pt) written by {kind}/train.py")
    p.add_argument("--index", default="ZEROSHOT_INDEX.npz" if kind == "zeroshot" else "INDEX.npz",
                   help="index file to write (--build_index) or to search")
    p.add_argument("--build_index", action="store_true", help="embed the --library tracks and write --index")
    p.add_argument("--library", help="folder or list file of music feature files (.npy), music or video files (features "
                                     "extracted into INDEX_features/), or a split folder (vmnet/prepare.py --split_format mmap)")
    if kind == "zeroshot":
        p.add_argument("--music", choices=("track", "rows"), default="track",
                       help="track vector: the whole-track Wav2CLIP embedding (track: what the model computes for a clip) "
                            "or the mean of the unit per-second rows (rows)")
    p.add_argument("--query", nargs="+", help="video files (features extracted first) or video feature files (.npy)")
    if kind == "transformer":
        p.add_argument("--flow_ranks", help="ranks.csv giving the flow segments of .npy queries by file stem (default: "
                                            "queries missing from it are cut where their features change)")
        p.add_argument("--rerank", type=int, help="aligned scoring: pooled candidates rescored per query, as in test.py "
                                                  "(default: the checkpoint's, 1000; 0 = every track)")
    p.add_argument("--top_k", type=int, default=5, help="tracks to return per query")
    add_search_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON document (results with extraction and search "
                                                       "seconds) instead of a table")
    p.add_argument("--preview", metavar="DIR", help="write, for each video query, its --preview_top best tracks as the video with the "
                                                    "track's moment laid under it (DIR/<query>_rank001_<track>_<start>-<end>s.mp4; "
                                                    "the library must hold music or video files)")
    p.add_argument("--preview_top", type=int, default=3, help="answers per query written with --preview")
    p.add_argument("--weights", choices=("official", "random"), default="official",
                   help="weights for on-the-fly extraction: official = the published checkpoints, from the weights cache "
                        "($VMR_CACHE; `make weights` downloads them); random = seeded random weights (tests and demos only)")
    p.add_argument("--extract_args", default="", help="extra extract.py arguments for on-the-fly extraction, e.g. '--device cuda'")
    return p


def main(argv, doc, kind, make_scorer):
    """retrieve.py: `make_scorer(args)` -> the model's scorer."""
    p = build_parser(doc, kind)
    args = p.parse_args(argv)
    if args.build_index and not args.library:
        p.error("--build_index needs --library")
    if not args.build_index and not args.query:
        p.error("give --query (or --build_index)")
    script = f"{kind}/retrieve.py"
    extract_args = ["--weights", args.weights, *shlex.split(args.extract_args)]
    failed = 0
    try:
        queries = check_queries(args.query or [])
        failed = len(args.query or []) - len(queries)
        scorer = make_scorer(args)
        if args.build_index:
            failed += build_index(scorer, args.library, args.index, extract_args)
        if not args.query:
            return report_failed(failed)
        ids, library, meta = load_index(args.index, scorer, script)
        inputs, extraction_seconds = query_inputs(scorer, queries, extract_args, getattr(args, "flow_ranks", None))
    except (RetrievalError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    failed += len(queries) - len(inputs)
    started = time.perf_counter()
    track_index = index_for(library["pooled"], args)
    segment_index = index_for(library["seg_emb"], args) if "seg_emb" in library and args.faiss else None
    index_seconds = time.perf_counter() - started
    results = retrieve(scorer, ids, library, inputs, args.top_k, track_index, segment_index)
    if args.preview:
        failed += write_previews(results, args.preview, args.preview_top)
    summary = {"index": str(args.index), "model": scorer.name, "scoring": scorer.scoring, "rerank": scorer.rerank,
               "tracks": len(ids), "search": args.faiss or "exact", "extraction_seconds": extraction_seconds,
               "index_seconds": index_seconds, "results": results}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for result in results:
            print_table(result, summary)
    return report_failed(failed)


def report_failed(failed):
    if failed:
        print(f"{failed} failed", file=sys.stderr)
        return 1
    return 0

