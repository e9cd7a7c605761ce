"""Extraction speed and memory, with random weights (same architectures and cost as the official ones).

Per backbone, on a generated 1-minute 320x240 clip: seconds of video per second of wall time for
the whole pipeline (decode, frame clock / resampling, preprocessing, model) and for the model alone
fed the same frames or audio from memory; the ratio pipeline / model is the figure that matters.
Peak RSS of `extract.py --features resnet clip vggish` on a 1-minute and a 10-minute clip, each in
a fresh subprocess, shows whether memory grows with video length.

    python bench/bench_features.py            # prints the dict that bench/run.py merges
    BENCH_DEVICE=cuda python bench/run.py --only features
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENS = ["resnet", "clip", "vggish"]


def random_weights_cache(tmp):
    """$VMR_CACHE if its random/ folder is complete, else a temp cache written by weights.py --random."""
    from feature_extraction import weights

    cache = Path(os.environ.get("VMR_CACHE", Path.home() / ".cache" / "vmr"))
    needed = [weights.CHECKPOINTS[n].filename for n in ("resnet101", "clip_vit_b32", "vggish", "vggish_pca")]
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


def throughput(clip, device):
    from feature_extraction import extract
    from feature_extraction.decode import run_pass

    modules = extract.feature_modules()
    args = extract.build_parser(modules).parse_args(
        ["--videos", str(clip), "--out", "unused", "--weights", "random", "--device", device])
    out = {}
    for token in TOKENS:
        extractor = modules[token].build(args)
        recorder = Recorder(extractor)
        recorded = run_pass(clip, [recorder])  # also warms up the decoder and resampy's JIT
        model_s, pipeline_s = [], []
        for _ in range(2):  # alternated, best of two: the first model call pays one-off costs
            start = time.perf_counter()
            extractor.begin(recorded.info)
            for index, frame in recorder.frames:
                extractor.add_frame(index, frame)
            for chunk in recorder.audio:
                extractor.add_audio(chunk)
            extractor.end(recorded.t_video, recorded.t_audio)
            model_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = run_pass(clip, [extractor])
            extractor.end(result.t_video, result.t_audio)
            pipeline_s.append(time.perf_counter() - start)
        model_s, pipeline_s = min(model_s), min(pipeline_s)
        seconds = result.seconds_decoded
        out[token] = {
            "video_seconds": round(seconds, 2),
            "pipeline_x_realtime": round(seconds / pipeline_s, 2),
            "model_only_x_realtime": round(seconds / model_s, 2),
            "ratio": round(model_s / pipeline_s, 3),
        }
        print(token, out[token], flush=True)
    return out


def peak_rss(clip, device, env):
    """Peak RSS (MiB) of one extraction in a fresh subprocess."""
    with tempfile.TemporaryDirectory() as out:
        code = ("import resource, sys; from feature_extraction import extract; "
                f"code = extract.main(['--videos', {str(clip)!r}, '--out', {out!r}, '--features', *{TOKENS!r}, "
                f"'--weights', 'random', '--device', {device!r}]); "
                "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
        if p.returncode != 0:
            raise RuntimeError(f"extraction failed: {p.stderr[-1000:]}")
        kib = int(next(line for line in p.stdout.splitlines() if line.startswith("RSS")).split()[1])
        return round(kib / 1024, 1)


def run():
    import torch

    from feature_extraction.make_sample import make_clip

    device = os.environ.get("BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        cache = random_weights_cache(tmp)
        os.environ["VMR_CACHE"] = str(cache)
        env = dict(os.environ, VMR_CACHE=str(cache))
        clips = {minutes: make_clip(Path(tmp) / f"clip_{minutes}min.mp4", seconds=60 * minutes, width=320, height=240,
                                    fps=25, motion=[(0, 60 * minutes)]) for minutes in (1, 10)}
        result = {"device": device, "torch_threads": torch.get_num_threads(), "clip": "320x240 25 fps h264 + aac stereo",
                  "throughput_1min": throughput(clips[1], device)}
        rss = {f"{m}min": peak_rss(clips[m], device, env) for m in (1, 10)}
        rss["ratio_10min_to_1min"] = round(rss["10min"] / rss["1min"], 3)
        result["peak_rss_mib"] = rss
    return result


if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
