"""I3D per flow method, flowProcessor and avpeaks: seconds of video per second of wall time.

"pipeline" = the whole extraction pass (decode, frame clock, resize, flow, model) on a generated
320x240 clip; "model" = the same extractor fed the frames and audio recorded from that pass (from
memory); `ratio` = pipeline / model speed (goal >= 0.9), both in this run, each extractor loaded
once outside the timing (bench_features.throughput, as for the frame networks). I3D uses seeded
random weights (speed does not depend on the values). RAFT is timed on 1 s of video and only when
CUDA is present or BENCH_RAFT=1 (on CPU it takes minutes per second of video).
On the CPU, I3D + Farneback also runs as it did before --precision came to the CPU (`farneback_before`: the
eager float32 network, BatchNorm not folded, no channels_last), and `farneback_speedup` = pipeline speed now
(--precision auto) / then, in this run (issue #25's goal: >= 1.5).
"""
import os
import sys
import tempfile
from pathlib import Path

import cv2
import torch

from bench_features import throughput
from feature_extraction import inference, weights
from feature_extraction.make_sample import make_clip


def bench_i3d(tmp, device, methods, seconds=4):
    """I3D RGB + flow per flow method (RAFT on 1 s: minutes per second of video on a CPU)."""
    results = {}
    for method in methods:
        length = 1 if method == "raft" else seconds
        clip = make_clip(tmp / f"i3d_{method}.mp4", seconds=length, width=320, height=240, fps=25, motion=[(0, length)])
        results[method] = throughput(clip, device, ["i3d"], ["--flow_method", method])["i3d"]
        if method == "farneback" and device == "cpu":
            prepare = inference.prepare
            inference.prepare = lambda model, device, precision: inference.SharedBatches(model.eval())
            try:
                results["farneback_before"] = throughput(clip, device, ["i3d"], ["--flow_method", method])["i3d"]
            finally:
                inference.prepare = prepare
            results["farneback_speedup"] = round(results["farneback"]["pipeline_x_realtime"]
                                                 / results["farneback_before"]["pipeline_x_realtime"], 2)
    return results


def bench_flow(tmp, device, seconds=60):
    clip = make_clip(tmp / "flow.mp4", seconds=seconds, width=320, height=240, fps=25, motion=[(10, 30), (45, 50)])
    return throughput(clip, device, ["flow"])["flow"]


def bench_avpeaks(tmp, device, seconds=20):
    clip = make_clip(tmp / "avpeaks.mp4", seconds=seconds, width=320, height=240, fps=25, motion=[(5, 15)])
    return throughput(clip, device, ["avpeaks"])["avpeaks"]


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
                "flowProcessor": bench_flow(tmp, device),
                "avpeaks": bench_avpeaks(tmp, device),
            }
        finally:
            if old_cache is None:
                os.environ.pop("VMR_CACHE", None)
            else:
                os.environ["VMR_CACHE"] = old_cache


if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
