"""Download a dataset from a list of video URLs with yt-dlp, resumably, and report what survived.

Every unique URL ends with one status in OUT/status.csv (id, url, status, message, attempts):
ok; unavailable, private, removed, geo_blocked (the data: the video is gone for everyone or for
this country, not retried, exit 0); bot_check, network_error, other (failures: retried, rotated
through the proxies with backoff; left over after the retries they give a non-zero exit).
Finished ids go to OUT/archive.txt (yt-dlp's download archive, written only after trimming),
so rerunning the same command skips them and resumes partial files.
"""
import argparse
import csv
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import urlsplit

from filelock import FileLock
from tqdm import tqdm

from feature_extraction.atomic import write_text

DEFAULT_FORMAT = "bv*[height<=360]+ba/b[height<=360]/b"
DATA_STATUSES = ("unavailable", "private", "removed", "geo_blocked")
FAILURE_STATUSES = ("bot_check", "network_error", "other")
STATUSES = ("ok",) + DATA_STATUSES + FAILURE_STATUSES
COLUMNS = ("id", "url", "status", "message", "attempts")
# Public free-proxy lists (as the original downloader used): (url, scheme of its bare host:port lines).
FREE_PROXY_LISTS = [
    (f"https://api.proxyscrape.com/v2/?request=getproxies&protocol={p}&timeout=3000&country=us&ssl=all&anonymity=all", p)
    for p in ("http", "socks4", "socks5")
]
YOUTUBE_ID = re.compile(r"(?:youtube\.com/(?:watch\?(?:.*&)?v=|shorts/|embed/|live/)|youtu\.be/)([A-Za-z0-9_-]{11})")
BARE_YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")

# Lower-case message fragments, checked in this order (first match wins).
CLASSIFY = [
    ("geo_blocked", ("in your country", "geo restrict", "geo-restrict")),
    ("private", ("private video", "video is private")),
    ("removed", ("has been removed", "been terminated", "removed by the uploader", "copyright claim", "video was deleted")),
    ("bot_check", ("not a bot", "http error 403", "http error 429", "too many requests", "captcha")),
    ("unavailable", ("video unavailable", "is unavailable", "not available", "http error 404", "http error 410",
                     "does not exist", "unsupported url")),
    ("network_error", ("timed out", "timeout", "connection", "proxy", "http error 5", "unable to download",
                       "name resolution", "network is unreachable", "ssl", "incomplete", "tunnel")),
]


def redact(text):
    """Hide the user:password part of every URL in `text` (proxy credentials are never printed).

    Everything up to the last `@` before the host is hidden, so a password containing `@` leaks nothing."""
    return re.sub(r"(?<=://)[^/\s]*@", "***@", str(text))


def classify(error):
    """One status for a yt-dlp error (its message and, when present, the underlying exception)."""
    from yt_dlp.networking.exceptions import TransportError
    from yt_dlp.utils import GeoRestrictedError

    cause = (getattr(error, "exc_info", None) or (None, None))[1]
    if isinstance(cause, GeoRestrictedError):
        return "geo_blocked"
    text = f"{error} {cause or ''}".lower()
    for status, fragments in CLASSIFY:
        if any(f in text for f in fragments):
            return status
    return "network_error" if isinstance(cause, TransportError) else "other"


def short_message(error):
    """First line of an error, without yt-dlp's 'ERROR: ' and '(caused by ...)' parts, credentials hidden."""
    text = (str(error) or type(error).__name__).removeprefix("ERROR: ").splitlines()[0]
    return redact(re.sub(r" \(caused by .*$", "", text))


def url_key(url):
    """What makes two list lines the same video: the YouTube id when there is one, else the URL."""
    match = YOUTUBE_ID.search(url)
    return f"youtube:{match.group(1)}" if match else url


def guess_id(url):
    """An id for a URL whose extraction failed: the YouTube id, a Bilibili BV id, else the file stem."""
    match = YOUTUBE_ID.search(url) or re.search(r"/video/(BV[0-9A-Za-z]+)", url)
    return match.group(1) if match else (Path(urlsplit(url).path).stem or urlsplit(url).netloc)


def read_list(path, start=0, end=None):
    """(urls, problems): unique URLs of lines [start, end) in list order; blank, comment, duplicate and
    malformed lines are left out, each reported as (line number, kind, text). Bare YouTube ids are accepted."""
    urls, seen, problems = [], set(), []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines[start:end], start=start + 1):
        text = line.strip()
        if not text:
            problems.append((number, "blank", ""))
            continue
        if text.startswith("#"):
            problems.append((number, "comment", text))
            continue
        if BARE_YOUTUBE_ID.fullmatch(text):
            text = f"https://www.youtube.com/watch?v={text}"
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in text):
            problems.append((number, "malformed", text))
            continue
        if url_key(text) in seen:
            problems.append((number, "duplicate", text))
            continue
        seen.add(url_key(text))
        urls.append(text)
    return urls, problems


class ProxyPool:
    """Proxies used in turn; one that fails `max_failures` times is dropped for the rest of the run."""

    def __init__(self, proxies, max_failures=3):
        self.proxies, self.failures, self.max_failures = list(proxies), {}, max_failures
        self.cursor, self.lock = 0, threading.Lock()

    def __bool__(self):
        return bool(self.proxies)

    def next(self):
        with self.lock:
            if not self.proxies:
                return None
            self.cursor %= len(self.proxies)
            proxy = self.proxies[self.cursor]
            self.cursor += 1
            return proxy

    def failed(self, proxy):
        with self.lock:
            self.failures[proxy] = self.failures.get(proxy, 0) + 1
            if self.failures[proxy] >= self.max_failures and proxy in self.proxies:
                self.proxies.remove(proxy)
                tqdm.write(f"proxy {redact(proxy)}: dropped after {self.max_failures} failures ({len(self.proxies)} left)",
                           file=sys.stderr)


def read_proxies(path):
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def harvest_free_proxies(sources, timeout=10):
    """Proxies from public lists of `host:port` or `scheme://host:port` lines; a list that fails is skipped."""
    found = []
    for url, scheme in sources:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "Mozilla/5.0"}), timeout=timeout) as r:
                text = r.read().decode("utf-8", "replace")
        except OSError as e:
            print(f"{redact(url)}: {redact(getattr(e, 'reason', e))}", file=sys.stderr)
            continue
        for line in text.split():
            proxy = line if "://" in line else f"{scheme}://{line}"
            if re.fullmatch(r"(https?|socks4|socks5)://[^\s/]+:\d+", proxy) and proxy not in found:
                found.append(proxy)
    return found


def find_ffmpeg():
    if shutil.which("ffmpeg"):
        return shutil.which("ffmpeg")
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def find_deno():
    """The deno binary of the PyPI `deno` package (yt-dlp's JavaScript runtime for YouTube), else PATH."""
    try:
        import deno

        return deno.find_deno_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("deno")


def duration_seconds(path):
    import av

    with av.open(str(path)) as container:
        if container.duration is not None:
            return container.duration / 1_000_000
        return max((float(s.duration * s.time_base) for s in container.streams if s.duration), default=None)


def trim(path, seconds, ffmpeg):
    """Keep the first `seconds` of a media file: `ffmpeg -t N -c copy` into a temp file, then rename."""
    path = Path(path)
    length = duration_seconds(path)
    if length is not None and length <= seconds:
        return
    tmp = path.with_name(f"{path.stem}.trimming{path.suffix}")
    command = [ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(path), "-t", str(seconds), "-map", "0", "-c", "copy", str(tmp)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg trim failed: {result.stderr.strip().splitlines()[-1:]}")
    os.replace(tmp, path)


def make_trim_postprocessor(seconds, ffmpeg):
    """A yt-dlp post-processor, so trimming finishes before yt-dlp records the id in the archive."""
    from yt_dlp.postprocessor import PostProcessor

    class Trim(PostProcessor):
        def run(self, info):
            trim(info["filepath"], seconds, ffmpeg)
            return [], info

    return Trim()


class QuietLogger:
    """yt-dlp's messages: errors come back as exceptions, so only warnings are shown, and only with --verbose."""

    def __init__(self, verbose):
        self.verbose = verbose

    def debug(self, message):
        pass

    info = debug
    error = debug

    def warning(self, message):
        if self.verbose:
            tqdm.write(redact(message), file=sys.stderr)


def finished_file(named):
    """The finished file beside `named` with the same stem (never a .part, .ytdl, format or trimming leftover)."""
    stem = Path(named).stem
    for path in sorted(Path(named).parent.glob(f"{glob_escape(stem)}.*")):
        rest = path.name[len(stem) + 1:]
        if "." not in rest and rest not in ("part", "ytdl", "temp"):
            return path
    return None


def glob_escape(text):
    return re.sub(r"([*?[])", r"[\1]", text)


class Downloader:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.ffmpeg = find_ffmpeg()
        self.deno = find_deno()
        proxies = [args.proxy] if args.proxy else read_proxies(args.proxies) if args.proxies else []
        if args.free_proxies is not None:
            print("warning: --free_proxies uses public free proxies: strangers who can read and alter the traffic, "
                  "most of them dead; use them only for public videos", file=sys.stderr)
            proxies += harvest_free_proxies([(u, "http") for u in args.free_proxies] or FREE_PROXY_LISTS)
            print(f"{len(proxies)} proxies", file=sys.stderr)
        self.pool = ProxyPool(proxies, args.proxy_failures)
        self.used_proxies = bool(proxies)

    def params(self, kind, proxy):
        params = {
            "format": self.args.format if kind == "video" else "ba/b",
            "outtmpl": {"default": str(self.out / kind / "%(id)s.%(ext)s")},
            "download_archive": str(self.out / ("archive.txt" if kind == "video" else "archive_audio.txt")),
            "ffmpeg_location": self.ffmpeg,
            "logger": QuietLogger(self.args.verbose),
            "noprogress": True,
            "noplaylist": True,
            "continuedl": True,
            "retries": 3,
            "fragment_retries": 3,
            "socket_timeout": self.args.timeout,
        }
        if self.deno:
            params["js_runtimes"] = {"deno": {"path": self.deno}}
        if self.args.cookies:
            params["cookiefile"] = str(self.args.cookies)
        if proxy is not None:
            params["proxy"] = proxy
        return params

    def fetch(self, url, kind, proxy):
        """Download one URL into OUT/<kind>/ (trimmed); return (id, finished file).

        The file is the one yt-dlp reports, never a name made here from the id: yt-dlp rewrites
        characters such as / and ? in file names, and an id must not lead outside OUT/<kind>/.
        """
        import yt_dlp

        folder = self.out / kind
        with yt_dlp.YoutubeDL(self.params(kind, proxy)) as ydl:
            if self.args.max_seconds:
                ydl.add_post_processor(make_trim_postprocessor(self.args.max_seconds, self.ffmpeg), when="post_process")
            info = ydl.extract_info(url, download=True)
            vid = info["id"] if info else guess_id(url)
            downloads = (info or {}).get("requested_downloads")
            if downloads:
                path = Path(downloads[-1]["filepath"])
            else:  # already in the archive (a run killed before it wrote status.csv): the file yt-dlp named then
                path = finished_file(ydl.prepare_filename({"id": vid, "ext": "part"}))
        if path is None or not path.is_file():
            raise RuntimeError(f"yt-dlp finished but left no file for {vid} in {folder}")
        if not path.resolve().is_relative_to(folder.resolve()):
            raise RuntimeError(f"yt-dlp wrote {path}, outside {folder}")
        return vid, path

    def run_one(self, url):
        """(id, url, status, message, attempts) after up to --retries attempts."""
        vid, status, message = guess_id(url), "other", ""
        for attempt in range(1, self.args.retries + 1):
            proxy = self.pool.next()
            if self.used_proxies and proxy is None:
                return vid, url, "network_error", "no working proxy left", attempt - 1
            try:
                files = []
                for kind in ("video", "audio") if self.args.audio else ("video",):
                    vid, path = self.fetch(url, kind, proxy)
                    files.append(path.resolve().relative_to(self.out.resolve()).as_posix())
                return vid, url, "ok", " ".join(files), attempt
            except Exception as e:  # yt-dlp's DownloadError and anything else: classified, reported, retried
                status, message = classify(e), short_message(e)
            if status in DATA_STATUSES:
                return vid, url, status, message, attempt
            if proxy is not None and status in ("network_error", "bot_check"):
                self.pool.failed(proxy)
            if attempt < self.args.retries:
                time.sleep(min(self.args.backoff * 2 ** (attempt - 1), 60))
        return vid, url, status, message, self.args.retries


def read_status(path):
    if not Path(path).exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["url"]: row for row in csv.DictReader(f)}


def write_status(path, rows):
    """Merge `rows` into OUT/status.csv under a lock (jobs on other slices of the list share the file)."""
    with FileLock(Path(path).parent / ".status.csv.lock"):
        merged = read_status(path)
        merged.update({row["url"]: row for row in rows})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(merged.values())
        write_text(path, buffer.getvalue())


def summary(rows, problems):
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    n = len(rows)
    lines = [f"{n} unique URLs: {counts['ok']} ok ({100 * counts['ok'] / max(n, 1):.1f}% survival)"]
    lines.append(", ".join(f"{counts[s]} {s}" for s in STATUSES[1:] if counts[s]) or "no losses")
    kinds = {k: sum(p[1] == k for p in problems) for k in ("blank", "comment", "duplicate", "malformed")}
    if any(kinds.values()):
        lines.append("skipped lines: " + ", ".join(f"{v} {k}" for k, v in kinds.items() if v))
    return "\n".join(lines)


def main(argv=None):
    from feature_extraction.cli import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--list", required=True, type=Path, help="text file, one URL (or bare YouTube id) per line; "
                        "blank lines, # comments and duplicates are reported and skipped")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder: video/, audio/, status.csv, archive.txt")
    parser.add_argument("--start", type=int, default=0, help="first line of the list to use (0-based)")
    parser.add_argument("--end", type=int, default=None, help="line after the last one to use (default: end of list)")
    proxies = parser.add_mutually_exclusive_group()
    proxies.add_argument("--proxies", type=Path, help="file with one proxy URL per line (scheme://[user:pass@]host:port), "
                         "used in turn; credentials are never printed")
    proxies.add_argument("--proxy", help="a single proxy URL without credentials (a password on the command line "
                         "is visible to every user in ps: put it in a --proxies file)")
    parser.add_argument("--free_proxies", nargs="*", metavar="URL", default=None,
                        help="opt in to harvesting public free proxies (untrusted; a warning is printed) from these "
                        "host:port lists, or from ProxyScrape when no URL is given; added to --proxies/--proxy")
    parser.add_argument("--proxy_failures", type=int, default=3, help="drop a proxy for the run after this many failures")
    parser.add_argument("--cookies", type=Path, help="Netscape cookies.txt passed to yt-dlp (for bot checks)")
    parser.add_argument("--workers", type=int, default=1, help="URLs downloaded at once (more invites bot checks)")
    parser.add_argument("--max_seconds", type=float, default=360,
                        help="keep the first N seconds of each file (ffmpeg -t N -c copy); 0 keeps everything")
    parser.add_argument("--format", default=DEFAULT_FORMAT, help="yt-dlp format selector for the video files")
    parser.add_argument("--audio", action="store_true", help="also download the best audio alone into OUT/audio/")
    parser.add_argument("--retries", type=int, default=3, help="attempts per URL for bot_check, network_error and other")
    parser.add_argument("--backoff", type=float, default=5.0, help="seconds before the 2nd attempt, doubled for each later one")
    parser.add_argument("--timeout", type=float, default=30.0, help="socket timeout in seconds")
    parser.add_argument("--verbose", action="store_true", help="show yt-dlp's warnings")
    args = parser.parse_args(argv)
    if args.proxy and redact(args.proxy) != args.proxy:
        parser.error(f"--proxy {redact(args.proxy)}: credentials on the command line are visible to every user "
                     "(ps, Slurm); put the proxy in a file and pass --proxies FILE")

    urls, problems = read_list(args.list, args.start, args.end)
    for number, kind, text in problems:
        if kind != "blank":
            print(f"{args.list}:{number}: {kind}, skipped: {redact(text)}", file=sys.stderr)
    downloader = Downloader(args)
    if downloader.deno is None:
        print("warning: no JavaScript runtime (pip install deno): YouTube downloads may fail or miss formats", file=sys.stderr)
    own_ids = {guess_id(url) for url in urls}  # other jobs may be trimming their own ids in the same folder
    for folder in ("video", "audio"):
        for leftover in (args.out / folder).glob("*.trimming.*"):
            if leftover.name.rsplit(".trimming.", 1)[0] in own_ids:
                leftover.unlink()
    (args.out / "video").mkdir(parents=True, exist_ok=True)

    status_csv = args.out / "status.csv"
    previous = read_status(status_csv)
    rows, todo = {}, []
    for url in urls:  # finished earlier: ok with its file still there, or gone for good
        row = previous.get(url)
        done = row and (row["status"] in DATA_STATUSES or row["status"] == "ok"
                        and all((args.out / f).exists() for f in row["message"].split()))
        if done and (not args.audio or row["status"] != "ok" or "audio/" in row["message"]):
            rows[url] = row
        else:
            todo.append(url)

    last_write = time.monotonic()
    with ThreadPoolExecutor(max(1, args.workers)) as pool, tqdm(total=len(urls), initial=len(rows), unit="url") as bar:
        futures = [pool.submit(downloader.run_one, url) for url in todo]
        for future in as_completed(futures):
            row = dict(zip(COLUMNS, future.result()))
            rows[row["url"]] = row
            if row["status"] != "ok":
                tqdm.write(f"{row['id']}: {row['status']}: {row['message']}", file=sys.stderr)
            bar.update()
            if time.monotonic() - last_write > 5:
                write_status(status_csv, list(rows.values()))
                last_write = time.monotonic()
    ordered = [rows[url] for url in urls]
    write_status(status_csv, ordered)

    print(summary(ordered, problems))
    failed = sum(r["status"] in FAILURE_STATUSES for r in ordered) + sum(p[1] == "malformed" for p in problems)
    if failed:
        print(f"{failed} failed, rerun to retry", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
