"""Hear an answer: the query video with the chosen moment of a track laid under it.

The picture stream is copied as it is (no re-encoding, so a preview takes well under a second); the
music is seconds [start, end) of the track, cut at the video's end if the moment is longer, faded in and
out, encoded as AAC. ffmpeg is the system one if on PATH, else the imageio-ffmpeg wheel's.
"""
import subprocess
from pathlib import Path

import av

from feature_extraction.atomic import atomic_path
from feature_extraction.make_sample import ffmpeg_exe

MUXERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}


def preview_name(query, rank, track, start, end, suffix=".mp4"):
    """File name of one preview; names sort by query, then rank (1-based, zero-padded)."""
    safe = lambda name: str(name).replace("/", "_").replace("\\", "_")
    return f"{safe(query)}_rank{rank:03d}_{safe(track)}_{start:g}-{end:g}s{suffix}"


def _duration(path, kind):
    """Seconds of the first `kind` ("video" or "audio") stream of a media file; ValueError naming the
    file when it cannot be read or has no such stream."""
    try:
        with av.open(str(path)) as container:
            streams = getattr(container.streams, kind)
            if not streams:
                raise ValueError(f"{path}: no {kind} stream")
            stream = streams[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return container.duration / av.time_base
    except (av.FFmpegError, OSError) as e:
        raise ValueError(f"{path}: not a readable media file ({type(e).__name__}: {e})") from None


def write_preview(video_path, track_path, start, end, out_path, fade=1.0):
    """Write `out_path` (.mp4, .mov or .mkv): the picture of `video_path` copied, with seconds
    [start, end) of `track_path` (cut at the video's end) as its only sound, faded in and out over `fade`
    seconds (at most half the music). Written atomically. ValueError naming the file on bad input."""
    video_path, track_path, out_path = Path(video_path), Path(track_path), Path(out_path)
    if out_path.suffix.lower() not in MUXERS:
        raise ValueError(f"{out_path}: unsupported suffix (use one of {', '.join(MUXERS)})")
    for path in (video_path, track_path):
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
    if not 0 <= start < end:
        raise ValueError(f"{track_path}: moment [{start}, {end}) is empty or negative")
    track_seconds = _duration(track_path, "audio")
    if start >= track_seconds:
        raise ValueError(f"{track_path}: moment starts at {start} s, after the track's end ({track_seconds:.2f} s)")
    seconds = min(end - start, _duration(video_path, "video"), track_seconds - start)
    fade = min(fade, seconds / 2)
    fades = f"afade=t=in:st=0:d={fade:.3f},afade=t=out:st={seconds - fade:.3f}:d={fade:.3f}"
    with atomic_path(out_path) as tmp:
        command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                   "-i", str(video_path), "-ss", f"{start:.3f}", "-t", f"{seconds:.3f}", "-i", str(track_path),
                   "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-af", fades, "-c:a", "aac",
                   "-f", MUXERS[out_path.suffix.lower()], str(tmp)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise ValueError(f"{video_path} + {track_path}: ffmpeg failed ({last})")
    return out_path
