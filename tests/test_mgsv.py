"""vmr.mgsv on a small generated copy of the MGSV-EC release: the same layout, columns, shapes and masks, served
from 127.0.0.1 (or read from a folder), fetched and converted by the code a user runs."""
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vmr.data import read_ids
from vmr import mgsv

REPO = Path(__file__).resolve().parents[1]
ROOT = "release_v1/Kuai_feature"  # not the README's features/Kuai_feature: the folders must be found by searching
BLACK = -5.0  # value of the release's pad rows (embeddings of black frames, not zeros)
PAD_WINDOW = 99.0

# music_id -> music_total_duration; ids with `+` as in the release
TRACKS = {"4+5xjuhip7mbywr3u": 100.0, "7+k2pq9zz8": 31.3, "8+abc+def": 250.0}
T1, T2, T3 = TRACKS
# split, video_id, music_id, video_start, video_end, music_start, music_end, video_category, mask sum written
VIDEOS = [
    ("train", "93700000001", T1, 0.0, 10.4, "12.50", "22.9", "Fashion", 11),
    ("train", "93700000002", T2, 0.47, 20.0, "0.0", "19.53", "Games", 21),
    ("train", "93700000003", T1, 0.0, 60.2, "30.0", "90.2", "Fashion", 50),
    ("train", "93700000004", T3, 0.0, 8.0, "100.0", "108.0", "Home Furnishings", 9),  # its vit_feature .pt is missing
    ("val", "0100000000005", T2, 0.0, 6.0, "5.0", "11.0", "", 8),  # empty category; mask sum 8, the rule says 7
    ("val", "100000000006", T3, 0.0, 12.0, "200.0", "212.0", "Games", 13),
    ("test", "114000000007", T1, 0.0, 15.0, "0.0", "15.0", "Fashion", 16),
    ("test", "114000000008", T3, 0.0, 30.0, "210.0", "240.0", "Games", 31),
]
MISSING = "93700000004"


def video_value(vid):
    return float(int(vid) % 1000 * 100)


def write_release(root):
    """The release as it unpacks: root/dataset/MGSV-EC/<split>_data.csv (all 16 columns) and ROOT/vit_feature1/
    {vit_feature,vit_mask}/<video_id>.pt ([50, 512] / [50]), ROOT/ast_feature2p5/{ast_feature,ast_mask}/<music_id>.pt
    ([96, 768] / [96]). Video row i = value + i (pad rows BLACK); audio window j, column k = j + k / 1000."""
    import torch

    features = root / ROOT
    for sub in ("vit_feature1/vit_feature", "vit_feature1/vit_mask", "ast_feature2p5/ast_feature", "ast_feature2p5/ast_mask"):
        (features / sub).mkdir(parents=True)
    for split in mgsv.SPLITS:
        (root / "dataset" / "MGSV-EC").mkdir(parents=True, exist_ok=True)
        with open(root / "dataset" / "MGSV-EC" / f"{split}_data.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(mgsv.COLUMNS)
            for s, vid, mid, v0, v1, m0, m1, category, _ in VIDEOS:
                if s == split:
                    w.writerow([vid, mid, v0, v1, m0, m1, TRACKS[mid], round(v1 - v0, 2), round(float(m1) - float(m0), 2),
                                f"/Data/music/source_music/3/{mid}+歌.mp3", v1 + 3, 1080, 1920, int(v1 * 30), 30, category])
    for _, vid, _, _, _, _, _, _, n in VIDEOS:
        feature = torch.full((50, 512), BLACK)
        feature[:n] = video_value(vid) + torch.arange(n, dtype=torch.float32)[:, None]
        if vid != MISSING:
            torch.save(feature, features / "vit_feature1/vit_feature" / f"{vid}.pt")
        torch.save((torch.arange(50) < n).float(), features / "vit_feature1/vit_mask" / f"{vid}.pt")
    for mid, duration in TRACKS.items():
        n = min(96, int(duration // 2.5) + 1)
        feature = torch.full((96, 768), PAD_WINDOW)
        feature[:n] = torch.arange(n, dtype=torch.float32)[:, None] + torch.arange(768) / 1000
        torch.save(feature, features / "ast_feature2p5/ast_feature" / f"{mid}.pt")
        torch.save((torch.arange(96) < n).float(), features / "ast_feature2p5/ast_mask" / f"{mid}.pt")


@pytest.fixture
def release(tmp_path):
    """(unpacked folder, {served path: bytes}) of the generated release; the zip holds only the feature folders."""
    folder = tmp_path / "release"
    write_release(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for path in sorted((folder / ROOT.split("/")[0]).rglob("*")):
            z.write(path, path.relative_to(folder).as_posix())
    files = {f"/dataset/MGSV-EC/{s}_data.csv": (folder / "dataset/MGSV-EC" / f"{s}_data.csv").read_bytes()
             for s in mgsv.SPLITS}
    files["/MGSV_feature.zip"] = buffer.getvalue()
    return folder, files


def snapshot(out):
    return {p.relative_to(out).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*"))
            if p.is_file()}


def check_data(data, video_dtype=np.float32):
    """The converted folder against the generated release, values checked by hand."""
    assert read_ids(data / "train.csv") == ["93700000001", "93700000002", "93700000003"]
    assert read_ids(data / "val.csv") == ["0100000000005", "100000000006"]
    assert read_ids(data / "test.csv") == ["114000000007", "114000000008"]
    assert (data / "moments.csv").read_text() == (
        "ID,start,end,track\n93700000001,12.50,22.9,4+5xjuhip7mbywr3u\n93700000002,0.0,19.53,7+k2pq9zz8\n"
        "93700000003,30.0,90.2,4+5xjuhip7mbywr3u\n0100000000005,5.0,11.0,7+k2pq9zz8\n100000000006,200.0,212.0,8+abc+def\n"
        "114000000007,0.0,15.0,4+5xjuhip7mbywr3u\n114000000008,210.0,240.0,8+abc+def\n")
    assert sorted(p.name for p in (data / "video").glob("*.npy")) == sorted(
        f"{v[1]}.npy" for v in VIDEOS if v[1] != MISSING)
    for _, vid, _, _, _, _, _, _, n in VIDEOS:
        if vid == MISSING:
            continue
        x = np.load(data / "video" / f"{vid}.npy")
        assert x.dtype == video_dtype and x.shape == (n, 512)  # the pad rows (BLACK) are gone
        assert np.array_equal(x[:, 0], video_value(vid) + np.arange(n))
    # audio row t = windows (2.5 s apart, column 0 = window index) interpolated at t + 0.5 s: index (t + 0.5) / 2.5
    a1 = np.load(data / "audio" / f"{T1}.npy")  # 100 s: 41 windows, the last centred at 100 s
    assert a1.shape == (100, 768)
    assert np.allclose(a1[[0, 3, 10, 99], 0], [0.2, 1.4, 4.2, 39.8], rtol=1e-3, atol=1e-3)
    assert np.allclose(a1[3, 5], 1.405, rtol=1e-3, atol=1e-3)
    a2 = np.load(data / "audio" / f"{T2}.npy")  # 31.3 s: 31 rows, 13 windows (last at 30 s): second 30 holds 12
    assert a2.shape == (31, 768) and np.allclose(a2[[29, 30], 0], [11.8, 12.0], rtol=1e-3, atol=1e-3)
    a3 = np.load(data / "audio" / f"{T3}.npy")  # 250 s: cut at 240 s, all 96 windows (last at 237.5 s)
    assert a3.shape == (240, 768) and np.allclose(a3[[0, 237, 239], 0], [0.2, 95.0, 95.0], rtol=1e-3, atol=1e-3)
    assert max(a.max() for a in (a1, a2, a3)) < PAD_WINDOW - 1  # masked windows never leak in


def test_fetch_from_server_convert_resume_and_tampered_cache(release, server, tmp_path, capsys):
    folder, files = release
    server.files.update(files)
    cache, out = tmp_path / "cache", tmp_path / "out"
    env = dict(os.environ, VMR_CACHE=str(cache), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "vmr.mgsv", "--out", str(out), "--source", server.url + "/", "--epochs", "1",
                        "--threads", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    archive = cache / "mgsv" / "MGSV_feature.zip"
    assert f"{archive}:{ROOT}/vit_feature1/vit_feature/{MISSING}.pt: missing" in r.stderr.splitlines()
    assert r.stderr.splitlines()[-1] == "1 failed"
    assert f"warning: {archive}:{ROOT}/vit_feature1/vit_mask/0100000000005.pt: mask sum 8, expected 7" in r.stderr
    assert "1 row(s) left out of the splits" in r.stderr
    assert "CC BY-NC-ND 4.0" in r.stdout and "cc-by-nc-4.0" in r.stdout
    assert (out / "LICENSE-DATA.txt").read_text() == mgsv.LICENCE
    check_data(out / "data")
    assert '"dtype": "float32"' in (out / "data/video/_feature.json").read_text()
    manifest = json.loads((cache / "mgsv" / "manifest.json").read_text())
    assert {name: (e["size"], e["sha256"]) for name, e in manifest.items()} == {
        Path(path).name: (len(data), hashlib.sha256(data).hexdigest()) for path, data in files.items()}
    assert manifest["MGSV_feature.zip"]["url"] == f"{server.url}/MGSV_feature.zip"

    # trained, tested and reported end to end: the report puts MaDe's published row beside both models
    page = (out / "report.html").read_text()
    assert "MaDe (published: Xin et al., ICCV 2025)" in page and "<td>8.8</td><td>16.3</td><td>19.8</td><td>0.722</td>" in page
    for model in ("vmnet", "transformer"):
        m = json.loads((out / model / "metrics.json").read_text())
        queries = json.loads((out / model / "retrieval.json").read_text())["queries"]
        assert m["gallery"] == 2 and m["queries"] == 2 and m["library"]["R@1"] in (0, 0.5, 1)
        assert [q["gt"] for q in queries] == [T1, T3] and [q["moment"] for q in queries] == [[0.0, 15.0], [210.0, 240.0]]
        # a hand count from the answers: R@1 is the share of queries whose first track is theirs; mIoU the mean IoU
        # of the moment found on the true track (clipped to it) with the true moment
        assert m["library"]["R@1"] == np.mean([q["top"][0]["id"] == q["gt"] for q in queries])
        ious = [max(0, min(f[1], g[1]) - max(f[0], g[0])) / (max(f[1], g[1]) - min(f[0], g[0]))
                for q in queries for f, g in [(q["found"], q["moment"])]]
        assert m["library"]["mIoU"] == pytest.approx(np.mean(ious))
        assert m["baselines"]["library_chance"]["R@1"] == 0.5

    # rerun: nothing downloaded, nothing converted again, the same failure reported
    before, requests = snapshot(out), len(server.requests)
    assert mgsv.main(["--out", str(out), "--source", server.url, "--cache", str(cache / "mgsv"), "--convert_only"]) == 1
    err = capsys.readouterr().err
    assert "audio: 0 converted, 3 already done, 0 failed" in err and "video: 0 converted, 7 already done, 1 failed" in err
    assert len(server.requests) == requests
    assert snapshot(out) == before

    # a cached file that changed is refused, naming it and both hashes
    tampered = bytearray(archive.read_bytes())
    tampered[-1] ^= 1
    archive.write_bytes(bytes(tampered))
    assert mgsv.main(["--out", str(out), "--source", server.url, "--cache", str(cache / "mgsv"), "--convert_only"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {archive}: sha256 {hashlib.sha256(tampered).hexdigest()} ")
    assert f"differs from {manifest['MGSV_feature.zip']['sha256']}" in err


def test_local_folder_is_read_by_the_same_code(release, tmp_path, capsys):
    folder, _ = release
    out = tmp_path / "out"
    assert mgsv.main(["--out", str(out), "--source", str(folder), "--dtype", "float16", "--cache", str(tmp_path / "c"),
                      "--convert_only"]) == 1
    err = capsys.readouterr().err
    assert f"{folder / ROOT}/vit_feature1/vit_feature/{MISSING}.pt: missing" in err.splitlines()
    assert err.splitlines()[-1] == "1 failed" and not (tmp_path / "c").exists()  # nothing fetched
    check_data(out / "data", video_dtype=np.float16)
    # another dtype into the same folder would mix features: refused before any work
    before = snapshot(out)
    assert mgsv.main(["--out", str(out), "--source", str(folder), "--convert_only"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {out / 'data' / 'video'}: made with {{") and err.endswith("use another --out")
    assert snapshot(out) == before
    # converting one split again keeps the other splits' moments
    assert mgsv.main(["--out", str(out), "--source", str(folder), "--dtype", "float16", "--splits", "test"]) == 0
    assert snapshot(out) == before

    # the zip placed in a folder beside the CSVs (downloaded by hand) is read in place as well
    placed = tmp_path / "placed"
    (placed / "csv").mkdir(parents=True)
    for split in mgsv.SPLITS:
        (placed / "csv" / f"{split}_data.csv").write_bytes((folder / "dataset/MGSV-EC" / f"{split}_data.csv").read_bytes())
    with zipfile.ZipFile(placed / "MGSV_feature.zip", "w") as z:
        for path in sorted((folder / "release_v1").rglob("*")):
            z.write(path, path.relative_to(folder).as_posix())
    assert mgsv.main(["--out", str(tmp_path / "out2"), "--source", str(placed), "--splits", "test"]) == 0
    assert read_ids(tmp_path / "out2" / "data" / "test.csv") == ["114000000007", "114000000008"]
    assert not (tmp_path / "out2" / "data" / "train.csv").exists()


def test_bad_annotation_rows_are_reported_and_ids_stay_strings(tmp_path):
    path = tmp_path / "test_data.csv"
    path.write_text(",".join(mgsv.COLUMNS) + "\n"
                    "000123,4+ab,0,10,1.0,11.0,60,10,10,p,10,1,1,1,30,\n"  # empty category: fine
                    "124,4+ab,0,ten,1,11,60,10,10,p,10,1,1,1,30,Games\n"
                    "125,../x,0,10,1,11,60,10,10,p,10,1,1,1,30,Games\n")
    rows, problems = mgsv.read_annotations(path)
    assert rows == [mgsv.Row("000123", "4+ab", 0.0, 10.0, "1.0", "11.0", 60.0)]
    assert problems[0].startswith(f"{path}:3: a start, end or duration is not a number: ") and "video_end='ten'" in problems[0]
    assert problems[1] == f"{path}:4: music_id '../x': not a plain file name"
    path.write_text("video_id,music_id,music_start\n1,2,3\n")
    with pytest.raises(mgsv.MgsvError, match="no column video_start, video_end, music_end, music_total_duration"):
        mgsv.read_annotations(path)


def test_published_rows():
    assert mgsv.MADE == mgsv.PublishedRow("MaDe", 10.5, 0.722, 8.8, 16.3, 19.8, 8.3, 17.6, 30.7)
    assert "RUCMM/MGSV" in mgsv.PUBLISHED_SOURCE and len(mgsv.PUBLISHED) == 13


def test_slurm_job_converts_what_submit_fetched_first(release, server, tmp_path):
    """submit.py --stage mgsv fetches and checks on the submitting node (compute nodes are often offline), then
    submits slurm/mgsv.sl, which runs the conversion with VMR_OUT and ARGS (stand-ins for sbatch and Python)."""
    _, files = release
    server.files.update(files)
    bin_dir, out, cache = tmp_path / "bin", tmp_path / "mgsv", tmp_path / "cache"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'sbatch_argv'}\necho 4242\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", VMR_CACHE=str(cache))
    r = subprocess.run([sys.executable, "slurm/submit.py", "--stage", "mgsv", "--out", str(out),
                        "--args", f"--source {server.url} --splits test"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "4242", r.stderr
    assert sorted(p.name for p in (cache / "mgsv").glob("[!.]*")) == [
        "MGSV_feature.zip", "MGSV_feature.zip.sha256", "manifest.json", "test_data.csv", "test_data.csv.sha256"]
    assert (tmp_path / "sbatch_argv").read_text().split() == ["--parsable", "slurm/mgsv.sl"]
    assert not (out / "data").exists()  # nothing converted on the submitting node

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'argv'}\n")  # the exit trap runs it again (records.py)
    fake.chmod(0o755)
    subprocess.run(["bash", str(REPO / "slurm" / "mgsv.sl")], check=True, capture_output=True,
                   env=dict(env, VMR_PYTHON=str(fake), VMR_OUT=str(out), VMR_REPO=str(REPO), ARGS="--dtype float16"))
    assert (tmp_path / "argv").read_text().splitlines()[0] == f"-m vmr.mgsv --out {out} --convert_only --dtype float16"
