"""The README is short and every command in it runs: the command lines are read from README.md itself, so a
changed README is what gets tested. They run in a temporary folder on tiny generated clips, with the flags the
README names for a quick offline try (`--weights random`, `--epochs N`)."""
import json
import re
import shlex
import subprocess
import sys

import numpy as np

from conftest import REPO

README = REPO / "README.md"
# Flags the README itself documents for a first try, added to its command lines here (script: flags).
QUICK = {"feature_extraction/extract.py": ["--weights", "random"], "vmnet/retrieve.py": ["--weights", "random"],
         "vmnet/train.py": ["--epochs", "1", "--threads", "1"]}


def readme_commands():
    """Every command line of the README's ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def test_readme_is_short_and_documents_the_quick_flags():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    prose = " ".join(text.split())
    assert "add `--weights random` to this command and to `retrieve.py`" in prose and "`--epochs N`" in prose
    scripts = {words[1] for words in readme_commands() if words[0] == "python" and words[1] != "-m"}
    assert set(QUICK) <= scripts  # the flags above go to commands the README has


def github_slug(heading):
    """The anchor GitHub (and MkDocs) give a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_point_at_pages_and_headings_that_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#([^)]+))?\)", README.read_text())
    assert len(links) >= 10
    for path, anchor in links:
        target = REPO / path
        assert target.is_file(), path
        if anchor:
            headings = re.findall(r"^#+ (.*)$", target.read_text(), re.M)
            assert anchor in [github_slug(h) for h in headings], (path, anchor)


def test_readme_make_targets_exist():
    """`make demo` and `make test` are named in the README; a dry run shows the target and what it runs (the demo
    takes minutes and `make test` is this suite, so neither runs here for real)."""
    makes = [words for words in readme_commands() if words[0] == "make"]
    assert [w[1] for w in makes] == ["demo", "test"]
    expect = {"demo": "-m vmr.demo", "test": "-m pytest"}
    for words in makes:
        out = subprocess.run([*words, "-n"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        assert expect[words[1]] in out


def test_every_readme_command_runs(tmp_path, vmr_env):
    from feature_extraction.make_sample import make_clip

    for i in range(8):
        make_clip(tmp_path / "videos" / f"clip{i:02d}.mp4", seconds=2.0, seed=i)
    make_clip(tmp_path / "my_video.mp4", seconds=2.0, seed=99)
    outputs = []
    for words in readme_commands():
        if words[0] != "python":
            continue
        if words[1] == "-m":  # a module: found through the installed project, whatever the working directory
            script, argv = words[2], [sys.executable, *words[1:]]
        else:  # a script path, relative to the repository root where the README's commands are typed
            script, argv = words[1], [sys.executable, str(REPO / words[1]), *words[2:]]
        argv += QUICK.get(script, [])
        result = subprocess.run(argv, cwd=tmp_path, env=vmr_env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (" ".join(words), result.stdout[-2000:], result.stderr[-2000:])
        outputs.append(result.stdout)

    for folder, width in (("resnet101", 2048), ("clip", 512), ("vggish", 128)):
        rows = np.load(tmp_path / "features" / folder / "clip00.npy")
        assert rows.shape == (2, width) and rows.dtype == np.float32
    data = tmp_path / "data" / "clip_vggish"
    test_ids = (data / "test.csv").read_text().split()[1:]
    assert len(test_ids) == 2 and len((data / "train.csv").read_text().split()[1:]) == 6
    metrics = json.loads((tmp_path / "runs" / "vmnet" / "metrics.json").read_text())
    assert metrics["gallery"] == 2 and 0 <= metrics["video_to_music"]["R@1"] <= 1
    assert (tmp_path / "report.html").read_text().count("VM-NET") >= 1
    with np.load(tmp_path / "INDEX.npz") as index:
        assert len(index["ids"]) == 8
    answer = outputs[-1]  # the query's table: rank, score, moment start-end, track (seconds, source), five rows
    ranked = re.findall(r"^\s*(\d+)\s+(-?\d\.\d+)\s+(\d+)-(\d+)\s+(clip\d\d)\s+\((\d+) s, (\S+)\)\s*$", answer, re.M)
    assert [int(r[0]) for r in ranked] == [1, 2, 3, 4, 5], answer
    scores = [float(r[1]) for r in ranked]
    assert scores == sorted(scores, reverse=True)
    for _, _, start, end, track, seconds, source in ranked:  # the moment: the query's 2 s inside the whole track
        assert 0 <= int(start) and int(end) - int(start) == min(2, int(seconds)) and int(end) <= int(seconds)
        assert source.endswith(f"vggish/{track}.npy")
