"""VM-NET: losses, model, data loading rules, learning, resume, and the CLI chain prepare -> train -> test -> retrieve."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vmnet import losses, train
from vmr import data
from vmnet.model import VMNet

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


def write_items(root, ids, video_rows, audio_rows):
    """root/video/<id>.npy and root/audio/<id>.npy from per-id arrays."""
    for kind, rows in (("video", video_rows), ("audio", audio_rows)):
        (Path(root) / kind).mkdir(parents=True, exist_ok=True)
        for vid, x in zip(ids, rows):
            np.save(Path(root) / kind / f"{vid}.npy", np.asarray(x, np.float32))


def quadratic_data(root, n=400, seed=0):
    """The issue's learning task: v ~ N(0, I_8); video rows v + noise, audio rows (v . u_k)^2 + noise."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(32, 8))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    ids = [f"item{i:03d}" for i in range(n)]
    vs = rng.normal(size=(n, 8))
    video = [v + 0.1 * rng.normal(size=(8, 8)) for v in vs]
    audio = [(u @ v) ** 2 + 0.1 * rng.normal(size=(8, 32)) for v in vs]
    write_items(root, ids, video, audio)
    data.write_ids(Path(root) / "train.csv", ids[:300])
    data.write_ids(Path(root) / "test.csv", ids[300:])
    return ids


def train_args(root, save_dir, *extra):
    return train.parse_args(["--train_data_dir", str(root), "--train_csv_path", str(Path(root) / "train.csv"),
                             "--save_dir", str(save_dir), "--threads", "1", *extra])


# ---- losses -----------------------------------------------------------------------------------

def test_ranking_loss_hand_computed():
    dist = torch.tensor([[-0.9, -0.2, -0.5],
                         [-0.1, -0.8, -0.7],
                         [-0.3, -0.6, -0.4]])
    # anchor 0: negatives -0.5 (hardest), -0.2; anchor 1: -0.7, -0.1; anchor 2: -0.6, -0.3; margin 0.5
    # K=1: max(0, .5 - .9 + .5), max(0, .5 - .8 + .7), max(0, .5 - .4 + .6) = 0.1, 0.4, 0.7
    assert losses.ranking_loss(dist, 0.5, 1).item() == pytest.approx((0.1 + 0.4 + 0.7) / 3)
    # K=2 (mean over all B*K terms, zeros included): + max(0,.5-.9+.2)=0, max(0,.5-.8+.1)=0, max(0,.5-.4+.3)=.4
    assert losses.ranking_loss(dist, 0.5, 2).item() == pytest.approx((0.1 + 0.4 + 0.7 + 0.4) / 6)
    assert losses.ranking_loss(dist, 0.5, 100).item() == pytest.approx((0.1 + 0.4 + 0.7 + 0.4) / 6)  # K clipped to B-1


def test_ranking_loss_columns():
    dist = torch.tensor([[-0.9, -0.2], [-0.1, -0.8]])
    # column 0 anchors video 0: positive -0.9, negative -0.1 -> max(0, .5 - .9 + .1) = 0
    # column 1: positive -0.8, negative -0.2 -> max(0, .5 - .8 + .2) = 0
    assert losses.ranking_loss(dist.T, 0.5, 1).item() == pytest.approx(0.0)
    assert losses.ranking_loss(dist.T, 1.0, 1).item() == pytest.approx(((1 - 0.9 + 0.1) + (1 - 0.8 + 0.2)) / 2)


def test_structure_loss_hand_computed():
    inputs = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), dim=1)
    f = torch.nn.functional.normalize(inputs, dim=1)
    dl, de = -f @ f.T, -emb @ emb.T
    total = 0.0
    for i in range(3):
        for j in range(2):
            c = torch.sign(dl[i, j] - dl[i, j + 1]) - torch.sign(de[i, j] - de[i, j + 1])
            total += float(c * (de[i, j + 1] - de[i, j]))
    expected = total / 6
    assert expected > 0  # the embedding reorders the neighbours, so the loss is positive
    assert losses.structure_loss(inputs, emb).item() == pytest.approx(expected)
    assert losses.structure_loss(inputs, f).item() == pytest.approx(0.0)  # same order: no loss


def test_total_loss_weights():
    torch.manual_seed(0)
    x, y = torch.randn(6, 4), torch.randn(6, 5)
    xe, ye = [torch.nn.functional.normalize(torch.randn(6, 3), dim=1) for _ in range(2)]
    total, parts = losses.vmnet_loss(x, y, xe, ye, margin=0.1, top_k=100)
    assert total.item() == pytest.approx(3 * parts["xy"] + parts["yx"] + 0.2 * parts["x"] + 0.2 * parts["y"])
    dist = -xe @ ye.T
    assert parts["xy"].item() == pytest.approx(losses.ranking_loss(dist, 0.1, 5).item())
    assert parts["yx"].item() == pytest.approx(losses.ranking_loss(dist.T, 0.1, 5).item())


# ---- model ------------------------------------------------------------------------------------

def test_model_layers_and_init():
    torch.manual_seed(0)
    model = VMNet(video_dim=20, audio_dim=128)
    kinds = lambda seq: [type(m).__name__ for m in seq]
    assert kinds(model.music) == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear", "BatchNorm1d"]
    assert kinds(model.video) == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear", "BatchNorm1d"]
    assert [m.out_features for m in model.music if isinstance(m, torch.nn.Linear)] == [2048, 1024, 512]
    bn = model.video[1]
    assert bn.eps == 1e-3 and bn.momentum == 0.01 and model.video[3].p == 0.1
    w = model.music[0].weight
    std = (2 / 128) ** 0.5
    assert w.abs().max() <= 2 * std + 1e-6 and 0.7 * std < w.std() < 1.0 * std  # truncated at 2 std
    assert torch.all(model.music[0].bias == 0)
    v, a = model.eval()(torch.randn(7, 20), torch.randn(7, 128))
    assert v.shape == a.shape == (7, 512)
    assert torch.allclose(v.norm(dim=1), torch.ones(7), atol=1e-5)


# ---- data -------------------------------------------------------------------------------------

def test_read_ids_both_formats(tmp_path):
    (tmp_path / "ours.csv").write_text("ID\nabc\ndef\n\n")
    (tmp_path / "orig.csv").write_text("abc.npy\ndef.npy")
    assert data.read_ids(tmp_path / "ours.csv") == data.read_ids(tmp_path / "orig.csv") == ["abc", "def"]


def test_bad_rows_are_skipped_with_one_line_each(tmp_path, capsys):
    good = [np.ones((5, 3)), np.ones((4, 3))]
    write_items(tmp_path, ["g1", "g2"], good, [np.ones((6, 2)), np.ones((3, 2))])
    write_items(tmp_path, ["nan", "wide", "empty"], [np.full((3, 3), np.nan), np.ones((3, 4)), np.ones((0, 3))],
                [np.ones((3, 2))] * 3)
    write_items(tmp_path, ["noaudio"], [np.ones((3, 3))], [np.ones((3, 2))])
    (tmp_path / "audio" / "noaudio.npy").unlink()
    ids = ["g1", "nan", "wide", "empty", "noaudio", "../x", "g2"]
    kept, video, audio = data.load_sequences(tmp_path, ids, max_seconds=3)
    assert kept == ["g1", "g2"] and [v.shape for v in video] == [(3, 3), (3, 3)] and [a.shape for a in audio] == [(3, 2), (3, 2)]
    err = capsys.readouterr().err
    for vid, reason in [("nan", "NaN"), ("wide", "dimension 4, expected 3"), ("empty", "shape (0, 3)"),
                        ("noaudio", "missing"), ("../x", "not a plain file name")]:
        assert re.search(rf"(^|\r){re.escape(vid)}: [^\n]*{re.escape(reason)}", err, re.M), (vid, err)
    pair = data.load_pair(tmp_path, "g2")
    assert pair[0].shape == (3, 3) and pair[1].shape == (3, 2)  # rows [0, min(Tv, Ta))
    with pytest.raises(ValueError, match="no usable id"):
        data.load_sequences(tmp_path, ["nan", "../x"])
    write_items(tmp_path, ["long"], [np.ones((9, 3))], [np.ones((4, 2))])
    data.load_pair(tmp_path, "long")
    assert "long: video 9 s and audio 4 s differ by more than 1 s; only the first 4 s are paired" in capsys.readouterr().err


def test_overlapping_csvs_are_an_error_naming_the_ids(tmp_path, capsys):
    write_items(tmp_path, ["a", "b", "c"], [np.ones((2, 3))] * 3, [np.ones((2, 2))] * 3)
    data.write_ids(tmp_path / "train.csv", ["a", "b"])
    data.write_ids(tmp_path / "test.csv", ["b", "c"])
    with pytest.raises(ValueError, match="1 ids are in both.*: b"):
        data.check_overlap(["a", "b"], ["b", "c"])
    rc = train.main(["--train_data_dir", str(tmp_path), "--train_csv_path", str(tmp_path / "train.csv"),
                     "--test_csv_path", str(tmp_path / "test.csv"), "--save_dir", str(tmp_path / "run")])
    assert rc == 1 and "in both the train and the test CSV: b" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()


# ---- learning and resume ----------------------------------------------------------------------

def test_window_pooling_averages_the_same_seconds_of_video_and_music():
    ts = (10, 40, 87)
    video = [np.stack([np.arange(t), np.arange(t) ** 2], 1).astype(np.float32) for t in ts]
    audio = [2 * v[:, :1] + 1 for v in video]
    rng = np.random.default_rng(0)
    pooler = train.CropPooler(video, audio, (0.1, 0.3))
    for _ in range(20):
        v, a = (x.numpy().astype(np.float64) for x in pooler(rng))
        np.testing.assert_allclose(a[:, 0], 2 * v[:, 0] + 1, rtol=1e-5)  # the same window in both modalities
        width = np.sqrt(12 * (v[:, 1] - v[:, 0] ** 2) + 1)  # variance of the window's seconds = (w^2 - 1) / 12
        for w, t in zip(width, ts):
            assert max(1, round(0.1 * t)) - 0.01 <= w <= round(0.3 * t) + 0.01, (w, t)
    v, a = pooler.__class__(video, audio, (1.0, 1.0))(rng)
    np.testing.assert_allclose(v[:, 0].numpy(), [(t - 1) / 2 for t in ts])  # 1 1: whole items



def test_cca_start_scores_like_the_tuned_cca_baseline():
    from vmnet.model import embed_rows, init_from_cca
    from vmr.baselines import tuned_cca

    rng = np.random.default_rng(0)
    z = rng.normal(size=(600, 4))  # 4 shared dimensions under noise: the setting pooled CCA is made for
    video = (z @ rng.normal(size=(4, 40)) + rng.normal(size=(600, 40))).astype(np.float32)
    audio = (z @ rng.normal(size=(4, 12)) + rng.normal(size=(600, 12))).astype(np.float32)
    baseline = tuned_cca((video[:400], audio[:400]), (video[400:500], audio[400:500]))
    torch.manual_seed(0)
    model = VMNet(40, 12, dropout=0.5)
    model.set_input_stats(video[:400].mean(0), video[:400].std(0), audio[:400].mean(0), audio[:400].std(0))
    d = baseline.dims
    init_from_cca(model, baseline.model.proj_v[:, :d], baseline.model.proj_a[:, :d], video[:400], audio[:400], rest_scale=0.0)
    assert (model.video[-1].weight[d:] == 0).all() and (model.music[-1].weight[:d] == 1).all()  # the other outputs muted
    assert model.training and torch.allclose(model.video[1].running_mean[:d], -model.video[1].running_mean[d:2 * d])
    model.eval()
    scores = embed_rows(model.embed_video, video[500:]) @ embed_rows(model.embed_music, audio[500:]).T
    expected = baseline.score(video[500:], audio[500:])
    assert np.corrcoef(scores.ravel(), expected.ravel())[0, 1] > 0.95
    hits = lambda s: np.mean(s.argmax(1) == np.arange(100))  # noqa: E731
    assert hits(scores) >= hits(expected) - 0.05 and hits(expected) > 0.3


def test_learns_nonlinear_relation_that_cca_misses(tmp_path):
    quadratic_data(tmp_path)
    best = train.train(train_args(tmp_path, tmp_path / "run", "--epochs", "12"))
    from vmnet.scorer import load
    from vmr.evaluation import evaluate

    m = evaluate(*load(best), best, tmp_path, tmp_path / "test.csv", tmp_path / "run" / "metrics.json")
    r10, cca10 = m["video_to_music"]["R@10"], m["baselines"]["cca"]["video_to_music"]["R@10"]
    assert m["gallery"] == 100
    assert r10 >= 0.5 and r10 >= cca10 + 0.3, (r10, cca10)
    assert m["baselines"]["chance"]["R@10"] == pytest.approx(0.1)


def small_data(root, n=48, seed=1):
    rng = np.random.default_rng(seed)
    ids = [f"s{i:02d}" for i in range(n)]
    v = rng.normal(size=(n, 6))
    write_items(root, ids, [x + 0.1 * rng.normal(size=(4, 6)) for x in v], [np.tanh(x[:4]) + 0.1 * rng.normal(size=(4, 4)) for x in v])
    data.write_ids(Path(root) / "train.csv", ids[:40])
    data.write_ids(Path(root) / "test.csv", ids[40:])


def test_resume_after_a_kill_equals_uninterrupted_and_checkpoints_load_weights_only(tmp_path, monkeypatch):
    small_data(tmp_path)
    common = ("--epochs", "3", "--batch_size", "16", "--lr_decay_steps", "3", "--lr", "1e-3", "3e-4", "--patience", "0")
    train.train(train_args(tmp_path, tmp_path / "full", *common))
    saved, real = [], train.save_checkpoint

    def killed_after_four_epochs(path, state):
        real(path, state)
        if Path(path).name == "last.pt":
            saved.append(state["epoch"])
            if len(saved) == 4:  # the second learning rate's first epoch is on disk
                raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", killed_after_four_epochs)
    with pytest.raises(KeyboardInterrupt):
        train.train(train_args(tmp_path, tmp_path / "part", *common))
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"cannot resume with different settings .*--lr \[0.001, 0.0003\] -> \[0.001\]"):
        train.train(train_args(tmp_path, tmp_path / "part", "--resume", *common[:-5], "--lr", "1e-3", "--patience", "0"))
    train.train(train_args(tmp_path, tmp_path / "part", "--resume", *common))
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    part = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert full["lr_index"] == part["lr_index"] == 1 and full["epoch"] == part["epoch"] == 3 and full["step"] == 6
    for key, value in full["model"].items():
        assert torch.equal(value, part["model"][key]), key
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
    assert strip(full["history"]) == strip(part["history"]) and len(full["history"]) == 6
    assert full["history"][-1]["lr"] == pytest.approx(3e-4 * 0.96 ** 1)  # staircase: step 5 // 3 = 1
    log = (tmp_path / "part" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,lr_index,train_loss,val_R@1,val_R@10,val_MedR,seconds") and len(log) == 7
    assert (tmp_path / "part" / "train_log.png").read_bytes()[:4] == b"\x89PNG"
    best = torch.load(tmp_path / "full" / "best.pt", weights_only=True)
    assert best["epoch"] == best["best"]["epoch"] and best["best"]["lr"] in (1e-3, 3e-4) and len(best["val_ids"]) == 4
    assert best["train_ids"] and not set(best["train_ids"]) & set(best["val_ids"])
    assert best["model"]["video_std"].shape == (6,) and not torch.equal(best["model"]["video_std"], torch.ones(6))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    small_data(tmp_path)
    args = ["--train_data_dir", str(tmp_path), "--train_csv_path", str(tmp_path / "train.csv"),
            "--save_dir", str(tmp_path / "run"), "--threads", "1", "--batch_size", "64", "--epochs", "3", "--lr", "1e30"]
    args += ["--val_fraction", "0"]  # without validation the loss itself must catch it
    assert train.main(args) == 1  # one batch per epoch: epoch 1 is finite, its update blows the weights up
    err = capsys.readouterr().err
    assert "loss is nan" in err.lower() or "loss is inf" in err.lower()
    assert "last good checkpoint" in err and "(epoch 1)" in err
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1
    assert train.main(args[:-2] + ["--overwrite"]) == 1  # with validation, the exploded embeddings stop it after epoch 1
    err = capsys.readouterr().err
    assert "VM-NET: music embeddings:" in err and "non-finite values" in err and "no checkpoint" in err


def test_training_into_a_used_folder_needs_overwrite(tmp_path, capsys):
    small_data(tmp_path)
    args = ["--train_data_dir", str(tmp_path), "--train_csv_path", str(tmp_path / "train.csv"), "--save_dir", str(tmp_path / "run"),
            "--threads", "1", "--epochs", "1", "--lr", "1e-3"]
    assert train.main(args) == 0
    (tmp_path / "run" / "metrics.json").write_text("{}")
    assert train.main(args) == 1
    assert "holds results of another run" in capsys.readouterr().err
    assert train.main(args + ["--overwrite"]) == 0
    assert not (tmp_path / "run" / "metrics.json").exists()


# ---- CLI chain --------------------------------------------------------------------------------

def run(*args, ok=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, env=env)
    if ok:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_split_without_groups_is_the_permutations_first_ids():
    from vmnet.prepare import split_ids

    ids = [f"v{i:03d}" for i in range(57)]
    for seed in range(5):
        for fraction in (0.0, 0.1, 0.25, 0.5, 1.0):
            n_test = int(round(fraction * len(ids)))
            expected = sorted(ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:n_test])
            train, test = split_ids(ids, fraction, seed)
            assert test == expected and train == sorted(set(ids) - set(expected))
            assert split_ids(ids, fraction, seed, groups={}) == (train, test)


def test_split_keeps_each_group_on_one_side_near_the_fraction():
    from vmnet.prepare import split_ids

    ids = [f"v{i:03d}" for i in range(60)]
    groups = {vid: f"g{i // 4}" for i, vid in enumerate(ids[:40])}  # ten groups of 4 ids, 20 ids alone
    for seed in range(10):
        for fraction in (0.1, 0.2, 0.3, 0.5):
            train, test = split_ids(ids, fraction, seed, groups)
            assert sorted(train + test) == ids and not set(train) & set(test)
            sides = {}
            for vid in ids[:40]:
                sides.setdefault(groups[vid], set()).add(vid in test)
            assert all(len(s) == 1 for s in sides.values())  # no group on both sides
            assert len(test) == int(round(fraction * 60))  # the 20 lone ids fill what whole groups leave
        assert split_ids(ids, 0.2, seed, groups) == split_ids(ids, 0.2, seed, groups)  # seeded
    # only groups of 4: the closest size whole groups allow, above or below
    assert len(split_ids(ids[:40], 0.1, 0, groups)[1]) == 4  # 4 of 40 asked: one group
    assert len(split_ids(ids[:40], 0.125, 0, groups)[1]) == 4  # 5 asked: 4 is closer than 8
    assert len(split_ids(ids[:40], 0.15, 0, groups)[1]) == 4  # 6 asked: 4 and 8 are as close; no overshoot
    assert len(split_ids(ids[:40], 0.175, 0, groups)[1]) == 8  # 7 asked: 8 is closer than 4


def test_prepare_groups_file_keeps_its_groups_on_one_side(tmp_path, capsys):
    from vmnet import prepare

    feats, ids = tmp_path / "features", [f"v{i:02d}" for i in range(20)]
    rng = np.random.default_rng(0)
    for folder in ("clip", "vggish"):
        (feats / folder).mkdir(parents=True)
        for vid in ids:
            np.save(feats / folder / f"{vid}.npy", rng.normal(size=(3, 4)).astype(np.float32))
    groups_csv = tmp_path / "tracks.csv"
    groups_csv.write_text("ID,group\n" + "".join(f"{vid},track{i % 3}\n" for i, vid in enumerate(ids[:12])))
    argv = ["--features", str(feats), "--out", str(tmp_path / "data"), "--test_fraction", "0.3"]
    assert prepare.main([*argv, "--groups", str(groups_csv)]) == 0
    test = set(data.read_ids(tmp_path / "data" / "test.csv"))
    for k in range(3):  # ids 0, 3, 6, 9 share track0, ...
        assert len({ids[i] in test for i in range(k, 12, 3)}) == 1
    assert len(test) == 6 and "warning" not in capsys.readouterr().err
    written = data.read_groups(tmp_path / "data" / "groups.csv")
    assert written == {ids[i]: ids[i % 3] for i in range(12)}  # each group named by its smallest id
    assert json.loads((tmp_path / "data" / "features.json").read_text())["groups"] == str(groups_csv)

    assert prepare.main([*argv, "--groups", str(tmp_path / "nope.csv")]) == 1
    assert f"{tmp_path / 'nope.csv'}: no such groups file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare.main(["--help"])
    assert "--groups" in capsys.readouterr().out


def test_cli_prepare_train_test_retrieve(tmp_path):
    feats = tmp_path / "features"
    rng = np.random.default_rng(0)
    ids = [f"v{i:02d}" for i in range(30)]
    for folder, dim in (("clip", 6), ("resnet101", 5), ("vggish", 4)):
        (feats / folder).mkdir(parents=True)
        (feats / folder / "_feature.json").write_text(json.dumps({"model": folder}))
    base = rng.normal(size=(30, 4))
    for i, vid in enumerate(ids):
        np.save(feats / "clip" / f"{vid}.npy", np.r_[base[i], base[i] ** 2][:6][None].repeat(5, 0).astype(np.float32))
        np.save(feats / "resnet101" / f"{vid}.npy", rng.normal(size=(4, 5)).astype(np.float32))
        np.save(feats / "vggish" / f"{vid}.npy", (base[i] + 0.1 * rng.normal(size=(6, 4))).astype(np.float32))
    np.save(feats / "clip" / "only_clip.npy", np.ones((3, 6), np.float32))
    np.save(feats / "vggish" / "v29.npy", np.load(feats / "vggish" / "v28.npy"))  # a duplicate track

    data_dir = tmp_path / "data"
    out = run("vmnet/prepare.py", "--features", feats, "--video", "clip,resnet101", "--audio", "vggish", "--out", data_dir,
              "--test_fraction", "0.3", "--seed", "0").stdout
    assert "21 train, 9 test" in out and "2 ids share a track" in out
    train_ids, test_ids = data.read_ids(data_dir / "train.csv"), data.read_ids(data_dir / "test.csv")
    assert sorted(train_ids + test_ids) == ids and not set(train_ids) & set(test_ids)
    order = np.random.default_rng(0).permutation(30)
    # the permutation's first 9 ids, but v28's duplicate v29 goes with it: a group is never on both sides
    assert ids.index("v28") in order[:9] and ids.index("v29") not in order[:9]
    assert sorted(test_ids) == sorted([ids[i] for i in order[:8]] + ["v29"])
    assert np.load(data_dir / "video" / "v00.npy").shape == (4, 11)  # fused row-wise over min T
    link = data_dir / "audio" / "v00.npy"
    assert link.is_symlink() and Path(os.readlink(link)).is_absolute()
    assert json.loads((data_dir / "video" / "_feature.json").read_text())["fusion"] == ["clip", "resnet101"]
    assert json.loads((data_dir / "audio" / "_feature.json").read_text()) == {"model": "vggish"}
    assert (data_dir / "groups.csv").read_text().splitlines()[1:] == ["v28,v28", "v29,v28"]

    run_dir = tmp_path / "run"
    out = run("vmnet/train.py", "--train_data_dir", data_dir, "--train_csv_path", data_dir / "train.csv",
              "--test_csv_path", data_dir / "test.csv", "--save_dir", run_dir, "--epochs", "3", "--threads", "1").stdout
    assert "whole gallery N = 9" in out and "chance" in out
    metrics_path = tmp_path / "eval" / "metrics.json"
    run("vmnet/test.py", "--checkpoint", run_dir / "best.pt", "--test_data_dir", data_dir, "--test_csv_path",
        data_dir / "test.csv", "--out", metrics_path, "--groups", data_dir / "groups.csv", "--fad_dir", feats / "vggish")
    m = json.loads(metrics_path.read_text())
    assert set(m) == {"model", "scorer", "checkpoint", "checkpoint_sha256", "features", "provenance", "test_csv", "seed", "gallery",
                      "queries", "scoring", "gallery_items", "video_to_music", "music_to_video", "library", "scorings", "batch1024",
                      "baselines", "fad", "av_align"}
    assert 0 < m["library"]["mIoU"] <= 1 and m["library"]["MoR@1 IoU>0.7"] <= m["library"]["R@1"] and len(m["library"]["ious"]) == 9
    assert m["scorer"]["kind"] == "vmnet" and m["scoring"] == "pooled" and set(m["scorings"]) == {"pooled"}
    assert m["provenance"]["audio"] == {"model": "vggish"}
    assert m["features"] == {"video": "clip+resnet101", "audio": "vggish"} and m["gallery"] == 9
    keys = {"R@1", "R@5", "R@10", "R@20", "R@25", "R@50", "R@100", "MedR", "MeanR"}
    assert set(m["video_to_music"]) == keys | {"ranks"} and len(m["music_to_video"]["ranks"]) == 9
    assert set(m["batch1024"]["video_to_music"]) == keys and "batch-level" in m["batch1024"]["label"]
    assert set(m["baselines"]["chance"]) == keys
    for name in ("cca", "aligned_linear"):
        assert set(m["baselines"][name]["video_to_music"]) == keys | {"ranks"} and m["baselines"][name]["chosen_on"].startswith("validation")
        assert m["baselines"][name]["dims"] >= 1 and m["baselines"][name]["ridge"] > 0
    assert m["fad"]["top1"] >= 0 and m["fad"]["ground_truth"] == 0.0 and m["fad"]["chance"]["seeds"] == 5 and m["av_align"] is None
    assert all(0 <= m["video_to_music"][f"R@{k}"] <= 1 for k in (1, 5, 10))
    retrieval = json.loads((tmp_path / "eval" / "retrieval.json").read_text())
    assert retrieval["model"] == "VM-NET" and len(retrieval["queries"]) == 9
    assert all(len(q["top"]) == 5 and q["gt"] == q["id"] and q["moment"] == [0, 4] for q in retrieval["queries"])
    assert all(t["end"] - t["start"] == 4 and 0 <= t["start"] <= 2 for q in retrieval["queries"] for t in q["top"])  # 4 s of 6
    assert (tmp_path / "eval" / "metrics_recall.png").is_file()

    # retrieval: index the library's feature files and query with a video feature file in one call
    index = tmp_path / "INDEX.npz"
    query = data_dir / "video" / f"{test_ids[0]}.npy"
    res = json.loads(run("vmnet/retrieve.py", "--build_index", "--library", feats / "vggish", "--checkpoint", run_dir / "best.pt",
                         "--index", index, "--query", query, "--json", "--top_k", "3", "--faiss", "flat").stdout)
    with np.load(index, allow_pickle=False) as z:
        assert len(z["ids"]) == 30 and z["pooled"].shape == (30, 512) and "seq" not in z.files
        assert np.allclose(np.linalg.norm(z["pooled"], axis=1), 1, atol=1e-5) and set(z["seconds"]) == {6}
        assert json.loads(str(z["meta"]))["audio_feature"] == "vggish"
        ids_, emb = list(z["ids"]), z["pooled"]
    top = res["results"][0]["top"]
    assert len(top) == 3 and top[0]["score"] >= top[1]["score"] >= top[2]["score"]
    assert res["search"] == "flat" and "search_seconds" in res["results"][0] and "extraction_seconds" in res
    from vmnet.model import model_from_checkpoint

    model = model_from_checkpoint(torch.load(run_dir / "best.pt", weights_only=True))
    with torch.no_grad():
        q = model.embed_video(torch.as_tensor(np.load(query).mean(0, keepdims=True))).numpy()[0]
    exact = np.argsort(-(emb @ q))[:3]
    assert [t["id"] for t in top] == [ids_[i] for i in exact]
    assert np.allclose([t["score"] for t in top], (emb @ q)[exact], atol=1e-5)
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    ckpt["epoch"] += 1
    torch.save(ckpt, tmp_path / "other.pt")
    other = run("vmnet/retrieve.py", "--index", index, "--checkpoint", tmp_path / "other.pt", "--query", query, ok=False)
    assert other.returncode == 1 and "rebuild it with --build_index" in other.stderr


def test_retrieve_extracts_media_on_the_fly(tmp_path, vmr_env, make_clip, capsys):
    """Library of media files and a video query both go through the extraction pass (random weights)."""
    from vmnet import retrieve

    clips = [make_clip(f"t{i}.mp4", seconds=3.0 + i, seed=i) for i in range(2)]
    (tmp_path / "library.txt").write_text("".join(f"{c}\n" for c in clips))
    torch.manual_seed(0)
    config = {"video_dim": 512, "audio_dim": 128, "num_layers_video": 2, "num_layers_music": 3, "embed_dim": 512, "dropout": 0.1}
    torch.save({"model": VMNet(512, 128).state_dict(), "config": config, "args": {"max_seconds": None},
                "features": {"video": "clip", "audio": "vggish"}}, tmp_path / "m.pt")
    rc = retrieve.main(["--build_index", "--library", str(tmp_path / "library.txt"), "--checkpoint", str(tmp_path / "m.pt"),
                        "--index", str(tmp_path / "INDEX.npz"), "--weights", "random", "--query", str(clips[0]), "--json",
                        "--preview", str(tmp_path / "previews"), "--preview_top", "2"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tracks"] == 2 and res["extraction_seconds"] > 0
    top = res["results"][0]["top"]
    assert sorted(t["id"] for t in top) == ["t0", "t1"] and res["results"][0]["seconds"] == 3
    assert {t["id"]: (t["end"] - t["start"], t["seconds"], t["source"]) for t in top} == {
        "t0": (3, 3, str(clips[0])), "t1": (3, 4, str(clips[1]))}  # 3 s of the video: 3 s of each track
    # hear the answer: the query video with each track's moment under it, named by rank
    written = sorted(p.name for p in (tmp_path / "previews").iterdir())
    assert written == [Path(t["preview"]).name for t in top] and written[0].startswith("t0_rank001_")
    from vmr.preview import _duration

    assert _duration(Path(top[0]["preview"]), "audio") == pytest.approx(3.0, abs=0.1)
    with np.load(tmp_path / "INDEX.npz", allow_pickle=False) as z:
        assert list(z["ids"]) == ["t0", "t1"] and json.loads(str(z["meta"]))["model"] == "VM-NET"
