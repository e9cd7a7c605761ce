"""Zero-shot retrieval with Wav2CLIP: index build and query, the JSON and table output, a known linear
encoder that retrieval must see through, and the whole-gallery evaluation rows."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from torch import nn

from feature_extraction import wav2clip
from vmr.evaluation import zeroshot_block
from vmr.metrics import retrieval_metrics
from zeroshot import evaluate, retrieve

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tone_track(path, freqs, rate=16000, seed=0):
    """One tone per second (a different frequency each second) plus a little noise, written as `path`."""
    rng = np.random.default_rng(seed)
    t = np.arange(len(freqs) * rate) / rate
    f = np.repeat(np.asarray(freqs, float), rate)
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32), rate)
    return path


class LinearMap(nn.Module):
    """A known linear encoder: (N, 1, 257, F) normalised spectrograms -> mean over time of each bin @ W (257, 512)."""

    def __init__(self, seed=0):
        super().__init__()
        self.register_buffer("w", torch.randn(257, 512, generator=torch.Generator().manual_seed(seed)) / 257**0.5)

    def forward(self, spec):
        return spec.mean(dim=3)[:, 0] @ self.w


def linear_wav2clip():
    model = wav2clip.Wav2CLIP()
    model.encoder, model.transform = LinearMap(), nn.Identity()
    return model.eval()


@pytest.fixture
def library(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    rng = np.random.default_rng(7)
    for k, name in enumerate(["a.wav", "b.flac", "c.wav", "d.wav"]):
        tone_track(music / name, rng.uniform(200, 4000, size=3 + k), seed=k)  # 3..6 s, its own frequencies
    return music


def test_known_linear_encoder_finds_the_right_track_and_seconds(library, weights_cache, monkeypatch, tmp_path, capsys):
    """With the encoder replaced by a known linear map, a 'video' whose CLIP rows are that map of track c's
    seconds (shuffled, plus noise) must retrieve c first, and every second must find its own second of c."""
    monkeypatch.setenv("VMR_CACHE", str(weights_cache))
    monkeypatch.setattr(wav2clip, "load_model", lambda path: linear_wav2clip())
    index = tmp_path / "index.npz"
    assert retrieve.main(["--build_index", "--library", str(library), "--index", str(index), "--weights", "random",
                          "--extract_args", "--threads 1"]) == 0
    model = linear_wav2clip()
    audio, _ = soundfile.read(library / "c.wav", dtype="float32")
    with torch.inference_mode():
        spec = model.log_spectrogram(torch.from_numpy(audio.reshape(-1, 16000)))
        rows = model.embed(wav2clip.normalize(spec)).numpy()
    order = np.random.default_rng(0).permutation(len(rows))
    query = rows[order] + 0.01 * rows.std() * np.random.default_rng(1).standard_normal(rows.shape)
    np.save(tmp_path / "query.npy", query.astype(np.float32))
    capsys.readouterr()
    assert retrieve.main(["--index", str(index), "--query", str(tmp_path / "query.npy"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert [t["id"] for t in result["top"]][0] == "c"
    assert result["top"][0]["score"] > result["top"][1]["score"] + 0.01
    assert [(s["start"], s["track"], s["track_start"], s["track_end"]) for s in result["segments"]] == [
        (t, "c", int(order[t]), int(order[t]) + 1) for t in range(len(rows))]
    assert all(s["score"] > 0.99 for s in result["segments"])


def test_index_build_query_table_and_json(library, weights_cache, vmr_env, make_clip, tmp_path, capsys):
    (library / "broken.mp3").write_text("not audio")
    index = tmp_path / "lib.npz"
    argv = ["--build_index", "--library", str(library), "--index", str(index), "--weights", "random",
            "--extract_args", "--threads 1"]
    assert retrieve.main(argv) == 1  # the bad file is reported and counted, the others are indexed
    err = capsys.readouterr().err
    assert f"{library / 'broken.mp3'}: " in err and "1 failed" in err
    with np.load(index) as z:
        ids, seg_track, seg_start, seg_end = list(z["ids"]), z["seg_track"], z["seg_start"], z["seg_end"]
        track_emb, seg_emb, meta = z["pooled"], z["seg_emb"], json.loads(str(z["meta"]))
        track_file = [Path(f) for f in z["files"]]
        assert z["seconds"].tolist() == [3, 4, 5, 6]
    assert ids == ["a", "b", "c", "d"] and track_emb.shape == (4, 512) and seg_emb.shape == (3 + 4 + 5 + 6, 512)
    assert np.bincount(seg_track).tolist() == [3, 4, 5, 6] and np.all(seg_end == seg_start + 1)
    assert seg_start[seg_track == 3].tolist() == list(range(6))
    np.testing.assert_allclose(np.linalg.norm(track_emb, axis=1), 1, atol=1e-5)
    whole = np.load(track_file[0].parent.with_name("wav2clip_track") / "a.npy")[0]  # the whole-track embedding
    np.testing.assert_allclose(track_emb[0], whole / np.linalg.norm(whole), atol=1e-5)
    assert meta["music"] == "track" and [f["weights"] for f in meta["features"].values()] == ["random"]

    clip = make_clip("query clip.mp4", seconds=3.2)
    features = tmp_path / "clip_rows.npy"
    np.save(features, np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32))
    cmd = [sys.executable, str(REPO / "zeroshot" / "retrieve.py"), "--index", str(index), "--query", str(clip),
           str(features), str(tmp_path / "missing.npy"), "--top_k", "2", "--json", "--weights", "random",
           "--extract_args", "--threads 1"]
    p = subprocess.run(cmd, env=vmr_env, capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 1 and "missing.npy: " in p.stderr and "1 failed" in p.stderr, p.stderr
    summary = json.loads(p.stdout)  # stdout is exactly one JSON document
    assert set(summary) == {"index", "model", "scoring", "rerank", "tracks", "search", "extraction_seconds", "index_seconds",
                            "results"}
    assert summary["tracks"] == 4 and summary["model"] == "Wav2CLIP zero-shot" and summary["search"] == "exact"
    assert [r["query"] for r in summary["results"]] == [str(clip), str(features)]
    for result, seconds in zip(summary["results"], (3, 4)):
        assert set(result) == {"query", "seconds", "search_seconds", "top", "segments"} and result["seconds"] == seconds
        assert len(result["top"]) == 2 and {t["id"] for t in result["top"]} <= set(ids)
        assert [t["rank"] for t in result["top"]] == [1, 2]
        assert all(t["file"] == str(track_file[ids.index(t["id"])]) and t["seconds"] == 3 + ids.index(t["id"]) for t in result["top"])
        assert result["top"][0]["score"] >= result["top"][1]["score"]
        assert [s["start"] for s in result["segments"]] == list(range(seconds))
        assert all(s["track"] in ids and s["track_end"] == s["track_start"] + 1 for s in result["segments"])

    assert retrieve.main(["--index", str(index), "--query", str(features), "--top_k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{features}: 4 s of video, top 3 of 4 tracks") and "best library segment" in out[5]
    assert len(out) == 1 + 1 + 3 + 1 + 4


def test_refuses_an_index_of_a_trained_model_or_an_older_one_and_a_missing_one(tmp_path, capsys):
    index = tmp_path / "vmnet.npz"
    meta = {"model": "VM-NET", "kind": "vmnet", "index_format": 2, "checkpoint_sha256": "ab" * 32}
    np.savez(index, ids=np.array(["a"]), pooled=np.ones((1, 512), np.float32), meta=np.array(json.dumps(meta)))
    np.save(tmp_path / "q.npy", np.ones((2, 512), np.float32))
    assert retrieve.main(["--index", str(index), "--query", str(tmp_path / "q.npy")]) == 1
    assert capsys.readouterr().err.strip() == (f"error: {index} was built by VM-NET retrieval, not Wav2CLIP zero-shot; query it "
                                               "with vmnet/retrieve.py, or build one with zeroshot/retrieve.py --build_index")
    np.savez(index, ids=np.array(["a"]), track_emb=np.ones((1, 512), np.float32), meta=np.array(json.dumps({"model": "VM-NET"})))
    assert retrieve.main(["--index", str(index), "--query", str(tmp_path / "q.npy")]) == 1
    assert "was written by an older retrieve.py; rebuild it" in capsys.readouterr().err
    assert retrieve.main(["--index", str(tmp_path / "none.npz"), "--query", str(tmp_path / "q.npy")]) == 1
    assert capsys.readouterr().err.strip() == (f"error: --index {tmp_path / 'none.npz'}: no such index; build it first with "
                                               f"zeroshot/retrieve.py --build_index --library FOLDER --index {tmp_path / 'none.npz'}")


@pytest.fixture
def gallery(tmp_path):
    """Six ids: clip rows, wav2clip rows near them (the shared space) and whole-track rows; DATA/ symlinks as
    vmnet/prepare.py makes them."""
    rng = np.random.default_rng(3)
    feats = tmp_path / "features"
    for folder in ("clip", "wav2clip", "wav2clip_track"):
        (feats / folder).mkdir(parents=True)
    ids = [f"id{i}" for i in range(6)]
    for i, vid in enumerate(ids):
        video = rng.standard_normal((4 + i, 512)).astype(np.float32)
        music = video[:3 + i] + 0.3 * rng.standard_normal((3 + i, 512)).astype(np.float32)  # one second shorter
        np.save(feats / "clip" / f"{vid}.npy", video)
        np.save(feats / "wav2clip" / f"{vid}.npy", music)
        np.save(feats / "wav2clip_track" / f"{vid}.npy", music.mean(0, keepdims=True) + 0.1)
    for kind, folder in (("video", "clip"), ("audio", "wav2clip")):
        (tmp_path / "DATA" / kind).mkdir(parents=True)
        for vid in ids:
            os.symlink(feats / folder / f"{vid}.npy", tmp_path / "DATA" / kind / f"{vid}.npy")
    return tmp_path, ids


def test_zeroshot_metrics_rows_both_directions(gallery):
    root, ids = gallery
    data = root / "DATA"
    metrics = zeroshot_block(data / "video", data / "audio", ids)  # whole-track vectors via the symlinks
    assert set(metrics) == {"video_to_music", "music_to_video", "library"}
    assert metrics["library"]["R@1"] == 1.0 and metrics["library"]["mIoU"] == 1.0  # the moment: the whole track
    reference = retrieval_metrics(np.ones((6, 512)), np.ones((6, 512)))
    for direction in ("video_to_music", "music_to_video"):
        assert set(metrics[direction]) == set(reference[direction])
        assert metrics[direction]["R@1"] == 1.0 and metrics[direction]["ranks"] == [1] * 6
    assert zeroshot_block(data / "video", data / "audio", ids, music="rows")["video_to_music"]["R@1"] == 1.0

    # id1 carries id0's music: a tie counts against the model, unless groups say the two are the same track
    for folder in ("wav2clip", "wav2clip_track"):
        np.save(root / "features" / folder / "id1.npy", np.load(root / "features" / folder / "id0.npy"))
    tied = zeroshot_block(data / "video", data / "audio", ids)["video_to_music"]["ranks"]
    grouped = zeroshot_block(data / "video", data / "audio", ids, groups=[0, 0, 1, 2, 3, 4])
    assert tied[0] == 2 and grouped["video_to_music"]["ranks"][0] == 1  # (video id1 no longer has its own music)
    assert tied[2:] == grouped["video_to_music"]["ranks"][2:] == [1] * 4

    (root / "features" / "wav2clip_track" / "id4.npy").unlink()
    with pytest.raises(ValueError, match=r"no whole-track embedding .*wav2clip_track/id4.npy"):
        zeroshot_block(data / "video", data / "audio", ids)
    with pytest.raises(ValueError, match=r"id9: .*No such file"):
        zeroshot_block(data / "video", data / "audio", ids[:4] + ["id9"], music="rows")


def test_evaluate_cli_prints_the_rows_beside_chance(gallery, capsys):
    root, ids = gallery
    (root / "test.csv").write_text("ID\n" + "\n".join(ids) + "\n")
    out = root / "zeroshot.json"
    assert evaluate.main(["--video", str(root / "DATA" / "video"), "--audio", str(root / "DATA" / "audio"),
                          "--ids", str(root / "test.csv"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "zero-shot v->m" in text and "zero-shot m->v" in text and "chance" in text
    written = json.loads(out.read_text())
    assert written["gallery"] == 6 and written["video_to_music"]["R@1"] == 1.0 and written["chance"]["R@1"] == 1 / 6


def test_model_evaluation_shows_the_zeroshot_row(gallery, capsys):
    """vmnet/test.py --wav2clip_dir: the zero-shot row sits beside the model, its baselines and chance."""
    from vmnet import test as vmnet_test, train as vmnet_train
    from vmr import report

    root, ids = gallery
    (root / "DATA" / "train.csv").write_text("ID\n" + "".join(f"{v}\n" for v in ids[:4]))
    (root / "DATA" / "test.csv").write_text("ID\n" + "".join(f"{v}\n" for v in ids[4:]))
    assert vmnet_train.main(["--train_data_dir", str(root / "DATA"), "--train_csv_path", str(root / "DATA" / "train.csv"),
                             "--save_dir", str(root / "run"), "--epochs", "1", "--val_fraction", "0", "--lr", "1e-3"]) == 0
    out = root / "run" / "metrics.json"
    assert vmnet_test.main(["--checkpoint", str(root / "run" / "best.pt"), "--test_data_dir", str(root / "DATA"),
                            "--test_csv_path", str(root / "DATA" / "test.csv"), "--out", str(out),
                            "--wav2clip_dir", str(root / "features" / "wav2clip"), "--clip_dir", str(root / "features" / "clip")]) == 0
    assert "zero-shot Wav2CLIP v->m" in capsys.readouterr().out
    m = json.loads(out.read_text())
    assert m["baselines"]["zeroshot"] == zeroshot_block(root / "features" / "clip", root / "features" / "wav2clip", ids[4:])
    assert report.main(["--run", f"VM-NET={root / 'run'}", "--out", str(root / "report.html")]) == 0
    assert "zero-shot Wav2CLIP, video → music" in (root / "report.html").read_text()
    # without the flags: DATA's links point into features/, where clip/ and wav2clip/ sit side by side
    assert vmnet_test.main(["--checkpoint", str(root / "run" / "best.pt"), "--test_data_dir", str(root / "DATA"),
                            "--test_csv_path", str(root / "DATA" / "test.csv"), "--out", str(root / "auto.json")]) == 0
    assert json.loads((root / "auto.json").read_text())["baselines"]["zeroshot"] == m["baselines"]["zeroshot"]
