"""Moment search, MGSV-EC library metrics, the synthetic library regime and families, previews."""
import csv

import av
import numpy as np
import pytest
import soundfile

from vmr import moments
from vmr.moments import (best_window, exact_moment_scores, iou, library_chance, library_metrics, moment_scores,
                         pair_moment_scores, paired_bootstrap, paired_bootstrap_hits, window_means)
from vmr.synthetic import FAMILIES, TANH_SCALE, Settings, generate, main as synthetic_main


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_fast_equals_exact_on_random_cases_including_short_and_equal_tracks():
    rng = np.random.default_rng(0)
    for _ in range(30):
        query = unit(rng.normal(size=(int(rng.integers(1, 25)), 12)))
        lengths = [len(query) - 1, len(query), *rng.integers(1, 60, size=int(rng.integers(0, 12)))]
        tracks = [unit(rng.normal(size=(int(n), 12))) for n in lengths if n > 0]
        fast, exact = moment_scores(query, tracks), exact_moment_scores(query, tracks)
        np.testing.assert_allclose(fast[0], exact[0], atol=1e-5)
        np.testing.assert_array_equal(fast[1], exact[1])


def test_short_track_is_scored_over_the_seconds_it_shares_with_the_query():
    rng = np.random.default_rng(1)
    query, track = unit(rng.normal(size=(10, 8))), unit(rng.normal(size=(4, 8)))
    scores, offsets = moment_scores(query, [track])
    assert offsets[0] == 0
    assert scores[0] == pytest.approx(np.sum(query[:4] * track) / 4, abs=1e-6)


def test_ties_give_the_earliest_offset():
    eye = np.eye(6, dtype=np.float32)
    query = eye[[0, 1, 2]]
    track = eye[[3, 0, 1, 2, 4, 0, 1, 2, 5]]  # the query appears at offsets 1 and 5: both score exactly 1
    other = eye[[3, 3, 3, 3]]  # every offset scores 0
    for scores, offsets in (moment_scores(query, [track, other]), exact_moment_scores(query, [track, other])):
        assert scores.tolist() == [1.0, 0.0] and offsets.tolist() == [1, 0]


def test_the_true_offset_is_found_in_a_noisy_longer_track():
    rng = np.random.default_rng(2)
    track = rng.normal(size=(150, 32))
    query = unit(track[57:87] + 0.5 * rng.normal(size=(30, 32)))
    decoys = [unit(rng.normal(size=(n, 32))) for n in (40, 200, 90)]
    scores, offsets = moment_scores(query, [*decoys, unit(track)])
    assert offsets[3] == 57 and np.argmax(scores) == 3


def test_blocks_of_candidates_give_the_same_answer(monkeypatch):
    rng = np.random.default_rng(3)
    query = unit(rng.normal(size=(7, 8)))
    tracks = [unit(rng.normal(size=(int(n), 8))) for n in rng.integers(3, 50, size=40)]
    whole = moment_scores(query, tracks)
    monkeypatch.setattr(moments, "BLOCK_ELEMENTS", 7 * 60)  # one or two tracks per block
    blocked = moment_scores(query, tracks)
    np.testing.assert_array_equal(blocked[1], whole[1])
    np.testing.assert_allclose(blocked[0], whole[0], atol=1e-6)
    assert moment_scores(query, [])[0].shape == (0,)


def test_pair_moment_scores_matches_each_pair_alone():
    rng = np.random.default_rng(4)
    queries = [unit(rng.normal(size=(n, 8))) for n in (5, 12, 30)]
    tracks = [unit(rng.normal(size=(n, 8))) for n in (20, 8, 45, 60)]
    rows, cols = np.array([2, 0, 1, 0, 2, 1]), np.array([3, 0, 1, 2, 0, 3])
    scores, offsets = pair_moment_scores(queries, tracks, rows, cols)
    for p, (r, c) in enumerate(zip(rows, cols)):
        s, o = exact_moment_scores(queries[r], [tracks[c]])
        assert scores[p] == pytest.approx(s[0], abs=1e-5) and offsets[p] == o[0]


def test_window_means_against_a_loop_and_best_window():
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(20, 3)).astype(np.float32)
    means = window_means(rows, 6)
    assert means.shape == (15, 3)
    np.testing.assert_allclose(means, [rows[o:o + 6].mean(0) for o in range(15)], atol=1e-6)
    np.testing.assert_allclose(window_means(rows[:4], 6), rows[:4].mean(0, keepdims=True), atol=1e-6)
    windows = np.array([[0, 1], [2, 0], [1, 1], [4, 0]], np.float32)
    score, offset = best_window(np.array([3, 0]), windows)
    assert (score, offset) == (pytest.approx(1.0), 1)  # windows 1 and 3 tie at cosine 1: the earlier


def test_iou_clips_to_the_track_and_handles_empty_moments():
    pred = [[10, 20], [2, 12], [50, 70], [0, 5], [3, 3]]
    gt = [[10, 20], [0, 10], [55, 60], [5, 5], [3, 3]]
    # [50, 70] clipped to the 60 s track: [50, 60] against [55, 60] -> 5 / 10
    np.testing.assert_allclose(iou(pred, gt, [60] * 5), [1.0, 8 / 12, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(iou([[50, 70]], [[55, 60]]), [5 / 20])


def test_library_metrics_on_a_hand_counted_case():
    ranks = [1, 3, 1, 12]
    gt = [[10, 20], [0, 10], [5, 15], [30, 40]]
    found = [[10, 20], [2, 12], [9, 19], [30, 40]]  # IoU 1, 8/12, 6/14, 1
    top_tracks = np.array([["a"] + ["z"] * 9, ["x", "y", "b"] + ["z"] * 7, ["c"] + ["z"] * 9, ["z"] * 10])
    top_moments = np.zeros((4, 10, 2))
    top_moments[0, 0] = [40, 50]  # the answer's moment misses (IoU 0)
    top_moments[1, 2] = [0, 10]  # IoU 1 on the answer, 8/12 on the true-track search
    top_moments[2, 0] = [5, 15]  # IoU 1
    m = library_metrics(ranks, gt, found, top_tracks, top_moments, ["a", "b", "c", "d"], track_lengths=[60] * 4)
    expected = {"R@1": 0.5, "R@5": 0.75, "R@10": 0.75, "R@100": 1.0, "MedR": 2.0,
                "mIoU": (1 + 8 / 12 + 6 / 14 + 1) / 4, "IoU@0.3": 1.0, "IoU@0.5": 0.75, "IoU@0.7": 0.5,
                "MoR@1 IoU>0.5": 0.25, "MoR@1 IoU>0.7": 0.25, "MoR@10 IoU>0.5": 0.5, "MoR@10 IoU>0.7": 0.25,
                "MoR@100 IoU>0.5": 0.75, "MoR@100 IoU>0.7": 0.5,
                "MoR@1 IoU>0.5 retrieved": 0.25, "MoR@1 IoU>0.7 retrieved": 0.25,
                "MoR@10 IoU>0.5 retrieved": 0.5, "MoR@10 IoU>0.7 retrieved": 0.5}
    assert m == pytest.approx(expected)  # MoR@100 retrieved is absent: only 10 answers were given


def test_chance_levels_exact_and_against_a_random_model():
    c = library_chance(10, [[0, 10]], [20])
    ious = [(10 - o) / (10 + o) for o in range(11)]  # a 10 s moment at offsets 0..10 of a 20 s track
    assert c["R@1"] == 0.1 and c["R@100"] == 1.0 and c["MedR"] == 5.5
    assert c["mIoU"] == pytest.approx(np.mean(ious))
    assert c["IoU@0.5"] == pytest.approx(4 / 11) and c["MoR@1 IoU>0.5"] == pytest.approx(0.1 * 4 / 11)
    assert c["MoR@10 IoU>0.7"] == pytest.approx(2 / 11)
    # a random model on a random library lands on the same values
    rng = np.random.default_rng(6)
    n, n_tracks = 5000, 50
    lengths = rng.integers(40, 120, size=n)
    widths = rng.integers(5, 40, size=n)
    starts = rng.integers(0, lengths - widths + 1)
    gt = np.stack([starts, starts + widths], 1)
    guess = rng.integers(0, lengths - widths + 1)
    ranks = rng.integers(1, n_tracks + 1, size=n)
    measured = library_metrics(ranks, gt, np.stack([guess, guess + widths], 1), track_lengths=lengths)
    chance = library_chance(n_tracks, gt, lengths)
    for key in ("R@1", "R@10", "mIoU", "IoU@0.5", "MoR@1 IoU>0.5", "MoR@10 IoU>0.7"):
        assert measured[key] == pytest.approx(chance[key], abs=0.01), key


def test_paired_bootstrap_covers_the_true_difference_and_is_zero_for_identical_systems():
    rng = np.random.default_rng(7)
    common = rng.random(3000)
    hits_a, hits_b = common < 0.6, common < 0.5  # paired: a finds every query b finds, and 10% more
    mean, low, high = paired_bootstrap_hits(hits_a, hits_b, n_boot=2000)
    assert low < 0.1 < high and high - low < 0.03 and mean == pytest.approx(np.mean(hits_a) - np.mean(hits_b))
    ranks = rng.integers(1, 20, size=500)
    assert paired_bootstrap(ranks, ranks, k=5, n_boot=500) == (0.0, 0.0, 0.0)
    assert paired_bootstrap(ranks, ranks + 1, k=5, n_boot=500) == paired_bootstrap_hits(ranks <= 5, ranks + 1 <= 5, n_boot=500)


def test_synthetic_library_files_and_moments(tmp_path):
    synthetic_main(["--out", str(tmp_path), "--regime", "library", "--family", "switching", "--n", "40", "--n_test", "10",
                    "--video_dim", "16", "--audio_dim", "8"])
    rows = list(csv.DictReader(open(tmp_path / "moments.csv")))
    assert list(rows[0]) == ["ID", "start", "end", "track"] and len(rows) == 40
    tracks = {r["track"] for r in rows}
    assert len(tracks) < 40  # videos share tracks
    assert sorted(p.stem for p in (tmp_path / "audio").glob("*.npy")) == sorted(tracks)
    for r in rows:
        video, track = np.load(tmp_path / "video" / f"{r['ID']}.npy"), np.load(tmp_path / "audio" / f"{r['track']}.npy")
        start, end = int(r["start"]), int(r["end"])
        assert 0 <= start < end <= len(track) and len(video) == end - start
        assert 30 <= len(track) - len(video)
    assert [r["ID"] for r in rows][-10:] == open(tmp_path / "test.csv").read().split()[1:]


def test_synthetic_library_video_is_the_track_latent_over_its_moment():
    """Noise-free oscillation family (tanh map, invertible): the latent recovered from each video equals the
    latent recovered from its track over the moment."""
    s = Settings(n=12, regime="library", family="oscillation", noise=0.0, nuisance=0.0, video_dim=24, audio_dim=16, seed=3)
    rng = np.random.default_rng(3)  # generate's first draws: the video and audio maps
    a_v = rng.normal(size=(s.latent, s.video_dim)) / np.sqrt(s.latent)
    a_a = rng.normal(size=(s.latent, s.audio_dim)) / np.sqrt(s.latent)
    latent = lambda x, a: np.linalg.lstsq(a.T, (TANH_SCALE * np.arctanh(x / TANH_SCALE)).T, rcond=None)[0].T
    pairs = generate(s)
    assert len({p.track for p in pairs}) < len(pairs)
    for p in pairs:
        z_track = latent(p.audio.astype(np.float64), a_a)
        np.testing.assert_allclose(latent(p.video.astype(np.float64), a_v), z_track[p.start:p.end], atol=1e-3)
        assert p.boundaries[0] == 0 and p.boundaries[-1] == p.end - p.start and len(p.ranks) == len(p.boundaries) - 1


def test_families_differ():
    videos = {f: generate(Settings(n=3, family=f, video_dim=16, audio_dim=8, seed=1))[0].video for f in FAMILIES}
    assert videos["walk"].min() >= 0 and np.abs(videos["oscillation"]).max() < TANH_SCALE
    assert videos["oscillation"].min() < 0  # tanh, not relu
    switching = generate(Settings(n=1, family="switching", noise=0.0, nuisance=0.0, video_dim=16, audio_dim=8, seed=1))[0]
    changes = np.any(np.abs(np.diff(switching.video, axis=0)) > 1e-6, axis=1).mean()
    assert 0.05 < changes < 0.6  # piecewise constant: the state holds for seconds at a time
    with pytest.raises(ValueError, match="unknown family"):
        Settings(family="nope")


@pytest.fixture
def track_wav(tmp_path):
    rate = 16000
    t = np.arange(rate * 20) / rate
    path = tmp_path / "track.wav"
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate)
    return path


def streams(path):
    with av.open(str(path)) as c:
        video = c.streams.video[0]
        packets = [bytes(p) for p in c.demux(video) if p.size]
        audio = [s for s in c.streams if s.type == "audio"]
        return video.codec_context.name, packets, [float(s.duration * s.time_base) for s in audio]


def test_preview_copies_the_picture_and_lays_the_moment_under_it(make_clip, track_wav, tmp_path):
    from vmr.preview import preview_name, write_preview

    video = make_clip("query.mp4", seconds=4.0)
    names = [preview_name("q1", r, "track+1", 5, 9) for r in (10, 2, 1)]
    assert sorted(names) == names[::-1] and names[2] == "q1_rank001_track+1_5-9s.mp4"
    out = write_preview(video, track_wav, 5, 9, tmp_path / "previews" / names[2])
    codec, packets, _ = streams(video)
    out_codec, out_packets, audio = streams(out)
    assert out_codec == codec and out_packets == packets  # the picture stream is a copy
    assert audio == [pytest.approx(4.0, abs=0.05)]
    with av.open(str(out)) as c:
        sound = np.concatenate([f.to_ndarray().ravel() for f in c.decode(audio=0)])
    rate = len(sound) / 4.0
    assert np.abs(sound[: int(0.05 * rate)]).max() < 0.1 * np.abs(sound[int(1.5 * rate): int(2.5 * rate)]).max()  # faded in
    # a longer moment is cut at the video's end
    assert streams(write_preview(video, track_wav, 0, 10, tmp_path / "long.mp4"))[2] == [pytest.approx(4.0, abs=0.05)]
    assert [p.name for p in tmp_path.glob("**/*.tmp")] == []


def test_preview_bad_input_names_the_file(make_clip, track_wav, tmp_path):
    from vmr.preview import write_preview

    video = make_clip("query.mp4", seconds=2.0)
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    cases = [(bad, track_wav, 0, 2, "bad.mp4: not a readable media file"),
             (video, tmp_path / "missing.wav", 0, 2, "missing.wav: no such file"),
             (track_wav, track_wav, 0, 2, "track.wav: no video stream"),
             (video, track_wav, 25, 27, "track.wav: moment starts at 25 s, after the track's end")]
    for v, t, start, end, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            write_preview(v, t, start, end, tmp_path / "out.mp4")
        assert "\n" not in str(e.value)
    assert not (tmp_path / "out.mp4").exists()
