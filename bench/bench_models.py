"""The generated benchmark (vmr/synthetic.py): both models against their tuned baselines, over seeds, with intervals.

Settings: a regime and a family of latent dynamics (vmr.synthetic): "meanpool" and "trajectory" on the "walk"
family, where the models' defaults were chosen, and the "library" regime (each video a moment of a longer
track, several videos per track) on every family in BENCH_MODELS_FAMILIES, so that a gain must hold on
families no default was chosen on. Each setting runs on BENCH_MODELS_SEEDS seeds (data and models); each seed
trains VM-NET and the segment Transformer with their default flags (each as its own process: wall seconds,
seconds per epoch, peak RSS) and evaluates both with their test.py on the same test split (the baselines,
fitted on the same training ids and tuned on the same validation ids, come with them).

Reported per setting: every row's mean and std over seeds of v->m R@1 and R@10, and in the library regime
mIoU and MoR@1 (IoU > 0.7); and for each model against the best baseline (highest mean R@1; in the library
regime also MoR@1) the paired bootstrap 95% interval of the difference over the queries of all seeds
(vmr.moments.paired_bootstrap_hits): a gain is claimed only where the interval excludes 0. The table is also
drawn as bench/models.png.

The MGSV-EC estimate (BENCH_MODELS_MGSV=1): both models trained for two epochs and tested on a generated library
of MGSV-EC's shapes (512-d CLIP video rows, 768-d AST music rows, 6-50 s videos, tracks about 140 s long); the
measured seconds per training video and epoch, and per (query, track) pair of the test, give the time of one
epoch on MGSV-EC's 49,194 training videos and of its test (2,000 queries against 2,000 tracks) on this machine.

Sizes: BENCH_MODELS_N (videos, default 1000), BENCH_MODELS_TEST (test videos, 250), BENCH_MODELS_SEEDS (0,1,2),
BENCH_MODELS_SETTINGS (meanpool:walk,trajectory:walk,library:walk,library:oscillation,library:switching),
BENCH_MODELS_THREADS (2), BENCH_MODELS_MGSV (1).
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ROWS = (("chance", "chance"), ("tuned CCA", "cca"), ("aligned linear", "aligned_linear"), ("VM-NET", "vmnet"),
        ("Transformer", "transformer"))
MODELS, BASELINES = ("vmnet", "transformer"), ("cca", "aligned_linear")
MOR = "MoR@1 IoU>0.7"


def tool(*args):
    """Run a repo script; (wall seconds, peak RSS in MiB). Its output goes to stderr (progress) and is not kept."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{args[0]} exited with {os.waitstatus_to_exitcode(status)}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def train(script, data, save_dir, threads, *extra):
    common = ["--train_data_dir", data, "--train_csv_path", data / "train.csv", "--save_dir", save_dir, "--threads", threads]
    wall, rss = tool(script, *common, *extra)
    with open(Path(save_dir) / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"train_seconds": round(wall, 1), "epochs": len(rows), "peak_rss_mib": round(rss),
            "seconds_per_epoch": round(sum(float(r["seconds"]) for r in rows) / len(rows), 2)}


def one_seed(regime, family, seed, n, n_test, threads, root):
    """Train and test both models on one generated dataset: {row key: per-query v->m ranks and IoUs, summary}."""
    from vmr.synthetic import Settings, generate, write_dataset

    data = root / f"{regime}_{family}_{seed}"
    settings = Settings(n=n, regime=regime, family=family, seed=seed)
    write_dataset(data, generate(settings), n_test, settings)
    flow = ["--flow_ranks", data / "flow" / "ranks.csv"]
    training = {"vmnet": train("vmnet/train.py", data, data / "vmnet", threads, "--seed", seed),
                "transformer": train("transformer/train.py", data, data / "transformer", threads, *flow, "--seed", seed)}
    metrics = {}
    for model, extra in (("vmnet", []), ("transformer", flow)):
        out = data / model / "eval" / "metrics.json"
        tool(f"{model}/test.py", "--checkpoint", data / model / "best.pt", "--test_data_dir", data, "--test_csv_path",
             data / "test.csv", "--out", out, "--threads", threads, "--seed", seed, *extra)
        metrics[model] = json.loads(out.read_text())
    m = metrics["transformer"]
    blocks = {"vmnet": metrics["vmnet"], "transformer": m, **{key: m["baselines"][key] for key in BASELINES}}
    out = {key: {"ranks": block["video_to_music"]["ranks"], "ious": block["library"]["ious"],
                 "R@10": block["video_to_music"]["R@10"], "mIoU": block["library"]["mIoU"]} for key, block in blocks.items()}
    out["chance"] = {"R@1": m["baselines"]["chance"]["R@1"], "R@10": m["baselines"]["chance"]["R@10"],
                     "mIoU": m["baselines"]["library_chance"]["mIoU"], MOR: m["baselines"]["library_chance"][MOR]}
    out["training"] = training
    out["transformer_scoring"] = m["scoring"]
    out["baseline_settings"] = {k: {s: m["baselines"][k][s] for s in ("ridge", "dims")} for k in BASELINES}
    out["tracks"], out["queries"] = m["gallery"], m["queries"]
    return out


def summary(runs, library):
    """Mean and std over seeds of each row, and each model's paired bootstrap intervals against the best baseline."""
    from vmr.moments import paired_bootstrap_hits

    def per_query(key, metric):
        hits = []
        for r in runs:
            ranks, ious = np.asarray(r[key]["ranks"]), np.asarray(r[key]["ious"])
            hits.append(ranks == 1 if metric == "R@1" else (ranks == 1) & (ious > 0.7))
        return hits

    table = {}
    for _, key in ROWS:
        values = {}
        for metric in ("R@1", "R@10", "mIoU", MOR) if library else ("R@1", "R@10"):
            if key == "chance":
                seeds = [r["chance"][metric] for r in runs]
            elif metric in ("R@1", MOR):
                seeds = [float(h.mean()) for h in per_query(key, metric)]
            else:
                seeds = [r[key][metric] for r in runs]
            values[metric] = {"mean": round(float(np.mean(seeds)), 4), "std": round(float(np.std(seeds)), 4),
                              "seeds": [round(v, 4) for v in seeds]}
        table[key] = values
    comparisons = {}
    for metric in ("R@1", MOR) if library else ("R@1",):
        best = max(BASELINES, key=lambda k: table[k][metric]["mean"])
        for model in MODELS:
            diff, low, high = paired_bootstrap_hits(np.concatenate(per_query(model, metric)), np.concatenate(per_query(best, metric)))
            comparisons[f"{model} - {best} ({metric})"] = {"difference": round(diff, 4), "interval95": [round(low, 4), round(high, 4)],
                                                           "gain": low > 0, "loss": high < 0}
    return {"table": table, "comparisons": comparisons}


MGSV_TRAIN, MGSV_QUERIES, MGSV_TRACKS = 49194, 2000, 2000


def mgsv_estimate(threads, root, n=600, n_test=150):
    """Seconds per training video and epoch and per test (query, track) pair on MGSV-EC-shaped data, and what they
    make of one epoch and of the test on MGSV-EC itself."""
    from vmr.synthetic import Settings, generate, write_dataset

    data = root / "mgsv_shaped"
    settings = Settings(n=n, regime="library", video_dim=512, audio_dim=768, min_len=6, max_len=50, track_extra=(90, 140))
    write_dataset(data, generate(settings), n_test, settings)
    out = {"videos": n, "test_queries": n_test}
    for model, extra in (("vmnet", []), ("transformer", ["--segments_from", "features"])):
        training = train(f"{model}/train.py", data, data / model, threads, "--epochs", 2, *extra)
        n_train = len((data / "train.csv").read_text().split()) - 1
        test_seconds, _ = tool(f"{model}/test.py", "--checkpoint", data / model / "best.pt", "--test_data_dir", data,
                               "--test_csv_path", data / "test.csv", "--out", data / model / "eval" / "metrics.json",
                               "--threads", threads)
        tracks = json.loads((data / model / "eval" / "metrics.json").read_text())["gallery"]
        per_video, per_pair = training["seconds_per_epoch"] / n_train, test_seconds / (n_test * tracks)
        out[model] = {"seconds_per_training_video_epoch": round(per_video, 5), "test_seconds": round(test_seconds, 1),
                      "test_seconds_per_pair": round(per_pair, 7), "mgsv_epoch_hours": round(per_video * MGSV_TRAIN / 3600, 2),
                      "mgsv_test_hours": round(per_pair * MGSV_QUERIES * MGSV_TRACKS / 3600, 2), **training}
    return out


def table_png(result, path):
    """Each setting's mean R@1 (and MoR@1) with the std over seeds, as an image."""
    from matplotlib.figure import Figure

    from feature_extraction.atomic import atomic_path

    settings = [s for s in result if isinstance(result[s], dict) and "summary" in result[s]]
    fig = Figure(figsize=(11, 1.0 + 2.2 * len(settings)))
    axes = fig.subplots(len(settings), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, settings):
        t = result[name]["summary"]["table"]
        metrics = [m for m in ("R@1", "R@10", "mIoU", MOR) if m in t["chance"]]
        cells = [[label] + [f"{t[key][m]['mean']:.3f} ± {t[key][m]['std']:.3f}" for m in metrics] for label, key in ROWS]
        ax.axis("off")
        ax.set_title(f"{name}: {result[name]['queries']} queries, {result[name]['tracks']} tracks, seeds {result[name]['seeds']}",
                     loc="left")
        ax.table(cellText=cells, colLabels=[""] + [f"v→m {m}" for m in metrics], loc="center", cellLoc="right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def run():
    n = int(os.environ.get("BENCH_MODELS_N", "1000"))
    n_test = int(os.environ.get("BENCH_MODELS_TEST", "250"))
    seeds = [int(s) for s in os.environ.get("BENCH_MODELS_SEEDS", "0,1,2").split(",")]
    settings = os.environ.get("BENCH_MODELS_SETTINGS",
                              "meanpool:walk,trajectory:walk,library:walk,library:oscillation,library:switching").split(",")
    threads = os.environ.get("BENCH_MODELS_THREADS", "2")
    root = Path(tempfile.mkdtemp(prefix="vmr_bench_models_"))
    result = {}
    try:
        for setting in settings:
            regime, family = setting.split(":")
            runs = [one_seed(regime, family, seed, n, n_test, threads, root) for seed in seeds]
            result[setting] = {"regime": regime, "family": family, "seeds": seeds, "queries": runs[0]["queries"],
                               "tracks": runs[0]["tracks"], "summary": summary(runs, regime == "library"),
                               "runs": [{k: r[k] for k in ("training", "transformer_scoring", "baseline_settings")} for r in runs]}
            print(json.dumps({setting: result[setting]["summary"]["comparisons"]}), file=sys.stderr, flush=True)
        if os.environ.get("BENCH_MODELS_MGSV", "1") != "0":
            result["mgsv_estimate"] = mgsv_estimate(threads, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table_png(result, Path(__file__).with_name("models.png"))
    result["png"] = "bench/models.png"
    return result


if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
