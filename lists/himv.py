"""Fetch the official HIMV-200K id list (csehong/VM-NET, pinned commit), verify it, write lists/HIMV200.txt.

The raw file is downloaded (resumable, verified by its git blob id) into $VMR_CACHE/lists/, then
normalised to one YouTube watch URL per line, in the official order, for downloadYt.py.
"""
import argparse
import hashlib
import os
import sys
from pathlib import Path

from feature_extraction.atomic import write_text
from feature_extraction.downloadYt import BARE_YOUTUBE_ID, YOUTUBE_ID
from feature_extraction.weights import WeightsError, cache_dir, download

COMMIT = "73c719bd7eecb0516fbb2809b7f828a7bc17421a"
URL = f"https://raw.githubusercontent.com/csehong/VM-NET/{COMMIT}/data/Youtube_ID.txt"
BLOB = "cbbe3d1b22111c6b3ee61386ca76dda115d7c414"


def normalise(text):
    """(watch URLs, problems) from lines holding a bare id or any YouTube URL (first field of the line)."""
    urls, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        match = YOUTUBE_ID.search(fields[0])
        vid = match.group(1) if match else fields[0] if BARE_YOUTUBE_ID.fullmatch(fields[0]) else None
        if vid is None:
            problems.append(f"line {number}: not a YouTube id or URL: {line.strip()[:80]}")
        else:
            urls.append(f"https://www.youtube.com/watch?v={vid}")
    return urls, problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("HIMV_URL", URL),
                        help="where to fetch the list (default: $HIMV_URL, else the raw file at the pinned commit)")
    parser.add_argument("--blob", default=BLOB, help="expected git blob id of the fetched file (default: the pinned one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "HIMV200.txt",
                        help="output list (default: lists/HIMV200.txt)")
    parser.add_argument("--cache", type=Path, default=None, help="download cache (default: $VMR_CACHE, else ~/.cache/vmr)")
    args = parser.parse_args(argv)

    raw = cache_dir(args.cache) / "lists" / f"Youtube_ID-{args.blob[:8]}.txt"
    try:
        download(args.url, raw, f"git-blob:{args.blob}")
    except WeightsError as e:
        print(e, file=sys.stderr)
        return 1
    urls, problems = normalise(raw.read_text(encoding="utf-8"))
    for problem in problems:
        print(f"{raw}: {problem}", file=sys.stderr)
    text = "".join(f"{u}\n" for u in urls)
    write_text(args.out, text)
    unique = len(set(urls))
    print(f"{args.out}: {len(urls)} URLs ({unique} unique), sha256 {hashlib.sha256(text.encode()).hexdigest()}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
