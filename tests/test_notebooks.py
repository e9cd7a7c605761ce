"""notebooks/: committed without outputs, and each one runs top to bottom on a small demo-like folder."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]

NOTEBOOKS = ["SegmentingDemo.ipynb", "DataLoader.ipynb", "Transformer.ipynb"]


def test_notebooks_are_committed_without_outputs():
    for name in NOTEBOOKS:
        nb = nbformat.read(str(REPO / "notebooks" / name), as_version=4)
        nbformat.validate(nb)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{name} cell {i} has outputs; clear them before committing (e.g. jupyter nbconvert --clear-output)")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, weights_cache):
    """What `make demo` writes, small: 3 clips of 12 s, random weights, resnet/vggish/flow, a 2/1 split."""
    from feature_extraction.make_sample import make_sample

    root = tmp_path_factory.mktemp("demo_out")
    make_sample(root / "videos", n=3, seconds=12)
    env = dict(os.environ, VMR_CACHE=str(weights_cache), OMP_NUM_THREADS="1")
    for command in (
        ["feature_extraction/extract.py", "--videos", root / "videos", "--out", root / "features",
         "--features", "resnet", "vggish", "flow", "--weights", "random", "--threads", "1",
         "--min_seconds", "4", "--n_bkps", "3"],
        ["vmnet/prepare.py", "--features", root / "features", "--video", "resnet101", "--audio", "vggish",
         "--out", root / "data", "--test_fraction", "0.34"],
    ):
        subprocess.run([sys.executable, *map(str, command)], cwd=REPO, check=True, env=env)
    return root


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(demo_dir, name, monkeypatch):
    from vmnet.notebooks import execute

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits it: tiny models run faster on one thread

    nb = execute(REPO / "notebooks" / name, demo_dir, timeout=120)  # raises CellExecutionError on any error
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{name} shows no plot"
