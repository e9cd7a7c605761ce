"""Issue #14 (scale): split folders read back bit for bit, atomic split writes, chunked ranks, FAISS recall.

Small sizes only; the 2,000 / 20,000-item and 200,000-track measurements are bench/bench_scale.py (`make bench`).
"""
import numpy as np
import pytest

from vmr import metrics as M
from vmr.splits import LazyRows, Split, is_split, write_split


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A generated folder-of-npy feature set and vmnet/prepare.py's data folder with float32 split folders."""
    from vmnet import prepare
    from vmr.synthetic import Settings, generate, write_dataset

    root = tmp_path_factory.mktemp("scale")
    settings = Settings(n=14, min_len=20, max_len=40, video_dim=24, audio_dim=8, seed=3)
    pairs = generate(settings)
    pairs[5].audio = pairs[5].audio[:-7]  # audio shorter than video: rows [0, min T)
    pairs[9].video[3, 2] = np.nan  # a bad item: left out of the split as load_pair leaves it out
    write_dataset(root / "features", pairs, 4, settings)
    data = root / "data"
    assert prepare.main(["--features", str(root / "features"), "--video", "video", "--audio", "audio", "--out", str(data),
                         "--test_fraction", "0.3", "--split_format", "mmap"]) == 0
    return root, data


def test_split_equals_folder_of_npy_bit_for_bit(prepared, capsys):
    from vmr.data import check_dims, load_sequences, read_ids
    from vmr.runs import feature_provenance

    root, data = prepared
    for name in ("train", "test"):
        ids = read_ids(data / f"{name}.csv")
        assert is_split(data / name) and not is_split(data)
        kept, video, audio = load_sequences(data, ids)
        kept_s, video_s, audio_s = load_sequences(data / name, ids)
        assert kept_s == kept and isinstance(video_s, LazyRows) and len(video_s) == len(video)
        for a, b in zip(video + audio, list(video_s) + list(audio_s)):
            assert a.dtype == b.dtype == np.float32 and a.shape == b.shape and np.array_equal(a, b)
        assert np.array_equal(video_s[1:][0], video[1])  # slices stay lazy and index the same items
        k2, v2, _ = load_sequences(data / name, ids, max_seconds=5)
        assert all(np.array_equal(a, b) for a, b in zip(load_sequences(data, ids, max_seconds=5)[1], v2))
        assert feature_provenance(data / name) == feature_provenance(data)
        check_dims(data / name, ids, (24, 8))
        with pytest.raises(ValueError, match="widths"):
            check_dims(data / name, ids, (25, 8))
    assert "pair00009" not in Split(data / "train").ids + Split(data / "test").ids


def test_split_items_for_the_transformer_equal_folder_items(prepared):
    from transformer.data import SplitItem, collate, item_rows, load_items
    from vmr.data import read_ids

    root, data = prepared
    ids = read_ids(data / "train.csv")
    kwargs = dict(flow_ranks=root / "features" / "flow" / "ranks.csv", max_seq_len=12, min_seconds=3, n_bkps=2)
    a = load_items(data, ids, **kwargs)
    b = load_items(data / "train", ids, **kwargs)
    assert [it.id for it in a] == [it.id for it in b] and all(isinstance(it, SplitItem) for it in b)
    for x, y in zip(a, b):
        assert np.array_equal(x.video, y.video) and np.array_equal(x.audio, y.audio)
        assert np.array_equal(x.video_parts, y.video_parts) and np.array_equal(x.music_parts, y.music_parts)
        assert (x.top, x.bottom, x.n_segments) == (y.top, y.bottom, y.n_segments)
    assert all(np.array_equal(u, v) for u, v in zip(item_rows(a, "audio"), item_rows(b, "audio")))
    ba, bb = collate(a[:4]), collate(b[:4])
    assert all(torch_equal(p.x, q.x) for p, q in zip(ba.video + ba.audio, bb.video + bb.audio))


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_float16_split_round_trips(prepared, tmp_path):
    from vmr.data import load_sequences, read_ids
    from vmr.splits import split_from_folder

    _, data = prepared
    ids = read_ids(data / "train.csv")
    split_from_folder(data, ids, tmp_path / "half", "float16")
    assert np.load(tmp_path / "half" / "video.npy", mmap_mode="r").dtype == np.float16
    _, video, audio = load_sequences(data, ids)
    _, video_h, audio_h = load_sequences(tmp_path / "half", ids)
    for a, b in zip(video + audio, list(video_h) + list(audio_h)):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)


def test_split_write_is_atomic(tmp_path):
    rng = np.random.default_rng(0)
    good = [(f"id{i}", rng.random((5, 3), np.float32), rng.random((5, 2), np.float32)) for i in range(3)]
    write_split(tmp_path / "s", good)
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir() if p.is_file()}

    def failing():
        yield from good
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_split(tmp_path / "s", failing())
    with pytest.raises(OSError):
        write_split(tmp_path / "new", failing())
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp folder left behind
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir() if p.is_file()} == before  # the old split intact
    with pytest.raises(ValueError, match="range of float16"):
        write_split(tmp_path / "big", [("x", np.full((2, 3), 7e4, np.float32), good[0][2][:2])], "float16")
    assert not (tmp_path / "big").exists()
    with pytest.raises(ValueError, match="same T"):
        write_split(tmp_path / "bad", [("x", good[0][1], good[0][2][:4])])
    assert not (tmp_path / "bad").exists()
    split = Split(tmp_path / "s")
    assert split.ids == ["id0", "id1", "id2"] and split.offsets.tolist() == [0, 5, 10, 15]
    assert np.array_equal(split.rows("audio", 2), good[2][2]) and np.array_equal(split.rows("video", 1, 2), good[1][1][:2])


def dense_ranks(scores, relevant=None):
    """gt_ranks as it was before chunking: one (n, N) pass."""
    n = scores.shape[0]
    if relevant is None:
        relevant = np.eye(n, scores.shape[1], dtype=bool)
    best = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)
    return 1 + ((scores >= best) & ~relevant).sum(axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunked_ranks_equal_dense_ranks_with_ties(dtype):
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, size=(300, 300)).astype(dtype)  # many ties: pessimistic rule
    groups = rng.integers(0, 40, size=300)
    relevant = M.group_relevance(groups)
    for chunk in (1, 7, 64, 1024):
        assert np.array_equal(M.gt_ranks(scores, chunk=chunk), dense_ranks(scores))
        assert np.array_equal(M.gt_ranks(scores, relevant, chunk=chunk), dense_ranks(scores, relevant))
        assert np.array_equal(M.gt_ranks(scores, groups=groups, chunk=chunk), dense_ranks(scores, relevant))
    continuous = rng.normal(size=(200, 200)).astype(dtype)
    assert np.array_equal(M.gt_ranks(continuous, chunk=13), dense_ranks(continuous))
    bad = scores.copy()
    bad[250, 3] = np.nan
    with pytest.raises(ValueError, match="1 non-finite"):
        M.gt_ranks(bad, chunk=16)
    # retrieval_metrics' embedding path (chunked float32 products) agrees with the dense score matrix
    v, m = rng.normal(size=(150, 8)), rng.normal(size=(150, 8))
    scores = M.normalize_rows(v) @ M.normalize_rows(m).T
    assert M.retrieval_metrics(v, m)["video_to_music"]["ranks"] == dense_ranks(scores).tolist()


def test_top_k_equals_stable_argsort():
    """metrics.top_k, and the answers retrieval and test.py give (vmr.scorer.answers): equal scores in library order,
    also at the cut of a shorter candidate list."""
    from vmr.scorer import Scorer, answers

    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, size=(70, 90)).astype(np.float32)
    for k in (1, 5, 90, 200):
        assert np.array_equal(M.top_k(scores, k, chunk=16), np.argsort(-scores, axis=1, kind="stable")[:, :k])
        idx, _ = answers(Scorer(), {"pooled": scores}, {"pooled": np.eye(90, dtype=np.float32)}, k)
        assert np.array_equal(idx, np.argsort(-scores, axis=1, kind="stable")[:, :k])


def clustered(n, dim, clusters, rng, spread=0.5):
    """Unit rows around `clusters` random centres (noise of norm about `spread`): embeddings have structure."""
    centres = M.normalize_rows(rng.standard_normal((clusters, dim)))
    return M.normalize_rows(centres[rng.integers(0, clusters, n)] + spread / np.sqrt(dim) * rng.standard_normal((n, dim)))


def test_faiss_recall_on_clustered_embeddings():
    pytest.importorskip("faiss", reason="faiss-cpu is in requirements.txt (make setup installs it)")
    from vmr.search import build_faiss, search

    rng = np.random.default_rng(0)
    emb = clustered(6000, 64, 60, rng).astype(np.float32)
    queries = clustered(100, 64, 60, rng).astype(np.float32)
    exact, _ = search(emb, queries, 10)
    for kind in ("ivf", "hnsw"):
        idx, _ = search(emb, queries, 10, build_faiss(emb, kind, nprobe=16, ef_search=256))
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, idx)])
        assert recall >= 0.95, (kind, recall)


def test_aligned_baseline_scores_in_blocks_equal_one_block():
    from vmr.baselines import BaselineScorer, tuned_aligned_linear

    rng = np.random.default_rng(5)
    lengths = rng.integers(5, 30, 40)
    video = [rng.standard_normal((t, 12)).astype(np.float32) for t in lengths]
    audio = [v[:, :6] + 0.5 * rng.standard_normal((len(v), 6)).astype(np.float32) for v in video]
    scorer = BaselineScorer(tuned_aligned_linear((video[:30], audio[:30]), (video[30:], audio[30:])))
    queries, library = scorer.embed_queries(video), scorer.embed_tracks(audio)
    whole = scorer.all_scores(queries, library, block=1000)
    assert whole.shape == (40, 40) and np.all(np.diag(whole) > 0.2)
    np.testing.assert_allclose(scorer.all_scores(queries, library, block=7), whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(whole, scorer.all_scores(queries, library))  # the default block holds all 40
