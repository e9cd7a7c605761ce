"""VGGish features of music files and of videos' audio tracks: OUT/vggish/<id>.npy, (T, 128) float32.

    python feature_extraction/vggishProcessor.py --audio DIR_OR_LIST --out OUT [--pca] [--weights random]
    python feature_extraction/vggishProcessor.py --audio DIR_OR_LIST --out OUT --features vggish wav2clip

The same pass as `extract.py --features vggish` (one streaming decode, channel mean, resampy
kaiser_best to 16 kHz, one row per second, _feature.json guard, temp-then-rename writes, resume,
`path: reason` for bad inputs and `N failed` at the end); this script only adds the audio file
types to the folders it scans. With --pca the folder is vggish_pca. `--features wav2clip` (alone or
beside vggish, in the same pass) writes OUT/wav2clip/<id>.npy (T, 512) and OUT/wav2clip_track/<id>.npy
(1, 512), the music side of zero-shot retrieval (zeroshot/retrieve.py).
"""
import argparse
import sys
from pathlib import Path

from feature_extraction import extract, pipeline

AUDIO_SUFFIXES = {".mp3", ".m4a", ".webm", ".wav", ".flac", ".ogg", ".opus", ".aac"}


def list_inputs(sources):
    """Folders -> their audio and video files (sorted); list files and single files as extract.py reads them."""
    paths = []
    for source in map(Path, sources):
        if source.is_dir():
            suffixes = AUDIO_SUFFIXES | pipeline.VIDEO_SUFFIXES
            paths += sorted(p for p in source.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith("."))
        else:
            paths += pipeline.list_videos([source])
    return list(dict.fromkeys(paths))


def main(argv=None):
    from feature_extraction.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--audio", nargs="+", required=True,
                   help="audio or video files, folders (their " + ", ".join(sorted(AUDIO_SUFFIXES)) + " and video "
                        "files, sorted) and/or list files (.txt/.lst/.list/.csv: one path per line)")
    p.add_argument("--out", required=True, help="output folder; features go to OUT/vggish (OUT/vggish_pca with --pca)")
    p.add_argument("--features", nargs="+", choices=["vggish", "wav2clip"], default=["vggish"],
                   help="audio features, one decode pass for all: vggish (T, 128) and/or wav2clip (T, 512 rows in "
                        "OUT/wav2clip plus the whole-track (1, 512) in OUT/wav2clip_track) (default: vggish)")
    p.add_argument("--pca", action="store_true",
                   help="apply AudioSet's PCA, clipping and 8-bit quantisation (values 0..255)")
    p.add_argument("--weights", choices=["official", "random"], default="official",
                   help="official checkpoints from $VMR_CACHE (downloaded when missing) or seeded random ones "
                        "from $VMR_CACHE/random/ (tests and demos only)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--batch_size", type=int, default=16, help="0.96 s VGGish examples (or 1 s Wav2CLIP frames) per model call (default 16)")
    p.add_argument("--max_seconds", type=float, default=None,
                   help="use only the first N seconds of each file (default: all of it)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's own choice)")
    p.add_argument("--overwrite", action="store_true", help="redo files whose features exist")
    args = p.parse_args(argv)

    paths = list_inputs(args.audio)
    if not paths:
        raise SystemExit(f"no audio or video files found in {' '.join(args.audio)}")
    # `--flag=value` forms, so that a file name such as "-x8Yq.mp3" is never read as a flag
    forwarded = [*(f"--videos={p}" for p in paths), f"--out={args.out}", "--features", *args.features,
                 f"--weights={args.weights}", f"--device={args.device}", f"--batch_size={args.batch_size}",
                 f"--threads={args.threads}"]
    forwarded += ["--pca"] * args.pca + ["--overwrite"] * args.overwrite
    forwarded += [f"--max_seconds={args.max_seconds}"] if args.max_seconds else []
    return extract.main(forwarded)


if __name__ == "__main__":
    sys.exit(main())
