"""--precision on the CPU: what auto picks, the accuracy bars of bfloat16 and int8 rows on real frames and audio
(the generated test clips, seeded random weights), the records in _feature.json, mixing precisions, int8's
calibration cache and where int8 is refused."""
import argparse
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from feature_extraction import decode, extract, i3d, inference, int8, optical_flow, pipeline, vggish
from feature_extraction.base import Extractor
from feature_extraction.make_sample import make_clip

MEAN_BAR, ROW_FLOOR = 0.995, 0.98  # bfloat16: mean row cosine to float32, and the lowest any row may have
INT8_MEAN_BAR = 0.99  # int8: mean row cosine to float32 (the same floor)
FOLDERS = ("resnet101", "clip", "vggish", "wav2clip", "wav2clip_track")
VNNI_CPU = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}


def row_cosines(a, b):
    assert a.shape == b.shape and len(a) > 0
    return F.cosine_similarity(torch.from_numpy(a).double(), torch.from_numpy(b).double(), dim=-1).numpy()


@pytest.fixture(scope="module")
def clip_runs(weights_cache, tmp_path_factory):
    """extract.py on a 4 s clip with a moving square, at --precision float32, bfloat16 and int8 (on a CPU said to
    have bfloat16 and int8 units: oneDNN runs both on any x86 CPU, only slower): {precision: OUT}."""
    tmp = tmp_path_factory.mktemp("precision")
    clip = make_clip(tmp / "moving.mp4", seconds=4.0, width=160, height=120, motion=[(0.0, 4.0)])
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VMR_CACHE", str(weights_cache))
        mp.setattr(inference, "cpu_flags", lambda: VNNI_CPU)
        for precision in ("float32", "bfloat16", "int8"):
            out = runs[precision] = tmp / precision
            assert extract.main(["--videos", str(clip), "--out", str(out), "--weights", "random", "--precision",
                                 precision, "--features", "resnet", "clip", "vggish", "wav2clip"]) == 0
    return runs


@pytest.mark.parametrize("folder", FOLDERS)
def test_bfloat16_rows_are_within_the_bar_of_float32(clip_runs, folder):
    full, half = (np.load(clip_runs[p] / folder / "moving.npy") for p in ("float32", "bfloat16"))
    assert half.dtype == np.float32 and not np.array_equal(full, half)  # bfloat16 did run
    cos = row_cosines(full, half)
    assert cos.mean() >= MEAN_BAR and cos.min() >= ROW_FLOOR, (folder, cos)
    for p in ("float32", "bfloat16"):
        options = json.loads((clip_runs[p] / folder / "_feature.json").read_text())["options"]
        assert options.get("precision", "float32") == p  # absent: float32, as in folders made before the flag


@pytest.mark.parametrize("folder", ("resnet101", "vggish"))
def test_int8_rows_are_within_the_int8_bar_of_float32(clip_runs, folder):
    full, quantised = (np.load(clip_runs[p] / folder / "moving.npy") for p in ("float32", "int8"))
    assert quantised.dtype == np.float32 and not np.array_equal(full, quantised)
    cos = row_cosines(full, quantised)
    assert cos.mean() >= INT8_MEAN_BAR and cos.min() >= ROW_FLOOR, (folder, cos)
    assert json.loads((clip_runs["int8"] / folder / "_feature.json").read_text())["options"]["precision"] == "int8"


def test_int8_runs_the_other_networks_as_auto_would(clip_runs):
    for folder in ("clip", "wav2clip"):
        options = json.loads((clip_runs["int8"] / folder / "_feature.json").read_text())["options"]
        assert options["precision"] == "bfloat16"  # auto's pick on that CPU
        assert np.array_equal(np.load(clip_runs["int8"] / folder / "moving.npy"),
                              np.load(clip_runs["bfloat16"] / folder / "moving.npy"))


def test_int8_ranges_are_calibrated_once_per_checkpoint(weights_cache, tmp_path):
    """The ranges are kept beside the checkpoint with its sha256 and the calibration version; a file that
    belongs to another checkpoint (or version) is redone. The calibration sets do not change between calls."""
    checkpoint = tmp_path / "vggish-10086976.pth"
    checkpoint.write_bytes((weights_cache / "random" / checkpoint.name).read_bytes())
    (tmp_path / f"{checkpoint.name}.sha256").write_text("ab" * 32 + "\n")
    calls = []

    def compute():
        calls.append(1)
        return int8.vggish_ranges(vggish.load_model(checkpoint), vggish.int8_calibration())

    first = int8.cached_ranges(checkpoint, compute)
    assert int8.cached_ranges(checkpoint, compute) == first and len(calls) == 1
    stored = json.loads((tmp_path / f"{checkpoint.name}.int8.json").read_text())
    assert stored["checkpoint_sha256"] == "ab" * 32 and stored["calibration"] == int8.CALIBRATION
    assert set(stored["ranges"]) == {f"conv{k}" for k in range(6)} | {f"linear{k}" for k in range(3)}
    assert all(lo == 0 < hi for lo, hi in first.values())  # ReLU outputs
    (tmp_path / f"{checkpoint.name}.sha256").write_text("cd" * 32 + "\n")  # another checkpoint
    assert int8.cached_ranges(checkpoint, compute) == first and len(calls) == 2
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    assert torch.equal(int8.calibration_images(mean, std, n=2, size=32), int8.calibration_images(mean, std, n=2, size=32))


def test_uint8_max_pool_equals_torch_max_pool():
    x = torch.randint(0, 256, (2, 8, 7, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got = int8.max_pool_2x2(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(got, F.max_pool2d(x, 2, 2)) and got.shape == (2, 8, 3, 5)


def test_vggish_pca_runs_float32_because_bfloat16_changes_its_bytes(clip_runs, weights_cache, vmr_env):
    """The bar for VGGish's 8-bit PCA output (>= 99 % of bytes equal) fails in bfloat16, so --pca runs float32
    whatever --precision says, and records it."""
    pca = vggish.PCA(weights_cache / "random" / "vggish_pca_params-970ea276.pth")
    full, half = (pca(np.load(clip_runs[p] / "vggish" / "moving.npy")) for p in ("float32", "bfloat16"))
    assert len(np.unique(full)) > 20 and np.mean(full == half) < 0.99  # not all clipped; bfloat16 fails the bar
    args = argparse.Namespace(pca=True, precision="bfloat16", device="cpu", weights="random", batch_size=16)
    assert "precision" not in vggish.build(args).outputs()["vggish_pca"]["options"]  # absent: float32
    args.pca = False
    assert vggish.build(args).outputs()["vggish"]["options"]["precision"] == "bfloat16"


class _Frames(Extractor):
    """Collects every decoded RGB frame."""

    token, frame_rate = "frames", None

    def begin(self, info):
        self.rgb = []

    def add_frame(self, index, frame):
        self.rgb.append(frame.rgb())


@pytest.mark.usefixtures("one_torch_thread")
def test_i3d_bfloat16_rows_are_within_the_bar_of_float32(weights_cache, tmp_path):
    """Both streams on three 16-frame stacks of a real clip at 112 px (the network pools what there is), with
    Farneback flow: the I3D that extract.py's CPU path prepares, float32 against bfloat16."""
    clip = make_clip(tmp_path / "moving.mp4", seconds=2.0, width=160, height=120, motion=[(0.0, 2.0)])
    frames = _Frames()
    decode.run_pass(clip, [frames])
    small = [np.ascontiguousarray(i3d.center_crop(i3d.resize_short_side(f, 112), 112)) for f in frames.rgb[:49]]
    rgb = torch.stack([torch.from_numpy(np.stack(small[k:k + 16])).permute(3, 0, 1, 2) for k in (0, 16, 32)])
    rgb = rgb.float() * (2.0 / 255.0) - 1.0  # (3, 3, 16, 112, 112), as rgb_stack scales
    pairs = [optical_flow.OpenCVFlow("farneback")(small[k:k + 16], small[k + 1:k + 17]) for k in (0, 16, 32)]
    flow = torch.stack([i3d.flow_to_input(f).permute(1, 0, 2, 3) for f in pairs])  # (3, 2, 16, 112, 112)
    for modality, x in (("rgb", rgb), ("flow", flow)):
        model = i3d.load_checkpoint(weights_cache / "random" / f"i3d_{modality}.pt")
        full = inference.prepare(copy.deepcopy(model), "cpu", "float32")(x).numpy()
        half = inference.prepare(model, "cpu", "bfloat16")(x).numpy()
        cos = row_cosines(full, half)
        assert full.shape == (3, 1024) and not np.array_equal(full, half)
        assert cos.mean() >= MEAN_BAR and cos.min() >= ROW_FLOOR, (modality, cos)


def test_auto_picks_bfloat16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert [inference.resolve("auto", "cpu", n) for n in ("resnet", "clip", "vggish", "wav2clip", "i3d")] == \
        ["bfloat16"] * 5
    assert inference.resolve("auto", "cuda", "resnet") == "float32"  # CUDA: half precision stays opt-in
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert inference.resolve("auto", "cpu", "clip") == "bfloat16"
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    assert inference.resolve("auto", "cpu", "resnet") == "float32"
    assert inference.resolve("bfloat16", "cpu", "resnet") == "bfloat16"  # asked for: emulated, but it runs
    assert inference.resolve("float16", "cuda", "clip") == "float16"


def test_int8_and_float16_are_refused_where_they_cannot_run_in_one_line(monkeypatch):
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    with pytest.raises(SystemExit, match="--precision int8 needs a CPU with int8 dot products") as e:
        inference.resolve("int8", "cpu", "resnet")
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit, match="--precision int8 is for the CPU"):
        inference.resolve("int8", "cuda", "resnet")
    with pytest.raises(SystemExit, match="--precision float16 needs --device cuda"):
        inference.resolve("float16", "cpu", "clip")
    monkeypatch.setattr(inference, "cpu_flags", lambda: VNNI_CPU)
    assert [inference.resolve("int8", "cpu", n) for n in ("resnet", "vggish", "clip", "wav2clip", "i3d")] == \
        ["int8", "int8", "bfloat16", "bfloat16", "bfloat16"]


def test_int8_refused_before_any_work(vmr_env, tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx2"})
    clip = make_clip(tmp_path / "a.mp4", seconds=1.0)
    with pytest.raises(SystemExit, match="int8 needs a CPU with int8 dot products"):
        extract.main(["--videos", str(clip), "--out", str(tmp_path / "out"), "--features", "vggish",
                      "--weights", "random", "--precision", "int8"])
    assert not (tmp_path / "out").exists()


def test_a_library_may_mix_precisions_and_records_them(vmr_env, tmp_path, capsys):
    """float32 rows then bfloat16 rows into one folder: within the bar, so the same feature; the record lists
    both. Another setting that differs still stops the run."""
    a, b = make_clip(tmp_path / "a.mp4", seconds=1.0), make_clip(tmp_path / "b.mp4", seconds=1.0, seed=1)
    out = tmp_path / "out"
    common = ["--out", str(out), "--features", "vggish", "--weights", "random"]
    assert extract.main(["--videos", str(a), *common, "--precision", "float32"]) == 0
    assert extract.main(["--videos", str(b), *common, "--precision", "bfloat16"]) == 0
    assert "made with precision float32, this run adds bfloat16 rows" in capsys.readouterr().err
    meta = json.loads((out / "vggish" / "_feature.json").read_text())
    assert meta["options"]["precision"] == "bfloat16+float32"
    assert (out / "vggish" / "a.npy").is_file() and (out / "vggish" / "b.npy").is_file()
    assert extract.main(["--videos", str(b), *common, "--precision", "float32", "--overwrite"]) == 0
    assert json.loads((out / "vggish" / "_feature.json").read_text())["options"]["precision"] == "bfloat16+float32"
    with pytest.raises(SystemExit, match="made with max_seconds=null, .*this run uses max_seconds=0.5"):
        extract.main(["--videos", str(a), *common, "--max_seconds", "0.5"])
    assert pipeline.differing_settings({"model": "x", "options": {"precision": "float32"}}, {"model": "x"}) == []
    assert pipeline.differing_settings({"model": "x", "options": {"pca": True}}, {"model": "x"}) == ["options.pca"]
