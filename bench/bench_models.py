"""The generated benchmark (vmr/synthetic.py): both models against their baselines under the protocol.

Per regime ("meanpool": mean pooling suffices; "trajectory": identity lives in the time-aligned walk):
generate the pairs, train VM-NET and the segment Transformer with their default settings (each as its own
process: wall seconds, seconds per epoch from train_log.csv, peak RSS from wait4), evaluate both on the same
test gallery (their test.py) and write one table: chance, tuned CCA, aligned
linear, VM-NET, Transformer pooled and aligned, both directions; plus the flow-rank loss ablation (the
Transformer trained again with --lambda2 0 --lambda3 0). The table is also drawn as bench/models.png.

Sizes: BENCH_MODELS_N (pairs, default 1500), BENCH_MODELS_TEST (test pairs, 500), BENCH_MODELS_REGIMES
(meanpool,trajectory), BENCH_MODELS_ABLATION (1), BENCH_MODELS_THREADS (2).
"""
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = (("chance", "chance"), ("tuned CCA", "cca"), ("aligned linear", "aligned_linear"), ("VM-NET", "vmnet"),
        ("Transformer pooled", "pooled"), ("Transformer aligned", "aligned"))


def tool(*args):
    """Run a repo script; (wall seconds, peak RSS in MiB). Its output goes to stderr (progress) and is not kept."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{args[0]} exited with {os.waitstatus_to_exitcode(status)}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def epoch_seconds(run_dir):
    with open(Path(run_dir) / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return sum(float(r["seconds"]) for r in rows) / len(rows), len(rows)


def train(script, data, save_dir, threads, *extra):
    common = ["--train_data_dir", data, "--train_csv_path", data / "train.csv", "--save_dir", save_dir, "--threads", threads]
    wall, rss = tool(script, *common, *extra)
    per_epoch, epochs = epoch_seconds(save_dir)
    return {"train_seconds": round(wall, 1), "epochs": epochs, "seconds_per_epoch": round(per_epoch, 2), "peak_rss_mib": round(rss)}


def regime_table(regime, n, n_test, threads, ablation, root):
    import json

    from vmr.synthetic import Settings, generate, write_dataset

    data = root / regime
    settings = Settings(n=n, regime=regime)
    write_dataset(data, generate(settings), n_test, settings)
    flow = ["--flow_ranks", data / "flow" / "ranks.csv"]
    out = {"pairs": n, "test_gallery": n_test, "training": {}}
    out["training"]["vmnet"] = train("vmnet/train.py", data, root / f"{regime}_vmnet", threads)
    out["training"]["transformer"] = train("transformer/train.py", data, root / f"{regime}_transformer", threads, *flow)
    metrics = root / f"{regime}_eval" / "metrics.json"
    out["eval_seconds"], _ = tool("transformer/test.py", "--checkpoint", root / f"{regime}_transformer" / "best.pt",
                                  "--test_data_dir", data, "--test_csv_path", data / "test.csv", "--out", metrics, "--threads", threads)
    vmnet_metrics = root / f"{regime}_vmnet" / "eval" / "metrics.json"
    tool("vmnet/test.py", "--checkpoint", root / f"{regime}_vmnet" / "best.pt", "--test_data_dir", data, "--test_csv_path",
         data / "test.csv", "--out", vmnet_metrics, "--threads", threads)
    m, v = json.loads(metrics.read_text()), json.loads(vmnet_metrics.read_text())
    blocks = {"chance": {"video_to_music": m["baselines"]["chance"], "music_to_video": m["baselines"]["chance"]},
              "cca": m["baselines"]["cca"], "aligned_linear": m["baselines"]["aligned_linear"], "vmnet": v, **m["scorings"]}
    keep = ("R@1", "R@5", "R@10", "MedR")
    out["table"] = {key: {d: {k: blocks[key][d][k] for k in keep} for d in ("video_to_music", "music_to_video")}
                    for _, key in ROWS if blocks.get(key)}
    out["baseline_settings"] = {k: {s: m["baselines"][k][s] for s in ("ridge", "dims")} for k in ("cca", "aligned_linear")}
    if ablation:
        run_dir = root / f"{regime}_no_flow_losses"
        out["training"]["transformer_no_flow_losses"] = train("transformer/train.py", data, run_dir, threads, *flow,
                                                              "--lambda2", "0", "--lambda3", "0")
        tool("transformer/test.py", "--checkpoint", run_dir / "best.pt", "--test_data_dir", data, "--test_csv_path",
             data / "test.csv", "--out", run_dir / "eval" / "metrics.json", "--threads", threads)
        a = json.loads((run_dir / "eval" / "metrics.json").read_text())["scorings"]
        out["ablation_no_flow_losses"] = {s: {k: a[s]["video_to_music"][k] for k in keep} for s in a}
    return out


def table_png(result, path):
    """The R@1 / R@10 / MedR table of every regime as an image."""
    from matplotlib.figure import Figure

    from feature_extraction.atomic import atomic_path

    regimes = [r for r in result if isinstance(result[r], dict) and "table" in result[r]]
    fig = Figure(figsize=(11, 1.2 + 2.4 * len(regimes)))
    axes = fig.subplots(len(regimes), 1, squeeze=False)[:, 0]
    for ax, regime in zip(axes, regimes):
        r = result[regime]
        cells = [[name] + [f"{r['table'][key][d][k]:.3f}" if k != "MedR" else f"{r['table'][key][d][k]:.1f}"
                           for d in ("video_to_music", "music_to_video") for k in ("R@1", "R@10", "MedR")]
                 for name, key in ROWS if key in r["table"]]
        ax.axis("off")
        ax.set_title(f"{regime}: {r['pairs']} pairs, whole test gallery of {r['test_gallery']}", loc="left")
        ax.table(cellText=cells, colLabels=["", "v→m R@1", "v→m R@10", "v→m MedR", "m→v R@1", "m→v R@10", "m→v MedR"],
                 loc="center", cellLoc="right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def run():
    n = int(os.environ.get("BENCH_MODELS_N", "1500"))
    n_test = int(os.environ.get("BENCH_MODELS_TEST", "500"))
    regimes = os.environ.get("BENCH_MODELS_REGIMES", "meanpool,trajectory").split(",")
    threads = os.environ.get("BENCH_MODELS_THREADS", "2")
    ablation = os.environ.get("BENCH_MODELS_ABLATION", "1") != "0"
    root = Path(tempfile.mkdtemp(prefix="vmr_bench_models_"))
    try:
        result = {regime: regime_table(regime, n, n_test, threads, ablation, root) for regime in regimes}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table_png(result, Path(__file__).with_name("models.png"))
    result["png"] = "bench/models.png"
    return result


if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
