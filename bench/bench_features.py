"""Extraction speed and memory, with random weights (same architectures and cost as the official ones).

Per backbone, on a generated 1-minute 320x240 clip: seconds of video per second of wall time for
the whole pipeline (decode, frame clock / resampling, preprocessing, model) and for the model alone
fed the same frames or audio from memory; the ratio pipeline / model is the figure that matters
(`cpu_ratio`: the same in CPU seconds, which other processes on a busy machine disturb less).
`extract.py --features resnet clip vggish` on that clip and on a 10-minute one, each in a fresh
subprocess: peak RSS (does memory grow with video length?), and the summary's start-up and
model-loading seconds, for a first run and for a rerun that has nothing to do (it loads no model).
End to end (issue #25's goal: >= 3x, peak RSS <= 2.2 GB): that one-pass run (--precision auto: bfloat16 on
a CPU with bfloat16 units, see `cpu`) against the three networks run the way video_features runs them, one
fresh process per network, each decoding the clip itself and calling the plain eager float32 module under
torch.no_grad one frame (or example) at a time (`--batch_size 1 --precision float32`, inference.prepare
swapped for the eager module). It shares our decoding and preprocessing, which are
faster than video_features' per-frame PIL transforms, so it is a conservative stand-in. The one-pass run
goes before and after the three (mean of the two): machine drift counts against both sides alike. On a CPU with
int8 dot products the same one pass at `--precision int8` (ResNet and VGGish in int8, CLIP in bfloat16) is timed
the same way (`speedup_int8`), after the throughput of ResNet and VGGish in int8 (`throughput_int8`).

    python bench/bench_features.py            # prints the dict that bench/run.py merges
    BENCH_DEVICE=cuda python bench/run.py --only features
    BENCH_SECONDS=20 BENCH_LONG_SECONDS=60 python bench/bench_features.py   # smaller clips
"""
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENS = ["resnet", "clip", "vggish"]


def random_weights_cache(tmp, names=("resnet101", "clip_vit_b32", "vggish", "vggish_pca")):
    """$VMR_CACHE if its random/ folder holds the checkpoints `names`, else a temp cache written by weights.py --random."""
    from feature_extraction import weights

    cache = Path(os.environ.get("VMR_CACHE", Path.home() / ".cache" / "vmr"))
    needed = [weights.CHECKPOINTS[n].filename for n in names]
    if all((cache / "random" / name).exists() for name in needed):
        return cache
    cache = Path(tmp) / "cache"
    subprocess.run([sys.executable, str(REPO / "feature_extraction" / "weights.py"), "--random", "--cache", str(cache)],
                   check=True)
    return cache


class Recorder:
    """Stands in for an extractor during the pass: keeps the frames and audio it would have got."""

    def __init__(self, extractor):
        self.wants_frames, self.needs_audio = extractor.wants_frames, extractor.needs_audio
        self.frame_rate, self.frame_offset = extractor.frame_rate, extractor.frame_offset
        self.audio_rate = extractor.audio_rate
        self.frames, self.audio = [], []

    def begin(self, info):
        self.info = info

    def add_frame(self, index, frame):
        frame.rgb()
        self.frames.append((index, frame))

    def add_audio(self, samples):
        self.audio.append(samples)


def timed(fn):
    """(wall seconds, CPU seconds of this process, all threads) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def throughput(clip, device, tokens=TOKENS, extra=()):
    """{token: pipeline and model-only seconds of video per second, and their ratio} on `clip`, each token's
    extractor built from extract.py's arguments (`extra`: more of them) and loaded once, outside the timing."""
    from feature_extraction import extract, pipeline
    from feature_extraction.decode import blas, run_pass

    modules = extract.feature_modules()
    args = pipeline.build_parser(modules).parse_args(
        ["--videos", str(clip), "--out", "unused", "--weights", "random", "--device", device, *extra])
    out = {}
    for token in tokens:
        extractor = modules[token].build(args)
        extractor.load()
        recorder = Recorder(extractor)
        recorded = run_pass(clip, [recorder])  # also warms up the decoder

        def model_only():
            with blas().limit(limits=1, user_api="blas"):  # as in the pass (numpy's small products)
                extractor.begin(recorded.info)
                for index, frame in recorder.frames:
                    extractor.add_frame(index, frame)
                for chunk in recorder.audio:
                    extractor.add_audio(chunk)
                extractor.end(recorded.t_video, recorded.t_audio)

        def one_pass():
            result = run_pass(clip, [extractor])
            extractor.end(result.t_video, result.t_audio)

        model, whole = [], []
        for _ in range(2):  # alternated, best of two: the first model call pays one-off costs
            model.append(timed(model_only))
            whole.append(timed(one_pass))
        (model_s, model_cpu), (pipeline_s, pipeline_cpu) = map(min, zip(*model)), map(min, zip(*whole))
        seconds = recorded.seconds_decoded
        out[token] = {
            "video_seconds": round(seconds, 2),
            "pipeline_x_realtime": round(seconds / pipeline_s, 2),
            "model_only_x_realtime": round(seconds / model_s, 2),
            "ratio": round(model_s / pipeline_s, 3),
            "cpu_ratio": round(model_cpu / pipeline_cpu, 3),  # CPU seconds: less sensitive to other processes
        }
        print(token, out[token], flush=True)
    return out


def extract_run(clip, out, device, env, extra=()):
    """`extract.py` (more arguments: `extra`) in a fresh subprocess: peak RSS (MiB), wall seconds and its summary's start-up and
    model-loading seconds. The peak is the process's own VmHWM: getrusage's ru_maxrss in a child
    starts at its parent's resident size (this benchmark's, models loaded) on Linux."""
    code = ("import sys; from feature_extraction import extract; "
            f"code = extract.main(['--videos', {str(clip)!r}, '--out', {str(out)!r}, '--features', *{TOKENS!r}, "
            f"'--weights', 'random', '--device', {device!r}, *{list(extra)!r}]); "
            "print('RSS', next(line for line in open('/proc/self/status') if line.startswith('VmHWM')).split()[1]); "
            "sys.exit(code)")
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        raise RuntimeError(f"extraction failed: {p.stderr[-1000:]}")
    kib = int(next(line for line in p.stdout.splitlines() if line.startswith("RSS")).split()[1])
    startup, loading = re.search(r"start-up ([\d.]+) s, model loading ([\d.]+) s", p.stdout).groups()
    return {"peak_rss_mib": round(kib / 1024, 1), "wall_s": round(wall, 1), "startup_s": float(startup),
            "model_loading_s": float(loading)}


EAGER_CHILD = """
import sys, torch
from feature_extraction import extract, inference

def eager(model, device="cpu", precision="float32"):
    network = model.eval().to(device)

    def run(*inputs):
        with torch.no_grad():
            return network(*(x.to(device) for x in inputs))
    shared = inference.SharedBatches(run)
    shared.network = network
    return shared

inference.prepare = eager
sys.exit(extract.main(sys.argv[1:]))
"""


def eager_processes(clip, out, device, env):
    """Each of TOKENS in its own fresh process as video_features runs it (see the module docstring): wall seconds."""
    walls = {}
    for token in TOKENS:
        start = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", EAGER_CHILD, "--videos", str(clip), "--out", str(out), "--features", token,
                            "--batch_size", "1", "--precision", "float32", "--weights", "random",
                            "--device", device],
                           env=env, capture_output=True, text=True, cwd=REPO)
        walls[token] = round(time.perf_counter() - start, 1)
        if p.returncode != 0:
            raise RuntimeError(f"eager {token} extraction failed: {p.stderr[-1000:]}")
    return walls


INT8 = ["--precision", "int8"]


def run():
    import torch

    from feature_extraction import inference
    from feature_extraction.make_sample import make_clip

    device = os.environ.get("BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        cache = random_weights_cache(tmp)
        os.environ["VMR_CACHE"] = str(cache)
        env = dict(os.environ, VMR_CACHE=str(cache))
        short, long = (float(os.environ.get(name, default)) for name, default in
                       (("BENCH_SECONDS", 60), ("BENCH_LONG_SECONDS", 600)))
        clips = {name: make_clip(Path(tmp) / f"{name}.mp4", seconds=seconds, width=320, height=240, fps=25,
                                 motion=[(0, seconds)]) for name, seconds in (("short", short), ("long", long))}
        from bench_networks import cpu_flags

        int8 = device == "cpu" and bool(inference.cpu_flags() & inference.VNNI_FLAGS)
        result = {"device": device, "cpu": cpu_flags(), "torch_threads": torch.get_num_threads(),
                  "clip": f"320x240 25 fps h264 + aac stereo 44.1 kHz, {short:g} s and {long:g} s",
                  "throughput": throughput(clips["short"], device)}
        if int8:
            result["throughput_int8"] = throughput(clips["short"], device, ["resnet", "vggish"], ["--precision", "int8"])
        runs = {"short": extract_run(clips["short"], Path(tmp) / "out", device, env),
                "short_nothing_to_do": extract_run(clips["short"], Path(tmp) / "out", device, env),
                "long": extract_run(clips["long"], Path(tmp) / "out_long", device, env)}
        runs["rss_ratio_long_to_short"] = round(runs["long"]["peak_rss_mib"] / runs["short"]["peak_rss_mib"], 3)
        if int8:
            runs["short_int8"] = extract_run(clips["short"], Path(tmp) / "out_int8", device, env, INT8)
        result["extract_py"] = runs
        eager = eager_processes(clips["short"], Path(tmp) / "out_eager", device, env)
        again = extract_run(clips["short"], Path(tmp) / "out_again", device, env)
        one_pass = (runs["short"]["wall_s"] + again["wall_s"]) / 2
        result["end_to_end"] = {"one_pass_wall_s": [runs["short"]["wall_s"], again["wall_s"]],
                                "eager_processes_wall_s": eager, "eager_total_wall_s": round(sum(eager.values()), 1),
                                "speedup": round(sum(eager.values()) / one_pass, 2), "goal": 3.0}
        if int8:
            walls = [runs["short_int8"]["wall_s"],
                     extract_run(clips["short"], Path(tmp) / "out_int8_again", device, env, INT8)["wall_s"]]
            result["end_to_end"].update(one_pass_int8_wall_s=walls,
                                        speedup_int8=round(sum(eager.values()) / (sum(walls) / 2), 2))
    return result


if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
