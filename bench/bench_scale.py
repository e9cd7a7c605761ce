"""Scale (issue #14): peak memory of every stage on split folders at two sizes, and a 200,000-track index.

Data: for each size in BENCH_SCALE_SIZES (default 2000,20000) generated items of BENCH_SCALE_SECONDS s (default
120) with 512-d video and 128-d audio rows (float32 .npy per item, written one item at a time: the generator
holds one item), a flow ranks.csv and provenance. Then, each in a fresh process, peak RSS (os.wait4's ru_maxrss)
and wall seconds of
    prepare               vmnet/prepare.py --split_format mmap --dtype BENCH_SCALE_DTYPE (default float16), with a
                          test split of BENCH_SCALE_TEST_ITEMS ids (default 200) at every size: the training split
                          grows, the test gallery stays (a gallery's scores grow with it by definition)
    vmnet_train           vmnet/train.py on DATA/train, --epochs 1 (one learning rate)
    transformer_train     transformer/train.py on DATA/train, --epochs 1 (linear start, one epoch, validation),
                          stopped after BENCH_SCALE_TRAIN_SECONDS when > 0 (default 0 = never; a stopped stage says
                          so, and a second run on the first 256 training ids, transformer_train_256_ids, makes the
                          checkpoint for the test stage)
    vmnet_test            vmnet/test.py on DATA/test (with its baselines fitted on DATA/train)
    transformer_test      transformer/test.py on DATA/test (the same)
and the ratio of the largest size to the smallest per stage (goal: <= 1.3).

Index: BENCH_SCALE_INDEX tracks (default 200,000) of clustered random unit float32 embeddings shaped like both
models' (VM-NET: one 512-d vector per track; the Transformer: one 64-d vector per track plus
BENCH_SCALE_SEGMENTS 64-d vectors per track, default 6), built in a child process (peak RSS, build seconds).
Exact top-10 of one query (matrix-vector product + argpartition, vmr.search.search) is timed against the
memory-bandwidth bound measured in the same run (the time to stream the same bytes once: best of repeated
column sums of the array); FAISS IVF-Flat and HNSW (inner product) report recall@10 against exact search and
their speed-up, for a few nprobe / efSearch settings (HNSW only up to BENCH_SCALE_HNSW_MAX rows, default 500,000:
the 1.2 M segment vectors get IVF only).

BENCH_SCALE_THREADS (default 2) torch/BLAS threads; BENCH_SCALE_DIR: where the temporary folder goes (default
the system's; about 10 GB at 20,000 items). The temporary folder is removed at the end, on error and on Ctrl-C.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def stage(args, limit=0, env=None):
    """Run a repo script in a fresh process: (wall seconds, peak RSS MiB, finished). Stopped (SIGTERM) after
    `limit` seconds when limit > 0; its peak RSS up to then is still reported."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, stdout=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})})
    finished = True
    try:
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if limit and time.perf_counter() - started > limit:
                child.send_signal(signal.SIGTERM)
                pid, status, usage = os.wait4(child.pid, 0)
                finished = False
                break
            time.sleep(0.2)
    except BaseException:  # interrupted: the stage goes too, so that the temporary folder can be removed
        child.kill()
        child.wait()
        raise
    child.returncode = os.waitstatus_to_exitcode(status)
    if finished and child.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} exited with {child.returncode}")
    return round(time.perf_counter() - started, 1), round(usage.ru_maxrss / 1024), finished


def generate(root, n, seconds, video_dim=512, audio_dim=128, seed=0):
    """FEATURES/video/<id>.npy, FEATURES/audio/<id>.npy (float32), FEATURES/flow/ranks.csv, one item at a time."""
    from feature_extraction.atomic import write_json

    rng = np.random.default_rng(seed)
    a_v = rng.standard_normal((8, video_dim), np.float32)
    a_a = rng.standard_normal((8, audio_dim), np.float32)
    for kind in ("video", "audio", "flow"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    bounds = list(range(0, seconds, 20)) + [seconds]
    with open(root / "flow" / "ranks.csv", "w", newline="") as f:
        f.write("vid,ranks,segments\n")
        for i in range(n):
            vid = f"item{i:06d}"
            z = rng.standard_normal((seconds, 8), np.float32)
            video = np.maximum(z @ a_v + 2 * rng.standard_normal((seconds, video_dim), np.float32), 0)
            audio = np.maximum(z @ a_a + 2 * rng.standard_normal((seconds, audio_dim), np.float32), 0)
            np.save(root / "video" / f"{vid}.npy", video)
            np.save(root / "audio" / f"{vid}.npy", audio)
            ranks = rng.permutation(len(bounds) - 1) + 1
            f.write(f"{vid},\"{' '.join(map(str, ranks))}\",\"{' '.join(map(str, bounds))}\"\n")
    for kind in ("video", "audio"):
        write_json(root / kind / "_feature.json", {"model": f"bench-scale-{kind}", "weights": "generated", "options": {"seed": seed}})


def size_run(root, n, seconds, dtype, threads, train_limit, test_items):
    features, data, runs = root / f"features_{n}", root / f"data_{n}", root / f"runs_{n}"
    t0 = time.perf_counter()
    generate(features, n, seconds)
    out = {"items": n, "seconds_per_item": seconds, "generate_seconds": round(time.perf_counter() - t0, 1), "stages": {}}
    th = ["--threads", str(threads)]
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}

    def record(name, args, limit=0):
        wall, rss, finished = stage(args, limit, env)
        out["stages"][name] = {"wall_seconds": wall, "peak_rss_mib": rss, **({} if finished else {"stopped_after_seconds": limit})}
        return finished

    record("prepare", ["vmnet/prepare.py", "--features", features, "--video", "video", "--audio", "audio", "--out", data,
                       "--test_fraction", str(test_items / n), "--split_format", "mmap", "--dtype", dtype])
    shutil.rmtree(features / "video")  # the split folders hold the rows now; the per-item files go to save disk
    shutil.rmtree(features / "audio")
    out["split_bytes"] = sum(p.stat().st_size for p in (data / "train").iterdir() if p.is_file())
    train_common = ["--train_data_dir", data / "train", "--train_csv_path", data / "train.csv", "--epochs", "1", *th]
    record("vmnet_train", ["vmnet/train.py", *train_common, "--save_dir", runs / "vmnet", "--lr", "1e-3"])
    flow = ["--flow_ranks", features / "flow" / "ranks.csv"]
    done = record("transformer_train", ["transformer/train.py", *train_common, *flow, "--save_dir", runs / "transformer"],
                  train_limit)
    if not done:  # a checkpoint for the test stage: one epoch on the first 256 training ids (its own stage)
        from vmr.data import read_ids, write_ids

        write_ids(runs / "subset.csv", read_ids(data / "train.csv")[:256])
        record("transformer_train_256_ids", ["transformer/train.py", *train_common[:2], "--train_csv_path", runs / "subset.csv",
                                             *train_common[4:], *flow, "--save_dir", runs / "transformer", "--overwrite"])
    test_common = ["--test_data_dir", data / "test", "--test_csv_path", data / "test.csv"]
    record("vmnet_test", ["vmnet/test.py", "--checkpoint", runs / "vmnet" / "best.pt", *test_common, "--out",
                          runs / "vmnet_eval" / "metrics.json"])
    record("transformer_test", ["transformer/test.py", "--checkpoint", runs / "transformer" / "best.pt", *test_common,
                                *flow, "--out", runs / "transformer_eval" / "metrics.json", *th])
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(runs, ignore_errors=True)
    return out


def clustered(rng, n, dim, clusters, spread=0.5, chunk=50000):
    """(n, dim) float32 unit rows around `clusters` random centres (noise of norm about `spread`)."""
    centres = rng.standard_normal((clusters, dim), np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for first in range(0, n, chunk):
        m = min(chunk, n - first)
        x = centres[rng.integers(0, clusters, m)] + (spread / np.sqrt(dim)) * rng.standard_normal((m, dim), np.float32)
        out[first:first + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def best_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def index_table(emb, rng, name, n_queries=30, k=10):
    """Exact search against the bandwidth bound, FAISS IVF / HNSW recall@10 and speed-up, for one array of rows."""
    from vmr.search import build_faiss, search

    picks = rng.integers(0, len(emb), n_queries)  # queries near stored rows: each has its own neighbourhood
    queries = emb[picks] + (0.3 / np.sqrt(emb.shape[1])) * rng.standard_normal((n_queries, emb.shape[1]), np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact_idx, _ = search(emb, queries, k)
    stream_best, _ = best_seconds(lambda: emb.sum(axis=0), 7)  # reads every byte once, vectorised over rows
    exact = [best_seconds(lambda q=q: search(emb, q[None], k), 3) for q in queries]
    exact_best = float(np.median([b for b, _ in exact]))
    out = {"rows": len(emb), "dim": emb.shape[1], "bytes": int(emb.nbytes), "queries": n_queries,
           "bandwidth_gb_per_s": round(emb.nbytes / stream_best / 1e9, 2), "bound_ms": round(stream_best * 1e3, 3),
           "exact_ms": round(exact_best * 1e3, 3), "exact_over_bound": round(exact_best / stream_best, 3), "faiss": {}}

    def per_query(index):
        return float(np.median([best_seconds(lambda q=q: index.search(q[None], k), 3)[0] for q in queries]))

    kinds = [("ivf", "nprobe", (8, 16, 32, 64)), ("hnsw", "efSearch", (64, 128, 256))]
    if len(emb) > int(os.environ.get("BENCH_SCALE_HNSW_MAX", "500000")):
        kinds = kinds[:1]  # building HNSW over more than a million rows takes many minutes on 2 cores
        out["faiss"]["hnsw"] = {"skipped": "more than BENCH_SCALE_HNSW_MAX rows"}
    for kind, knob, values in kinds:
        t0 = time.perf_counter()
        index = build_faiss(emb, kind, nlist=int(min(1024, max(1, len(emb) // 100))) if kind == "ivf" else None)
        build = time.perf_counter() - t0
        rows = []
        for value in values:
            if kind == "ivf":
                index.nprobe = value
            else:
                index.hnsw.efSearch = value
            idx, _ = search(emb, queries, k, index)
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact_idx, idx)]))
            seconds = per_query(index)
            rows.append({knob: value, "recall@10": round(recall, 4), "query_ms": round(seconds * 1e3, 3),
                         "speedup_vs_exact": round(exact_best / seconds, 1)})
        ok = [r for r in rows if r["recall@10"] >= 0.95]
        out["faiss"][kind] = {"build_seconds": round(build, 1), "settings": rows,
                              "fastest_at_recall_0.95": max(ok, key=lambda r: r["speedup_vs_exact"]) if ok else None}
        del index
    print(f"{name}: exact {out['exact_ms']} ms, bound {out['bound_ms']} ms", file=sys.stderr)
    return out


def index_child():
    """The index part, run in its own process (its peak RSS is the index's): prints one JSON document."""
    import faiss

    threads = int(os.environ.get("BENCH_SCALE_THREADS", "2"))
    faiss.omp_set_num_threads(threads)
    n = int(os.environ.get("BENCH_SCALE_INDEX", "200000"))
    segments = int(os.environ.get("BENCH_SCALE_SEGMENTS", "6"))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    vmnet = clustered(rng, n, 512, max(1, n // 200))
    transformer_tracks = clustered(rng, n, 64, max(1, n // 200))
    transformer_segments = clustered(rng, n * segments, 64, max(1, n * segments // 200))
    out = {"tracks": n, "make_seconds": round(time.perf_counter() - t0, 1),
           "vmnet_tracks": index_table(vmnet, rng, "VM-NET tracks"),
           "transformer_tracks": index_table(transformer_tracks, rng, "Transformer tracks"),
           "transformer_segments": index_table(transformer_segments, rng, "Transformer segments")}
    print(json.dumps(out))


def index_run(threads):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--index-child"], cwd=REPO, stdout=subprocess.PIPE, env=env)
    data = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"index child exited with {os.waitstatus_to_exitcode(status)}")
    out = json.loads(data)
    out["wall_seconds"] = round(time.perf_counter() - started, 1)
    out["peak_rss_mib"] = round(usage.ru_maxrss / 1024)
    return out


def run():
    sizes = [int(s) for s in os.environ.get("BENCH_SCALE_SIZES", "2000,20000").split(",") if s]
    seconds = int(os.environ.get("BENCH_SCALE_SECONDS", "120"))
    dtype = os.environ.get("BENCH_SCALE_DTYPE", "float16")
    threads = int(os.environ.get("BENCH_SCALE_THREADS", "2"))
    train_limit = float(os.environ.get("BENCH_SCALE_TRAIN_SECONDS", "0"))
    test_items = int(os.environ.get("BENCH_SCALE_TEST_ITEMS", "200"))
    result = {"dtype": dtype, "threads": threads, "test_items": test_items}
    if int(os.environ.get("BENCH_SCALE_INDEX", "200000")) > 0:
        result["index"] = index_run(threads)
    root = Path(tempfile.mkdtemp(prefix="vmr_bench_scale_", dir=os.environ.get("BENCH_SCALE_DIR")))
    try:
        result["sizes"] = [size_run(root, n, seconds, dtype, threads, train_limit, test_items) for n in sizes]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if len(sizes) >= 2:
        small, large = result["sizes"][0]["stages"], result["sizes"][-1]["stages"]
        result["rss_ratio_largest_to_smallest"] = {name: round(large[name]["peak_rss_mib"] / small[name]["peak_rss_mib"], 2)
                                                   for name in small if name in large}
    return result


if __name__ == "__main__":
    if sys.argv[1:] == ["--index-child"]:
        sys.path.insert(0, str(REPO))
        index_child()
        sys.exit(0)
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
