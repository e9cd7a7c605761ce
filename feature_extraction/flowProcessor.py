"""Motion segments and flow ranks per video (the original project's flowProcessor, token `flow`).

Frames sampled at 3 fps, resized to 320x240, grayscale, Farneback flow between consecutive samples,
mean magnitude per sample (sample 0 repeats sample 1): the 3 Hz trajectory flow/<id>.npy. ruptures'
Dynp with the "normal" cost cuts it into segments (Binseg beyond --dynp_max_seconds, since Dynp grows
about cubically), boundaries in whole seconds; segments are ranked by mean flow, rank 1 = most motion.
One flow/<id>.json per video; flow/ranks.csv is derived from them (merge.rebuild_ranks_csv).

Standalone: `python feature_extraction/flowProcessor.py --videos DIR --out OUT` runs extract.py's pass
with only this feature and the flags below (other features: extract.py).
"""
import argparse
import csv
import io
import re
import sys
import warnings

import cv2
import numpy as np

from feature_extraction.base import Extractor, InputError
from feature_extraction.optical_flow import FARNEBACK, farneback, mean_magnitude

RATE = 3  # samples per second
SIZE = (320, 240)  # width, height


def segment_signal(signal, rate, n_bkps=7, min_seconds=10, jump_samples=3, dynp_max_seconds=600):
    """Change points of a 1-D signal sampled at `rate` Hz -> (boundaries in whole seconds, method).

    Boundaries start at 0 and end at floor(N / rate). n_bkps is lowered until ruptures' own rule
    (ruptures.utils.sanity_check) admits it: every segment holds min_seconds and starts on a multiple
    of jump_samples. With 0 breakpoints the signal is one segment ("single"). Interior boundaries are
    change points (sample indices) // rate.
    """
    import ruptures
    from ruptures.utils import sanity_check

    signal = np.asarray(signal, dtype=np.float64)
    n = len(signal)
    end = int(n // rate)
    min_size = max(int(round(min_seconds * rate)), 2)
    while n_bkps > 0 and not sanity_check(n, n_bkps, jump_samples, min_size):
        n_bkps -= 1
    if n_bkps <= 0 or end <= 0:
        return [0, end], "single"
    method = "dynp" if n / rate <= dynp_max_seconds else "binseg"
    algo = ruptures.Dynp if method == "dynp" else ruptures.Binseg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # CostNormal's notice about its small diagonal bias
        bkps = algo(model="normal", min_size=min_size, jump=jump_samples).fit(signal).predict(n_bkps=n_bkps)
    interior = sorted({int(b // rate) for b in bkps[:-1]} - {0, end})
    return [0] + interior + [end], method


def segment_means(signal, rate, boundaries_s):
    signal = np.asarray(signal, dtype=np.float64)
    means = []
    for start, stop in zip(boundaries_s[:-1], boundaries_s[1:]):
        part = signal[int(start * rate):int(stop * rate)]
        means.append(float(part.mean()) if len(part) else 0.0)
    return means


def rank_segments(signal, rate, boundaries_s):
    """-> (ranks, means): rank 1 = the highest mean; ties give the better rank to the earlier segment."""
    means = segment_means(signal, rate, boundaries_s)
    order = np.argsort(-np.asarray(means), kind="stable")
    ranks = [0] * len(means)
    for rank, k in enumerate(order, start=1):
        ranks[int(k)] = rank
    return ranks, means


def feature_trajectory(features, smooth=10):
    """(T, D) per-second features -> (T,) distance between consecutive rows (row 0 repeats row 1),
    smoothed by a centred moving average of `smooth` rows (edges padded with their end values)."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        return np.zeros(len(features))
    d = np.linalg.norm(np.diff(features, axis=0), axis=1)
    d = np.concatenate([d[:1], d])
    if smooth <= 1:
        return d
    padded = np.pad(d, (smooth // 2, smooth - 1 - smooth // 2), mode="edge")
    return np.convolve(padded, np.ones(smooth) / smooth, mode="valid")


def _ints(text):
    """'[2 5 6]', '[0, 20, 33]', '0 20 33' or '[0.0, 20.0]' -> list of ints."""
    return [int(float(x)) for x in re.findall(r"-?\d+(?:\.\d*)?", str(text))]


def read_ranks_csv(path):
    """ranks.csv (ours, or the original project's numpy/list reprs with an `Unnamed: 0` column)
    -> {vid: {"segments": [int seconds], "ranks": [int]}}."""
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            segments, ranks = _ints(row["segments"]), _ints(row["ranks"])
            if len(segments) != len(ranks) + 1:
                raise ValueError(f"{path}: {row['vid']}: {len(segments)} boundaries for {len(ranks)} ranks")
            out[row["vid"]] = {"segments": segments, "ranks": ranks}
    return out


def plot_png(result, signal, rate):
    """PNG bytes: the trajectory with segment boundaries and each segment's rank."""
    from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend (notebooks)

    fig = Figure(figsize=(10, 3.2), dpi=100)
    ax = fig.subplots()
    t = np.arange(len(signal)) / rate
    ax.plot(t, signal, lw=0.8, color="tab:blue")
    seg, ranks, means = result["segments"], result["ranks"], result["means"]
    for b in seg:
        ax.axvline(b, color="tab:red", lw=0.8, ls="--")
    for k, (start, stop) in enumerate(zip(seg[:-1], seg[1:])):
        ax.hlines(means[k], start, stop, color="black", lw=1.5)
        ax.annotate(f"#{ranks[k]}", ((start + stop) / 2, means[k]), ha="center", va="bottom", fontsize=9)
    ax.set(xlabel="seconds", ylabel="mean flow magnitude (px)",
           title=f"{result['vid']}: {len(ranks)} segments ({result['method']}), rank 1 = most motion")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def add_arguments(parser):
    g = parser.add_argument_group("flow (motion segments and ranks)")
    g.add_argument("--n_bkps", type=int, default=7,
                   help="breakpoints per video (7 = 8 segments, as the original); fewer when the video is too short")
    g.add_argument("--min_seconds", type=float, default=10, help="shortest segment in seconds")
    g.add_argument("--jump_samples", type=int, default=3,
                   help="change points are searched every N samples of the 3 Hz trajectory (3 = whole seconds)")
    g.add_argument("--dynp_max_seconds", type=float, default=600,
                   help="videos longer than this use ruptures.Binseg instead of Dynp (Dynp's cost grows about "
                        "cubically: ~80 s and 400 MB for 20 minutes)")
    g.add_argument("--plot", action="store_true", help="also write flow/<id>.png: trajectory, boundaries and ranks")


def build(args):
    return FlowExtractor(args)


class FlowExtractor(Extractor):
    """Token `flow`: flow/<id>.npy (N,) float32 at 3 Hz and flow/<id>.json (+ flow/<id>.png with --plot)."""

    token = "flow"
    frame_rate = RATE

    def __init__(self, args):
        self.n_bkps, self.min_seconds = args.n_bkps, args.min_seconds
        self.jump, self.dynp_max_seconds, self.plot = args.jump_samples, args.dynp_max_seconds, args.plot
        if self.jump % RATE:
            print(f"warning: --jump_samples {self.jump} is not a multiple of {RATE}: change points are floored "
                  "to whole seconds", file=sys.stderr)

    def outputs(self):
        options = {"rate": RATE, "size": list(SIZE), "farneback": list(FARNEBACK), "n_bkps": self.n_bkps,
                   "min_seconds": self.min_seconds, "jump_samples": self.jump, "cost": "normal",
                   "dynp_max_seconds": self.dynp_max_seconds}
        return {"flow": {"model": "farneback mean magnitude + ruptures", "checkpoint": None, "sha256": None,
                         "weights": None, "options": options, "rate": RATE}}

    def files(self, vid):
        return [f"flow/{vid}.npy", f"flow/{vid}.json"] + ([f"flow/{vid}.png"] if self.plot else [])

    def begin(self, info):
        self.vid = info.vid
        self.prev = None
        self.values = []

    def add_frame(self, index, frame):
        gray = cv2.cvtColor(cv2.resize(frame.rgb(), SIZE, interpolation=cv2.INTER_LINEAR), cv2.COLOR_RGB2GRAY)
        if self.prev is not None:
            self.values.append(mean_magnitude(farneback(self.prev, gray)))
        self.prev = gray

    def end(self, t_video, t_audio):
        if not self.values:
            raise InputError("flow: fewer than 2 frames at 3 fps")
        signal = np.asarray(self.values[:1] + self.values, dtype=np.float32)
        from ruptures.exceptions import BadSegmentationParameters

        try:
            boundaries, method = segment_signal(signal, RATE, self.n_bkps, self.min_seconds, self.jump,
                                                self.dynp_max_seconds)
        except BadSegmentationParameters:  # ruptures gives no message: say which settings it refused
            raise InputError(f"flow: ruptures cannot segment {len(signal)} samples with --min_seconds "
                             f"{self.min_seconds} and --jump_samples {self.jump}") from None
        boundaries[-1] = min(boundaries[-1], t_video)
        if boundaries[-1] <= boundaries[-2]:
            raise InputError(f"flow: {t_video} s of video is too short for a segment")
        ranks, means = rank_segments(signal, RATE, boundaries)
        result = {"vid": self.vid, "fps": RATE, "n_samples": len(signal), "method": method,
                  "segments": boundaries, "ranks": ranks, "means": means}
        out = {f"flow/{self.vid}.npy": signal, f"flow/{self.vid}.json": result}
        if self.plot:
            out[f"flow/{self.vid}.png"] = plot_png(result, signal, RATE)
        return out


def build_parser():
    from feature_extraction.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--videos", nargs="+", action="extend", required=True,
                   help="video files, folders and/or list files, as extract.py reads them; may be repeated")
    p.add_argument("--out", required=True, help="output folder; results go to OUT/flow")
    add_arguments(p)
    p.add_argument("--max_seconds", type=float, help="use only the first N seconds of each video (default: all of it)")
    p.add_argument("--threads", type=int, default=0, help="decoder threads; 0 lets the library choose")
    p.add_argument("--overwrite", action="store_true", help="redo videos whose files exist")
    return p


def main(argv=None):
    from feature_extraction import pipeline

    args = build_parser().parse_args(argv)
    forwarded = [*(f"--videos={v}" for v in args.videos), f"--out={args.out}", "--features", "flow",
                 f"--n_bkps={args.n_bkps}", f"--min_seconds={args.min_seconds}", f"--jump_samples={args.jump_samples}",
                 f"--dynp_max_seconds={args.dynp_max_seconds}", f"--threads={args.threads}"]
    forwarded += ["--plot"] * args.plot + ["--overwrite"] * args.overwrite
    forwarded += [f"--max_seconds={args.max_seconds}"] if args.max_seconds else []
    return pipeline.main(forwarded, {"flow": sys.modules[__name__]})


if __name__ == "__main__":
    sys.exit(main())
