"""`make demo`: the whole toolkit end to end on a generated sample, offline, in minutes on a CPU.

    python -m vmr.demo [--out demo_out] [--full] [--weights auto|official|random]

Stages: sample (12 generated clips of 20 s) -> weights (official when they can be had, else
seeded random ones, said loudly) -> features (resnet, clip, vggish, wav2clip, flow, avpeaks on every clip)
-> prepare (clip + vggish, seeded train/test split; wav2clip rows for the zero-shot row) -> i3d (Farneback flow) on the first
--i3d_seconds of the held-out clips (every clip, whole, with --full; I3D is the costly model on CPU) -> VM-NET train + test -> Transformer train + test -> retrieval of music
for one held-out clip with both models -> report.html. Every stage is the command a user would
type (shown before it runs), so the demo doubles as a walk-through; it prints a one-line summary
and the time of each stage, a table of all stages at the end, and the report's path last.
A rerun reuses finished features and retrains the models.
"""
import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXTRACT = "feature_extraction/extract.py"
NEEDED_WEIGHTS = ("resnet101", "clip_vit_b32", "vggish", "i3d_rgb", "i3d_flow", "wav2clip")
# 20 s clips: segments of at least 4 s and up to 3 breakpoints, so every clip has several segments.
SEGMENT_FLAGS = ["--min_seconds", "4", "--n_bkps", "3"]


class StageFailed(Exception):
    pass


class Demo:
    def __init__(self, out, threads):
        self.out = Path(out).resolve()
        self.threads = threads
        self.stages = []  # (name, seconds, summary)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads))

    def stage(self, name, work, number, total):
        """Run `work() -> summary`, print its time and summary, and remember both for the table."""
        print(f"\n== [{number}/{total}] {name} ==", flush=True)
        start = time.perf_counter()
        summary = work()
        seconds = time.perf_counter() - start
        self.stages.append((name, seconds, summary))
        print(f"-- {name}: {summary} ({seconds:.1f} s)", flush=True)

    def run(self, *args):
        """One tool of the toolkit through its command line, from the repo root, output live."""
        command = [sys.executable, *map(str, args)]
        print("$ " + shlex.join(["python", *map(str, args)]), flush=True)
        result = subprocess.run(command, cwd=REPO, env=self.env)
        if result.returncode != 0:
            raise StageFailed(f"`{shlex.join(command[1:])}` exited with status {result.returncode}")

    def table(self):
        width = max(len(name) for name, _, _ in self.stages)
        lines = [f"{'stage':<{width}}  {'seconds':>8}  summary"]
        lines += [f"{name:<{width}}  {seconds:8.1f}  {summary}" for name, seconds, summary in self.stages]
        lines.append(f"{'total':<{width}}  {sum(s for _, s, _ in self.stages):8.1f}")
        return "\n".join(lines)


def choose_weights(requested):
    """'official' when every needed checkpoint can be had (downloading it), else 'random'."""
    from feature_extraction import weights

    if requested in ("auto", "official"):
        os.environ.setdefault("VMR_DOWNLOAD_TIMEOUT", "15")  # a blocked network fails fast
        try:
            for name in NEEDED_WEIGHTS:
                weights.checkpoint_path(name, "official")
            return "official", "official checkpoints verified"
        except weights.WeightsError as e:
            if requested == "official":
                raise StageFailed(f"official weights cannot be had: {e}") from None
            print(f"official weights cannot be had ({e})", flush=True)
    missing = []
    for name in NEEDED_WEIGHTS:
        try:
            weights.checkpoint_path(name, "random")
        except weights.WeightsError:
            missing.append(name)
    if missing:
        weights.write_random(names=missing)
    print("USING --weights random: seeded random networks, so the features and every number below "
          "show that the pipeline runs, not how well it retrieves music", flush=True)
    return "random", f"random weights ({len(missing)} written to {weights.cache_dir() / 'random'})"


def count_files(folder, pattern="*.npy"):
    return len(list(Path(folder).glob(pattern))) if Path(folder).is_dir() else 0


def metrics_line(path):
    m = json.loads(Path(path).read_text())
    v2m = m["video_to_music"]
    chance = m["baselines"]["chance"]
    chance = chance.get("video_to_music", chance)
    return (f"N = {m['gallery']}, video->music R@1 {v2m['R@1']:.2f} R@10 {v2m['R@10']:.2f} MedR {v2m['MedR']:.1f} "
            f"(chance R@1 {chance['R@1']:.2f}, MedR {chance['MedR']:.1f})")


def last_log_line(save_dir):
    with open(Path(save_dir) / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    return f"{len(rows)} epochs, final train loss {float(last['train_loss']):.4f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--full", action="store_true", default=os.environ.get("FULL", "") not in ("", "0"),
                        help="run i3d on every clip, not only the held-out ones (also FULL=1, as in `make demo FULL=1`)")
    parser.add_argument("--weights", choices=["auto", "official", "random"], default="auto",
                        help="auto (default): official checkpoints when they can be had, else random ones, said loudly")
    parser.add_argument("--i3d_seconds", type=int, default=4,
                        help="seconds of each held-out clip given to I3D (about 3.5 s per video second on 2 cores); "
                             "ignored with --full (default: 4)")
    parser.add_argument("--n", type=int, default=12, help="number of generated clips (default: 12)")
    parser.add_argument("--seconds", type=int, default=20, help="length of each clip in seconds (default: 20)")
    parser.add_argument("--epochs", type=int, default=30, help="VM-NET epochs (default: 30)")
    parser.add_argument("--transformer_epochs", type=int, default=10, help="Transformer epochs (default: 10)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per tool (default: 2)")
    args = parser.parse_args(argv)

    demo = Demo(args.out, args.threads)
    out = demo.out
    videos, features, data = out / "videos", out / "features", out / "data"
    vmnet_dir, transformer_dir = out / "vmnet", out / "transformer"
    zeroshot = ["--wav2clip_dir", features / "wav2clip", "--clip_dir", features / "clip"]  # the no-training row
    state = {}

    def sample():
        from feature_extraction.make_sample import make_sample

        made = make_sample(videos, n=args.n, seconds=args.seconds)
        return f"{len(made)} clips of {args.seconds} s in {videos}"

    def weights():
        state["weights"], summary = choose_weights(args.weights)
        return summary

    def extract():
        demo.run(EXTRACT, "--videos", videos, "--out", features, "--features", "resnet", "clip", "vggish", "wav2clip", "flow", "avpeaks",
                 "--weights", state["weights"], "--threads", args.threads, *SEGMENT_FLAGS, "--plot")
        counts = {name: count_files(features / name) for name in ("resnet101", "clip", "vggish", "flow")}
        counts["av_peaks"] = count_files(features / "av_peaks" / "video")
        return ", ".join(f"{name} {n}" for name, n in counts.items()) + " files"

    def prepare():
        demo.run("vmnet/prepare.py", "--features", features, "--video", "clip", "--audio", "vggish", "--out", data,
                 "--test_fraction", "0.25", "--seed", "0")
        from vmr.data import read_ids

        state["test_ids"] = read_ids(data / "test.csv")
        return f"{len(read_ids(data / 'train.csv'))} train / {len(state['test_ids'])} test ids (clip + vggish)"

    def i3d():
        if args.full:  # every clip, whole length; --overwrite replaces rows a capped run left
            scope = ["--videos", videos, "--overwrite"]
        else:
            held_out = out / "i3d_videos.txt"
            held_out.write_text("".join(f"{p}\n" for p in sorted(videos.iterdir()) if p.stem in state["test_ids"]))
            scope = ["--videos", held_out, "--max_seconds", args.i3d_seconds]
        demo.run(EXTRACT, *scope, "--out", features, "--features", "i3d", "--flow_method", "farneback",
                 "--weights", state["weights"], "--threads", args.threads)
        return f"i3d_rgb {count_files(features / 'i3d_rgb')}, i3d_flow {count_files(features / 'i3d_flow')} files" + (
            "" if args.full else f" (first {args.i3d_seconds} s of the held-out clips; FULL=1 for all)")

    def train_vmnet():
        shutil.rmtree(vmnet_dir, ignore_errors=True)
        demo.run("vmnet/train.py", "--train_data_dir", data, "--train_csv_path", data / "train.csv",
                 "--save_dir", vmnet_dir, "--epochs", args.epochs, "--batch_size", 64, "--threads", args.threads,
                 "--val_fraction", "0.25")
        return last_log_line(vmnet_dir)

    def test_vmnet():
        demo.run("vmnet/test.py", "--test_data_dir", data, "--test_csv_path", data / "test.csv",
                 "--checkpoint", vmnet_dir / "best.pt", "--out", vmnet_dir / "metrics.json",
                 "--peaks_dir", features / "av_peaks", *zeroshot)
        return metrics_line(vmnet_dir / "metrics.json")

    def train_transformer():
        shutil.rmtree(transformer_dir, ignore_errors=True)
        demo.run("transformer/train.py", "--train_data_dir", data, "--train_csv_path", data / "train.csv",
                 "--flow_ranks", features / "flow" / "ranks.csv", "--save_dir", transformer_dir,
                 "--epochs", args.transformer_epochs, "--threads", args.threads, *SEGMENT_FLAGS,
                 "--val_fraction", "0.25")
        return last_log_line(transformer_dir)

    def test_transformer():
        demo.run("transformer/test.py", "--test_data_dir", data, "--test_csv_path", data / "test.csv",
                 "--flow_ranks", features / "flow" / "ranks.csv", "--checkpoint", transformer_dir / "best.pt",
                 "--out", transformer_dir / "metrics.json", "--peaks_dir", features / "av_peaks",
                 "--threads", args.threads, *zeroshot)
        return metrics_line(transformer_dir / "metrics.json")

    def retrieve():
        query = videos / f"{state['test_ids'][0]}.mp4"
        on_the_fly = ["--weights", state["weights"], "--extract_args", shlex.join(["--threads", str(args.threads), *SEGMENT_FLAGS])]
        for tool, save_dir in (("vmnet/retrieve.py", vmnet_dir), ("transformer/retrieve.py", transformer_dir)):
            demo.run(tool, "--build_index", "--library", data / "audio", "--checkpoint", save_dir / "best.pt",
                     "--index", save_dir / "INDEX.npz")
            demo.run(tool, "--index", save_dir / "INDEX.npz", "--checkpoint", save_dir / "best.pt", "--query", query,
                     "--top_k", 5, *on_the_fly)
        return f"top-5 tracks of {len(list((data / 'audio').glob('*.npy')))} for held-out clip {query.name}, both models (above)"

    def report():
        demo.run("-m", "vmr.report", "--run", f"VM-NET={vmnet_dir}", "--run", f"Transformer={transformer_dir}",
                 "--videos", videos, "--out", out / "report.html")
        return f"{out / 'report.html'} ({(out / 'report.html').stat().st_size // 1024} KiB)"

    stages = [("sample", sample), ("weights", weights), ("features", extract), ("prepare", prepare), ("i3d", i3d),
              ("train VM-NET", train_vmnet), ("test VM-NET", test_vmnet), ("train Transformer", train_transformer),
              ("test Transformer", test_transformer), ("retrieval", retrieve), ("report", report)]
    try:
        for number, (name, work) in enumerate(stages, 1):
            demo.stage(name, work, number, len(stages))
    except StageFailed as e:
        print(f"\n{e}\n\n{demo.table()}", file=sys.stderr)
        return 1
    print(f"\n{demo.table()}\n\nreport: {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
