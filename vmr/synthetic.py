"""Generated paired per-second features: the benchmark both models and the baselines are judged on.

Every pair (a video and its music) follows one latent trajectory z(t) in R^k, sampled at 1 Hz:

    z(t)     = genre centre + static identity offset + walk(t) - mean_t walk
    walk     = a mean-reverting random walk whose step size (the "speed") is constant inside each
               motion segment and changes between segments
    video(t) = relu(A_v z(t) + B_v nuisance + noise),  audio(t) = relu(A_a z(t) + B_a nuisance' + noise)

The nuisance is one draw per video (and one per track), constant over time, so it survives mean pooling.
The motion segments are the video's flow segments: the flow trajectory is the latent speed plus noise,
and a segment's flow rank orders its mean speed (1 = fastest), as flowProcessor's ranks.csv does.

Two regimes (REGIMES): in "meanpool" the static offset carries the pair's identity, so mean-pooled
features suffice; in "trajectory" the static offset is small (pooling finds mostly the genre) and the
identity lives in the time-aligned walk, which pooling removes by construction.
"""
import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REGIMES = {
    "meanpool": dict(static=0.6, walk=0.35),
    "trajectory": dict(static=0.1, walk=1.0),
}


@dataclass
class Settings:
    n: int = 1500
    regime: str = "trajectory"
    video_dim: int = 512
    audio_dim: int = 128
    latent: int = 8  # shared latent dimensions k
    genres: int = 8
    genre_scale: float = 1.5
    static: float = None  # default from REGIMES
    walk: float = None  # default from REGIMES
    reversion: float = 0.9  # walk(t+1) = reversion * walk(t) + step
    nuisance_dims: int = 16
    nuisance: float = 1.0
    noise: float = 8.0  # per-second noise, per feature
    min_len: int = 40
    max_len: int = 120
    segments: tuple = (4, 9)  # motion segments per video, inclusive
    min_segment: int = 5
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}; one of {sorted(REGIMES)}")
        for key, value in REGIMES[self.regime].items():
            if getattr(self, key) is None:
                setattr(self, key, value)


@dataclass
class Pair:
    id: str
    video: np.ndarray  # (T, Dv) float32
    audio: np.ndarray  # (T, Da) float32
    boundaries: list  # flow segments in seconds, with 0 and T
    ranks: list  # flow rank of each segment, 1 = most motion
    genre: int


def cut_points(rng, length, n_segments, min_segment):
    """Sorted boundaries [0, ..., length] of n_segments segments of at least min_segment seconds."""
    n_segments = max(1, min(n_segments, length // min_segment))
    slack = length - n_segments * min_segment
    extra = np.sort(rng.integers(0, slack + 1, size=n_segments - 1))
    inner = [min_segment * (i + 1) + int(e) for i, e in enumerate(extra)]
    return [0, *inner, length]


def generate(s: Settings):
    """A list of Pairs; the same Settings always give the same pairs."""
    rng = np.random.default_rng(s.seed)
    a_v = rng.normal(size=(s.latent, s.video_dim)) / np.sqrt(s.latent)
    a_a = rng.normal(size=(s.latent, s.audio_dim)) / np.sqrt(s.latent)
    b_v = rng.normal(size=(s.nuisance_dims, s.video_dim)) / np.sqrt(s.nuisance_dims)
    b_a = rng.normal(size=(s.nuisance_dims, s.audio_dim)) / np.sqrt(s.nuisance_dims)
    centres = rng.normal(size=(s.genres, s.latent)) * s.genre_scale
    pairs = []
    for i in range(s.n):
        length = int(rng.integers(s.min_len, s.max_len + 1))
        boundaries = cut_points(rng, length, int(rng.integers(s.segments[0], s.segments[1] + 1)), s.min_segment)
        speeds = np.exp(rng.uniform(np.log(0.1), np.log(1.0), size=len(boundaries) - 1))
        speed = np.repeat(speeds, np.diff(boundaries))
        walk = np.zeros((length, s.latent))
        for t in range(1, length):
            walk[t] = s.reversion * walk[t - 1] + speed[t] * rng.normal(size=s.latent)
        walk -= walk.mean(0)
        genre = int(rng.integers(s.genres))
        z = centres[genre] + s.static * rng.normal(size=s.latent) + s.walk * walk
        video = z @ a_v + s.nuisance * rng.normal(size=s.nuisance_dims) @ b_v + s.noise * rng.normal(size=(length, s.video_dim))
        audio = z @ a_a + s.nuisance * rng.normal(size=s.nuisance_dims) @ b_a + s.noise * rng.normal(size=(length, s.audio_dim))
        flow = np.array([speed[(b0 + b1) // 2] for b0, b1 in zip(boundaries[:-1], boundaries[1:])])
        flow = flow + 0.02 * rng.normal(size=len(flow))
        ranks = (np.argsort(np.argsort(-flow)) + 1).tolist()
        pairs.append(Pair(f"pair{i:05d}", np.maximum(video, 0).astype(np.float32), np.maximum(audio, 0).astype(np.float32),
                          boundaries, ranks, genre))
    return pairs


def write_dataset(root, pairs, n_test, settings=None):
    """DATA/video/<id>.npy, DATA/audio/<id>.npy, train.csv / test.csv (the last n_test pairs are the
    test split), flow/ranks.csv, and provenance (_feature.json per folder) naming the generator."""
    from feature_extraction.atomic import save_npy, write_json, write_text

    root = Path(root)
    meta = {"model": "synthetic", "weights": "generated", "options": vars(settings) if settings else {}}
    for kind, attr in (("video", "video"), ("audio", "audio")):
        for p in pairs:
            save_npy(root / kind / f"{p.id}.npy", getattr(p, attr))
        write_json(root / kind / "_feature.json", {**meta, "model": f"synthetic-{kind}"})
    ids = [p.id for p in pairs]
    write_text(root / "train.csv", "ID\n" + "".join(f"{v}\n" for v in ids[: len(ids) - n_test]))
    write_text(root / "test.csv", "ID\n" + "".join(f"{v}\n" for v in ids[len(ids) - n_test:]))
    rows = ["vid,ranks,segments"] + [f"{p.id},\"{' '.join(map(str, p.ranks))}\",\"{' '.join(map(str, p.boundaries))}\"" for p in pairs]
    write_text(root / "flow" / "ranks.csv", "\n".join(rows) + "\n")
    return root


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="data folder to write (video/, audio/, train.csv, test.csv, flow/ranks.csv)")
    p.add_argument("--regime", choices=sorted(REGIMES), default="trajectory", help="where the pair's identity lives (default trajectory)")
    p.add_argument("--n", type=int, default=1500, help="pairs (default 1500)")
    p.add_argument("--n_test", type=int, default=500, help="pairs in the test split, the last ones (default 500)")
    p.add_argument("--video_dim", type=int, default=512, help="video feature width (default 512)")
    p.add_argument("--audio_dim", type=int, default=128, help="audio feature width (default 128)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    args = p.parse_args(argv)
    settings = Settings(n=args.n, regime=args.regime, video_dim=args.video_dim, audio_dim=args.audio_dim, seed=args.seed)
    write_dataset(args.out, generate(settings), args.n_test, settings)
    print(f"wrote {args.n} pairs ({args.regime}) to {args.out}")


if __name__ == "__main__":
    main()
