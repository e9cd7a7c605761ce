"""Extraction speed on one GPU, end to end, in one script (a few minutes after `make setup`).

    python bench/gpu.py                               # prints the results and writes bench/gpu_results.json
    python bench/gpu.py --clips 4 --seconds 20 --work /tmp/gpu_clips   # smaller; clips kept for a rerun

1. Generates --clips 720p H.264 clips (30 fps, moving test pattern with noise, AAC stereo 48 kHz) with
   ffmpeg into --work (kept there; a rerun reuses them), and seeded random weights (same cost as the
   official ones) unless $VMR_CACHE/random holds them.
2. Stops, with exit status 1 and one line, on a machine where torch sees no CUDA GPU.
3. Runs extract.py --device cuda in fresh processes and reads each run's summary (seconds of video per
   second, start-up and model loading excluded):
   - `resnet clip vggish` in one pass, at --precision float16 and float32 (NVDEC decodes the video: see
     feature_extraction/gpu_decode.py), with NVDEC utilisation sampled by NVML when nvidia-ml-py is
     installed (`make setup-gpu`);
   - `i3d` (RGB + RAFT flow) with --fp16 and without, on the first --i3d_seconds of --i3d_clips clips;
   - the cosine of each float16 row to its float32 row, per folder (min and mean).
Goals (issue 16): resnet+clip+vggish >= 100x real time, I3D two-stream with RAFT >= 5x, cosine >= 0.99.
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def make_720p(path, seconds, seed):
    """A 1280x720 30 fps H.264 clip with AAC stereo 48 kHz: testsrc2 (moving, colourful) with temporal
    noise, so that decoding costs about what a real video's does."""
    from feature_extraction.make_sample import run_ffmpeg

    if path.exists():
        return path
    video = f"testsrc2=s=1280x720:r=30:d={seconds},hue=h={37 * seed},noise=alls=12:allf=t+u:all_seed={seed}"
    audio = f"sine=f={220 + 20 * seed}:r=48000:d={seconds},pan=stereo|c0=c0|c1=0.5*c0"
    tmp = path.with_suffix(".part.mp4")
    run_ffmpeg(["-f", "lavfi", "-i", video, "-f", "lavfi", "-i", audio, "-c:v", "libx264", "-preset", "veryfast",
                "-crf", "23", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-t", seconds, tmp])
    tmp.rename(path)
    return path


def need_cuda():
    """The GPU's name, or stop with one line where torch sees none."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"bench/gpu.py: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA GPU on this "
                         "machine; run it on one with an NVIDIA GPU (the clips and weights made so far are kept)")
    return torch.cuda.get_device_name(0)


class DecoderLoad:
    """NVDEC utilisation (%) sampled every 0.2 s by NVML while a run lasts; None without nvidia-ml-py."""

    def __enter__(self):
        self.samples, self.stop = [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # not installed (make setup-gpu) or no NVML: the run goes on without it
            self.thread = None
            return self

        def sample():
            while not self.stop.wait(0.2):
                self.samples.append(pynvml.nvmlDeviceGetDecoderUtilization(handle)[0])

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread:
            self.thread.join()

    def summary(self):
        if not self.samples:
            return None
        return {"mean_percent": round(float(np.mean(self.samples)), 1), "max_percent": int(max(self.samples))}


def extract(videos, out, features, flags, env, device="cuda"):
    """extract.py in a fresh process; its summary's figures, the notices it printed and NVDEC utilisation."""
    command = [sys.executable, str(REPO / "feature_extraction" / "extract.py"), "--videos", *map(str, videos),
               "--out", str(out), "--features", *features, "--weights", "random", "--device", device, *flags]
    with DecoderLoad() as nvdec:
        p = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{p.stderr[-2000:]}")
    summary = p.stdout.strip().splitlines()[-1]
    video, seconds, speed = map(float, re.search(r"(\d+) s of video in ([\d.]+) s, ([\d.]+) s of video per second",
                                                 summary).groups())
    startup, loading = map(float, re.search(r"start-up ([\d.]+) s, model loading ([\d.]+) s", summary).groups())
    return {"video_seconds": video, "seconds": seconds, "x_realtime": speed,
            "startup_s": startup, "model_loading_s": loading, "nvdec": nvdec.summary(),
            "notices": [line for line in p.stderr.splitlines() if line.startswith("notice:")]}


def cosines(half, full, folder):
    """min and mean cosine of each row of half/<folder>/*.npy to the same row of full/<folder>/."""
    values = []
    for path in sorted((half / folder).glob("*.npy")):
        a, b = np.load(path).astype(np.float64), np.load(full / folder / path.name).astype(np.float64)
        values += list((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12))
    return {"rows": len(values), "min": round(float(np.min(values)), 5), "mean": round(float(np.mean(values)), 5)}


def main(argv=None):
    from feature_extraction.cli import HelpFormatter, exit_on_sigterm

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--clips", type=int, default=16, help="720p clips for resnet clip vggish")
    p.add_argument("--seconds", type=float, default=60, help="length of each clip")
    p.add_argument("--i3d_clips", type=int, default=4, help="clips for I3D (the first ones)")
    p.add_argument("--i3d_seconds", type=float, default=10, help="seconds of each clip I3D reads (--max_seconds)")
    p.add_argument("--parallel", type=int, default=8, help="extract.py --parallel: videos decoded at once")
    p.add_argument("--work", default=None, help="folder for the clips, kept (default: a temporary folder, removed)")
    p.add_argument("--out", default=str(REPO / "bench" / "gpu_results.json"), help="JSON results")
    args = p.parse_args(argv)
    exit_on_sigterm()
    import os

    from bench_features import random_weights_cache

    from feature_extraction.atomic import write_json

    with tempfile.TemporaryDirectory(prefix="vmr_gpu_bench_") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            clips = list(pool.map(lambda i: make_720p(work / f"clip{i:02d}.mp4", args.seconds, i), range(args.clips)))
        generated = time.perf_counter() - start
        names = ("resnet101", "clip_vit_b32", "vggish", "i3d_rgb", "i3d_flow", "raft_large")
        env = dict(os.environ, VMR_CACHE=str(random_weights_cache(tmp, names)))
        print(f"{len(clips)} clips of {args.seconds:g} s (1280x720 H.264 30 fps + AAC) in {work}, {generated:.0f} s",
              flush=True)
        gpu = need_cuda()

        import torch

        result = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
                  "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                  "clips": f"{len(clips)} x {args.seconds:g} s 1280x720 H.264 30 fps + AAC stereo 48 kHz",
                  "parallel": args.parallel, "resnet_clip_vggish": {}, "i3d": {}, "cosine_float16_float32": {}}
        runs = {}
        for precision in ("float16", "float32"):
            runs[precision] = Path(tmp) / f"frames_{precision}"
            result["resnet_clip_vggish"][precision] = extract(
                clips, runs[precision], ["resnet", "clip", "vggish"],
                ["--precision", precision, "--parallel", str(args.parallel)], env)
            print("resnet clip vggish", precision, result["resnet_clip_vggish"][precision], flush=True)
        for folder in ("resnet101", "clip", "vggish"):
            result["cosine_float16_float32"][folder] = cosines(runs["float16"], runs["float32"], folder)
        for name, flags in (("fp16", ["--fp16"]), ("fp32", [])):
            runs[name] = Path(tmp) / f"i3d_{name}"
            result["i3d"][name] = extract(
                clips[: args.i3d_clips], runs[name], ["i3d"],
                ["--flow_method", "raft", "--max_seconds", str(args.i3d_seconds), "--parallel", str(args.parallel),
                 *flags], env)
            print("i3d", name, result["i3d"][name], flush=True)
        for folder in ("i3d_rgb", "i3d_flow"):
            result["cosine_float16_float32"][folder] = cosines(runs["fp16"], runs["fp32"], folder)
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
