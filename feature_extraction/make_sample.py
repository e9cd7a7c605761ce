"""Deterministic generated clips (ffmpeg lavfi sources, no media in git): tiny ones for tests and a
small sample for the demo whose audio pitch and rhythm follow the picture.

    python feature_extraction/make_sample.py --out demo_out/videos [--n 12 --seconds 20]
"""
import argparse
import subprocess
from pathlib import Path

import numpy as np
from tqdm import tqdm

from feature_extraction.atomic import atomic_path

# suffix -> (muxer, video codec args, audio codec args)
CONTAINERS = {
    ".mp4": ("mp4", ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"], ["-c:a", "aac"]),
    ".mov": ("mov", ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"], ["-c:a", "aac"]),
    ".mkv": ("matroska", ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"], ["-c:a", "flac"]),
    ".webm": ("webm", ["-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", "-deadline", "realtime"], ["-c:a", "libopus"]),
    ".avi": ("avi", ["-c:v", "mpeg4", "-q:v", "3"], ["-c:a", "pcm_s16le"]),
}
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1"]


def ffmpeg_exe():
    import shutil

    import imageio_ffmpeg

    return shutil.which("ffmpeg") or imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args):
    """Run ffmpeg with `args`; raise RuntimeError with the end of its log on failure."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {p.stderr.strip()[-2000:]}")


def rate_text(fps):
    """ffmpeg rate string; 23.976, 29.97 and 59.94 become the exact NTSC rates N*1000/1001."""
    for base in (24, 30, 60):
        if abs(fps - base * 1000 / 1001) < 0.01:
            return f"{base * 1000}/1001"
    return str(fps)


def _encode(path, filters, maps, seconds, audio):
    path = Path(path)
    if path.suffix.lower() not in CONTAINERS:
        raise ValueError(f"{path}: unsupported suffix (use one of {', '.join(CONTAINERS)})")
    muxer, vcodec, acodec = CONTAINERS[path.suffix.lower()]
    with atomic_path(path) as tmp:
        run_ffmpeg(["-filter_complex", filters, *maps, *vcodec, *(acodec if audio else []), "-t", seconds,
                    *BITEXACT, "-threads", "1", "-f", muxer, tmp])
    return path


def make_clip(path, seconds=3.0, width=64, height=48, fps=25, audio=True, sample_rate=44100, channels=2, seed=0,
              motion=None, counter=False):
    """Write a deterministic test clip; container and codecs follow the suffix (mp4, mov, mkv, webm, avi).

    Picture: a flat seeded colour with a white square that stays still, or moves (bouncing
    horizontally) only during the `motion` intervals [(start_s, end_s), ...]. With `counter`, frame n
    is instead a flat grey of luma 16 + 2 * (n mod 110), so a test can tell which frame it got.
    Audio: channel c is a sine of a seeded base frequency times (1 + c / 4), amplitude 0.3.
    """
    rng = np.random.default_rng(seed)
    r, g, b = rng.integers(40, 200, 3)
    side = max(4, min(width, height) // 4)
    moved = "+".join(f"clip(t-{a},0,{e - a})" for a, e in (motion or [])) or "0"
    span = width - side
    x = f"abs(mod(({moved})*{width},{2 * span})-{span})"
    video = f"color=c=0x{r:02x}{g:02x}{b:02x}:s={width}x{height}:r={rate_text(fps)}:d={seconds},format=yuv420p"
    if counter:
        video += ",geq=lum='16+2*mod(N,110)':cb=128:cr=128[v]"
    else:  # overlay re-evaluates x per frame (drawbox's x=f(t) stays at its first value)
        square = f"color=c=white:s={side}x{side}:r={rate_text(fps)}:d={seconds},format=yuv420p"
        video += f"[bg];{square}[sq];[bg][sq]overlay=x='{x}':y={(height - side) // 2}:eval=frame:shortest=1[v]"
    filters = video
    maps = ["-map", "[v]"]
    if audio:
        base = 200 + 40 * int(rng.integers(0, 10))
        exprs = "|".join(f"0.3*sin(2*PI*{base * (1 + c / 4)}*t)" for c in range(channels))
        filters += f";aevalsrc='{exprs}':s={sample_rate}:c={LAYOUTS[channels]}:d={seconds}[a]"
        maps += ["-map", "[a]"]
    return _encode(path, filters, maps, seconds, audio)


PALETTE = ["0xd03030", "0xd08030", "0xc8c830", "0x40b040", "0x30b0b0", "0x3050d0", "0x8040c0", "0xd040a0"]
TEMPOS = [1.0, 1.5, 2.0, 3.0]  # beats per second


def make_sample(out_dir, n=12, seconds=20, width=320, height=240, fps=25):
    """Write n demo clips `sample_XX.mp4` of `seconds` s; returns their paths.

    Each clip is a run of 5 s segments, each with a seeded (colour, tempo): the picture is that
    colour with a grid whose density follows the colour and a square bouncing at the tempo; the
    audio is a plucked tone whose pitch follows the colour (220 Hz * 2^(k/4)) and whose plucks
    follow the tempo. A retrieval model can learn the pairing from frame and VGGish features.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in tqdm(range(n), unit="clip", desc="sample"):
        rng = np.random.default_rng(1000 + i)
        lengths = [5.0] * int(seconds // 5) + ([seconds % 5] if seconds % 5 else [])
        parts, labels = [], []
        side = height // 6
        for k, length in enumerate(lengths):
            colour, tempo = int(rng.integers(len(PALETTE))), TEMPOS[int(rng.integers(len(TEMPOS)))]
            span = width - side
            x = f"abs(mod(t*{tempo}*{2 * span},{2 * span})-{span})"
            parts.append(
                f"color=c={PALETTE[colour]}:s={width}x{height}:r={fps}:d={length},format=yuv420p,"
                f"drawgrid=w={width // (2 + colour)}:h={height // (2 + colour)}:t=2:c=white@0.6[bg{k}];"
                f"color=c=black:s={side}x{side}:r={fps}:d={length},format=yuv420p[sq{k}];"
                f"[bg{k}][sq{k}]overlay=x='{x}':y={(height - side) // 2}:eval=frame:shortest=1[v{k}]"
            )
            pitch = 220 * 2 ** (colour / 4)
            tone = f"(sin(2*PI*{pitch}*t)+0.5*sin(4*PI*{pitch}*t))*exp(-5*mod(t*{tempo},1))*0.4"
            parts.append(f"aevalsrc='{tone}|{tone}':s=44100:c=stereo:d={length}[a{k}]")
            labels.append(f"[v{k}][a{k}]")
        filters = ";".join(parts) + ";" + "".join(labels) + f"concat=n={len(lengths)}:v=1:a=1[v][a]"
        path = out_dir / f"sample_{i:02d}.mp4"
        paths.append(_encode(path, filters, ["-map", "[v]", "-map", "[a]"], seconds, True))
    return paths


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the clips (created)")
    p.add_argument("--n", type=int, default=12, help="number of clips (default 12)")
    p.add_argument("--seconds", type=float, default=20, help="length of each clip in seconds (default 20)")
    p.add_argument("--width", type=int, default=320, help="frame width (default 320)")
    p.add_argument("--height", type=int, default=240, help="frame height (default 240)")
    p.add_argument("--fps", type=float, default=25, help="frame rate (default 25)")
    args = p.parse_args()
    paths = make_sample(args.out, args.n, args.seconds, args.width, args.height, args.fps)
    print(f"wrote {len(paths)} clips to {args.out}")


if __name__ == "__main__":
    main()
