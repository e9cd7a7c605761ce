"""Session-wide fixtures: seeded random weights in the official formats, and tiny generated clips."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory):
    """A $VMR_CACHE whose random/ folder holds full-size seeded random weights for every checkpoint.

    Written once per test session by the real CLI, so the tests also cover
    `python feature_extraction/weights.py --random`.
    """
    cache = tmp_path_factory.mktemp("vmr_cache")
    subprocess.run(
        [sys.executable, str(REPO / "feature_extraction" / "weights.py"), "--random", "--cache", str(cache), "--seed", "0"],
        check=True,
    )
    return cache


@pytest.fixture
def vmr_env(weights_cache, monkeypatch):
    """Environment for subprocesses: VMR_CACHE points at the random weights, one torch thread."""
    monkeypatch.setenv("VMR_CACHE", str(weights_cache))
    env = dict(os.environ, VMR_CACHE=str(weights_cache), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def make_clip(tmp_path):
    """Factory for tiny deterministic clips: make_clip(name, seconds=3, **kwargs) -> Path."""
    from feature_extraction.make_sample import make_clip as _make_clip

    def factory(name="clip.mp4", seconds=3.0, **kwargs):
        return _make_clip(tmp_path / name, seconds=seconds, **kwargs)

    return factory


@pytest.fixture
def one_torch_thread():
    """Tiny models run far faster on one torch thread than on two; restore the count afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
