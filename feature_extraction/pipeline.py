"""Extract per-second features: each video is decoded once and feeds every requested feature.

    python feature_extraction/extract.py --videos DIR_OR_LIST --out OUT --features resnet clip vggish

Writes OUT/<folder>/<id>.npy (float32 (T, D), id = the file's stem), OUT/<folder>/_feature.json
(model, checkpoint, sha256, weights, options, rate) and the derived OUT/manifest.json.
Videos whose files all exist are skipped, so a killed run resumes with the same command.
A bad input prints `path: reason`; the run goes on and exits non-zero with `N failed`.
"""
import argparse
import copy
import json
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from feature_extraction.base import InputError

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".flv", ".mpg", ".mpeg", ".ts", ".wmv", ".3gp",
                  ".ogv"}
LIST_SUFFIXES = {".txt", ".lst", ".list", ".csv"}


def build_parser(modules):
    from feature_extraction import inference
    from feature_extraction.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--videos", nargs="+", action="extend", required=True,
                   help="video files, folders (their files with a video suffix, sorted) and/or list files "
                        f"({', '.join(sorted(LIST_SUFFIXES))}: one path per line, relative to the working directory); "
                        "may be repeated; a name starting with '-' is given as --videos=-name.mp4")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per feature)")
    p.add_argument("--features", nargs="+", default=["resnet", "clip", "vggish"], choices=[*modules, "all"],
                   metavar="TOKEN", help=f"features to extract: {', '.join(modules)} or all (default: resnet clip vggish)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--weights", choices=["official", "random"], default="official",
                   help="official: published checkpoints from $VMR_CACHE (downloaded when missing); random: seeded "
                        "random weights from $VMR_CACHE/random/ (tests and demos only; made by "
                        "`python feature_extraction/weights.py --random`)")
    p.add_argument("--batch_size", type=int, default=16, help="frames (or examples) per model call (default 16)")
    p.add_argument("--max_seconds", type=float, default=None,
                   help="decode only the first N seconds of each video (the datasets use 360; default: whole video)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads and video decoder threads (default 0: torch's own choice; the decoder "
                        "uses one thread below 1280x720, where FFmpeg's frame threads cost more CPU than they save, "
                        "and FFmpeg's frame threads from there on)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo this run's videos even when their files exist (other videos' files are kept); a "
                        "folder made with other settings is deleted first (the run says what it held)")
    p.add_argument("--parallel", type=int, default=None,
                   help="videos decoded at once, each on its own threads; their frames share the networks' batches "
                        "(default: 4 with --device cuda, else 1)")
    inference.add_arguments(p)
    for module in modules.values():
        module.add_arguments(p)
    return p


def list_videos(sources):
    """Expand folders and list files into video paths (in order, duplicates removed)."""
    paths = []
    for source in map(Path, sources):
        if source.is_dir():
            paths += sorted(q for q in source.iterdir() if q.suffix.lower() in VIDEO_SUFFIXES and not q.name.startswith("."))
        elif source.suffix.lower() in LIST_SUFFIXES and source.is_file():
            lines = source.read_text(encoding="utf-8").splitlines()
            paths += [Path(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
        else:
            paths.append(source)
    return list(dict.fromkeys(paths))


def duplicate_stems(paths):
    seen = {}
    for p in paths:
        seen.setdefault(p.stem, []).append(p)
    return {stem: ps for stem, ps in seen.items() if len(ps) > 1}


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_settings(made, meta):
    """The flat keys whose values differ between two _feature.json records (absent counts as null), but for
    options.precision: every precision gives rows within the accuracy bar of float32 (tests/test_precision.py),
    so they are the same feature and a library may mix them. No keys: the same feature."""
    a, b = flat(made), flat(meta)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k != "options.precision")


def settings_text(d, keys):
    return ", ".join(f"{k}={json.dumps(d.get(k))}" for k in keys)


def folder_contents(folder, ids):
    """What deleting `folder` would lose, in words: its files, and the videos among them not in `ids`."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != "_feature.json"]
    videos = {p.stem for p in files if p.suffix == ".npy"}
    others = sorted(videos - set(ids))
    text = f"_feature.json and {len(files)} other files: features of {len(videos)} videos"
    if others:
        listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        text += f", {len(others)} of them not in this run and not redone ({listed})"
    return text


def check_folders(out, extractors, max_seconds, overwrite, ids):
    """Write each folder's _feature.json, or stop when it was made with other settings.

    A folder's settings are its extractor's provenance plus --max_seconds (features of the first N
    seconds are not those of a full run). With --overwrite, a folder made with other settings is
    deleted, saying what it held; `ids` are this run's videos. Folders that differ only in options.precision
    hold the same feature (differing_settings): this run's rows are added and the record lists both.
    """
    from feature_extraction.atomic import write_json

    for e in extractors:
        for folder, meta in e.outputs().items():
            meta = json.loads(json.dumps({**meta, "max_seconds": max_seconds}))
            path = out / folder / "_feature.json"
            if path.exists():
                made = json.loads(path.read_text(encoding="utf-8"))
                keys = differing_settings(made, meta)
                if not keys:
                    options = made.get("options") or {}
                    had = options.get("precision") or "float32"  # absent: made before the flag, in float32
                    adds = (meta.get("options") or {}).get("precision") or "float32"
                    precisions = "+".join(sorted(set(had.split("+")) | {adds}))  # e.g. bfloat16+float32
                    if precisions != had:
                        print(f"{out / folder}: made with precision {had}, this run adds {adds} rows (within the "
                              f"accuracy bar of float32); its _feature.json now records precision {precisions}",
                              file=sys.stderr)
                        write_json(path, {**made, "options": {**options, "precision": precisions}})
                    continue
                a, b = flat(made), flat(meta)
                made = f"{out / folder}: made with {settings_text(a, keys)}, this run uses {settings_text(b, keys)}"
                contents = folder_contents(out / folder, ids)
                if not overwrite:
                    raise SystemExit(f"{made}. Nothing was changed. To keep its features, use another --out (only "
                                     f"this run's {len(ids)} videos are extracted there); --overwrite deletes "
                                     f"{out / folder} ({contents}) and redoes this run's videos with the new settings")
                print(f"{made}; --overwrite: deleting {out / folder} ({contents})", file=sys.stderr)
                shutil.rmtree(out / folder)
            write_json(path, meta)


def write_outputs(out, files):
    from feature_extraction.atomic import atomic_path, save_npy, write_json, write_text

    for rel, content in files.items():
        path = out / rel
        if isinstance(content, dict):
            write_json(path, content)
        elif isinstance(content, bytes):
            with atomic_path(path) as tmp:
                tmp.write_bytes(content)
        elif isinstance(content, str):
            write_text(path, content)
        else:
            save_npy(path, content)


def missing_reason(e, result):
    """Why extractor `e` cannot use this video, or None."""
    info = result.info
    if e.wants_frames and not info.has_video:
        return "no video stream"
    if e.needs_audio and not info.has_audio:
        return "no audio stream"
    if e.wants_frames and result.t_video < 1:
        return "shorter than 1 s of video"
    if e.needs_audio and result.t_audio < 1:
        return "shorter than 1 s of audio"
    return None


def process(path, todo, out, args, run_pass=None):
    """One decode pass feeding `todo`; writes what succeeds. Returns (seconds decoded, failure text or None).
    `run_pass` is the pass (decode.run_pass by default; gpu_decode.pass_for gives the NVDEC one).

    Prints the pass's warnings (timestamp resets, sample-rate changes) and, when both streams were
    decoded, the warning for a T_video and T_audio more than 1 s apart."""
    from tqdm import tqdm

    from feature_extraction import decode
    from feature_extraction.base import time_axis_warning

    result = (run_pass or decode.run_pass)(path, todo, args.max_seconds, args.threads)
    both = result.info.has_video and result.info.has_audio and any(e.wants_frames for e in todo) \
        and any(e.audio_rate for e in todo)
    for line in result.warnings + ([time_axis_warning(path, result.t_video, result.t_audio)] if both else []):
        if line:
            tqdm.write(f"warning: {line}", file=sys.stderr)
    reasons = {}
    for e in todo:
        reason = missing_reason(e, result)
        if reason is None:
            try:
                write_outputs(out, e.end(result.t_video, result.t_audio))
                continue
            except InputError as err:
                reason = str(err)
        reasons.setdefault(reason, []).append(e.token)
    if not reasons:
        return result.seconds_decoded, None
    if len(reasons) == 1 and len(next(iter(reasons.values()))) == len(todo):
        return result.seconds_decoded, next(iter(reasons))
    return result.seconds_decoded, "; ".join(f"{r} ({', '.join(tokens)})" for r, tokens in reasons.items())


def run(argv, modules):
    """The extraction pass of extract.py's command line `argv` over the feature modules `modules`
    ({token: module}: extract.py gives every token, flowProcessor.py only its own). Everything `main`
    does but the closing `N failed`; returns the inputs that failed (each already reported as
    `path: reason`). Inputs, device and weights are checked before any model loads or OUT is created.

    Imports no feature module itself, so that a feature module can run the pass without an import circle."""
    t_start = time.perf_counter()
    # scancel and Slurm's time limit send SIGTERM: leave through SystemExit so atomic writes remove their temp files
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args = build_parser(modules).parse_args(argv)
    tokens = list(modules) if "all" in args.features else list(dict.fromkeys(args.features))
    out = Path(args.out)

    paths = list_videos(args.videos)
    dups = duplicate_stems(paths)
    if dups:
        lines = [f"  {stem}: {', '.join(map(str, ps))}" for stem, ps in dups.items()]
        raise SystemExit("inputs with the same id (file stem) would overwrite each other's features:\n"
                         + "\n".join(lines))
    missing = [p for p in paths if not p.is_file()]
    for p in missing:
        print(f"{p}: cannot open: No such file or directory", file=sys.stderr)
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise SystemExit(f"no videos found in {' '.join(args.videos)}")
    from feature_extraction import weights
    from feature_extraction.cli import check_device

    check_device(args.device)
    try:
        weights.require(weights.required_checkpoints(tokens, args), args.weights)
    except weights.WeightsError as e:
        raise SystemExit(str(e)) from None

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.weights == "random":
        print("warning: --weights random: features come from seeded random weights, not the official "
              "checkpoints; use them only for tests and demos", file=sys.stderr)
    extractors = []
    try:
        for token in tokens:
            built = modules[token].build(args)  # reads no weights: load() does, for the first video that needs them
            extractors += built if isinstance(built, list) else [built]
    except weights.WeightsError as e:
        raise SystemExit(str(e))
    check_folders(out, extractors, args.max_seconds, args.overwrite, [p.stem for p in paths])

    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from feature_extraction.decode import blas
    from feature_extraction.gpu_decode import pass_for

    run_pass = pass_for(args.device)
    parallel = args.parallel or (4 if args.device.startswith("cuda") else 1)
    load_lock = threading.Lock()

    def extract_video(path):
        """(skipped, seconds decoded, failure text or None, model-loading seconds) of one video."""
        todo = [e for e in extractors if args.overwrite or not all((out / f).exists() for f in e.files(path.stem))]
        if not todo:
            return True, 0.0, None, 0.0
        with load_lock:
            t_load = time.perf_counter()
            try:
                for e in todo:
                    e.load()
            except weights.WeightsError as err:
                raise SystemExit(str(err))
            loading = time.perf_counter() - t_load
        if parallel > 1:  # each video in flight gets its own state; the loaded networks are shared
            todo = [copy.copy(e) for e in todo]
        try:
            decoded, reason = process(path, todo, out, args, run_pass)
        except InputError as e:
            decoded, reason = 0.0, str(e)
        except Exception as e:  # a bug or a device error on one video must not stop the others
            decoded, reason = 0.0, f"{type(e).__name__}: {e}"
        return False, decoded, reason, loading

    failed, done, skipped, seconds, load_seconds = [], 0, 0, 0.0, 0.0
    t_videos = time.perf_counter()
    startup_seconds = t_videos - t_start
    pool = ThreadPoolExecutor(parallel, thread_name_prefix="video") if parallel > 1 else None
    try:
        # numpy's BLAS on one thread, as each pass sets it, so that passes ending on other threads cannot restore
        # it under one another's feet; it is restored once, at the end
        with blas().limit(limits=1, user_api="blas"):
            results = pool.map(extract_video, paths) if pool else map(extract_video, paths)
            for path, (skip, decoded, reason, loading) in zip(paths, tqdm(results, total=len(paths), unit="video",
                                                                            desc="extract", file=sys.stderr)):
                seconds, load_seconds = seconds + decoded, load_seconds + loading
                if skip:
                    skipped += 1
                elif reason:
                    failed.append(path)
                    tqdm.write(f"{path}: {reason}", file=sys.stderr)
                else:
                    done += 1
    finally:
        if pool:  # on Ctrl-C or SIGTERM the videos in flight finish (no partial files); no new one starts
            pool.shutdown(cancel_futures=True)
    video_seconds = time.perf_counter() - t_videos - load_seconds

    from feature_extraction.merge import merge

    merge(out)
    speed = f", {seconds / video_seconds:.2f} s of video per second" if seconds and video_seconds else ""
    failed = missing + failed
    n = len(paths) + len(missing)
    print(f"{n} video{'' if n == 1 else 's'}: {done} extracted, {skipped} already done, {len(failed)} failed; "
          f"features {' '.join(tokens)} in {out}; {seconds:.0f} s of video in {video_seconds:.1f} s{speed}; "
          f"start-up {startup_seconds:.1f} s, model loading {load_seconds:.1f} s, "
          f"total {time.perf_counter() - t_start:.1f} s")
    return failed


def main(argv, modules):
    """run(argv, modules), then `N failed` and exit status 1 when any input failed."""
    failed = run(argv, modules)
    if failed:
        print(f"{len(failed)} failed", file=sys.stderr)
        return 1
    return 0
