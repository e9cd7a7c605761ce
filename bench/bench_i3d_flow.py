"""I3D per flow method, flowProcessor and avpeaks: seconds of video per second of wall time.

"pipeline" = the whole extraction pass (decode, resize, flow, model, write) on a generated
320x240 clip; "model" = the same computation on frames decoded beforehand. Both in this run, so
their ratio is the cost of everything around the model. I3D uses seeded random weights (speed does
not depend on the values). RAFT is timed on 1 s of video and only when CUDA is present or
BENCH_RAFT=1 (on CPU it takes minutes per second of video).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from feature_extraction import avpeaks, extract, flowProcessor, i3d, weights
from feature_extraction.base import Frame, VideoInfo
from feature_extraction.make_sample import make_clip


def _decoded(path, fps=None):
    """RGB frames of `path`, every frame or resampled to `fps` (last frame with pts <= j / fps)."""
    import av

    with av.open(str(path)) as c:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    if fps is None:
        return [rgb for _, rgb in frames]
    t0, end = frames[0][0], frames[-1][0] + (frames[1][0] - frames[0][0])
    out, k = [], 0
    for j in range(int((end - t0) * fps)):
        while k + 1 < len(frames) and frames[k + 1][0] - t0 <= j / fps + 1e-9:
            k += 1
        out.append(frames[k][1])
    return out


def _pipeline(clip, out, features, extra, seconds):
    start = time.perf_counter()
    code = extract.main(["--videos", str(clip), "--out", str(out), "--features", *features, "--weights", "random",
                         "--overwrite", *extra])
    if code:
        raise RuntimeError(f"extract.py {features} failed")
    return seconds / (time.perf_counter() - start)


def _feed(extractor, frames, fps, vid="bench"):
    """Feed pre-decoded frames; returns the start time."""
    start = time.perf_counter()
    extractor.begin(VideoInfo(Path(vid), vid, fps, frames[0].shape[1], frames[0].shape[0], True, False))
    for j, rgb in enumerate(frames):
        extractor.add_frame(j, Frame(j / fps, lambda rgb=rgb: rgb))
    return start


def bench_i3d(tmp, device, methods):
    results = {}
    for method in methods:
        seconds = 1 if method == "raft" else 2
        clip = make_clip(tmp / f"i3d_{method}.mp4", seconds=seconds, width=320, height=240, fps=25,
                         motion=[(0, seconds)])
        args = argparse.Namespace(device=device, weights="random", i3d_fps=32.0, flow_method=method, raft_iters=20,
                                  i3d_concat=False, i3d_imagenet=False, fp16=False)
        ex = i3d.build(args)
        frames = _decoded(clip, fps=32)
        start = _feed(ex, frames, 32.0)
        ex.end(seconds, seconds)
        model = seconds / (time.perf_counter() - start)
        extra = ["--flow_method", method, "--device", device]
        pipeline = _pipeline(clip, tmp / f"out_{method}", ["i3d"], extra, seconds)
        results[method] = {"video_seconds": seconds, "pipeline_x_realtime": round(pipeline, 4),
                           "model_x_realtime": round(model, 4), "pipeline_over_model": round(pipeline / model, 3)}
    return results


def bench_flow(tmp, seconds=60):
    clip = make_clip(tmp / "flow.mp4", seconds=seconds, width=320, height=240, fps=25, motion=[(10, 30), (45, 50)])
    frames = _decoded(clip, fps=3)
    args = argparse.Namespace(n_bkps=7, min_seconds=10, jump_samples=3, dynp_max_seconds=600, plot=False)
    ex = flowProcessor.build(args)
    start = _feed(ex, frames, 3.0)
    ex.end(seconds, seconds)
    model = seconds / (time.perf_counter() - start)
    pipeline = _pipeline(clip, tmp / "out_flow", ["flow"], [], seconds)
    return {"video_seconds": seconds, "pipeline_x_realtime": round(pipeline, 3), "model_x_realtime": round(model, 3),
            "pipeline_over_model": round(pipeline / model, 3)}


def bench_avpeaks(tmp, seconds=20):
    clip = make_clip(tmp / "avpeaks.mp4", seconds=seconds, width=320, height=240, fps=25, motion=[(5, 15)])
    frames = _decoded(clip)
    ex = avpeaks.build(None)
    start = _feed(ex, frames, 25.0)
    sr = avpeaks.AUDIO_RATE
    t = np.arange(seconds * sr) / sr
    ex.add_audio((0.3 * np.sin(2 * np.pi * 440 * t) * (np.mod(t, 0.5) < 0.1)).astype(np.float32))
    ex.end(seconds, seconds)
    model = seconds / (time.perf_counter() - start)
    pipeline = _pipeline(clip, tmp / "out_avpeaks", ["avpeaks"], [], seconds)
    return {"video_seconds": seconds, "pipeline_x_realtime": round(pipeline, 3), "model_x_realtime": round(model, 3),
            "pipeline_over_model": round(pipeline / model, 3)}


def run():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    methods = ["farneback", "tvl1"] + (["raft"] if device == "cuda" or os.environ.get("BENCH_RAFT") == "1" else [])
    old_cache = os.environ.get("VMR_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["VMR_CACHE"] = str(tmp / "cache")
        try:
            random_dir = tmp / "cache" / "random"
            random_dir.mkdir(parents=True)
            for k, name in enumerate(("i3d_rgb", "i3d_flow", "raft_large")):
                weights.random_writer(name)(random_dir / weights.CHECKPOINTS[name].filename, k)
            return {
                "device": device,
                "torch_threads": torch.get_num_threads(),
                "opencv_threads": cv2.getNumThreads(),
                "unit": "seconds of video per second of wall time",
                "i3d": bench_i3d(tmp, device, methods),
                "raft_skipped": "raft" not in methods,
                "flowProcessor": bench_flow(tmp),
                "avpeaks": bench_avpeaks(tmp),
            }
        finally:
            if old_cache is None:
                os.environ.pop("VMR_CACHE", None)
            else:
                os.environ["VMR_CACHE"] = old_cache


if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
