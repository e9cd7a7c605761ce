"""Segment Transformer: data, masking, losses, scoring, the leakage guard, learning against its baselines, and the CLI."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binom

from transformer import train
from transformer.data import cut_parts, encode_timeline, load_items, make_item, split_parts
from transformer.losses import aligned_matrix, flow_triplet_losses, second_loss
from transformer.model import SegmentEncoder, SegmentTransformer
from transformer.scorer import TransformerScorer, load
from vmr.data import paired_gallery
from vmr.evaluation import evaluate
from vmr.moments import exact_moment_scores
from vmr.scorer import AlignedScoring, pack_sequences, score_rows
from vmr.baselines import tuned_aligned_linear
from vmr.synthetic import Settings, generate, write_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest
RECORD = {"run_args": {"n_bkps": 7, "min_seconds": 10, "max_seconds": None}}  # what a scorer reads of a checkpoint


def small_settings(n, regime="trajectory", seed=0, **extra):
    sizes = dict(video_dim=32, audio_dim=16, latent=4, genres=4, min_len=24, max_len=48, segments=(2, 4))
    return Settings(n=n, regime=regime, seed=seed, **{**sizes, **extra})


def write_small(root, n, n_test, regime="trajectory", shuffle_audio=False, seed=0, **extra):
    """A small generated benchmark on disk; shuffle_audio pairs every video with another item's music (no pairing)."""
    settings = small_settings(n, regime, seed, **extra)
    pairs = generate(settings)
    if shuffle_audio:
        order = np.random.default_rng(seed + 1).permutation(n)
        for p, q in zip(pairs, [pairs[i].audio for i in order]):
            p.audio = q[: len(p.video)] if len(q) >= len(p.video) else q
    return write_dataset(root, pairs, n_test, settings)


def train_args(root, save_dir, *extra):
    return train.build_parser().parse_args(["--train_data_dir", str(root), "--train_csv_path", str(Path(root) / "train.csv"),
                                            "--flow_ranks", str(Path(root) / "flow" / "ranks.csv"), "--save_dir", str(save_dir),
                                            "--threads", "1", *extra])


# ---------------------------------------------------------------- data

def test_parts_split_long_segments_and_music_is_cut_from_the_music_alone():
    assert split_parts([0, 10, 450, 500], max_seq_len=200, n_rows=480).tolist() == [[0, 10], [10, 157], [157, 303], [303, 450], [450, 480]]
    rng = np.random.default_rng(0)
    audio = np.concatenate([rng.normal(0, s, size=(30, 4)) for s in (0.1, 3.0, 0.1)]).astype(np.float32)
    item = make_item("x", np.zeros((100, 3), np.float32), audio, [0, 50, 100], [2, 1], 200, n_bkps=2, min_seconds=10)
    assert len(item.video) == len(item.audio) == 90  # rows [0, min(T_video, T_audio))
    assert item.video_parts.tolist() == [[0, 50], [50, 90]] and item.top == (50, 90) and item.bottom == (0, 50)
    cuts = item.music_parts[:, 0].tolist()[1:]
    assert len(cuts) == 2 and abs(cuts[0] - 30) <= 6 and abs(cuts[1] - 60) <= 6  # where the music changes, not at 50


def test_load_items_skips_missing_ids_or_segments_them_from_features(tmp_path, capsys):
    write_small(tmp_path, 4, 1)
    (tmp_path / "flow" / "ranks.csv").write_text("vid,ranks,segments\npair00000,2 1,0 8 16\n")
    items = load_items(tmp_path, ["pair00000", "pair00001", "../etc"], tmp_path / "flow" / "ranks.csv")
    err = capsys.readouterr().err
    assert [it.id for it in items] == ["pair00000"] and len(items[0].video) == 30  # the whole video:
    assert items[0].video_parts.tolist() == [[0, 8], [8, 30]]  # the seconds after the last boundary join the last segment
    assert "pair00001: not in" in err and "../etc: not a plain file name" in err
    items = load_items(tmp_path, ["pair00000", "pair00001"], tmp_path / "flow" / "ranks.csv", segments_from="features")
    assert [it.id for it in items] == ["pair00000", "pair00001"] and items[1].video_parts[-1, 1] == len(items[1].video)


def test_training_split_refuses_test_ids_and_takes_a_published_validation_split(tmp_path):
    from vmr.training import training_split

    (tmp_path / "train.csv").write_text("ID\na\nb\nc\nd\n")
    (tmp_path / "test.csv").write_text("ID\nb\ne\n")
    (tmp_path / "val.csv").write_text("ID\nf\ng\n")
    args = train.build_parser().parse_args(["--train_data_dir", str(tmp_path), "--train_csv_path", str(tmp_path / "train.csv"),
                                            "--test_csv_path", str(tmp_path / "test.csv")])
    with pytest.raises(ValueError, match="1 ids are in both"):
        training_split(args)
    (tmp_path / "test.csv").write_text("ID\ne\n")
    args.val_csv_path = str(tmp_path / "val.csv")
    assert training_split(args) == (["a", "b", "c", "d"], ["f", "g"])  # the published split, not a share of train
    (tmp_path / "val.csv").write_text("ID\ne\n")
    with pytest.raises(ValueError, match="1 ids are in both"):
        training_split(args)


def test_buckets_lay_every_second_once_and_padding_never_changes_an_output():
    torch.manual_seed(0)
    encoder = SegmentEncoder(3, embed_dim=8, num_heads=2, num_layers=1, ff_dim=16, dropout=0.1).eval()
    rng = np.random.default_rng(0)
    sources = [rng.normal(size=(t, 3)).astype(np.float32) for t in (20, 35)]
    parts_of = [np.array([[0, 5], [5, 20]]), np.array([[0, 30], [30, 35]])]
    with torch.no_grad():
        small = encode_timeline(encoder, cut_parts(sources, parts_of, bucket_positions=30), 2, 35)
        one = encode_timeline(encoder, cut_parts(sources, parts_of, bucket_positions=10_000), 2, 35)
    assert len(cut_parts(sources, parts_of, bucket_positions=30)) == 3  # 30 | 15, 5, 5 | ... sorted by length
    torch.testing.assert_close(small, one, atol=1e-6, rtol=0)  # padding to 30 rows or to 15: the same outputs
    assert (small[0, 20:] == 0).all() and torch.allclose(small[0, :20].norm(dim=-1), torch.ones(20))
    assert torch.allclose(small[1].norm(dim=-1), torch.ones(35))


def test_attention_prefers_near_seconds_and_never_sees_padding():
    encoder = SegmentEncoder(3, embed_dim=8, num_heads=2, num_layers=1, ff_dim=16)
    pad = torch.tensor([[False, False, False, True]])
    bias = encoder.attention_bias(pad)
    slopes = torch.nn.functional.softplus(encoder.raw_slopes).detach()
    assert bias.shape == (1, 2, 4, 4) and torch.isinf(bias[..., 3]).all()
    torch.testing.assert_close(bias[0, :, 0, :3].detach(), -slopes[:, None] * torch.tensor([0.0, 1.0, 2.0]))
    assert slopes[0] == pytest.approx(0.5) and slopes[1] == pytest.approx(2.0 ** -8)


# ---------------------------------------------------------------- losses and scores

def test_second_loss_contrasts_each_second_with_the_same_second_of_the_other_items():
    video = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [0.0, 0.0]]]), dim=-1)
    video[1, 1] = 0  # item 1 lasts one second: rows past its end are zero
    audio = torch.nn.functional.normalize(torch.tensor([[[0.8, 0.6], [1.0, 0.0]], [[0.6, 0.8], [1.0, 0.0]]]), dim=-1)
    audio[1, 1] = 0
    t = 0.5
    # second 0: both items alive, a 2-way softmax per row (and per column); second 1: item 0 alone, loss 0
    logits = torch.tensor([[0.8, 0.6], [0.6, 0.8]]) / t
    ce = lambda x: -torch.log_softmax(x, dim=1).diagonal()  # noqa: E731
    terms = torch.cat([ce(logits), torch.zeros(1)])  # 3 (item, second) terms in each direction
    expected = (terms.mean() + torch.cat([ce(logits.T), torch.zeros(1)]).mean()) / 2
    assert second_loss(video, audio, torch.tensor([2, 1]), t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_linear_start_is_the_aligned_linear_baseline_and_smoothing_lifts_it(tmp_path):
    write_small(tmp_path, 260, 100, video_dim=256, audio_dim=64, latent=8, min_len=40, max_len=80, segments=(4, 9), noise=5.0)
    load = lambda ids: load_items(tmp_path, ids, tmp_path / "flow" / "ranks.csv")  # noqa: E731
    train_items, val_items = load([f"pair{i:05d}" for i in range(130)]), load([f"pair{i:05d}" for i in range(130, 160)])
    test_items = load([f"pair{i:05d}" for i in range(160, 260)])
    val = paired_gallery([it.video for it in val_items], [it.audio for it in val_items])
    start = train.linear_start(train_items, val, max_dims=64)
    assert 1 <= start[0].shape[1] <= 64 and start[0].shape == (256, start[1].shape[1]) and start[1].shape[0] == 64
    assert train.linear_start(train_items, val, max_dims=2)[0].shape[1] <= 2  # never more than the embedding holds
    baseline = tuned_aligned_linear(([it.video for it in train_items], [it.audio for it in train_items]),
                                    ([it.video for it in val_items], [it.audio for it in val_items]))
    expected = baseline.score([it.video for it in test_items], [it.audio for it in test_items])
    r1 = {}
    for smooth in (1, 5):
        torch.manual_seed(0)
        model = SegmentTransformer(256, 64, embed_dim=64, smooth=smooth).eval()
        model.set_input_stats(*train.input_stats(train_items))
        train.init_from_linear(model, *start[:4])
        assert (model.video.input.weight[start[0].shape[1]:] == 0).all() and (model.video.blocks[0].out.weight == 0).all()
        scorer = TransformerScorer(model, RECORD, "aligned", rerank=0)
        parts = [[int(p[0]) for p in it.video_parts] + [int(it.video_parts[-1][1])] for it in test_items]
        scores = score_rows(scorer, scorer.embed_queries([it.video for it in test_items], parts),
                            scorer.embed_tracks([it.audio for it in test_items]))
        if smooth == 1:  # the same scores as the baseline, up to the final layer norm's centring
            assert np.corrcoef(scores.ravel(), expected.ravel())[0, 1] > 0.97
        r1[smooth] = np.mean(scores.argmax(1) == np.arange(len(scores)))
    assert r1[1] == pytest.approx(np.mean(expected.argmax(1) == np.arange(100)), abs=0.06)
    assert r1[5] >= r1[1] + 0.04, r1  # averaging neighbouring seconds helps on noisy per-second rows (0.63 -> 0.68)


def test_aligned_scores_mean_the_common_seconds_in_training_and_evaluation():
    """Training's aligned matrix, the scorer's pairs (a rerank) and its full grid (validation, test) agree."""
    rng = np.random.default_rng(1)
    lengths = [5, 3, 4]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    video = [unit(rng.normal(size=(t, 4))).astype(np.float32) for t in lengths]
    audio = [unit(rng.normal(size=(t, 4))).astype(np.float16).astype(np.float32) for t in lengths]  # as an index stores them
    expected = np.array([[np.mean(np.sum(v[:min(len(v), len(a))] * a[:min(len(v), len(a))], 1)) for a in audio] for v in video])
    pad = lambda xs: torch.from_numpy(np.stack([np.pad(x, ((0, 5 - len(x)), (0, 0))) for x in xs]))  # noqa: E731
    np.testing.assert_allclose(aligned_matrix(pad(video), pad(audio), torch.tensor(lengths).float()).numpy(), expected, atol=1e-6)
    queries, library = {"seq": video}, pack_sequences(audio)
    rows, cols = np.array([0, 2, 1]), np.array([1, 0, 1])
    scores, offsets = AlignedScoring().pair_scores(queries, library, rows, cols)
    np.testing.assert_allclose(scores, expected[rows, cols], atol=1e-6)
    assert offsets.tolist() == [0, 0, 0]  # these tracks are not longer than their queries: one offset, the same score
    # the full grid searches every offset where the track is the longer (query 1, 3 s, in tracks of 5 and 4 s)
    searched = np.stack([exact_moment_scores(v, audio)[0] for v in video])
    np.testing.assert_allclose(AlignedScoring().all_scores(queries, library, block=2), searched, atol=1e-6)
    shorter = np.array([[len(a) <= len(v) for a in audio] for v in video])
    np.testing.assert_allclose(searched[shorter], expected[shorter], atol=1e-6)
    assert (searched[~shorter] >= expected[~shorter]).all() and (searched[~shorter] > expected[~shorter]).any()


def test_flow_triplets_skip_single_segment_videos_and_self_pairs():
    video = torch.nn.functional.normalize(torch.randn(3, 10, 4), dim=-1)
    spans = torch.tensor([[0, 5], [0, 10], [2, 6]])
    top, bottom = flow_triplet_losses(video, video, spans, spans, torch.tensor([1, 1, 1]))
    assert top.item() == 0 and bottom.item() == 0  # nobody has two segments
    top, bottom = flow_triplet_losses(video, video, spans, spans.flip(0), torch.tensor([2, 2, 1]), flow_k=10)
    assert top.item() > 0 and bottom.item() > 0


# ---------------------------------------------------------------- the leakage guard

def binomial_bound(n, k):
    """The largest R@k a model at chance reaches with probability 0.999 on n queries."""
    return binom.ppf(0.999, n, k / n) / n


def test_a_model_that_cannot_see_the_pairing_stays_at_chance(tmp_path):
    """Every video is paired with another item's music: what is left to match on is segment lengths, positions and
    track lengths. A trained model, and one whose input projections are zeroed, must stay within a binomial bound of
    chance under the default validation and test protocol (with music cut at the paired video's boundaries, the zeroed
    model reached R@1 = 1.0)."""
    write_small(tmp_path, 200, 80, shuffle_audio=True)
    args = train_args(tmp_path, tmp_path / "run", "--epochs", "4", "--val_fraction", "0.4", "--patience", "0")
    train.run(args)
    log = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["log"]
    assert max(row["val_R@1"] for row in log) <= binomial_bound(48, 1)
    assert max(row["val_R@10"] for row in log) <= binomial_bound(48, 10)
    m = evaluate(*load(tmp_path / "run" / "best.pt", scoring="aligned"), tmp_path / "run" / "best.pt", tmp_path,
                 tmp_path / "test.csv", tmp_path / "eval" / "metrics.json")  # both scorings
    assert m["gallery"] == 80 and set(m["scorings"]) == {"pooled", "aligned"}
    for name, block in m["scorings"].items():
        assert block["video_to_music"]["R@1"] <= binomial_bound(80, 1), name
        assert block["video_to_music"]["R@10"] <= binomial_bound(80, 10), name

    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    for key in ("video.input.weight", "audio.input.weight", "video.input.bias", "audio.input.bias"):
        ckpt["model"][key].zero_()
    torch.save(ckpt, tmp_path / "zeroed.pt")
    m = evaluate(*load(tmp_path / "zeroed.pt", scoring="aligned"), tmp_path / "zeroed.pt", tmp_path, tmp_path / "test.csv",
                 tmp_path / "eval0" / "metrics.json")
    for block in m["scorings"].values():
        assert block["video_to_music"]["R@1"] <= binomial_bound(80, 1)
        assert block["video_to_music"]["R@10"] <= binomial_bound(80, 10)


# ---------------------------------------------------------------- the CLI

def test_cli_train_test_with_groups_overwrite_and_provenance(tmp_path, capsys):
    write_small(tmp_path / "data", 60, 20)
    base = ["--train_data_dir", str(tmp_path / "data"), "--train_csv_path", str(tmp_path / "data" / "train.csv"),
            "--test_csv_path", str(tmp_path / "data" / "test.csv"), "--flow_ranks", str(tmp_path / "data" / "flow" / "ranks.csv"),
            "--save_dir", str(tmp_path / "run"), "--threads", "1", "--epochs", "2"]
    assert train.main(base) == 0
    out = capsys.readouterr().out
    assert "whole gallery N = 20 whole tracks" in out and "aligned linear v->m" in out
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    log = best["log"][best["best"]["epoch"] - 1]  # --scoring auto: the better validation key names the headline scoring
    assert m["scoring"] == best["scoring"] == best["best"]["scoring"] == log["val_scoring"] in m["scorings"]
    assert best["run_args"]["scoring"] == "auto" and best["features"] == {"video": "synthetic-video", "audio": "synthetic-audio"}
    assert log["val_R@1"] == log[f"val_{m['scoring']}_R@1"] and m["baselines"]["cca"]["dims"] >= 1
    assert m["provenance"]["video"]["model"] == "synthetic-video" and len(m["video_to_music"]["ranks"]) == 20
    retrieval = json.loads((tmp_path / "run" / "retrieval.json").read_text())
    assert all(len(q["top"]) == 5 and len(q["segments"]) >= 2 for q in retrieval["queries"])
    first = retrieval["queries"][0]["segments"]
    assert first[0]["start"] == 0 and all(s["track_end"] > s["track_start"] for s in first)

    assert train.main(base) == 1
    assert "holds results of another run" in capsys.readouterr().err
    assert train.main(base + ["--resume", "--lr", "1e-2"]) == 1
    assert "cannot resume with different settings" in capsys.readouterr().err

    from transformer import test as transformer_test

    ids = (tmp_path / "data" / "test.csv").read_text().split()[1:]
    (tmp_path / "groups.csv").write_text("ID,group\n" + "".join(f"{v},{'same' if i < 2 else v}\n" for i, v in enumerate(ids)))
    common = ["--checkpoint", str(tmp_path / "run" / "best.pt"), "--test_data_dir", str(tmp_path / "data"),
              "--test_csv_path", str(tmp_path / "data" / "test.csv")]
    assert transformer_test.main(common + ["--out", str(tmp_path / "g" / "metrics.json"), "--groups", str(tmp_path / "groups.csv")]) == 0
    grouped = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert grouped["video_to_music"]["ranks"][0] <= m["video_to_music"]["ranks"][0]  # either of the two shared tracks is a hit

    prov = json.loads((tmp_path / "data" / "audio" / "_feature.json").read_text())
    (tmp_path / "data" / "audio" / "_feature.json").write_text(json.dumps({**prov, "model": "vggish_pca"}))
    assert transformer_test.main(common + ["--out", str(tmp_path / "p" / "metrics.json")]) == 1
    err = capsys.readouterr().err
    assert "audio features of" in err and "are vggish_pca" in err and "trained on synthetic-audio" in err
    (tmp_path / "data" / "audio" / "_feature.json").write_text(json.dumps({**prov, "options": {**prov["options"], "seed": 7}}))
    assert transformer_test.main(common + ["--out", str(tmp_path / "p" / "metrics.json")]) == 1
    assert "differing: options.seed 7 (checkpoint 0)" in capsys.readouterr().err


def test_default_training_beats_the_aligned_linear_baseline_on_the_trajectory_benchmark(tmp_path, capsys):
    """The small benchmark (trajectory regime): default flags, test gallery of 120. Checked once on seeds 0-4:
    video->music R@1 0.78 / 0.65 / 0.69 / 0.76 / 0.65 against 0.68 / 0.58 / 0.56 / 0.63 / 0.57 (margin >= 0.075)."""
    data = tmp_path / "data"
    write_small(data, 360, 120, video_dim=256, audio_dim=64, latent=8, min_len=40, max_len=80, segments=(4, 9), noise=5.0)
    assert train.main(["--train_data_dir", str(data), "--train_csv_path", str(data / "train.csv"), "--test_csv_path",
                       str(data / "test.csv"), "--flow_ranks", str(data / "flow" / "ranks.csv"), "--save_dir",
                       str(tmp_path / "run"), "--threads", "1", "--val_fraction", "0.2"]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    model, linear = m["scorings"]["aligned"], m["baselines"]["aligned_linear"]
    assert m["scoring"] == "aligned" and m["gallery"] == 120
    assert model["video_to_music"]["R@1"] >= linear["video_to_music"]["R@1"] + 0.05, (model, linear)
    assert model["music_to_video"]["R@1"] >= linear["music_to_video"]["R@1"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    write_small(tmp_path, 30, 6)
    args = ["--train_data_dir", str(tmp_path), "--train_csv_path", str(tmp_path / "train.csv"), "--flow_ranks",
            str(tmp_path / "flow" / "ranks.csv"), "--save_dir", str(tmp_path / "run"), "--threads", "1", "--epochs", "3"]
    real = train.batch_losses
    calls = []

    def poisoned(*a, **k):
        total, inter, top, bottom = real(*a, **k)
        calls.append(1)
        return (total * float("nan") if len(calls) > 1 else total), inter, top, bottom

    monkeypatch.setattr(train, "batch_losses", poisoned)
    assert train.main(args + ["--batch_size", "64"]) == 1
    err = capsys.readouterr().err
    assert "loss is nan" in err and "last good checkpoint" in err and "(epoch 1)" in err
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1


def test_test_data_of_another_width_fails_before_training_and_in_test(tmp_path, capsys):
    write_small(tmp_path / "data", 30, 6)
    other = Settings(n=6, video_dim=20, audio_dim=16, latent=4, genres=2, min_len=24, max_len=30, segments=(2, 3))
    write_dataset(tmp_path / "other", generate(other), 6, other)
    (tmp_path / "other" / "test.csv").write_text((tmp_path / "other" / "test.csv").read_text().replace("pair", "pair9"))
    for p in (tmp_path / "other").glob("*/pair*.npy"):
        p.rename(p.with_name(p.name.replace("pair", "pair9")))
    for kind in ("video", "audio"):  # the same provenance record: only the widths differ
        (tmp_path / "other" / kind / "_feature.json").write_text((tmp_path / "data" / kind / "_feature.json").read_text())
    args = ["--train_data_dir", str(tmp_path / "data"), "--train_csv_path", str(tmp_path / "data" / "train.csv"),
            "--test_data_dir", str(tmp_path / "other"), "--test_csv_path", str(tmp_path / "other" / "test.csv"),
            "--flow_ranks", str(tmp_path / "data" / "flow" / "ranks.csv"), "--save_dir", str(tmp_path / "run"),
            "--threads", "1", "--epochs", "1"]
    assert train.main(args) == 1
    assert "has video/audio widths 20/16, the training data 32/16" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing was trained
    assert train.main(args[:4] + args[8:]) == 0
    from transformer import test as transformer_test

    rc = transformer_test.main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--test_data_dir", str(tmp_path / "other"),
                                "--test_csv_path", str(tmp_path / "other" / "test.csv"), "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("error: ") and "widths 20/16, the training data 32/16" in err[-1]


def test_retrieve_from_a_split_library_equals_the_folder_library_and_faiss_equals_exact(tmp_path, capsys):
    """The library may be a split folder (read one track at a time); on a library this small every FAISS index
    visits all tracks, so --faiss flat, ivf and hnsw answer exactly as the exact search."""
    from transformer import retrieve
    from vmr.splits import split_from_folder

    data = write_small(tmp_path / "data", 40, 10)
    assert train.main(["--train_data_dir", str(data), "--train_csv_path", str(data / "train.csv"), "--flow_ranks",
                       str(data / "flow" / "ranks.csv"), "--save_dir", str(tmp_path / "run"), "--threads", "1", "--epochs", "1"]) == 0
    ids = sorted(p.stem for p in (data / "audio").glob("*.npy"))
    split_from_folder(data, ids, tmp_path / "library")
    checkpoint = str(tmp_path / "run" / "best.pt")
    query = [str(data / "video" / f"{vid}.npy") for vid in ids[:3]]
    answers = {}
    for name, library in (("folder", data / "audio"), ("split", tmp_path / "library")):
        index = tmp_path / f"{name}.npz"
        assert retrieve.main(["--build_index", "--library", str(library), "--checkpoint", checkpoint, "--index", str(index)]) == 0
        for search in ("exact", "flat", "ivf", "hnsw"):
            capsys.readouterr()
            argv = ["--index", str(index), "--checkpoint", checkpoint, "--query", *query, "--flow_ranks",
                    str(data / "flow" / "ranks.csv"), "--json", "--top_k", "5"] + ([] if search == "exact" else ["--faiss", search])
            assert retrieve.main(argv) == 0
            out = json.loads(capsys.readouterr().out)
            assert out["tracks"] == len(ids) and out["search"] == search
            answers[name, search] = [([t["id"] for t in r["top"]], [round(t["score"], 4) for t in r["top"]],
                                      [(s["track"], s["track_start"], s["track_end"]) for s in r["segments"]]) for r in out["results"]]
    exact = answers["folder", "exact"]
    assert len(exact) == 3 and all(len(top) == 5 and len(segments) >= 2 for top, _, segments in exact)
    assert all(answer == exact for answer in answers.values())
