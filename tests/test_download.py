"""downloadYt.py and lists/himv.py against HTTP servers on 127.0.0.1 (yt-dlp's generic extractor)."""
import argparse
import csv
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feature_extraction import downloadYt
from feature_extraction.make_sample import make_clip

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two 2-second clips and one 4-second clip (mp4 bytes)."""
    folder = tmp_path_factory.mktemp("clips")
    return {name: make_clip(folder / f"{name}.mp4", seconds=s, seed=i).read_bytes()
            for i, (name, s) in enumerate([("a", 2.0), ("b", 2.0), ("long", 4.0)])}


def run(tmp_path, lines, *flags):
    """Run downloadYt in this process; return (exit code, status rows by id)."""
    (tmp_path / "list.txt").write_text("".join(f"{line}\n" for line in lines))
    code = downloadYt.main(["--list", str(tmp_path / "list.txt"), "--out", str(tmp_path / "out"),
                            "--backoff", "0", "--timeout", "5", *flags])
    with open(tmp_path / "out" / "status.csv", newline="") as f:
        return code, {row["id"]: row for row in csv.DictReader(f)}


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_statuses_duplicates_blank_lines_and_exit_code(server, clips, tmp_path, capsys):
    server.files.update({"/a.mp4": clips["a"], "/b.mp4": clips["b"]})
    server.faults["/forbidden.mp4"] = 403
    u = server.url
    lines = [f"{u}/a.mp4", "", f"{u}/missing.mp4", "# a comment", f"{u}/a.mp4", f"{u}/forbidden.mp4", "not a url", f"{u}/b.mp4"]
    code, rows = run(tmp_path, lines, "--retries", "2")
    out, err = capsys.readouterr()
    assert code == 1
    assert {vid: (r["status"], r["attempts"]) for vid, r in rows.items()} == {
        "a": ("ok", "1"), "missing": ("unavailable", "1"), "forbidden": ("bot_check", "2"), "b": ("ok", "1")}
    assert list(rows) == ["a", "missing", "forbidden", "b"]  # list order, one row per unique URL
    assert "HTTP Error 404" in rows["missing"]["message"] and "HTTP Error 403" in rows["forbidden"]["message"]
    assert (tmp_path / "out" / "video" / "a.mp4").read_bytes() == clips["a"]
    assert (tmp_path / "out" / "video" / "b.mp4").read_bytes() == clips["b"]
    assert sorted(p.name for p in (tmp_path / "out" / "video").iterdir()) == ["a.mp4", "b.mp4"]
    assert "4 unique URLs: 2 ok (50.0% survival)" in out
    assert "1 unavailable, 1 bot_check" in out and "skipped lines: 1 blank, 1 comment, 1 duplicate, 1 malformed" in out
    assert "list.txt:5: duplicate, skipped" in err and "list.txt:7: malformed, skipped: not a url" in err
    assert err.rstrip().endswith("2 failed, rerun to retry")  # bot_check and the malformed line

    # A rerun skips what is finished or gone, retries the failure, and touches nothing else.
    server.requests.clear()
    server.faults.clear()
    server.files["/forbidden.mp4"] = clips["long"]
    lines.remove("not a url")
    code, rows = run(tmp_path, lines)
    assert code == 0
    assert [r["status"] for r in rows.values()] == ["ok", "unavailable", "ok", "ok"]
    assert {path for path, _, _ in server.requests} == {"/forbidden.mp4"}


def test_unavailable_only_is_exit_zero_and_missing_js_runtime_warns(server, clips, tmp_path, capsys, monkeypatch):
    server.files["/a.mp4"] = clips["a"]
    monkeypatch.setattr(downloadYt, "find_deno", lambda: None)
    code, rows = run(tmp_path, [f"{server.url}/a.mp4", f"{server.url}/gone.mp4"])
    assert code == 0 and rows["gone"]["status"] == "unavailable"
    err = capsys.readouterr().err
    assert "failed" not in err
    assert [line for line in err.splitlines() if "JavaScript" in line] == [
        "warning: no JavaScript runtime (pip install deno): YouTube downloads may fail or miss formats"]


def test_deno_from_the_pypi_package_is_passed_to_yt_dlp(tmp_path):
    import deno

    args = argparse.Namespace(
        out=tmp_path, proxy=None, proxies=None, free_proxies=None, proxy_failures=3, format="b", verbose=False,
        timeout=5, cookies=None)
    params = downloadYt.Downloader(args).params("video", None)
    assert params["js_runtimes"] == {"deno": {"path": deno.find_deno_bin()}}
    assert Path(params["ffmpeg_location"]).exists() and "proxy" not in params


def test_dropped_connection_is_resumed(server, clips, tmp_path):
    server.files["/long.mp4"] = clips["long"]
    server.faults["/long.mp4"] = "cut"
    code, rows = run(tmp_path, [f"{server.url}/long.mp4"], "--max_seconds", "0")
    assert code == 0 and rows["long"]["status"] == "ok"
    assert (tmp_path / "out" / "video" / "long.mp4").read_bytes() == clips["long"]
    resumed = [int(r[6:-1]) for _, r, _ in server.requests if r and r != "bytes=0-"]
    assert len(resumed) == 1 and 0 < resumed[0] <= len(clips["long"]) // 2  # continued from the .part file


def test_refusing_proxy_rotates_to_the_next_and_hides_credentials(server, clips, tmp_path, capsys):
    server.files.update({"/a.mp4": clips["a"], "/b.mp4": clips["b"]})
    (tmp_path / "proxies.txt").write_text(f"http://user:s3cret@127.0.0.1:{closed_port()}\n{server.url}\n")
    code, rows = run(tmp_path, [f"{server.url}/a.mp4", f"{server.url}/b.mp4"],
                     "--proxies", str(tmp_path / "proxies.txt"), "--proxy_failures", "1")
    out, err = capsys.readouterr()
    assert code == 0, (out, err)
    assert [r["status"] for r in rows.values()] == ["ok", "ok"]
    assert rows["a"]["attempts"] == "2" and rows["b"]["attempts"] == "1"  # the dead proxy was dropped after one failure
    assert all(proxied for _, _, proxied in server.requests)
    assert "dropped after 1 failures" in err and "***@127.0.0.1" in err
    assert "s3cret" not in out + err + (tmp_path / "out" / "status.csv").read_text()


def test_free_proxies_only_on_request_with_a_warning(server, clips, tmp_path, capsys):
    server.files.update({"/a.mp4": clips["a"], "/list.txt": f"127.0.0.1:{server.server_port}\nnot-a-proxy\n".encode()})
    code, rows = run(tmp_path, [f"{server.url}/a.mp4"], "--free_proxies", f"{server.url}/list.txt")
    assert code == 0 and rows["a"]["status"] == "ok"
    assert "warning: --free_proxies uses public free proxies" in capsys.readouterr().err
    assert all(proxied for path, _, proxied in server.requests if path == "/a.mp4")


def test_trimming_keeps_the_first_seconds(server, clips, tmp_path):
    import av

    server.files["/long.mp4"] = clips["long"]
    code, rows = run(tmp_path, [f"{server.url}/long.mp4"], "--max_seconds", "2")
    assert code == 0
    path = tmp_path / "out" / "video" / "long.mp4"
    with av.open(str(path)) as container:
        assert 1.5 <= container.duration / 1e6 <= 2.5
        assert container.streams.video and container.streams.audio
    assert sorted(p.name for p in path.parent.iterdir()) == ["long.mp4"]


def test_kill_and_rerun_finishes_the_rest(server, clips, tmp_path):
    server.files.update({f"/{name}.mp4": clips[name] for name in ("a", "b", "long")})
    server.faults.update({"/b.mp4": "slow", "/long.mp4": "slow"})  # about 0.3 s per transfer
    (tmp_path / "list.txt").write_text("".join(f"{server.url}/{n}.mp4\n" for n in ("a", "b", "long")))
    command = [sys.executable, str(REPO / "feature_extraction" / "downloadYt.py"), "--list", str(tmp_path / "list.txt"),
               "--out", str(tmp_path / "out"), "--backoff", "0"]
    archive = tmp_path / "out" / "archive.txt"
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (archive.exists() and archive.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    finished = archive.read_text().split()[1::2]
    assert "a" in finished and len(finished) < 3  # killed part-way
    mtimes = {n: (tmp_path / "out" / "video" / f"{n}.mp4").stat().st_mtime_ns for n in finished}

    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "3 unique URLs: 3 ok (100.0% survival)" in result.stdout
    video = tmp_path / "out" / "video"
    assert sorted(p.name for p in video.iterdir()) == ["a.mp4", "b.mp4", "long.mp4"]  # no .part left
    assert all((video / f"{n}.mp4").read_bytes() == clips[n] for n in ("a", "b", "long"))
    assert {n: (video / f"{n}.mp4").stat().st_mtime_ns for n in finished} == mtimes  # not downloaded again
    assert sorted(archive.read_text().split()[1::2]) == ["a", "b", "long"]


def test_audio_files_beside_video(server, clips, tmp_path):
    server.files["/a.mp4"] = clips["a"]
    code, rows = run(tmp_path, [f"{server.url}/a.mp4"], "--audio")
    assert code == 0 and rows["a"]["message"] == "video/a.mp4 audio/a.mp4"
    assert (tmp_path / "out" / "audio" / "a.mp4").read_bytes() == clips["a"]
    assert (tmp_path / "out" / "archive_audio.txt").read_text().split() == ["generic", "a"]


def test_read_list_normalises_and_reports(tmp_path):
    (tmp_path / "l.txt").write_text("dQw4w9WgXcQ\n\nhttps://youtu.be/dQw4w9WgXcQ\nhttps://www.bilibili.com/video/BV1xx411c7mD?\n"
                                    "ftp://x/y\n https://www.youtube.com/watch?v=abcdefghijk&t=3 \n")
    urls, problems = downloadYt.read_list(tmp_path / "l.txt")
    assert urls == ["https://www.youtube.com/watch?v=dQw4w9WgXcQ", "https://www.bilibili.com/video/BV1xx411c7mD?",
                    "https://www.youtube.com/watch?v=abcdefghijk&t=3"]
    assert problems == [(2, "blank", ""), (3, "duplicate", "https://youtu.be/dQw4w9WgXcQ"), (5, "malformed", "ftp://x/y")]
    assert downloadYt.guess_id(urls[1]) == "BV1xx411c7mD"
    assert downloadYt.read_list(tmp_path / "l.txt", start=3, end=4)[0] == urls[1:2]


@pytest.mark.parametrize("message, status", [
    ("ERROR: [youtube] x: Video unavailable. This video is not available", "unavailable"),
    ("ERROR: [youtube] x: Private video. Sign in if you've been granted access to this video", "private"),
    ("ERROR: [youtube] x: This video has been removed by the uploader", "removed"),
    ("ERROR: [youtube] x: Video unavailable. This video is no longer available because the YouTube account "
     "associated with this video has been terminated.", "removed"),
    ("ERROR: [youtube] x: The uploader has not made this video available in your country", "geo_blocked"),
    ("ERROR: [youtube] x: Sign in to confirm you’re not a bot. Use --cookies-from-browser", "bot_check"),
    ("ERROR: [youtube] x: Unable to download API page: HTTP Error 429: Too Many Requests", "bot_check"),
    ("ERROR: [youtube] x: Unable to download webpage: <urlopen error [Errno 111] Connection refused>", "network_error"),
    ("ERROR: [youtube] x: Sign in to confirm your age. This video may be inappropriate for some users.", "other"),
])
def test_classify(message, status):
    assert downloadYt.classify(Exception(message)) == status


def test_help_documents_every_flag():
    result = subprocess.run([sys.executable, str(REPO / "feature_extraction" / "downloadYt.py"), "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--list", "--out", "--start", "--end", "--proxies", "--proxy", "--free_proxies", "--cookies",
                 "--workers", "--max_seconds", "--format", "--audio", "--retries", "--backoff", "--timeout",
                 "--proxy_failures", "--verbose", "geo_blocked", "bot_check", "network_error"):
        assert flag in result.stdout


def test_himv_list_is_fetched_verified_and_normalised(server, tmp_path):
    raw = b"dQw4w9WgXcQ\nhttps://www.youtube.com/watch?v=abcdefghijk\n\n-_abcdefghi\n"
    server.files["/Youtube_ID.txt"] = raw
    blob = hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()
    env = dict(os.environ, HIMV_URL=f"{server.url}/Youtube_ID.txt", VMR_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, str(REPO / "lists" / "himv.py"), "--out", str(tmp_path / "HIMV200.txt")]
    result = subprocess.run([*command, "--blob", blob], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    text = "".join(f"https://www.youtube.com/watch?v={v}\n" for v in ("dQw4w9WgXcQ", "abcdefghijk", "-_abcdefghi"))
    assert (tmp_path / "HIMV200.txt").read_text() == text
    assert result.stdout.strip() == f"{tmp_path / 'HIMV200.txt'}: 3 URLs (3 unique), sha256 {hashlib.sha256(text.encode()).hexdigest()}"

    # The pinned blob id rejects this file; no server: one line naming the URL.
    (tmp_path / "HIMV200.txt").unlink()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "fails git-blob:cbbe3d1b22111c6b3ee61386ca76dda115d7c414" in result.stderr
    env["HIMV_URL"] = f"http://127.0.0.1:{closed_port()}/Youtube_ID.txt"
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(env["HIMV_URL"]) and not (tmp_path / "HIMV200.txt").exists()


def test_files_are_the_ones_yt_dlp_reports_and_stay_inside_out(server, clips, tmp_path):
    """A generic id comes from the URL: `..%2Fvideo%2Fa` is the id `../video/a`, `a%3Fb` the id `a?b`. yt-dlp
    names their files `..⧸video⧸a.mp4` and `a？b.mp4`; a path made from the raw id would name another video's
    file (video/../video/a.mp4) or none."""
    server.files.update({"/a.mp4": clips["a"], "/..%2Fvideo%2Fa.mp4": clips["b"], "/a%3Fb.mp4": clips["long"]})
    u = server.url
    code, rows = run(tmp_path, [f"{u}/a.mp4", f"{u}/..%2Fvideo%2Fa.mp4", f"{u}/a%3Fb.mp4"], "--max_seconds", "0")
    assert code == 0
    assert {vid: r["status"] for vid, r in rows.items()} == {"a": "ok", "../video/a": "ok", "a?b": "ok"}
    video = tmp_path / "out" / "video"
    for vid, clip in (("a", "a"), ("../video/a", "b"), ("a?b", "long")):
        path = tmp_path / "out" / rows[vid]["message"]
        assert path.parent == video and path.read_bytes() == clips[clip]
    assert sorted(p.name for p in video.iterdir()) == sorted(["a.mp4", "..⧸video⧸a.mp4", "a？b.mp4"])
