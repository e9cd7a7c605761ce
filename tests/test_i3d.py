"""I3D: both published layouts, BatchNorm eps, sampling rows, the extraction pass, fp16 and RAFT fp16 (CUDA only)."""
import argparse
import json
import zipfile

import numpy as np
import pytest
import torch

from feature_extraction import i3d
from feature_extraction.base import Frame, VideoInfo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_both_layouts_give_the_same_output_once_eps_is_matched(tmp_path):
    h = i3d.write_random_checkpoint(tmp_path / "i3d_rgb.pt", 3, "hassony2", "rgb")
    p = i3d.write_random_checkpoint(tmp_path / "rgb_imagenet.pt", 3, "piergiaj", "rgb")
    assert not zipfile.is_zipfile(h)  # legacy serialisation, as the published files
    raw_h, raw_p = torch.load(h, weights_only=True), torch.load(p, weights_only=True)
    assert "mixed_5c.branch_2.1.batch3d.running_var" in raw_h and "conv3d_0c_1x1.conv3d.bias" in raw_h
    assert "Mixed_5c.b2b.bn.running_var" in raw_p and "logits.conv3d.weight" in raw_p
    assert not any(k.endswith("num_batches_tracked") for k in raw_h)
    assert raw_h["conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)

    a, b = i3d.load_checkpoint(h), i3d.load_checkpoint(p)
    assert (a.layout, a.conv3d_1a_7x7.batch3d.eps) == ("hassony2", 1e-5)
    assert (b.layout, b.mixed_4d.branch_1[1].batch3d.eps) == ("piergiaj", 1e-3)
    x = torch.rand(2, 3, 16, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ya, yb = a(x), b(x)
        assert ya.shape == (2, 1024)
        assert ya.std() > 0.1 and (ya == 0).float().mean() < 0.5
        assert not torch.allclose(ya, yb, atol=1e-6)  # the eps differs ...
        b.set_eps(1e-5)
        torch.testing.assert_close(b(x), ya, rtol=1e-5, atol=1e-5)  # ... and is the only difference


def test_flow_checkpoint_has_two_input_channels(tmp_path):
    model = i3d.load_checkpoint(i3d.write_random_checkpoint(tmp_path / "f.pt", 1, "piergiaj", "flow"))
    with torch.no_grad():
        assert model(torch.zeros(1, 2, 16, 64, 64)).shape == (1, 1024)


def test_unknown_layout_lists_missing_keys(tmp_path):
    state = torch.load(i3d.write_random_checkpoint(tmp_path / "h.pt", 0), weights_only=True)
    del state["mixed_4c.branch_2.0.batch3d.running_mean"]
    with pytest.raises(ValueError, match="mixed_4c.branch_2.0.batch3d.running_mean") as err:
        i3d.load_i3d(state)
    assert "piergiaj" in str(err.value) and "hassony2: 1 missing" in str(err.value)


def test_same_padding_matches_tensorflow_rule():
    x = torch.zeros(1, 1, 5, 8, 7)
    # T: 5 % 2 = 1 -> pad 7 - 1 = 6 (3, 3); H: 8 % 2 = 0 -> pad 5 (2, 3); W: 7 % 2 = 1 -> 6 (3, 3)
    assert i3d.same_pad(x, (7, 7, 7), (2, 2, 2)).shape == (1, 1, 11, 13, 13)
    assert i3d.same_pad(x, (1, 1, 1), (1, 1, 1)).shape == x.shape


def test_flow_quantisation_as_video_features():
    f = torch.tensor([-100.0, -20.0, 0.0, 1.0, 20.0, 100.0])
    q = (i3d.flow_to_input(f) + 1) * 255 / 2
    torch.testing.assert_close(q, torch.tensor([0.0, 0.0, 128.0, 134.0, 255.0, 255.0]), atol=1e-4, rtol=0)


def _args(**kw):
    base = dict(device="cpu", weights="random", i3d_fps=32.0, flow_method="farneback", raft_iters=20,
                i3d_concat=False, i3d_imagenet=False, fp16=False, precision="auto")
    base.update(kw)
    return argparse.Namespace(**base)


def _run(extractor, frames, t_video):
    extractor.begin(VideoInfo(path=None, vid="v", fps=32.0, width=320, height=240, has_video=True, has_audio=False))
    for j, rgb in enumerate(frames):
        extractor.add_frame(j, Frame(j / 32, lambda rgb=rgb: rgb))
    return extractor.end(t_video, t_video)


def test_time_constant_input_gives_time_constant_rows(vmr_env):
    ex = i3d.build(_args())
    picture = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    out = _run(ex, [picture] * 64, t_video=2)  # no 65th frame: the last row repeats its 32nd frame
    rgb, flow = out["i3d_rgb/v.npy"], out["i3d_flow/v.npy"]
    assert rgb.shape == flow.shape == (2, 1024) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[1], rgb[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flow[1], flow[0], rtol=1e-5, atol=1e-5)
    assert rgb.std() > 0 and not np.allclose(rgb[0], flow[0])


def test_i3d_in_the_extraction_pass(vmr_env, make_clip, tmp_path):
    clip = make_clip("moving.mp4", seconds=1.5, motion=[(0.0, 1.5)])
    out = tmp_path / "out"
    from feature_extraction import extract

    assert extract.main(["--videos", str(clip), "--out", str(out), "--features", "i3d", "--weights", "random",
                         "--flow_method", "farneback", "--i3d_concat"]) == 0
    rgb, flow, both = (np.load(out / d / "moving.npy") for d in ("i3d_rgb", "i3d_flow", "i3d"))
    assert rgb.shape == flow.shape == (1, 1024) and both.shape == (1, 2048)
    np.testing.assert_array_equal(both, np.concatenate([flow, rgb], axis=1))
    meta = json.loads((out / "i3d_flow" / "_feature.json").read_text())
    assert meta["options"]["flow_method"] == "farneback" and meta["weights"] == "random"



def test_raft_on_cpu_warns_once_and_records_its_checkpoint(vmr_env, capsys):
    ex = i3d.build(_args(flow_method="raft", raft_iters=1))
    assert capsys.readouterr().err.count("RAFT on CPU") == 1
    meta = ex.outputs()["i3d_flow"]
    assert meta["options"]["flow_method"] == "raft" and meta["options"]["raft_iters"] == 1
    assert meta["flow_checkpoint"]["checkpoint"] == "raft_large_C_T_SKHT_V1-0b8c9e55.pth"
    a = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    ex.load()  # build() reads no weights
    assert ex.flow([a], [a]).shape == (1, 2, 128, 128)

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_rows_match_fp32(vmr_env):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    frames = [np.roll(base, 3 * j, axis=1) for j in range(64)]
    full = _run(i3d.build(_args(device="cuda")), frames, 2)
    half = _run(i3d.build(_args(device="cuda", fp16=True)), frames, 2)
    for key in ("i3d_rgb/v.npy", "i3d_flow/v.npy"):
        a, b = full[key], half[key]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() >= 0.99, (key, cos)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_raft_fp16_stays_within_tolerance_of_fp32(vmr_env):
    """--fp16 runs RAFT under float16 autocast: mean endpoint difference within 5 % of the mean flow, I3D flow rows
    at cosine >= 0.99 of float32 (the tolerance README documents; bench/gpu.py measures it on 720p clips)."""
    rng = np.random.default_rng(2)
    base = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    frames = [np.roll(base, (2 * j, 3 * j), axis=(0, 1)) for j in range(33)]
    full, half = (i3d.build(_args(device="cuda", flow_method="raft", fp16=fp16)) for fp16 in (False, True))
    for ex in (full, half):
        ex.load()
    resized = [i3d.resize_short_side(f) for f in frames]
    a, b = full.flow(resized[:-1], resized[1:]), half.flow(resized[:-1], resized[1:])
    endpoint = (a - b).norm(dim=1).mean().item()
    assert endpoint <= 0.05 * a.norm(dim=1).mean().item(), endpoint
    rows = [_run(ex, frames, 1)["i3d_flow/v.npy"] for ex in (full, half)]
    cos = (rows[0] * rows[1]).sum(1) / np.linalg.norm(rows[0], axis=1) / np.linalg.norm(rows[1], axis=1)
    assert cos.min() >= 0.99, cos


def test_fp16_refused_on_cpu():
    with pytest.raises(SystemExit, match="--fp16 needs --device cuda"):
        i3d.build(_args(fp16=True))
