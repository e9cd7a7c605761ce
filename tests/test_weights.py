"""The checkpoint downloader against a local HTTP server: resume, verification, errors, concurrency."""
import hashlib
import multiprocessing
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from feature_extraction import weights
from feature_extraction.weights import CHECKPOINTS, WeightsError

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = bytes(range(256)) * 1024 + b"tail"  # 256 KiB + 4 bytes
NAME = "resnet50"  # the table entry the tests point at the local server


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VMR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def point_at(server, monkeypatch, path="/w.pth", data=PAYLOAD, check=None):
    """Serve `data` at `path` and make the NAME entry download it from there."""
    server.files[path] = data
    check = check or "sha256-prefix:" + hashlib.sha256(data).hexdigest()[:8]
    monkeypatch.setitem(CHECKPOINTS, NAME, replace(CHECKPOINTS[NAME], url=server.url + path, check=check))
    return CHECKPOINTS[NAME]


def cache_files(cache):
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")) if cache.exists() else []


def test_download_verifies_and_records_sha256(server, cache, monkeypatch):
    entry = point_at(server, monkeypatch)
    path = weights.checkpoint_path(NAME)
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert path == cache / entry.filename and path.read_bytes() == PAYLOAD
    assert (cache / f"{entry.filename}.sha256").read_text().strip() == sha
    assert cache_files(cache) == [entry.filename, f"{entry.filename}.sha256"]
    assert weights.provenance(NAME) == {"checkpoint": entry.filename, "sha256": sha, "weights": "official"}
    weights.checkpoint_path(NAME)
    assert len(server.requests) == 1  # the second call finds the verified file


def test_resume_after_cut_connection(server, cache, monkeypatch):
    point_at(server, monkeypatch)
    server.faults["/w.pth"] = "cut"
    path = weights.checkpoint_path(NAME)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/w.pth", "bytes=0-", False), ("/w.pth", f"bytes={len(PAYLOAD) // 2}-", False)]


def test_resume_from_part_file_of_killed_run(server, cache, monkeypatch):
    entry = point_at(server, monkeypatch)
    cache.mkdir()
    (cache / f"{entry.filename}.part").write_bytes(PAYLOAD[:1000])
    assert weights.checkpoint_path(NAME).read_bytes() == PAYLOAD
    assert server.requests == [("/w.pth", "bytes=1000-", False)]
    assert not (cache / f"{entry.filename}.part").exists()


def test_hash_mismatch_is_rejected_and_nothing_stays(server, cache, monkeypatch):
    point_at(server, monkeypatch, check="sha256-prefix:00000000")
    with pytest.raises(WeightsError, match="fails sha256-prefix:00000000"):
        weights.checkpoint_path(NAME)
    assert cache_files(cache) == []


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_names_url_and_place_to_put_file(server, cache, monkeypatch, status):
    entry = point_at(server, monkeypatch)
    server.faults["/w.pth"] = status
    with pytest.raises(WeightsError) as error:
        weights.checkpoint_path(NAME)
    message = str(error.value)
    assert "\n" not in message and f"HTTP {status}" in message
    assert entry.url in message and str(cache / entry.filename) in message
    assert cache_files(cache) == []


def test_no_server_is_a_one_line_error(cache, monkeypatch):
    monkeypatch.setitem(CHECKPOINTS, NAME, replace(CHECKPOINTS[NAME], url="http://127.0.0.1:9/w.pth"))
    with pytest.raises(WeightsError, match=r"^http://127\.0\.0\.1:9/w\.pth: .*place it at .*resnet50-0676ba61\.pth$"):
        weights.checkpoint_path(NAME)


def test_stalled_server_times_out(server, cache, monkeypatch):
    point_at(server, monkeypatch)
    server.faults["/w.pth"] = "stall"
    monkeypatch.setenv("VMR_DOWNLOAD_TIMEOUT", "0.3")
    start = time.monotonic()
    with pytest.raises(WeightsError, match="timed out"):
        weights.checkpoint_path(NAME)
    assert time.monotonic() - start < 2.5


def test_git_blob_check(server, cache, monkeypatch):
    blob = hashlib.sha1(b"blob %d\0" % len(PAYLOAD) + PAYLOAD).hexdigest()
    point_at(server, monkeypatch, check=f"git-blob:{blob}")
    assert weights.checkpoint_path(NAME).read_bytes() == PAYLOAD
    assert weights.verify(weights.checkpoint_path(NAME), f"git-blob:{blob}") == hashlib.sha256(PAYLOAD).hexdigest()
    with pytest.raises(WeightsError, match="git-blob is"):
        weights.verify(weights.checkpoint_path(NAME), "git-blob:" + "0" * 40)


def test_sidecar_is_rechecked_on_load(server, cache, monkeypatch):
    point_at(server, monkeypatch)
    path = weights.checkpoint_path(NAME)
    path.write_bytes(PAYLOAD[:-1] + b"X")
    with pytest.raises(WeightsError, match="differs from"):
        weights.checkpoint_path(NAME)


def test_file_placed_by_hand_is_verified_without_network(server, cache, monkeypatch):
    entry = point_at(server, monkeypatch)
    cache.mkdir()
    (cache / entry.filename).write_bytes(PAYLOAD)
    assert weights.checkpoint_path(NAME).read_bytes() == PAYLOAD
    assert (cache / f"{entry.filename}.sha256").read_text().strip() == hashlib.sha256(PAYLOAD).hexdigest()
    (cache / f"{entry.filename}.sha256").unlink()
    (cache / entry.filename).write_bytes(b"not the checkpoint")
    with pytest.raises(WeightsError, match="sha256-prefix is .*; delete it to download again"):
        weights.checkpoint_path(NAME)
    assert server.requests == []


def _fetch_in_child(queue):
    try:
        path = weights.checkpoint_path(NAME)
        queue.put(hashlib.sha256(path.read_bytes()).hexdigest())
    except Exception as e:  # reported to the parent
        queue.put(repr(e))


def test_two_processes_download_the_same_file(server, cache, monkeypatch):
    point_at(server, monkeypatch)
    server.faults["/w.pth"] = "slow"  # about 0.3 s per transfer, so the two overlap
    context = multiprocessing.get_context("fork")  # the children inherit the patched table
    queue = context.Queue()
    children = [context.Process(target=_fetch_in_child, args=(queue,)) for _ in range(2)]
    for child in children:
        child.start()
    results = [queue.get(timeout=20) for _ in children]
    for child in children:
        child.join(timeout=20)
        assert child.exitcode == 0
    assert results == [hashlib.sha256(PAYLOAD).hexdigest()] * 2
    assert len(server.requests) == 1  # the second waited on the lock, then found the verified file


def test_random_weights_never_download(server, cache, monkeypatch):
    point_at(server, monkeypatch)
    with pytest.raises(WeightsError, match=r"no random weights; run `python feature_extraction/weights.py --random`"):
        weights.checkpoint_path(NAME, "random")
    assert server.requests == []


def test_cli_download_reports_failures(cache):
    result = subprocess.run(
        [sys.executable, str(REPO / "feature_extraction" / "weights.py"), "--download", "nonexistent", "--cache", str(cache)],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"nonexistent: unknown checkpoint; known: {', '.join(CHECKPOINTS)}", "1 failed"]


def test_every_checkpoint_has_a_writer_and_a_valid_check():
    assert set(weights.RANDOM_WRITERS) == set(CHECKPOINTS)
    for entry in CHECKPOINTS.values():
        kind, _, value = entry.check.partition(":")
        assert {"sha256": 64, "sha256-prefix": 8, "git-blob": 40, "unpublished": 0}[kind] == len(value)
        assert entry.url.startswith("https://")
        if kind == "sha256-prefix":
            assert f"-{value}." in entry.filename  # torch.hub's convention


def test_random_writer_writes_seeded_files(tmp_path):
    """One small file through the dispatch (the session fixture weights_cache runs the CLI for all of them)."""
    name = "i3d_rgb"
    for seed in (0, 1):
        weights.write_random(tmp_path / str(seed), seed=seed, names=[name])
    files = [tmp_path / str(seed) / "random" / CHECKPOINTS[name].filename for seed in (0, 1)]
    assert files[0].read_bytes() != files[1].read_bytes()
    assert weights.provenance(name, "random", cache=tmp_path / "0") == {
        "checkpoint": "i3d_rgb.pt", "sha256": hashlib.sha256(files[0].read_bytes()).hexdigest(), "weights": "random"}


def test_missing_weights_are_listed_in_one_message_before_anything_runs(cache, tmp_path, monkeypatch, make_clip):
    from feature_extraction import extract

    clip = make_clip()
    dead = f"http://127.0.0.1:{closed_port()}"
    for name in ("resnet101", "clip_vit_b32", "vggish"):
        monkeypatch.setitem(CHECKPOINTS, name, replace(CHECKPOINTS[name], url=f"{dead}/{CHECKPOINTS[name].filename}"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        extract.main(["--videos", str(clip), "--out", str(out)])  # resnet clip vggish, official weights
    message = str(stop.value.code)
    for name in ("resnet101-63fe2227.pth", "ViT-B-32.pt", "vggish-10086976.pth"):
        assert f"  {name}  ({dead}/{name})" in message
    assert "3 official checkpoint(s) missing from " + str(cache) in message
    assert "`make weights`" in message and f"place them in {cache}" in message and "`--weights random`" in message
    assert not out.exists() and cache_files(cache) == []

    with pytest.raises(SystemExit) as stop:
        extract.main(["--videos", str(clip), "--out", str(out), "--weights", "random", "--features", "clip", "vggish"])
    assert stop.value.code == (f"no random weights in {cache / 'random'} for ViT-B-32.pt, vggish-10086976.pth; "
                               "run `python feature_extraction/weights.py --random`")
    assert not out.exists()


def closed_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_token_checkpoint_table_used_by_extract_and_submit(monkeypatch):
    """weights.TOKEN_CHECKPOINTS is the only place naming which checkpoints a token loads: extract.py (through its
    full parser) and slurm/submit.py (through checkpoint_flags, no model module imported) get the same names."""
    from feature_extraction import extract, pipeline

    monkeypatch.syspath_prepend(str(REPO / "slurm"))
    import submit

    assert list(weights.TOKEN_CHECKPOINTS) == list(extract.TOKENS)
    parser = pipeline.build_parser(extract.feature_modules())
    expected = {
        (): ["resnet101", "clip_vit_b32", "vggish", "i3d_rgb", "i3d_flow", "raft_large", "wav2clip"],
        ("--resnet", "50", "--pca"): ["resnet50", "clip_vit_b32", "vggish", "vggish_pca", "i3d_rgb", "i3d_flow",
                                      "raft_large", "wav2clip"],
        ("--i3d_imagenet", "--flow_method", "farneback", "--weights", "random"):
            ["resnet101", "clip_vit_b32", "vggish", "i3d_rgb_imagenet", "i3d_flow_imagenet", "wav2clip"],
    }
    for flags, names in expected.items():
        full = parser.parse_args(["--videos", "x.mp4", "--out", "o", "--features", "all", *flags])
        assert weights.required_checkpoints(list(extract.TOKENS), full) == names
        kind = "random" if "random" in flags else "official"
        assert submit.required_checkpoints(["all"], list(flags)) == (names, kind)
        light = weights.checkpoint_flags(list(flags))  # the feature modules' own defaults, read without them
        assert all(getattr(light, k) == getattr(full, k) for k in vars(light))
    assert submit.required_checkpoints(["flow", "avpeaks"], [])[0] == []
    assert submit.required_checkpoints(["i3d", "resnet"], [])[0] == ["resnet101", "i3d_rgb", "i3d_flow", "raft_large"]
    own_names = ["resnet{", *(name for name in CHECKPOINTS if name not in extract.TOKENS)]  # not also a token
    for path in ("slurm/submit.py", "feature_extraction/extract.py", "feature_extraction/pipeline.py"):
        text = (REPO / path).read_text(encoding="utf-8")
        assert [name for name in own_names if f'"{name}' in text] == [], path
