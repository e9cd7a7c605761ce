"""vmr/metrics.py: ranks and ties, recall blocks, CCA, FAD against closed forms, AV-Align, FAISS."""
import json

import numpy as np
import pytest
import scipy.linalg

from vmr import metrics as M


def test_gt_ranks_pessimistic_ties_and_groups():
    scores = np.array([[0.9, 0.1, 0.5],
                       [0.8, 0.8, 0.1],   # tie with a negative counts against the model
                       [0.3, 0.2, 0.1]])  # ground truth is the worst
    assert M.gt_ranks(scores).tolist() == [1, 2, 3]
    assert M.gt_ranks(np.ones((5, 5))).tolist() == [5] * 5  # collapsed model: rank N, not 1
    relevant = np.eye(3, dtype=bool)
    relevant[2, 0] = True  # item 0 is the same track as item 2's
    assert M.gt_ranks(scores, relevant).tolist() == [1, 2, 1]
    groups = ["a", "b", "a"]
    assert M.gt_ranks(scores, M.group_relevance(groups)).tolist() == [1, 2, 1]


def test_recall_block_and_chance():
    block = M.recall_block([1, 2, 3, 10, 60], ks=(1, 5, 10, 50))
    assert block == {"R@1": 0.2, "R@5": 0.6, "R@10": 0.8, "R@50": 0.8, "MedR": 3.0, "MeanR": 15.2, "ranks": [1, 2, 3, 10, 60]}
    chance = M.chance_block(200)
    assert chance["R@10"] == pytest.approx(0.05) and chance["R@100"] == pytest.approx(0.5)
    assert chance["MedR"] == chance["MeanR"] == 100.5
    assert M.chance_block(50)["R@100"] == 1.0


def test_retrieval_and_batch_metrics():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(300, 16))
    out = M.retrieval_metrics(v, v + 0.01 * rng.normal(size=v.shape))
    assert out["video_to_music"]["R@1"] == 1.0 and len(out["music_to_video"]["ranks"]) == 300
    noise = M.retrieval_metrics(v, rng.normal(size=v.shape))
    assert noise["video_to_music"]["R@1"] < 0.05
    batch = M.batch_metrics(v, rng.normal(size=v.shape), batch=100, seed=0, repeats=2)
    assert batch["n_batches"] == 6 and batch["batch_size"] == 100 and "batch-level" in batch["label"]
    assert "ranks" not in batch["video_to_music"]
    assert 0.02 < batch["video_to_music"]["R@10"] < 0.2  # chance in a batch of 100 is 0.1


def reference_frechet(mu1, s1, mu2, s2):
    """Symmetric form tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2), equal in exact arithmetic."""
    r1 = scipy.linalg.sqrtm(s1).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(r1 @ s2 @ r1).real))


def test_frechet_distance_closed_forms():
    # diagonal Gaussians: sum (m1-m2)^2 + (sqrt(v1) - sqrt(v2))^2
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert M.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    assert M.frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    assert M.frechet_distance(m1, s1, m2, s2) == pytest.approx(reference_frechet(m1, s1, m2, s2), rel=1e-8)


def test_fad_on_samples_matches_known_gaussians():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 4))
    cov = a @ a.T + np.eye(4)
    mu = np.array([1.0, -1.0, 0.5, 0.0])
    x = rng.multivariate_normal(np.zeros(4), np.eye(4), size=40000)
    y = rng.multivariate_normal(mu, cov, size=40000)
    expected = reference_frechet(np.zeros(4), np.eye(4), mu, cov)
    assert M.fad(x, y) == pytest.approx(expected, rel=0.03)
    mean, sigma = M.gaussian_stats(y[:10])
    assert np.allclose(sigma, np.cov(y[:10].T, ddof=1))  # unbiased covariance
    # fewer rows than dimensions: singular covariances still give a finite number
    assert np.isfinite(M.fad(rng.normal(size=(5, 16)), rng.normal(size=(5, 16))))
    with pytest.raises(ValueError, match="at least 2"):
        M.fad(x[:1], y)


def test_av_align_hand_cases():
    fps = 10.0  # window +-0.1 s, strict
    assert M.av_align([1.0, 2.05, 3.5], [1.02, 2.0, 5.0], fps) == pytest.approx(2 / 4)
    assert M.av_align([1.1], [1.0], fps) == 0.0  # a = v + 1/fps is outside the strict window
    assert M.av_align([1.0999], [1.0], fps) == 1.0
    assert M.av_align([], [], fps) == 0.0
    assert M.av_align([1.0], [], fps) == 0.0
    # one video peak, five onsets in its window: 2025 matches once, 2023 matches all five (TempoTokens #11)
    onsets = [0.96, 0.98, 1.0, 1.02, 1.04]
    assert M.av_align(onsets, [1.0], fps, "2025") == pytest.approx(1 / 5)
    assert M.av_align(onsets, [1.0], fps, "2023") == pytest.approx(5.0)
    # 2025 takes the first unused peak in list order, so a later onset can still use the second peak
    assert M.av_align([1.0, 1.05], [0.98, 1.06], fps, "2025") == 1.0
    with pytest.raises(ValueError):
        M.av_align([1.0], [1.0], fps, "2024")


def test_av_align_report_reads_peak_folders(tmp_path):
    for kind in ("video", "audio"):
        (tmp_path / kind).mkdir()
    for vid, peaks in {"a": [1.0, 2.0], "b": [5.0], "c": [8.0]}.items():
        np.save(tmp_path / "video" / f"{vid}.npy", np.array(peaks))
        np.save(tmp_path / "audio" / f"{vid}.npy", np.array(peaks) + 0.01)
        (tmp_path / "video" / f"{vid}.json").write_text(json.dumps({"fps": 25.0, "duration": 10.0}))
    (tmp_path / "video" / "d.json").write_text(json.dumps({"fps": 25.0, "duration": 10.0}))
    report = M.av_align_report(["a", "b", "c", "d"], ["a", "c", "b", "a"], tmp_path)
    assert report["ground_truth"] == 1.0
    assert report["retrieved"] == pytest.approx(1 / 3)
    assert report["n"] == 3 and report["missing"] == ["d"] and report["variant"] == "2025"


def test_faiss_flat_top10_equals_exact():
    from vmr.search import build_faiss, search

    rng = np.random.default_rng(4)
    emb = M.normalize_rows(rng.normal(size=(3000, 512)))
    queries = M.normalize_rows(rng.normal(size=(20, 512)))
    idx_exact, s_exact = search(emb, queries, 10)
    idx_flat, s_flat = search(emb, queries, 10, build_faiss(emb, "flat"))
    for a, b in zip(idx_exact, idx_flat):
        assert set(a) == set(b)
    assert np.allclose(np.sort(s_exact, 1), np.sort(s_flat, 1), atol=1e-5)
    assert np.all(np.diff(s_exact, axis=1) <= 0)  # exact search returns scores best first
    for kind in ("ivf", "hnsw"):  # approximate indexes: a library track queried with itself comes first
        idx, scores = search(emb, emb[:20], 10, build_faiss(emb, kind))
        assert idx.shape == (20, 10) and idx[:, 0].tolist() == list(range(20))
        assert np.allclose(scores[:, 0], 1.0, atol=1e-5)


def test_recall_curve_png(tmp_path):
    rng = np.random.default_rng(5)
    m = M.retrieval_metrics(rng.normal(size=(50, 4)), rng.normal(size=(50, 4)))
    m.update(model="VM-NET", gallery=50, baselines={"chance": M.chance_block(50), "cca": None})
    path = M.recall_curve_png(m, tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
