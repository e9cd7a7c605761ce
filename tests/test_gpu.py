"""The GPU path: NVDEC decoding (gpu_decode.py), its fallback, bench/gpu.py, half precision.

Without a GPU: the fallback notice, the GPU pass's own plumbing (with FFmpeg's software decoders), and
bench/gpu.py up to its first CUDA call. The tests marked `cuda` run where torch sees a GPU.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from feature_extraction import decode, extract, gpu_decode
from feature_extraction.base import Extractor

REPO = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the cuda tests cover this path")


class Grab(Extractor):
    """Keeps what the pass hands out: the frames at t + 0.5 s and the 16 kHz audio."""

    token = "grab"
    frame_offset = 0.5
    audio_rate = 16000

    def begin(self, info):
        self.info, self.frames, self.audio = info, [], []

    def add_frame(self, index, frame):
        self.frames.append((index, frame.pts, frame.rgb()))

    def add_audio(self, samples):
        self.audio.append(samples)


def grab(run_pass, path, **kwargs):
    g = Grab()
    result = run_pass(path, [g], **kwargs)
    return g, result


@no_gpu
def test_without_a_gpu_decoder_one_notice_and_the_cpu_pass(capsys):
    assert gpu_decode.gpu_decoder("cuda:0") is None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("notice: --device cuda:0: no NVDEC video decoder here (")
    assert err[0].endswith("); decoding with PyAV on the CPU")
    assert gpu_decode.pass_for("cuda") is decode.run_pass
    assert gpu_decode.pass_for("cpu") is decode.run_pass
    assert capsys.readouterr().err.count("notice:") == 1  # cuda once, cpu never


@no_gpu
def test_gpu_bench_runs_up_to_its_first_cuda_call(weights_cache, tmp_path):
    """bench/gpu.py makes its 720p H.264 + AAC clips and finds its weights, then stops with one line."""
    env = dict(os.environ, VMR_CACHE=str(weights_cache), OMP_NUM_THREADS="1")
    out = tmp_path / "results.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--clips", "2", "--seconds", "1.5",
                        "--work", str(tmp_path / "clips"), "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr
    assert "2 clips of 1.5 s (1280x720 H.264 30 fps + AAC)" in p.stdout
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("bench/gpu.py: torch ") and "sees no CUDA GPU on this machine" in last
    assert not out.exists()
    for i in range(2):
        with av.open(str(tmp_path / "clips" / f"clip{i:02d}.mp4")) as container:
            v, a = container.streams.video[0], container.streams.audio[0]
            assert (v.codec_context.name, v.width, v.height, v.average_rate) == ("h264", 1280, 720, 30)
            assert (a.codec_context.name, a.sample_rate, a.channels) == ("aac", 48000, 2)
            assert float(container.duration / 1e6) == pytest.approx(1.5, abs=0.1)


def test_gpu_bench_reads_extract_summaries_and_row_cosines(vmr_env, make_clip, tmp_path):
    """The parts of bench/gpu.py after its CUDA check, run on the CPU: a run's figures and the row cosines."""
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "bench" / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    clip = make_clip("v.mp4", seconds=2.2)
    run = bench.extract([clip], tmp_path / "a", ["vggish"], [], vmr_env, device="cpu")
    assert run["video_seconds"] == 2 and run["x_realtime"] > 0 and run["seconds"] > 0
    assert run["nvdec"] is None and run["notices"] == []  # NVML absent here; PyAV on the CPU by request
    rows = np.load(tmp_path / "a" / "vggish" / "v.npy")
    assert rows.shape == (2, 128)
    (tmp_path / "b" / "vggish").mkdir(parents=True)
    np.save(tmp_path / "b" / "vggish" / "v.npy", np.stack([rows[0], -rows[1]]))  # cosines 1 and -1
    assert bench.cosines(tmp_path / "a", tmp_path / "b", "vggish") == {"rows": 2, "min": -1.0, "mean": 0.0}


def test_gpu_bench_help():
    p = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--help"], cwd=REPO, capture_output=True,
                       text=True)
    assert p.returncode == 0
    for flag in ("--clips", "--seconds", "--i3d_clips", "--i3d_seconds", "--parallel", "--work", "--out"):
        assert flag in p.stdout
    assert "(default: 16)" in p.stdout and "gpu_results.json" in p.stdout


@pytest.mark.cuda
@cuda
def test_nvdec_frames_equal_the_cpu_decoders(make_clip):
    """H.264 decoding is bit-exact and the sampled frames go through the same swscale: identical frames."""
    clip = make_clip("v.mp4", seconds=3.0, width=320, height=240, fps=30, motion=[(0, 3)])
    hwaccel = gpu_decode.gpu_decoder("cuda")
    assert hwaccel is not None
    with av.open(str(clip), hwaccel=hwaccel) as container:
        assert container.streams.video[0].codec_context.is_hwaccel
    (a, ra), (b, rb) = grab(decode.run_pass, clip), grab(decode.run_pass, clip, hwaccel=hwaccel)
    assert (rb.t_video, rb.t_audio) == (ra.t_video, ra.t_audio) == (3, 3)
    assert len(a.frames) == len(b.frames) == 3
    for (_, _, rgb), (_, _, rgb_b) in zip(a.frames, b.frames):
        assert np.array_equal(rgb, rgb_b)


@pytest.mark.cuda
@cuda
def test_half_precision_rows_are_within_cosine_0_99_of_float32(vmr_env, make_clip, tmp_path):
    clips = [make_clip(f"c{i}.mp4", seconds=3.0, width=320, height=240, seed=i, motion=[(0, 3)]) for i in range(2)]
    for precision in ("float32", "float16", "bfloat16"):
        assert extract.main(["--videos", *map(str, clips), "--out", str(tmp_path / precision), "--features", "resnet",
                             "clip", "--weights", "random", "--device", "cuda", "--precision", precision]) == 0
    for precision in ("float16", "bfloat16"):
        for folder in ("resnet101", "clip"):
            for clip in clips:
                a, b = (np.load(tmp_path / p / folder / f"{clip.stem}.npy") for p in ("float32", precision))
                cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
                assert a.shape == b.shape and cos.min() >= 0.99, (precision, folder, cos)
