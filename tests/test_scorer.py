"""One scorer per model (issue 22): test.py's ranking equals retrieve.py's on a library of the same whole tracks
(exact and FAISS), for VM-NET, the Transformer and zero-shot; and the defects that made them differ stay fixed."""
import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from transformer import retrieve as transformer_retrieve, test as transformer_test, train as transformer_train
from vmnet import retrieve as vmnet_retrieve, test as vmnet_test, train as vmnet_train
from vmr import metrics as M
from vmr.synthetic import Settings, generate, write_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small generated benchmark whose test tracks are longer than their videos (as in any real library)."""
    root = tmp_path_factory.mktemp("scorer")
    settings = Settings(n=60, regime="trajectory", video_dim=32, audio_dim=16, latent=4, genres=4, min_len=24, max_len=40,
                        segments=(2, 4), seed=3)
    write_dataset(root / "data", generate(settings), 12, settings)
    rng = np.random.default_rng(0)
    for vid in (root / "data" / "test.csv").read_text().split()[1:][::2]:  # every other test track: 5-15 s longer
        path = root / "data" / "audio" / f"{vid}.npy"
        rows = np.load(path)
        np.save(path, np.concatenate([rows, rows[rng.integers(0, len(rows), rng.integers(5, 16))]]))
    return root


def split_ids(data):
    return (data / "data" / "test.csv").read_text().split()[1:]


def library_file(data):
    """A library list file of the test tracks' feature files."""
    path = data / "library.txt"
    path.write_text("".join(f"{data / 'data' / 'audio' / vid}.npy\n" for vid in split_ids(data)))
    return path


def retrieve_json(main, argv, capsys):
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def assert_same_ranking(evaluated, retrieved, ids, gallery):
    """Every query's top 5 (ids and scores) in test.py's retrieval.json equals retrieve.py --json's; and its
    ground truth's position in retrieve.py's whole list is metrics.json's rank."""
    tops = {Path(r["query"]).stem: r["top"] for r in retrieved["results"]}
    metrics, retrieval = evaluated
    for q, rank in zip(retrieval["queries"], metrics["video_to_music"]["ranks"]):
        whole = tops[q["id"]]
        assert len(whole) == gallery
        assert [t["id"] for t in whole[:5]] == [t["id"] for t in q["top"]]
        np.testing.assert_allclose([t["score"] for t in whole[:5]], [t["score"] for t in q["top"]], rtol=1e-5, atol=1e-6)
        assert [t["id"] for t in whole].index(q["gt"]) + 1 == rank


def evaluate_with(main, argv, out):
    assert main(argv + ["--out", str(out)]) == 0
    return json.loads(out.read_text()), json.loads(out.with_name("retrieval.json").read_text())


@pytest.mark.parametrize("model", ["vmnet", "transformer"])
def test_test_and_retrieve_rank_alike_on_whole_tracks(model, data, capsys):
    ids, d = split_ids(data), data / "data"
    run = data / f"run_{model}"
    common = ["--train_data_dir", str(d), "--train_csv_path", str(d / "train.csv"), "--save_dir", str(run), "--threads", "1"]
    if model == "vmnet":
        assert vmnet_train.main(common + ["--epochs", "3", "--batch_size", "16"]) == 0
        tester, retriever, extra = vmnet_test.main, vmnet_retrieve.main, []
    else:
        extra = ["--flow_ranks", str(d / "flow" / "ranks.csv")]
        assert transformer_train.main(common + extra + ["--epochs", "2", "--val_fraction", "0.25"]) == 0
        tester, retriever = transformer_test.main, transformer_retrieve.main
    for checkpoint in ("best.pt", "last.pt"):  # last.pt records everything its scorer needs too
        ckpt = ["--checkpoint", str(run / checkpoint)]
        evaluated = evaluate_with(tester, ckpt + ["--test_data_dir", str(d), "--test_csv_path", str(d / "test.csv")] + extra,
                                  data / f"eval_{model}_{checkpoint}" / "metrics.json")
        assert evaluated[0]["gallery"] == len(ids) and evaluated[0]["checkpoint"].endswith(checkpoint)
        index = data / f"{model}_{checkpoint}.npz"
        assert retriever(ckpt + ["--build_index", "--library", str(library_file(data)), "--index", str(index)]) == 0
        queries = [str(d / "video" / f"{vid}.npy") for vid in ids]
        for search in ([], ["--faiss", "flat"]):
            retrieved = retrieve_json(retriever, ckpt + ["--index", str(index), "--query", *queries, "--json", "--top_k",
                                                         str(len(ids))] + extra + search, capsys)
            assert_same_ranking(evaluated, retrieved, ids, len(ids))
    if model == "transformer":
        assert evaluated[0]["scorer"]["rerank"] == 1000 and evaluated[0]["scoring"] in ("pooled", "aligned")


def test_zeroshot_evaluation_and_retrieval_rank_alike(tmp_path, capsys):
    from vmr.evaluation import zeroshot_block
    from zeroshot import retrieve

    rng = np.random.default_rng(4)
    for folder in ("clip", "wav2clip", "wav2clip_track"):
        (tmp_path / folder).mkdir()
    ids = [f"t{i}" for i in range(8)]
    for i, vid in enumerate(ids):
        video = rng.standard_normal((5 + i, 512)).astype(np.float32)
        music = np.concatenate([video, rng.standard_normal((i, 512))]).astype(np.float32) + rng.standard_normal((5 + 2 * i, 512)).astype(np.float32)
        np.save(tmp_path / "clip" / f"{vid}.npy", video)
        np.save(tmp_path / "wav2clip" / f"{vid}.npy", music)
        np.save(tmp_path / "wav2clip_track" / f"{vid}.npy", music.mean(0, keepdims=True))
    block = zeroshot_block(tmp_path / "clip", tmp_path / "wav2clip", ids)
    assert retrieve.main(["--build_index", "--library", str(tmp_path / "wav2clip"), "--index", str(tmp_path / "z.npz")]) == 0
    retrieved = retrieve_json(retrieve.main, ["--index", str(tmp_path / "z.npz"), "--query",
                                              *[str(tmp_path / "clip" / f"{v}.npy") for v in ids], "--json", "--top_k", "8"], capsys)
    positions = [[t["id"] for t in r["top"]].index(Path(r["query"]).stem) + 1 for r in retrieved["results"]]
    assert positions == block["video_to_music"]["ranks"]


# ---------------------------------------------------------------- the defects, one test each

def test_a_unit_that_never_varied_in_training_stays_near_zero_instead_of_times_1e6():
    from transformer.model import SegmentTransformer
    from vmnet.model import VMNet

    rng = np.random.default_rng(0)
    train_rows = rng.standard_normal((50, 8)).astype(np.float32)
    train_rows[:, 3] = 0  # post-ReLU unit that is zero on every training item
    row = rng.standard_normal((1, 8)).astype(np.float32)
    row[0, 3] = 0
    moved = row.copy()
    moved[0, 3] = 0.01  # ... and 0.01 at test time
    vmnet = VMNet(8, 8).eval()
    vmnet.set_input_stats(train_rows.mean(0), train_rows.std(0), train_rows.mean(0), train_rows.std(0))
    assert vmnet.video_std[3] == 1 and vmnet.video_std[0] == pytest.approx(train_rows[:, 0].std())
    with torch.no_grad():
        a, b = vmnet.embed_video(torch.from_numpy(row)), vmnet.embed_video(torch.from_numpy(moved))
    assert float((a * b).sum()) > 0.99  # was 0.33 with the 1e-6 floor
    transformer = SegmentTransformer(8, 8, embed_dim=16)
    transformer.set_input_stats(train_rows.mean(0), train_rows.std(0), train_rows.mean(0), train_rows.std(0))
    assert transformer.video.std[3] == 1 and transformer.audio.std[3] == 1


def test_transformer_queries_use_the_checkpoints_own_features_and_provenance(tmp_path, monkeypatch, capsys):
    from transformer.model import SegmentTransformer
    from transformer.scorer import TransformerScorer
    from vmr import retrieval

    record = {"run_args": {"scoring": "aligned", "n_bkps": 3, "min_seconds": 4, "max_seconds": None},
              "features": {"video": "resnet101", "audio": "vggish"}, "provenance": {"video": {"model": "resnet101"}, "audio": None}}
    scorer = TransformerScorer(SegmentTransformer(2048, 128, embed_dim=16), record)
    asked = []
    monkeypatch.setattr(retrieval, "extract", lambda paths, folders, work, args, flow=False: asked.append((folders, flow)))
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    inputs, _ = retrieval.query_inputs(scorer, [str(video)])
    assert asked == [(["resnet101"], True)] and inputs == []  # resnet101 rows and flow segments, not clip
    (tmp_path / "clip").mkdir()
    np.save(tmp_path / "clip" / "q.npy", np.ones((6, 2048), np.float32))
    (tmp_path / "clip" / "_feature.json").write_text(json.dumps({"model": "clip"}))
    with pytest.raises(ValueError, match=r"video features in .*clip are clip .*trained on resnet101"):
        retrieval.query_inputs(scorer, [str(tmp_path / "clip" / "q.npy")])


def test_non_finite_queries_are_refused_with_one_line_and_json_stays_valid(data, capsys):
    d, run = data / "data", data / "run_vmnet"
    if not (run / "best.pt").is_file():
        assert vmnet_train.main(["--train_data_dir", str(d), "--train_csv_path", str(d / "train.csv"), "--save_dir", str(run),
                                 "--threads", "1", "--epochs", "1", "--batch_size", "16"]) == 0
    (data / "nan").mkdir()
    (data / "nan" / "_feature.json").write_text((d / "video" / "_feature.json").read_text())  # the same provenance
    bad = data / "nan" / "nan.npy"
    rows = np.load(d / "video" / f"{split_ids(data)[0]}.npy")
    rows[2, 5] = np.nan
    np.save(bad, rows)
    index = data / "nan_index.npz"
    capsys.readouterr()
    code = vmnet_retrieve.main(["--checkpoint", str(run / "best.pt"), "--build_index", "--library", str(library_file(data)),
                                "--index", str(index), "--query", str(bad), str(d / "video" / f"{split_ids(data)[1]}.npy"), "--json"])
    out, err = capsys.readouterr()
    assert code == 1 and f"{bad}: 1 values are NaN or inf" in err and "1 failed" in err
    assert len(json.loads(out)["results"]) == 1  # the good query answered, in valid JSON


def test_a_checkpoint_of_the_other_model_names_the_script_to_use(data, capsys):
    d, run = data / "data", data / "run_t1"
    assert transformer_train.main(["--train_data_dir", str(d), "--train_csv_path", str(d / "train.csv"), "--save_dir", str(run),
                                   "--threads", "1", "--epochs", "1", "--segments_from", "features"]) == 0
    capsys.readouterr()
    assert vmnet_retrieve.main(["--checkpoint", str(run / "last.pt"), "--index", str(data / "x.npz"), "--query", "q.npy"]) == 1
    assert capsys.readouterr().err.strip() == (f"error: {run / 'last.pt'} is a transformer checkpoint, not a vmnet one; use "
                                               "transformer/ scripts (e.g. transformer/retrieve.py)")
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["scoring"] in ("pooled", "aligned") and state["features"] == {"video": "synthetic-video", "audio": "synthetic-audio"}
    decay = [g["weight_decay"] for g in state["optimizer"]["param_groups"]]
    assert decay == [1e-2, 0.0]  # matrices decay; LayerNorm gains, biases, ALiBi slopes, smoothing logits do not


def test_parameter_groups_leave_every_1d_parameter_undecayed():
    from transformer.model import SegmentTransformer
    from vmr.training import param_groups

    model = SegmentTransformer(8, 8, embed_dim=16)
    decayed, rest = param_groups(model, 0.1)
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in rest["params"])
    names = {n for n, p in model.named_parameters() if any(p is q for q in rest["params"])}
    assert {"video.raw_slopes", "video.norm.weight", "video.blocks.0.norm1.weight", "video.input.bias"} <= names
    assert "video.smooth_logits" not in names or model.video.smooth_logits.ndim < 2
    assert rest["weight_decay"] == 0 and decayed["weight_decay"] == 0.1


def test_validation_split_keeps_groups_on_one_side_and_chance_counts_them():
    from vmr.training import split_validation

    ids = [f"v{i}" for i in range(40)]
    groups = {v: f"g{i // 4}" for i, v in enumerate(ids)}  # ten tracks, four ids each
    for seed in range(5):
        train, val = split_validation(ids, 0.25, seed, groups)
        assert not {groups[v] for v in train} & {groups[v] for v in val} and len(val) == 12 - (12 % 4)
    assert split_validation(ids, 0.25, 0) == split_validation(ids, 0.25, 0, None)
    plain = M.chance_block(10)
    grouped = M.chance_block(10, ["a", "a"] + [f"s{i}" for i in range(8)])
    assert plain["R@1"] == 0.1 and grouped["R@1"] == pytest.approx((2 * 0.2 + 8 * 0.1) / 10)  # pairs: 1 - 8/10
    assert grouped["MeanR"] == pytest.approx((2 * 11 / 3 + 8 * 11 / 2) / 10)


def test_answers_break_ties_in_library_order_and_ranks_count_them_against_the_model():
    from vmr.scorer import Scorer, answers, score_rows

    scorer = Scorer()
    library = {"pooled": np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], np.float32)}
    queries = {"pooled": np.array([[1, 0]], np.float32)}
    idx, scores = answers(scorer, queries, library, 3)
    assert idx[0].tolist() == [0, 2, 3] and scores[0, 0] == scores[0, 1]
    assert M.gt_ranks(score_rows(scorer, queries, library), groups=None, relevant=np.array([[False, False, True, False]]))[0] == 2
    assert M.top_k(score_rows(scorer, queries, library), 3)[0].tolist() == idx[0].tolist()


def test_small_validation_keeps_enough_directions_and_says_so(capsys):
    from vmr.baselines import tuned_aligned_linear

    rng = np.random.default_rng(1)
    video = [rng.standard_normal((20, 24)).astype(np.float32) for _ in range(12)]
    audio = [v[:, :20] + rng.standard_normal((20, 20)).astype(np.float32) for v in video]
    baseline = tuned_aligned_linear((video[:10], audio[:10]), (video[10:], audio[10:]))
    assert baseline.dims == 16 and baseline.ridge == 1e-2  # not the one direction the demo's 2 clips chose
    assert "2 validation items are too few to choose" in capsys.readouterr().err


def imports_of(path):
    """Top-level package names a module imports, directly or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_vmr_is_the_floor_and_the_model_packages_import_nothing_from_each_other():
    packages = ("vmnet", "transformer", "zeroshot")
    for path in sorted((REPO / "vmr").glob("*.py")):
        assert not imports_of(path) & set(packages), path
    for package in packages:
        for path in sorted((REPO / package).glob("*.py")):
            assert not imports_of(path) & (set(packages) - {package}), path


# ---------------------------------------------------------------- library retrieval with moments (issue 23)

@pytest.fixture(scope="module")
def library_data(tmp_path_factory):
    """The generator's library regime: each video shows a moment of a longer track, several videos per track."""
    root = tmp_path_factory.mktemp("library")
    settings = Settings(n=70, regime="library", video_dim=32, audio_dim=16, latent=4, genres=4, min_len=20, max_len=30,
                        segments=(2, 4), track_extra=(10, 30), seed=5)
    write_dataset(root / "data", generate(settings), 20, settings)
    return root


@pytest.mark.parametrize("model", ["vmnet", "transformer"])
def test_moments_data_folder_trains_evaluates_and_retrieves_with_moments(model, library_data, capsys):
    from vmr.data import read_moments

    d, run = library_data / "data", library_data / f"run_{model}"
    moments = read_moments(d)
    test = (d / "test.csv").read_text().split()[1:]
    tracks = sorted({moments[v][2] for v in test})
    common = ["--train_data_dir", str(d), "--train_csv_path", str(d / "train.csv"), "--test_csv_path", str(d / "test.csv"),
              "--save_dir", str(run), "--threads", "1"]
    extra = ["--flow_ranks", str(d / "flow" / "ranks.csv")] if model == "transformer" else []
    main = {"vmnet": vmnet_train.main, "transformer": transformer_train.main}[model]
    assert main(common + extra + (["--epochs", "3", "--batch_size", "16"] if model == "vmnet" else ["--epochs", "1"])) == 0
    out = capsys.readouterr().out
    assert f"whole gallery N = {len(tracks)} whole tracks, {len(test)} query videos" in out and "library metrics (MGSV-EC)" in out
    m = json.loads((run / "metrics.json").read_text())
    assert m["gallery"] == len(tracks) < m["queries"] == len(test)
    assert set(m["library"]) >= {"R@1", "mIoU", "MoR@1 IoU>0.7", "MoR@1 IoU>0.5 retrieved"} and 0 <= m["library"]["mIoU"] <= 1
    assert m["baselines"]["library_chance"]["R@1"] == pytest.approx(1 / len(tracks))
    for name in ("cca", "aligned_linear"):
        assert len(m["baselines"][name]["library"]["ious"]) == len(test)
    retrieval = json.loads((run / "retrieval.json").read_text())["queries"]
    for q in retrieval:
        start, end, track = moments[q["id"]]
        assert q["gt"] == track and q["moment"] == [start, end] and q["found"][1] - q["found"][0] == end - start
        assert all(t["end"] - t["start"] <= end - start and t["start"] >= 0 for t in q["top"])

    from vmr import report

    published = library_data / "published.json"
    published.write_text(json.dumps([{"name": "MaDe", "source": "ICCV 2025", "R@1": 0.088, "mIoU": 0.722}]))
    assert report.main(["--run", f"{model}={run}", "--out", str(run / "report.html"), "--published", str(published)]) == 0
    page = (run / "report.html").read_text()
    assert '<table id="library">' in page and "MaDe (published: ICCV 2025)" in page and "<td>8.8</td><td>–</td>" in page
    assert f"{m['library']['mIoU']:.3f}" in page

    # retrieve.py on the library of the test tracks: the same tracks, scores and moments as test.py
    library = library_data / f"library_{model}.txt"
    library.write_text("".join(f"{d / 'audio' / t}.npy\n" for t in tracks))
    retriever = {"vmnet": vmnet_retrieve.main, "transformer": transformer_retrieve.main}[model]
    ckpt = ["--checkpoint", str(run / "best.pt")]
    index = library_data / f"{model}.npz"
    assert retriever(ckpt + ["--build_index", "--library", str(library), "--index", str(index)]) == 0
    for search in ([], ["--faiss", "flat"]):
        result = retrieve_json(retriever, ckpt + ["--index", str(index), "--query", *[str(d / "video" / f"{v}.npy") for v in test],
                                                  "--json"] + extra + search, capsys)
        for q, r in zip(retrieval, result["results"]):
            assert [(t["id"], t["start"], t["end"]) for t in r["top"]] == [(t["id"], t["start"], t["end"]) for t in q["top"]]
            np.testing.assert_allclose([t["score"] for t in r["top"]], [t["score"] for t in q["top"]], rtol=1e-5, atol=1e-6)


def test_moment_search_finds_where_the_video_sits_in_its_track():
    """A scorer whose per-second vectors are the latent itself: the offset of every video in its track is found."""
    from vmr.data import Gallery
    from vmr.evaluation import rank_gallery
    from vmr.scorer import AlignedScoring, Scorer, pack_sequences

    class Identity(AlignedScoring, Scorer):
        kind, name, scoring = "identity", "identity", "aligned"

        def embed_tracks(self, rows, paths=None):
            seq = [r / np.linalg.norm(r, axis=1, keepdims=True) for r in rows]
            return {"pooled": np.stack([s.mean(0) / np.linalg.norm(s.mean(0)) for s in seq]), **pack_sequences(seq)}

        def embed_queries(self, rows, boundaries=None):
            seq = [r / np.linalg.norm(r, axis=1, keepdims=True) for r in rows]
            return {"pooled": np.stack([s.mean(0) / np.linalg.norm(s.mean(0)) for s in seq]), "seq": seq}

    rng = np.random.default_rng(0)
    tracks = [rng.standard_normal((int(rng.integers(40, 80)), 8)).astype(np.float32) for _ in range(6)]
    gt = np.array([0, 0, 1, 2, 3, 4, 5, 5])
    starts = [int(rng.integers(0, len(tracks[j]) - 15)) for j in gt]
    videos = [tracks[j][s:s + 15] + 0.3 * rng.standard_normal((15, 8)).astype(np.float32) for j, s in zip(gt, starts)]
    gallery = Gallery(list(range(8)), videos, list(range(6)), tracks, gt, np.array([[s, s + 15] for s in starts], float))
    result = rank_gallery(Identity(), gallery)
    assert result["library_metrics"]["R@1"] == 1 and result["library_metrics"]["mIoU"] == 1
    assert result["answers"][3].tolist() == [[s, s + 15] for s in starts]  # the moment found on the true track
