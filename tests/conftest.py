"""Session-wide fixtures: seeded random weights in the official formats, and tiny generated clips."""
import mimetypes
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

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


@pytest.fixture(scope="session")
def wav2clip_checkpoint(weights_cache):
    """Seeded random Wav2CLIP weights in the published layout (Wav2CLIP.pt, written with the other random files)."""
    from feature_extraction.weights import CHECKPOINTS

    return weights_cache / "random" / CHECKPOINTS["wav2clip"].filename


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


class RangeHandler(BaseHTTPRequestHandler):
    """Serves `server.files` {path: bytes} with Range support, and answers as an HTTP proxy too.

    `server.faults[path]`: an int status, "stall" (no answer), "cut" (every transfer that starts at
    byte 0 stops half-way, so only a resumed one completes) or "slow" (about 0.3 s per transfer).
    `server.requests` records (path, Range header, via proxy) per request.
    """

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        proxied = self.path.startswith("http://")
        path = urlsplit(self.path).path if proxied else self.path
        server.requests.append((path, self.headers.get("Range"), proxied))
        fault = server.faults.get(path)
        if fault == "stall":
            time.sleep(3)
            return
        if isinstance(fault, int):
            self.send_error(fault)
            return
        data = server.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"][6:].split("-")[0]) if self.headers.get("Range") else 0
        if start >= len(data):
            self.send_error(416)
            return
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", mimetypes.guess_type(path)[0] or "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "cut" and not start:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        step = max(1, len(body) // 16) if fault == "slow" else len(body)
        for i in range(0, len(body), step):
            self.wfile.write(body[i : i + step])
            if fault == "slow":
                time.sleep(0.02)


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 (RangeHandler); `server.url` is its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.daemon_threads = True
    httpd.files, httpd.faults, httpd.requests = {}, {}, []
    httpd.url = f"http://127.0.0.1:{httpd.server_port}"
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
