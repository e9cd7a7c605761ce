"""The evaluation protocol (vmr/): music segments, tuned baselines, chance levels, non-finite guards, run folders, provenance."""
import json
import warnings

import numpy as np
import pytest

from vmr import metrics as M
from vmr.baselines import CCA, tuned_aligned_linear, tuned_cca
from vmr.scorer import AlignedScoring, pack_sequences
from vmr.runs import check_provenance, check_resume_flags, prepare_run_dir
from vmr.segments import change_points, music_segments, optimal_partition


# ---------------------------------------------------------------- music segments

def ruptures_dynp(signal, n_bkps, min_size):
    import ruptures

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ruptures.Dynp(model="normal", min_size=min_size, jump=1).fit(np.asarray(signal, float)).predict(n_bkps=n_bkps)[:-1]


@pytest.mark.parametrize("seed", range(4))
def test_fast_partition_equals_ruptures_dynp(seed):
    rng = np.random.default_rng(seed)
    levels = rng.uniform(0.5, 5, size=6)
    signal = np.concatenate([rng.normal(lv, rng.uniform(0.1, 1.0), size=int(rng.integers(12, 30))) for lv in levels])
    for n_bkps, min_size in ((3, 10), (5, 6)):
        assert optimal_partition(signal, n_bkps, min_size) == ruptures_dynp(signal, n_bkps, min_size)


def test_music_segments_follow_the_music_and_cover_the_track():
    rng = np.random.default_rng(0)
    audio = np.concatenate([rng.normal(0, s, size=(40, 8)) for s in (0.1, 2.0, 0.1, 2.0)])
    cuts = music_segments(audio, n_bkps=3, min_seconds=10)
    assert cuts[0] == 0 and cuts[-1] == 160 and len(cuts) == 5
    assert all(abs(c - t) <= 6 for c, t in zip(cuts[1:-1], (40, 80, 120)))  # the moving average blurs by ~5 s
    assert change_points(np.zeros(15), n_bkps=7, min_seconds=10) == [0, 15]  # too short to cut: one segment
    long = change_points(np.r_[np.zeros(700), np.ones(700) * 5] + rng.normal(0, 0.1, 1400), n_bkps=1, min_seconds=10)
    assert long[0] == 0 and long[-1] == 1400 and abs(long[1] - 700) <= 3  # block means beyond 600 rows


# ---------------------------------------------------------------- baselines

def latent_pairs(n, k=8, video_dim=64, audio_dim=32, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k))
    video = z @ rng.normal(size=(k, video_dim)) + noise * rng.normal(size=(n, video_dim))
    audio = z @ rng.normal(size=(k, audio_dim)) + noise * rng.normal(size=(n, audio_dim))
    return video, audio


def test_tuned_cca_finds_k_shared_dimensions_where_all_directions_do_not():
    video, audio = latent_pairs(2400, seed=1)
    train, val, test = (video[:1600], audio[:1600]), (video[1600:1800], audio[1600:1800]), (video[1800:], audio[1800:])
    tuned = tuned_cca(train, val)
    tuned_r1 = M.score_metrics(tuned.score(*test))["video_to_music"]["R@1"]
    cca = CCA(*train, ridge=1e-2)
    every = M.normalize_rows(cca.project_video(test[0])) @ M.normalize_rows(cca.project_audio(test[1])).T
    assert tuned.dims == 8  # the shared latent dimensions, found on validation
    assert tuned_r1 >= 0.9
    assert M.score_metrics(every)["video_to_music"]["R@1"] < tuned_r1 - 0.3  # all 32 directions with equal weight: the old default


def test_aligned_linear_uses_time_where_pooling_cannot():
    rng = np.random.default_rng(2)
    a_v, a_a = rng.normal(size=(4, 24)), rng.normal(size=(4, 12))

    def pairs(n):
        walks = [np.cumsum(rng.normal(size=(int(rng.integers(20, 40)), 4)), 0) for _ in range(n)]
        walks = [w - w.mean(0) for w in walks]  # the mean carries nothing
        return ([w @ a_v + rng.normal(size=(len(w), 24)) for w in walks], [w @ a_a + rng.normal(size=(len(w), 12)) for w in walks])

    train, val, test = pairs(300), pairs(60), pairs(100)
    aligned = M.score_metrics(tuned_aligned_linear(train, val).score(*test))["video_to_music"]
    pool = lambda rows: np.stack([r.mean(0) for r in rows])  # noqa: E731
    pooled = M.score_metrics(tuned_cca((pool(train[0]), pool(train[1])), (pool(val[0]), pool(val[1]))).score(pool(test[0]), pool(test[1])))
    assert aligned["R@1"] > 0.8 and pooled["video_to_music"]["R@1"] < 0.1


def test_aligned_scores_are_means_over_the_common_seconds():
    queries = {"seq": [np.array([[1.0, 0], [1, 0], [0, 1]], np.float32)]}
    library = pack_sequences([np.array([[1.0, 0]]), np.array([[1.0, 0], [0, 1], [0, 1], [0.6, 0.8]])])
    assert AlignedScoring().all_scores(queries, library).tolist() == [[1.0, pytest.approx(2 / 3)]]


# ---------------------------------------------------------------- chance levels and guards

def test_nan_scores_stop_ranking_instead_of_counting_as_hits():
    scores = np.eye(3)
    scores[1, 1] = np.nan
    with pytest.raises(ValueError, match="1 non-finite scores"):
        M.gt_ranks(scores)
    with pytest.raises(ValueError, match="VM-NET: test: 2 non-finite values"):
        M.check_finite(np.array([np.inf, 1.0, np.nan]), "VM-NET: test")


def test_fad_chance_draws_tracks_with_replacement_and_is_above_zero(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"t{i}" for i in range(30)]
    for i, vid in enumerate(ids):  # every track a different distribution: a wrong track changes the pooled rows
        np.save(tmp_path / f"{vid}.npy", rng.normal(i % 5, 1.0, size=(20, 3)))
    report = M.fad_report(tmp_path, ids, ids, ids, seeds=5)
    assert report["top1"] == pytest.approx(0.0, abs=1e-6)  # a perfect retriever
    assert report["chance"]["seeds"] == 5 and report["chance"]["mean"] > 0.05 and report["chance"]["std"] > 0
    shuffled = M.fad(np.concatenate([np.load(tmp_path / f"{v}.npy") for v in ids]),
                     np.concatenate([np.load(tmp_path / f"{v}.npy") for v in reversed(ids)]))
    assert shuffled == pytest.approx(0.0, abs=1e-6)  # why a permutation of the gallery was no chance level


def test_av_align_drops_audio_peaks_after_the_video_ends(tmp_path):
    for kind in ("video", "audio"):
        (tmp_path / kind).mkdir()
    np.save(tmp_path / "video" / "q.npy", np.array([1.0, 2.0]))
    (tmp_path / "video" / "q.json").write_text(json.dumps({"fps": 25.0, "duration": 3.0}))
    np.save(tmp_path / "audio" / "q.npy", np.array([1.0, 2.0]))  # the video's own track ends with it
    np.save(tmp_path / "audio" / "long.npy", np.array([1.0, 2.0, 5.0, 7.0, 9.0]))  # the same start, then 3 peaks after 3 s
    report = M.av_align_report(["q", "q"], ["long", "q"], tmp_path)
    assert report["retrieved"] == 1.0  # both lists score 2 / (2 + 2 - 2); peaks at 5, 7, 9 s are past the video
    (tmp_path / "video" / "q.json").write_text(json.dumps({"fps": 25.0}))
    with pytest.raises(ValueError, match="no video duration"):
        M.av_align_report(["q"], ["q"], tmp_path)


# ---------------------------------------------------------------- run folders and provenance

def test_run_folder_refuses_results_of_another_run_unless_overwrite(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds results of another run \\(metrics.json\\)"):
        prepare_run_dir(tmp_path)
    prepare_run_dir(tmp_path, overwrite=True)
    assert not (tmp_path / "metrics.json").exists() and (tmp_path / "notes.txt").exists()
    assert "removing metrics.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--lr 0.001 -> 0.01"):
        check_resume_flags("last.pt", {"lr": 0.001, "seed": 0}, {"lr": 0.01, "seed": 0})


def test_provenance_of_another_kind_is_refused_whatever_the_width(tmp_path):
    official = {"model": "vggish", "sha256": "ab" * 32, "weights": "official", "options": {}}
    for kind, prov in (("video", {"model": "clip", "weights": "official"}), ("audio", {**official, "options": {"pca": True}})):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "_feature.json").write_text(json.dumps(prov))
    with pytest.raises(ValueError, match=r"audio features .* are vggish \(official weights, sha256 abababababab, pca True\), "
                                         r"the checkpoint was trained on vggish \(official weights"):
        check_provenance({"video": {"model": "clip", "weights": "official"}, "audio": official}, tmp_path, "test")


def test_features_that_differ_only_in_precision_are_the_same_feature(tmp_path):
    """A float32 model reads bfloat16 rows (within the accuracy bar, tests/test_precision.py); any other difference
    in the record is refused."""
    from vmr.runs import check_folder, same_feature

    record = {"model": "clip", "weights": "official", "options": {"l2": False}}
    assert same_feature(record, {**record, "options": {"l2": False, "precision": "bfloat16"}})
    assert same_feature({"model": "vggish"}, {"model": "vggish", "options": {"precision": "bfloat16+float32"}})
    assert not same_feature(record, {**record, "options": {"l2": True, "precision": "bfloat16"}})
    (tmp_path / "_feature.json").write_text(json.dumps({**record, "options": {"l2": False, "precision": "bfloat16"}}))
    check_folder({"video": record}, "video", [tmp_path], "query")  # no error
    with pytest.raises(ValueError, match="trained on clip"):
        check_folder({"video": {**record, "weights": "random"}}, "video", [tmp_path], "query")
