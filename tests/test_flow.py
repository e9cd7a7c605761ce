"""Optical flow methods, flowProcessor segments/ranks/ranks.csv, and AV-Align peaks."""
import json
import cv2
import numpy as np
import pytest
import torch

from feature_extraction import avpeaks, flowProcessor as fp, merge, optical_flow

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _texture(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (7, 7), 2)


# ----------------------------------------------------------------------------- flow methods


def test_raft_random_torchvision_weights_right_shape(tmp_path):
    path = optical_flow.write_random_raft(tmp_path / "raft_large_C_T_SKHT_V1-0b8c9e55.pth", seed=0)
    state = torch.load(path, weights_only=True)
    assert "feature_encoder.convnormrelu.0.weight" in state and "update_block.motion_encoder.convcorr1.0.weight" in state
    raft = optical_flow.Raft(optical_flow.load_raft(path), "cpu", iters=2)
    a = _texture(128, 128)
    flow = raft([a], [np.roll(a, 2, axis=1)])
    assert flow.shape == (1, 2, 128, 128) and flow.dtype == torch.float32 and torch.isfinite(flow).all()
    # not a multiple of 8: replicate-padded and kept padded (video_features does not unpad)
    b = _texture(130, 123)
    assert raft([b], [b]).shape == (1, 2, 136, 128)


@pytest.mark.parametrize("method", ["farneback", "tvl1"])
def test_opencv_flow_methods_measure_a_known_shift(method):
    a = _texture(120, 160)
    flow = optical_flow.make_flow(method)([a, a], [np.roll(a, 2, axis=1), a])
    assert flow.shape == (2, 2, 120, 160)
    inner = flow[:, :, 20:-20, 20:-20]
    assert abs(inner[0, 0].mean().item() - 2.0) < 0.2 and abs(inner[0, 1].mean().item()) < 0.2
    assert inner[1].abs().max().item() < 0.05  # identical frames: no motion


def test_unknown_flow_method():
    with pytest.raises(ValueError, match="unknown flow method 'pwc'"):
        optical_flow.make_flow("pwc")


# ----------------------------------------------------------------------------- segments and ranks


def _step_signal(seconds=60, motion=(20, 40), rate=3):
    rng = np.random.default_rng(0)
    s = np.abs(rng.normal(0.1, 0.03, seconds * rate))
    s[motion[0] * rate:motion[1] * rate] += 2.0
    return s


def test_segments_find_the_motion_and_rank_it_first():
    s = _step_signal()
    boundaries, method = fp.segment_signal(s, 3, n_bkps=2, min_seconds=10)
    assert (boundaries, method) == ([0, 20, 40, 60], "dynp")
    ranks, means = fp.rank_segments(s, 3, boundaries)
    assert ranks == [2, 1, 3] and means[1] > 2


def test_binseg_beyond_dynp_max_seconds():
    s = _step_signal()
    assert fp.segment_signal(s, 3, n_bkps=2, min_seconds=10, dynp_max_seconds=30) == ([0, 20, 40, 60], "binseg")


def test_breakpoints_capped_by_length():
    s = _step_signal()
    assert len(fp.segment_signal(s, 3)[0]) == 7  # 180 samples / 30 - 1 = 5 breakpoints, not 7
    assert fp.segment_signal(s[:75], 3)[0] == [0, 15, 25]  # floor(75 / 30) - 1 = 1; end = floor(N / 3)
    assert fp.segment_signal(s[:45], 3) == ([0, 15], "single")


def test_breakpoints_capped_by_ruptures_own_rule():
    """Segments start on multiples of --jump_samples: with jump 4 a 10 s segment takes 32 samples, so
    90 samples hold one breakpoint, not floor(90 / 30) - 1 = 2 (ruptures raised BadSegmentationParameters)."""
    boundaries, method = fp.segment_signal(_step_signal()[:90], 3, n_bkps=7, min_seconds=10, jump_samples=4)
    assert method == "dynp" and len(boundaries) == 3 and boundaries[0] == 0 and boundaries[-1] == 30


def test_rank_ties_favour_the_earlier_segment():
    ranks, means = fp.rank_segments(np.r_[np.ones(6), np.full(3, 5.0), np.ones(3)], 3, [0, 1, 2, 3, 4])
    assert means == [1.0, 1.0, 5.0, 1.0] and ranks == [2, 3, 1, 4]


def test_feature_trajectory():
    f = np.zeros((6, 4))
    f[3:] = 1.0  # one jump of length 2 between rows 2 and 3
    np.testing.assert_allclose(fp.feature_trajectory(f, smooth=1), [0, 0, 0, 2, 0, 0])
    smooth = fp.feature_trajectory(f, smooth=3)
    assert smooth.shape == (6,) and np.argmax(smooth) in (2, 3, 4) and abs(smooth.sum() - 2.0) < 1e-9
    assert fp.feature_trajectory(np.zeros((1, 4))).shape == (1,)


def test_ranks_csv_round_trip_exact_format(tmp_path):
    for vid, seg, ranks in (("b", [0, 10, 20, 31], [3, 1, 2]), ("a", [0, 12], [1])):
        (tmp_path / f"{vid}.json").write_text(json.dumps({"vid": vid, "segments": seg, "ranks": ranks}))
    (tmp_path / "_feature.json").write_text("{}")
    path = merge.rebuild_ranks_csv(tmp_path)
    assert path.read_text() == (
        "vid,ranks,segments,top_start,top_end,bottom_start,bottom_end\n"
        "a,1,0 12,0,12,0,12\n"
        "b,3 1 2,0 10 20 31,10,20,0,10\n"
    )
    assert fp.read_ranks_csv(path) == {"a": {"segments": [0, 12], "ranks": [1]},
                                       "b": {"segments": [0, 10, 20, 31], "ranks": [3, 1, 2]}}


def test_original_ranks_csv_format_loads(tmp_path):
    path = tmp_path / "ranks.csv"
    path.write_text(
        ",vid,ranks,segments,top_start,top_end,bottom_start,bottom_end\n"
        '0,xyz_12345,[2 5 6 8 3 7 1 4],"[0, 20, 33, 88, 100, 131, 191, 203, 238]",191.0,203.0,100.0,131.0\n'
        '1,abc,[1 2],"[0.0, 10.0, 21.0]",0.0,10.0,10.0,21.0\n'
    )
    rows = fp.read_ranks_csv(path)
    assert rows["xyz_12345"] == {"ranks": [2, 5, 6, 8, 3, 7, 1, 4], "segments": [0, 20, 33, 88, 100, 131, 191, 203, 238]}
    assert rows["abc"] == {"ranks": [1, 2], "segments": [0, 10, 21]}


def test_ranks_csv_inconsistent_row_is_an_error(tmp_path):
    path = tmp_path / "ranks.csv"
    path.write_text("vid,ranks,segments\nv,1 2,0 10\n")
    with pytest.raises(ValueError, match="v: 2 boundaries for 2 ranks"):
        fp.read_ranks_csv(path)


# ----------------------------------------------------------------------------- AV-Align peaks


def test_motion_peaks_threshold_and_time():
    values = [0.0, 0.05, 0.0, 0.5, 0.2, 0.3, 0.3, 0.1, 2.0]
    # 0.05 is below 0.1; 0.3, 0.3 is a plateau (not strict); the last value has no right neighbour
    np.testing.assert_allclose(avpeaks.motion_peaks(values, fps=10), [0.3])


def test_onset_times_find_clicks():
    sr = avpeaks.AUDIO_RATE
    y = np.zeros(3 * sr, dtype=np.float32)
    for t in (0.5, 1.5, 2.5):
        y[int(t * sr):int(t * sr) + 200] = np.hanning(200)
    onsets = avpeaks.onset_times(y)
    assert onsets.dtype == np.float64 and len(onsets) == 3
    np.testing.assert_allclose(onsets, [0.5, 1.5, 2.5], atol=0.05)


# ----------------------------------------------------------------------------- the extraction pass


def _extract(args, main=None):
    """The extraction pass in-process (torch is already imported here): its exit code."""
    from feature_extraction import extract

    return (main or extract.main)([str(a) for a in args])


def test_motion_seconds_give_segments_ranks_and_peaks(make_clip, tmp_path):
    clip = make_clip("moving square.mp4", seconds=24.0, motion=[(8.0, 16.0)])
    out = tmp_path / "out"
    assert _extract(["--videos", clip, "--out", out, "--features", "flow", "avpeaks", "--plot",
                     "--n_bkps", "2", "--min_seconds", "4"]) == 0
    vid = "moving square"
    signal = np.load(out / "flow" / f"{vid}.npy")
    assert signal.dtype == np.float32 and signal.shape == (72,)  # 24 s at 3 Hz
    assert signal[30:45].min() > 10 * signal[:20].max()  # motion in seconds 10-15, none in 0-6.7
    result = json.loads((out / "flow" / f"{vid}.json").read_text())
    assert result["method"] == "dynp" and result["n_samples"] == 72 and result["fps"] == 3
    seg = result["segments"]
    assert len(seg) == 4 and seg[0] == 0 and seg[-1] == 24
    assert abs(seg[1] - 8) <= 1 and abs(seg[2] - 16) <= 1 and result["ranks"][1] == 1
    rows = fp.read_ranks_csv(out / "flow" / "ranks.csv")
    assert rows == {vid: {"segments": seg, "ranks": result["ranks"]}}
    assert (out / "flow" / f"{vid}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    video = np.load(out / "av_peaks" / "video" / f"{vid}.npy")
    audio = np.load(out / "av_peaks" / "audio" / f"{vid}.npy")
    assert video.dtype == audio.dtype == np.float64 and audio.ndim == 1
    assert len(video) > 10 and video.min() >= 8.0 and video.max() <= 16.1  # peaks only while the square moves
    assert json.loads((out / "av_peaks" / "video" / f"{vid}.json").read_text()) == {"fps": 25.0, "duration": 24.0}  # 600 frames


def test_standalone_cli_bad_input_and_single_segment(make_clip, tmp_path, capsys):
    good = make_clip("still.mp4", seconds=3.0)
    bad = tmp_path / "text.mp4"
    bad.write_text("not a video")
    out = tmp_path / "out"
    assert _extract(["--videos", bad, good, "--out", out], main=fp.main) == 1
    err = capsys.readouterr().err
    assert f"{bad}: " in err and "1 failed" in err
    result = json.loads((out / "flow" / "still.json").read_text())
    assert (result["segments"], result["ranks"], result["method"]) == ([0, 3], [1], "single")
    assert (out / "flow" / "ranks.csv").read_text().splitlines()[1] == "still,1,0 3,0,3,0,3"
    assert not (out / "flow" / "text.json").exists()


def test_ids_starting_with_underscore_and_a_short_video_with_odd_segment_sizes(make_clip, tmp_path, capsys):
    """`_under` is an id like the 10 SymMV YouTube ids that start with `_`, not a file of ours. With
    --min_seconds 3.5 a segment takes 10 samples but starts every 3, so 15 s hold 2 breakpoints, not 3
    (ruptures raised an empty BadSegmentationParameters)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    make_clip("videos/_under.mp4", seconds=15.0, motion=[(5.0, 10.0)])
    out = tmp_path / "out"
    assert fp.main(["--videos", str(videos), "--out", str(out), "--min_seconds", "3.5"]) == 0, capsys.readouterr().err
    result = json.loads((out / "flow" / "_under.json").read_text())
    seg = result["segments"]
    assert len(seg) == 4 and seg[0] == 0 and seg[-1] == 15 and min(np.diff(seg)) >= 3  # 2 breakpoints
    assert fp.read_ranks_csv(out / "flow" / "ranks.csv") == {"_under": {"segments": seg, "ranks": result["ranks"]}}


def test_every_flag_in_help():
    from feature_extraction import extract, pipeline

    text = pipeline.build_parser(extract.feature_modules()).format_help()
    for flag in ("--i3d_fps", "--flow_method", "--raft_iters", "--i3d_concat", "--i3d_imagenet", "--fp16",
                 "--n_bkps", "--min_seconds", "--jump_samples", "--dynp_max_seconds", "--plot"):
        assert flag in text
