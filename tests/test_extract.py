"""The extraction CLI end to end: real extractors with random weights, bad inputs, resume, guards, manifest."""
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from feature_extraction import extract, pipeline
from feature_extraction.base import Extractor
from feature_extraction.make_sample import run_ffmpeg

REPO = Path(__file__).resolve().parents[1]


class MeanColour(Extractor):
    """A tiny extractor: row t = mean RGB of the frame sampled for second t."""

    token = "toy"

    def __init__(self, scale, delay):
        self.scale, self.delay = scale, delay

    def outputs(self):
        return {"toy": {"model": "mean colour", "checkpoint": None, "sha256": None, "weights": None,
                        "options": {"scale": self.scale}, "rate": 1.0}}

    def files(self, vid):
        return [f"toy/{vid}.npy"]

    def begin(self, info):
        self.vid, self.rows = info.vid, []

    def add_frame(self, index, frame):
        self.rows.append(frame.rgb().reshape(-1, 3).mean(axis=0) * self.scale)
        time.sleep(self.delay)

    def end(self, t_video, t_audio):
        return {f"toy/{self.vid}.npy": np.asarray(self.rows[:t_video], np.float32)}


class Loudness(Extractor):
    """A tiny audio extractor: row t = RMS of second t at 16 kHz."""

    token = "loud"
    wants_frames = False
    audio_rate = 16000
    needs_audio = True

    def outputs(self):
        return {"loud": {"model": "rms", "checkpoint": None, "sha256": None, "weights": None, "options": {},
                         "rate": 1.0}}

    def files(self, vid):
        return [f"loud/{vid}.npy"]

    def begin(self, info):
        self.vid, self.chunks = info.vid, []

    def add_audio(self, samples):
        self.chunks.append(samples)

    def end(self, t_video, t_audio):
        audio = np.concatenate(self.chunks)[: t_audio * 16000].reshape(t_audio, 16000)
        return {f"loud/{self.vid}.npy": np.sqrt((audio**2).mean(axis=1, keepdims=True)).astype(np.float32)}


def toy_module():
    def add_arguments(parser):
        parser.add_argument("--toy_scale", type=float, default=1.0, help="multiplies the toy rows")
        parser.add_argument("--toy_delay", type=float, default=0.0, help="seconds to wait per frame")

    return types.SimpleNamespace(add_arguments=add_arguments,
                                 build=lambda args: MeanColour(args.toy_scale, args.toy_delay))


@pytest.fixture
def toy(monkeypatch):
    loud = types.SimpleNamespace(add_arguments=lambda parser: None, build=lambda args: Loudness())
    monkeypatch.setattr(extract, "feature_modules", lambda: {"toy": toy_module(), "loud": loud})


def test_resnet_clip_vggish_and_every_kind_of_bad_input(make_clip, tmp_path, vmr_env, capsys, monkeypatch):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_clip("videos/a clip é.mp4", seconds=2.2, channels=6)
    make_clip("videos/silent.webm", seconds=2, audio=False)
    make_clip("videos/short.mp4", seconds=0.5)
    cut = make_clip("videos/cut.mp4", seconds=2).read_bytes()
    (videos / "cut.mp4").write_bytes(cut[: len(cut) // 2])
    (videos / "notes.mp4").write_text("not a video")
    (videos / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    run_ffmpeg(["-f", "lavfi", "-i", "sine=d=2", "-c:a", "aac", videos / "tone.mp4"])
    out = tmp_path / "features"

    code = extract.main(["--videos", str(videos), "--out", str(out), "--features", "resnet", "clip", "vggish",
                         "--weights", "random", "--threads", "1", "--batch_size", "4"])
    err = capsys.readouterr().err
    assert code == 1 and "6 failed" in err and "--weights random" in err
    assert f"{videos / 'silent.webm'}: no audio stream (vggish)" in err
    assert f"{videos / 'tone.mp4'}: no video stream (resnet, clip)" in err
    assert f"{videos / 'short.mp4'}: shorter than 1 s of video (resnet, clip); shorter than 1 s of audio (vggish)" in err
    assert f"{videos / 'cut.mp4'}: cannot open: " in err
    assert f"{videos / 'notes.mp4'}: cannot open: Invalid data" in err
    assert f"{videos / 'gone.mp4'}: cannot open: No such file" in err

    for folder, dim in [("resnet101", 2048), ("clip", 512), ("vggish", 128)]:
        rows = np.load(out / folder / "a clip é.npy")
        assert rows.shape == (2, dim) and rows.dtype == np.float32 and rows.std() > 0
        meta = json.loads((out / folder / "_feature.json").read_text())
        assert meta["weights"] == "random" and meta["rate"] == 1.0
    assert np.load(out / "resnet101" / "silent.npy").shape == (2, 2048)
    assert not (out / "vggish" / "silent.npy").exists()
    assert np.load(out / "vggish" / "tone.npy").shape == (2, 128)
    assert not any((out / f / "short.npy").exists() for f in ("resnet101", "clip", "vggish"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["folders"]["resnet101"]["arrays"] == {"a clip é": [2, 2048], "silent": [2, 2048]}
    assert manifest["folders"]["vggish"]["arrays"] == {"a clip é": [2, 128], "tone": [2, 128]}
    assert manifest["folders"]["clip"]["feature"]["weights"] == "random"

    from feature_extraction import clip, resnet, vggish

    def refuse(*args):
        raise AssertionError("a run with nothing to do read weights")

    for module, name in ((resnet, "load_model"), (clip, "load_visual"), (vggish, "load_model")):
        monkeypatch.setattr(module, name, refuse)
    assert extract.main(["--videos", str(videos / "a clip é.mp4"), "--out", str(out), "--features", "resnet", "clip",
                         "vggish", "--weights", "random", "--threads", "1"]) == 0
    summary = capsys.readouterr().out
    assert "0 extracted, 1 already done" in summary and "model loading 0.0 s" in summary and "start-up " in summary


def test_resume_guard_overwrite_and_same_stem(toy, make_clip, tmp_path, capsys):
    a, b = make_clip("a.mp4", seconds=2), make_clip("b.mkv", seconds=3)
    out = tmp_path / "out"
    run = lambda *more: extract.main(["--videos", str(a), str(b), "--out", str(out), "--features", "toy", *more])
    assert run() == 0
    rows = np.load(out / "toy" / "b.npy")
    assert rows.shape == (3, 3) and rows.dtype == np.float32
    stamp = (out / "toy" / "a.npy").stat().st_mtime_ns
    assert run() == 0
    assert "2 already done" in capsys.readouterr().out
    assert (out / "toy" / "a.npy").stat().st_mtime_ns == stamp

    (out / "toy" / "stale.npy").write_bytes((out / "toy" / "a.npy").read_bytes())  # a video not in this run
    with pytest.raises(SystemExit) as stop:
        run("--toy_scale", "2")
    made = f"{out / 'toy'}: made with options.scale=1.0, this run uses options.scale=2.0"
    held = ("_feature.json and 3 other files: features of 3 videos, 1 of them not in this run and not redone "
            "(stale)")
    assert str(stop.value) == (f"{made}. Nothing was changed. To keep its features, use another --out (only this "
                               f"run's 2 videos are extracted there); --overwrite deletes {out / 'toy'} ({held}) "
                               "and redoes this run's videos with the new settings")
    assert (out / "toy" / "stale.npy").exists() and np.load(out / "toy" / "b.npy").shape == (3, 3)
    capsys.readouterr()
    assert run("--toy_scale", "2", "--overwrite") == 0
    assert f"{made}; --overwrite: deleting {out / 'toy'} ({held})" in capsys.readouterr().err
    np.testing.assert_allclose(np.load(out / "toy" / "b.npy"), rows * 2, rtol=1e-6)
    assert not (out / "toy" / "stale.npy").exists()  # files made with the old settings are gone
    stamp = (out / "toy" / "a.npy").stat().st_mtime_ns
    assert run("--toy_scale", "2", "--overwrite") == 0  # same settings: only this run's videos are redone
    assert (out / "toy" / "a.npy").stat().st_mtime_ns != stamp and (out / "toy" / "_feature.json").exists()
    assert json.loads((out / "manifest.json").read_text())["folders"]["toy"]["arrays"] == {"a": [2, 3], "b": [3, 3]}

    other = tmp_path / "other"
    other.mkdir()
    twin = make_clip("other/a.webm", seconds=2)
    with pytest.raises(SystemExit, match=r"same id.*\n  a: .*a.mp4, .*a.webm"):
        extract.main(["--videos", str(a), str(twin), "--out", str(tmp_path / "never"), "--features", "toy"])
    assert not (tmp_path / "never").exists()


def test_list_file_and_help_lists_every_flag(toy, make_clip, tmp_path, monkeypatch):
    make_clip("x.mp4", seconds=2)
    (tmp_path / "list.txt").write_text("# videos\nx.mp4\n\n")
    monkeypatch.chdir(tmp_path)
    assert extract.main(["--videos", "list.txt", "--out", "out", "--features", "toy"]) == 0
    assert (tmp_path / "out" / "toy" / "x.npy").exists()

    monkeypatch.undo()
    modules = extract.feature_modules()
    assert {"resnet", "clip", "vggish", "i3d", "flow", "avpeaks"} <= set(modules)
    text = pipeline.build_parser(modules).format_help()
    for module in modules.values():
        import argparse

        own = argparse.ArgumentParser()
        module.add_arguments(own)
        for action in own._actions[1:]:
            assert action.option_strings[0] in text
    for flag in ("--videos", "--out", "--features", "--device", "--weights", "--batch_size", "--max_seconds",
                 "--threads", "--overwrite"):
        assert flag in text


def test_kill_9_mid_run_then_rerun_equals_an_uninterrupted_run(toy, make_clip, tmp_path):
    videos = [str(make_clip(f"v{i}.mp4", seconds=2, seed=i)) for i in range(5)]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    argv = ["--videos", *videos, "--features", "toy", "--toy_delay", "0.1", "--out", str(killed)]
    # the real CLI in a fresh process, with the toy extractor (slowed down so the kill lands mid-run)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_extract; from feature_extraction import extract; "
            "extract.feature_modules = lambda: {'toy': test_extract.toy_module()}; sys.exit(extract.main(sys.argv[2:]))")
    cmd = [sys.executable, "-c", code, str(Path(__file__).parent), *argv]
    p = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "toy" / "v0.npy").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert p.poll() is None, "the run ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert 1 <= len(list((killed / "toy").glob("*.npy"))) < 5
    assert subprocess.run(cmd, cwd=REPO, capture_output=True).returncode == 0
    assert extract.main([*argv[:-1], str(whole)]) == 0
    names = [f"v{i}.npy" for i in range(5)]
    assert sorted(q.name for q in (killed / "toy").glob("*.npy")) == names
    for name in names:
        np.testing.assert_array_equal(np.load(killed / "toy" / name), np.load(whole / "toy" / name))
    assert (killed / "manifest.json").read_text() == (whole / "manifest.json").read_text()


def test_max_seconds_is_part_of_a_folders_settings(toy, make_clip, tmp_path):
    clip = make_clip("a.mp4", seconds=3)
    out = tmp_path / "out"
    run = lambda *more: extract.main(["--videos", str(clip), "--out", str(out), "--features", "toy", *more])
    assert run("--max_seconds", "1") == 0
    assert np.load(out / "toy" / "a.npy").shape == (1, 3)
    assert json.loads((out / "toy" / "_feature.json").read_text())["max_seconds"] == 1.0
    with pytest.raises(SystemExit, match=r"made with max_seconds=1.0, this run uses max_seconds=null\. Nothing"):
        run()  # a full run must not count the truncated rows as done
    assert run("--max_seconds", "1") == 0
    assert run("--overwrite") == 0
    assert np.load(out / "toy" / "a.npy").shape == (3, 3)
    meta = json.loads((out / "toy" / "_feature.json").read_text())
    assert meta["max_seconds"] is None
    del meta["max_seconds"]  # a folder made before max_seconds was recorded counts as a full run
    (out / "toy" / "_feature.json").write_text(json.dumps(meta))
    assert run() == 0


def test_warnings_for_unequal_streams_and_restarting_timestamps(toy, make_clip, tmp_path, capsys):
    unequal = tmp_path / "unequal.mp4"  # 2 s of picture, 4.2 s of sound
    run_ffmpeg(["-f", "lavfi", "-i", "color=c=red:s=64x48:r=25:d=2", "-f", "lavfi", "-i", "sine=d=4.2",
                "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", unequal])
    piece = make_clip("piece.mp4", seconds=2)
    run_ffmpeg(["-i", piece, "-c", "copy", "-f", "mpegts", tmp_path / "piece.ts"])
    spliced = tmp_path / "spliced.ts"  # two copies back to back: timestamps restart at 2 s
    spliced.write_bytes((tmp_path / "piece.ts").read_bytes() * 2)
    out = tmp_path / "out"
    assert extract.main(["--videos", str(unequal), str(spliced), "--out", str(out), "--features", "toy", "loud"]) == 0
    err = capsys.readouterr().err
    assert err.count("differ by more than 1 s") == 1
    assert f"warning: {unequal}: video 2 s and audio 4 s differ by more than 1 s; only the first 2 s are paired" in err
    assert err.count(f"warning: {spliced}: video timestamps restart at 2.0 s;") == 1
    shapes = {(folder, vid): np.load(out / folder / f"{vid}.npy").shape for folder in ("toy", "loud")
              for vid in ("spliced", "unequal")}
    assert shapes == {("toy", "spliced"): (4, 3), ("loud", "spliced"): (4, 1), ("toy", "unequal"): (2, 3),
                      ("loud", "unequal"): (4, 1)}


def feature_extraction_imports():
    """{module: the feature_extraction modules it imports}: every import statement, at module level or inside a
    function (lazy), read with ast from feature_extraction/*.py."""
    import ast

    folder = REPO / "feature_extraction"
    names = {p.stem for p in folder.glob("*.py")}
    graph = {}
    for path in sorted(folder.glob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "feature_extraction":
                imported |= {alias.name for alias in node.names if alias.name in names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("feature_extraction."):
                imported.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                imported |= {a.name.split(".")[1] for a in node.names if a.name.startswith("feature_extraction.")}
        graph[path.stem] = imported - {path.stem}
    return graph


def import_cycle(graph):
    """One import circle of `graph` as [a, b, ..., a], or None."""
    state = {}  # module -> "open" while on the current path, "done" once all it reaches is known circle-free

    def visit(module, path):
        state[module] = "open"
        for other in sorted(graph.get(module, ())):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state and (cycle := visit(other, path + [other])):
                return cycle
        state[module] = "done"
        return None

    return next((c for m in sorted(graph) if m not in state and (c := visit(m, [m]))), None)


def test_import_cycle_finder():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_feature_extraction_has_no_import_circle():
    graph = feature_extraction_imports()
    assert {"merge", "weights"} <= graph["pipeline"]  # imported inside run(): the walk sees lazy imports
    assert import_cycle(graph) is None
    assert "extract" not in graph["flowProcessor"]  # it runs the pass (pipeline) with only its own module
