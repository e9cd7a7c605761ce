"""What a new user meets first: extract.py's checks of inputs and device before anything loads, every
script's --help with its defaults, benchmarks that answer --help and clean up when interrupted, and
retrieval's queries and library ids (names starting with `_` or `-`)."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from feature_extraction import extract

REPO = Path(__file__).resolve().parents[1]


def tone(seconds, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


# ----------------------------------------------------------------------------- extract.py


def test_mistyped_videos_stop_before_any_model_and_create_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VMR_CACHE", str(tmp_path / "empty cache"))  # loading a model would fail differently
    out = tmp_path / "out"
    for typo in (tmp_path / "vidoes", tmp_path / "videos.txt"):  # a folder and a list file that are not there
        with pytest.raises(SystemExit) as stop:
            extract.main(["--videos", str(typo), "--out", str(out), "--weights", "random"])
        assert stop.value.code == f"no videos found in {typo}"
        assert capsys.readouterr().err.strip() == f"{typo}: cannot open: No such file or directory"
    assert not out.exists()


def test_cuda_without_that_gpu_is_one_line(make_clip, vmr_env, tmp_path):
    device = f"cuda:{torch.cuda.device_count()}"  # never there: no GPU at all, or one past the last
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        extract.main(["--videos", str(make_clip()), "--out", str(out), "--features", "vggish", "--weights", "random",
                      "--device", device])
    assert re.fullmatch(rf"--device {device}: torch .* (sees no CUDA GPU here; use --device cpu|CUDA GPU\(s\), .*)",
                        stop.value.code)
    assert not out.exists()


def test_summary_says_video_for_one(make_clip, tmp_path, capsys):
    assert extract.main(["--videos", str(make_clip(seconds=2.0)), "--out", str(tmp_path / "out"), "--features", "flow"]) == 0
    assert capsys.readouterr().out.startswith("1 video: 1 extracted, 0 already done, 0 failed;")


# ----------------------------------------------------------------------------- --help


def help_text(main, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare with single spaces


def test_help_shows_defaults(capsys):
    from feature_extraction import downloadYt, flowProcessor, vggishProcessor, weights
    from transformer import retrieve as transformer_retrieve
    from vmnet import retrieve as vmnet_retrieve
    from zeroshot import retrieve as zeroshot_retrieve

    shown = {
        extract.main: ["--flow_method {raft,farneback,tvl1}", "(default: raft)", "(default: 32.0)", "(default: 20)",
                       "(default: 7)", "(default: 600)", "default: whole video"],
        flowProcessor.main: ["(default: 7)", "(default: 10)", "(default: 3)", "(default: 600)", "(default: all of it)"],
        vggishProcessor.main: ["(default: official)", "(default: all of it)"],
        downloadYt.main: ["(default: 360", "(default: 0)", "(default: 3)", "(default: 5.0)", "(default: 30.0)",
                          "(default: bv*[height<=360]+ba/b[height<=360]/b)"],
        weights.main: ["(default: 0)"],
        vmnet_retrieve.main: ["(default: INDEX.npz)", "(default: 5)", "(default: 8)", "(default: 64)", "(default: official)",
                              "(default: exact search)"],
        transformer_retrieve.main: ["(default: INDEX.npz)", "(default: 5)", "(default: 8)", "(default: official)"],
        zeroshot_retrieve.main: ["(default: ZEROSHOT_INDEX.npz)", "(default: 5)", "(default: track)", "(default: official)"],
    }
    for main, texts in shown.items():
        text = help_text(main, capsys)
        for t in texts:
            assert t in text, (main.__module__, t)


def test_flow_processor_has_its_own_flags_and_refuses_others(capsys, tmp_path):
    from feature_extraction import flowProcessor

    text = help_text(flowProcessor.main, capsys)
    assert "--n_bkps" in text and "--plot" in text and "--videos" in text
    assert not any(flag in text for flag in ("--resnet", "--i3d_fps", "--features", "--weights", "--device"))
    with pytest.raises(SystemExit) as stop:  # not silently replaced by flow
        flowProcessor.main(["--videos", "x.mp4", "--out", str(tmp_path), "--features", "resnet"])
    assert stop.value.code == 2 and "unrecognized arguments: --features resnet" in capsys.readouterr().err


# ----------------------------------------------------------------------------- benchmarks


@pytest.mark.parametrize("script", sorted((REPO / "bench").glob("*.py")), ids=lambda p: p.name)
def test_bench_help_answers_without_running(script, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:") and "bench_seconds" not in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, sig", [(["bench/run.py", "--only", "i3d_flow", "--out"], signal.SIGTERM),
                                          (["bench/bench_i3d_flow.py"], signal.SIGINT)], ids=["run.py-SIGTERM", "SIGINT"])
def test_interrupted_benchmark_removes_its_temporary_files(command, sig, tmp_path):
    """Killed while it works in its temporary folder (SIGTERM: kill, scancel; SIGINT: Ctrl-C)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    results = tmp_path / "results.json"
    command = [*command, str(results)] if command[-1] == "--out" else command
    env = dict(os.environ, TMPDIR=str(tmp), OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, *command], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.is_file() for p in tmp.rglob("*")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert child.poll() is None, "the benchmark ended before it wrote a temporary file"
    time.sleep(0.5)
    child.send_signal(sig)
    _, err = child.communicate(timeout=120)
    assert child.returncode != 0
    assert list(tmp.rglob("*")) == [], err[-2000:]
    assert not results.exists()


# ----------------------------------------------------------------------------- retrieval


def test_library_ids_may_start_with_underscore_or_dash(tmp_path, vmr_env, monkeypatch, capsys):
    from vmr import retrieval

    library = tmp_path / "library"
    library.mkdir()
    np.save(library / "_under.npy", np.ones((3, 128), np.float32))
    soundfile.write(library / "-dash.wav", tone(2.5), 16000)
    (library / "_feature.json").write_text("{}")  # the project's own file: not a track, and not reported
    (library / "song.aiff").write_bytes(b"")  # not a supported file: reported, left out
    npy, media = retrieval.list_library(library)
    assert [p.name for p in npy] == ["_under.npy"] and [p.name for p in media] == ["-dash.wav"]
    assert capsys.readouterr().err.strip().startswith(f"{library / 'song.aiff'}: not a supported music file")
    monkeypatch.chdir(library)  # "-dash.wav" relative, as a library list file gives it
    retrieval.extract([Path("-dash.wav")], ["vggish"], tmp_path / "work", ["--weights", "random", "--threads", "1"])
    assert np.load(tmp_path / "work" / "vggish" / "-dash.npy").shape == (2, 128)


def test_failed_extraction_is_counted_once_by_retrieval(tmp_path, vmr_env, capsys):
    from vmr import retrieval

    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    retrieval.extract([bad], ["vggish"], tmp_path / "work", ["--weights", "random"])
    assert not (tmp_path / "work" / "vggish" / "bad.npy").exists()
    captured = capsys.readouterr()
    assert f"{bad}: cannot open" in captured.err and "1 video: 0 extracted" in captured.err
    assert not re.search(r"^\d+ failed$", captured.err, re.M)  # the retrieval script prints its own count, once
    assert captured.out == ""  # stdout is kept for the results (--json)


def test_flow_extraction_leaves_stdout_to_the_json(make_clip, tmp_path, vmr_env, capsys):
    from vmr import retrieval

    retrieval.extract([make_clip(seconds=2.0)], [], tmp_path / "work", ["--weights", "random"], flow=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "1 video: 1 extracted" in captured.err


@pytest.mark.parametrize("module", ["vmnet.retrieve", "transformer.retrieve", "zeroshot.retrieve"])
def test_query_folder_is_refused_before_any_extraction(module, make_clip, tmp_path, capsys):
    import importlib

    folder = tmp_path / "clips"
    folder.mkdir()
    make_clip("clips/a.mp4", seconds=2.0)
    library = tmp_path / "library"
    library.mkdir()
    soundfile.write(library / "song.wav", tone(2.0), 16000)
    index = tmp_path / "INDEX.npz"
    checkpoint = [] if module.startswith("zeroshot") else ["--checkpoint", str(tmp_path / "best.pt")]
    code = importlib.import_module(module).main(checkpoint + ["--build_index", "--library", str(library), "--index", str(index),
                                                              "--query", str(folder)])
    assert code == 1
    assert capsys.readouterr().err.startswith(f"error: --query {folder}: a folder; give its video files (e.g. --query '{folder}'/*.mp4)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "library"]  # no index, nothing extracted


def test_audio_and_image_queries_say_what_a_query_is(tmp_path, capsys):
    from vmr import retrieval

    song, image = tmp_path / "song.mp3", tmp_path / "still.png"
    song.write_bytes(b"")  # never opened: refused by its suffix, before extraction
    image.write_bytes(b"")
    assert retrieval.check_queries([str(song), str(image)]) == []
    assert capsys.readouterr().err.strip().splitlines() == [
        f"{song}: an audio file; a query is a video, and music goes into the library (--build_index --library FOLDER)",
        f"{image}: an image; a query is a video (or a video feature file .npy)"]
