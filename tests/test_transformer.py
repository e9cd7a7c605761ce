"""Segment Transformer: data, masking, losses, scoring, leakage, learning against VM-NET, and the CLI."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from transformer.data import collate, load_items, make_item, split_segments, training_ids
from transformer.losses import flow_triplet_losses, intermodal_loss
from transformer.model import SegmentEncoder, SegmentTransformer, track_embeddings
from transformer.scoring import aligned_scores, embed_items

CODES = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


def write_permutation_data(root, n, n_test, seed=0, video_dim=16, audio_dim=128):
    """Every item is a different permutation of the same 16 per-second codes (so every item has the same
    mean: mean pooling is useless), video row t = code_v[perm[t]], audio row t = code_a[perm[t]], plus
    noise; 3 to 4 segments per item at random boundaries, with random ranks, in a generated ranks.csv."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    code_v, code_a = rng.normal(size=(CODES, video_dim)), rng.normal(size=(CODES, audio_dim))
    (root / "video").mkdir(parents=True)
    (root / "audio").mkdir()
    ids = [f"clip{i:04d}" for i in range(n)]
    rows = ["vid,ranks,segments"]
    for vid in ids:
        perm = rng.permutation(CODES)
        np.save(root / "video" / f"{vid}.npy", (code_v[perm] + 0.05 * rng.normal(size=(CODES, video_dim))).astype(np.float32))
        np.save(root / "audio" / f"{vid}.npy", (code_a[perm] + 0.05 * rng.normal(size=(CODES, audio_dim))).astype(np.float32))
        cuts = sorted(rng.choice(np.arange(3, 14), size=int(rng.integers(2, 4)), replace=False))
        boundaries = [0, *map(int, cuts), CODES]
        ranks = rng.permutation(len(boundaries) - 1) + 1
        rows.append(f"{vid},[{' '.join(map(str, ranks))}],\"{boundaries}\"")  # the original project's reprs
    (root / "ranks.csv").write_text("\n".join(rows) + "\n")
    (root / "train.csv").write_text("ID\n" + "".join(f"{v}\n" for v in ids[: n - n_test]))
    (root / "test.csv").write_text("ID\n" + "".join(f"{v}\n" for v in ids[n - n_test:]))
    return ids


# ---------------------------------------------------------------- data

def test_split_segments_inherits_rank_and_clips_to_rows():
    starts, ends, ranks, parents = split_segments([0, 10, 450, 500], [2, 1, 3], max_seq_len=200, n_rows=480)
    assert starts.tolist() == [0, 10, 157, 303, 450]
    assert ends.tolist() == [10, 157, 303, 450, 480]
    assert ranks.tolist() == [2, 1, 1, 1, 3]
    assert parents.tolist() == [0, 1, 1, 1, 2]
    item = make_item("x", np.zeros((480, 4), np.float32), np.zeros((500, 2), np.float32), [0, 10, 450, 500], [2, 1, 3], 200)
    assert (item.top, item.bottom, item.n_parents) == (1, 4, 3)  # the first part of the rank-1 parent
    assert len(item.video) == len(item.audio) == 480  # rows [0, min(T_video, T_audio))


def test_load_items_skips_missing_ids_or_segments_them_from_features(tmp_path, capsys):
    write_permutation_data(tmp_path, 4, 1)
    (tmp_path / "ranks.csv").write_text("vid,ranks,segments\nclip0000,2 1,0 8 16\n")
    items = load_items(tmp_path, ["clip0000", "clip0001", "../etc"], tmp_path / "ranks.csv")
    err = capsys.readouterr().err
    assert [it.id for it in items] == ["clip0000"]
    assert "clip0001: not in" in err and "../etc: not a plain file name" in err
    assert items[0].starts.tolist() == [0, 8] and items[0].ranks.tolist() == [2, 1]
    items = load_items(tmp_path, ["clip0000", "clip0001"], tmp_path / "ranks.csv", segments_from="features")
    assert [it.id for it in items] == ["clip0000", "clip0001"]
    assert items[1].starts[0] == 0 and items[1].ends[-1] == CODES


def test_collate_masks_both_modalities_alike(tmp_path):
    write_permutation_data(tmp_path, 3, 1)
    items = load_items(tmp_path, ["clip0000", "clip0001"], tmp_path / "ranks.csv")
    batch = collate(items)
    lengths = np.concatenate([it.ends - it.starts for it in items])
    assert batch.pad.shape == (len(lengths), lengths.max())
    assert (~batch.pad).sum(1).tolist() == lengths.tolist()
    assert (batch.video[batch.pad] == 0).all() and (batch.audio[batch.pad] == 0).all()
    first = items[1]
    k = len(items[0].starts)
    assert torch.equal(batch.video[k, : first.ends[0]], torch.from_numpy(first.video[: first.ends[0]]))
    assert batch.owner.tolist() == [0] * k + [1] * len(first.starts)
    assert batch.top[1] == k + first.top


def test_training_ids_refuse_test_ids(tmp_path):
    (tmp_path / "train.csv").write_text("ID\na\nb\nc\n")
    (tmp_path / "test.csv").write_text("ID\nc\nd\n")
    with pytest.raises(ValueError, match="1 ids are in both.*c"):
        training_ids(tmp_path / "train.csv", tmp_path / "test.csv")


# ---------------------------------------------------------------- model and losses

def test_extra_padding_never_changes_an_embedding_in_eval_mode():
    torch.manual_seed(0)
    encoder = SegmentEncoder(8, embed_dim=16, num_heads=4, num_layers=2, ff_dim=32).eval()
    x = torch.randn(3, 7, 8)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    pad[2, 2:] = True
    x[pad] = 0
    with torch.no_grad():
        base = encoder(x, pad)
        wider = encoder(torch.cat([x, torch.randn(3, 9, 8)], 1), torch.cat([pad, torch.ones(3, 9, dtype=torch.bool)], 1))
        alone = encoder(x[2:, :2], pad[2:, :2])
    assert torch.allclose(base, wider, atol=1e-6)
    assert torch.allclose(base[2:], alone, atol=1e-6)
    assert torch.allclose(base.norm(dim=1), torch.ones(3), atol=1e-6)
    # padding rows are really ignored: changing them changes nothing
    x2 = x.clone()
    x2[pad] = 5.0
    with torch.no_grad():
        assert torch.allclose(encoder(x2, pad), base, atol=1e-6)


def test_track_embedding_is_renormalised_mean():
    seg = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    tracks = track_embeddings(seg, np.array([0, 0, 1, 1, 1]), 2)
    expected = torch.nn.functional.normalize(torch.stack([seg[:2].mean(0), seg[2:].mean(0)]), dim=1)
    assert torch.allclose(tracks, expected, atol=1e-6)


def test_intermodal_loss_uses_only_other_videos_and_margin():
    v = torch.eye(3)
    a = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    owner = torch.tensor([0, 0, 1])  # segments 0 and 1 belong to video 0: a1 = a0 must not be v0's negative
    # sims: v0.a0 = v0.a1 = 1, v2.a2 = 1, all else 0. Per direction only anchor 1 (positive sim 0,
    # hardest other-video negative sim 0) pays the margin: 0.1 / 3 each way.
    loss = intermodal_loss(v, a, owner, margin=0.1, k=1)
    assert loss.item() == pytest.approx(2 * 0.1 / 3, abs=1e-6)
    assert intermodal_loss(v, a, owner, margin=0.0, k=16).item() == pytest.approx(0.0, abs=1e-7)


def test_flow_triplets_skip_single_segment_videos_and_self_pairs():
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    a = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    top, bottom = torch.tensor([0, 2, 4]), torch.tensor([1, 3, 4])
    n_parents = torch.tensor([2, 2, 1])
    l_top, l_bottom = flow_triplet_losses(v, a, top, bottom, n_parents, margin=0.1, flow_k=16)
    triplet = torch.nn.TripletMarginLoss(margin=0.1, p=2)

    def four(x, y, z):
        return sum(triplet(p[x][None], q[y][None], r[z][None]) for p, q, r in ((v, v, v), (a, a, a), (v, a, v), (a, v, a)))

    # only the ordered pairs (0, 1) and (1, 0) of the two videos with 2 segments
    expected_top = (four(0, 2, 1) + four(2, 0, 3)) / 2
    expected_bottom = (four(1, 3, 0) + four(3, 1, 2)) / 2
    assert l_top.item() == pytest.approx(expected_top.item(), abs=1e-5)
    assert l_bottom.item() == pytest.approx(expected_bottom.item(), abs=1e-5)


# ---------------------------------------------------------------- scoring

def test_aligned_cuts_the_candidate_at_the_query_boundaries(tmp_path):
    torch.manual_seed(0)
    model = SegmentTransformer(3, 2, embed_dim=8, num_heads=2, num_layers=1, ff_dim=16).eval()
    rng = np.random.default_rng(0)
    query = make_item("q", rng.normal(size=(10, 3)).astype(np.float32), rng.normal(size=(10, 2)).astype(np.float32),
                      [0, 4, 10], [1, 2], 200)
    short = rng.normal(size=(6, 2)).astype(np.float32)  # ends inside the query's second segment
    late = rng.normal(size=(3, 2)).astype(np.float32)  # ends before the second segment starts
    emb = embed_items(model, [query])
    scores = aligned_scores(model.audio, emb["video_seg"], emb["owner"], emb["start"], emb["end"],
                            [query.audio, short, late], [[0, 0], [0, 1], [0, 2]])
    with torch.no_grad():
        def cut(x, s, e):
            return model.audio(torch.from_numpy(x[s:e])[None], torch.zeros(1, len(x[s:e]), dtype=torch.bool))[0]
        v = emb["video_seg"]
        own = (v[0] @ cut(query.audio, 0, 4) + v[1] @ cut(query.audio, 4, 10)) / 2
        part = (v[0] @ cut(short, 0, 4) + v[1] @ cut(short, 4, 6)) / 2
        none = (v[0] @ cut(late, 0, 3) + 0.0) / 2  # no music under the second segment scores 0
    np.testing.assert_allclose(scores, [own.item(), part.item(), none.item()], atol=1e-6)
    # pooled is the cosine of the renormalised means, which aligned is not
    pooled = float(emb["video"][0] @ emb["audio"][0])
    seg_mean = float((v * emb["audio_seg"]).sum(1).mean())
    assert scores[0] == pytest.approx(seg_mean, abs=1e-6) and abs(pooled - seg_mean) > 1e-4


# ---------------------------------------------------------------- learning: order matters, means do not

def test_transformer_learns_order_where_vmnet_is_at_chance(tmp_path):
    from transformer import train as ttrain
    from transformer.test import evaluate, vmnet_on_gallery
    from vmnet import train as vtrain

    data = tmp_path / "data"
    write_permutation_data(data, 260, 60)
    common = ["--train_data_dir", str(data), "--train_csv_path", str(data / "train.csv"),
              "--test_csv_path", str(data / "test.csv"), "--val_fraction", "0", "--seed", "0"]
    ttrain.run(ttrain.build_parser().parse_args(common + [
        "--flow_ranks", str(data / "ranks.csv"), "--save_dir", str(tmp_path / "tf"), "--embed_dim", "32",
        "--num_layers", "2", "--ff_dim", "64", "--epochs", "6", "--batch_size", "32", "--lr", "2e-3"]))
    vtrain.train(vtrain.parse_args(common + ["--save_dir", str(tmp_path / "vm"), "--epochs", "10", "--batch_size", "200"]))
    metrics = evaluate(tmp_path / "tf" / "best.pt", data, data / "test.csv", tmp_path / "tf" / "metrics.json",
                       scoring="aligned", rerank=0)
    ids = [line for line in (data / "test.csv").read_text().split()[1:]]
    vmnet = vmnet_on_gallery(tmp_path / "vm", data, ids, seed=0)
    transformer_r1 = metrics["video_to_music"]["R@1"]
    assert metrics["gallery"] == 60
    assert transformer_r1 >= vmnet["video_to_music"]["R@1"] + 0.2, (transformer_r1, vmnet["video_to_music"])


# ---------------------------------------------------------------- command line

def test_cli_train_test_retrieve(tmp_path, capsys):
    """train.py (with a bad row, then --resume) -> test.py -> retrieve.py, through their main(argv)."""
    from transformer import retrieve, test, train

    data = tmp_path / "data"
    ids = write_permutation_data(data, 24, 6)
    (data / "video" / "broken.npy").write_bytes(b"not numpy")
    with open(data / "train.csv", "a") as f:
        f.write("broken\n")
    with open(data / "ranks.csv", "a") as f:
        f.write("broken,1 2,0 8 16\n")
    save = tmp_path / "run"
    args = ["--train_data_dir", data, "--train_csv_path", data / "train.csv", "--test_csv_path", data / "test.csv",
            "--flow_ranks", data / "ranks.csv", "--save_dir", save, "--embed_dim", "16", "--num_heads", "2",
            "--num_layers", "1", "--ff_dim", "32", "--batch_size", "8"]
    args = [str(a) for a in args]
    assert train.main(args + ["--epochs", "1"]) == 0
    assert "broken: unreadable" in capsys.readouterr().err
    assert train.main(args + ["--epochs", "2", "--resume"]) == 0
    out = capsys.readouterr()
    assert "resuming after epoch 1" in out.err and "Transformer pooled v->m" in out.out
    ckpt = torch.load(save / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and "broken" not in ckpt["train_ids"]
    log = (save / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,train_loss,val_R@1,val_R@10,val_MedR,seconds") and len(log) == 3
    assert (save / "train_log.png").stat().st_size > 0 and (save / "best.pt").is_file()
    assert json.loads((save / "metrics.json").read_text())["gallery"] == 6  # evaluated after training
    straight = [a if a != str(save) else str(tmp_path / "straight") for a in args]
    assert train.main(straight + ["--epochs", "2"]) == 0  # uninterrupted: the same weights as resumed
    other = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    assert all(torch.equal(other["model"][k], ckpt["model"][k]) for k in ckpt["model"])
    capsys.readouterr()

    out = tmp_path / "eval" / "metrics.json"
    test_args = ["--checkpoint", str(save / "best.pt"), "--test_data_dir", str(data), "--out", str(out)]
    assert test.main(test_args + ["--test_csv_path", str(data / "test.csv"), "--scoring", "aligned", "--rerank", "3"]) == 0
    printed = capsys.readouterr().out
    assert "Transformer aligned v->m" in printed and "segment v->m" in printed
    metrics = json.loads(out.read_text())
    for key in ("checkpoint_sha256", "features", "test_csv", "seed", "batch1024", "baselines", "fad", "av_align"):
        assert key in metrics
    assert metrics["model"] == "Transformer" and metrics["scoring"] == "aligned"
    assert metrics["scorings"]["aligned"]["rerank"] == 3 and len(metrics["video_to_music"]["ranks"]) == 6
    n_segments = metrics["segment"]["n_segments"]
    assert n_segments >= 18 and len(metrics["segment"]["video_to_music"]["ranks"]) == n_segments
    assert metrics["baselines"]["chance"]["R@1"] == pytest.approx(1 / 6)
    retrieval = json.loads((out.parent / "retrieval.json").read_text())
    query = retrieval["queries"][0]
    assert query["id"] == query["gt"] == ids[-6] and len(query["top"]) == 5
    seg = query["segments"][0]
    assert seg["start"] == 0 and seg["track"] in ids[-6:] and 0 <= seg["track_start"] < seg["track_end"] <= CODES
    assert (out.parent / "metrics_recall.png").is_file()

    assert test.main(test_args + ["--test_csv_path", str(data / "train.csv")]) == 1  # test ids seen in training
    assert "in both the train and the test CSV" in capsys.readouterr().err

    library = tmp_path / "library"
    library.mkdir()
    for vid in ids[-6:]:
        (library / f"{vid}.npy").write_bytes((data / "audio" / f"{vid}.npy").read_bytes())
    index = tmp_path / "INDEX.npz"
    common = ["--checkpoint", str(save / "best.pt"), "--index", str(index)]
    assert retrieve.main(common + ["--build_index", "--library", str(library), "--query", str(data / "video" / f"{ids[-1]}.npy"),
                                   "--flow_ranks", str(data / "ranks.csv"), "--json", "--top_k", "3"]) == 0
    printed = capsys.readouterr().out
    answer = json.loads(printed[printed.index("{"):])
    top = answer["results"][0]["top"]
    assert len(top) == 3 and all(t["id"] in ids[-6:] for t in top)
    assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    with np.load(index) as z:
        assert z["track_emb"].shape == (6, 16) and z["seg_emb"].shape[0] == len(z["seg_track"]) >= 6
        assert json.loads(str(z["meta"]))["model"] == "Transformer"
    segments = answer["results"][0]["segments"]
    assert segments[0]["start"] == 0 and segments[-1]["end"] == CODES
    assert all(s["track"] in ids[-6:] and s["track_start"] < s["track_end"] for s in segments)
    assert retrieve.main(common + ["--query", str(data / "video" / f"{ids[-1]}.npy"), "--segments_from", "features"]) == 0
    assert "best library segment" in capsys.readouterr().out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from transformer import train

    write_permutation_data(tmp_path / "data", 8, 2)
    args = ["--train_data_dir", str(tmp_path / "data"), "--train_csv_path", str(tmp_path / "data" / "train.csv"),
            "--flow_ranks", str(tmp_path / "data" / "ranks.csv"), "--save_dir", str(tmp_path / "run"), "--embed_dim", "8",
            "--num_heads", "2", "--num_layers", "1", "--ff_dim", "8", "--val_fraction", "0"]
    assert train.main(args + ["--epochs", "1"]) == 0
    monkeypatch.setattr(train, "intermodal_loss", lambda *a, **k: torch.tensor(float("nan")))
    assert train.main(args + ["--epochs", "2", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "epoch 2 batch 0: loss is nan" in err and "last good checkpoint" in err and "(epoch 1)" in err
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1
