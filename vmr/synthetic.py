"""Generated paired per-second features: the benchmark both models and the baselines are judged on.

Every pair (a video and its music) follows one latent trajectory z(t) in R^k, sampled at 1 Hz:

    z(t)     = genre centre + static identity offset + walk(t) - mean_t walk
    walk     = a mean-reverting random walk whose step size (the "speed") is constant inside each
               motion segment and changes between segments
    video(t) = relu(A_v z(t) + B_v nuisance + noise),  audio(t) = relu(A_a z(t) + B_a nuisance' + noise)

The nuisance is one draw per video (and one per track), constant over time, so it survives mean pooling.
The motion segments are the video's flow segments: the flow trajectory is the latent speed plus noise,
and a segment's flow rank orders its mean speed (1 = fastest), as flowProcessor's ranks.csv does.

Three regimes (REGIMES): in "meanpool" the static offset carries the pair's identity, so mean-pooled
features suffice; in "trajectory" the static offset is small (pooling finds mostly the genre) and the
identity lives in the time-aligned walk, which pooling removes by construction. "library" is the
trajectory regime as a creator's music library (MGSV-EC): each video shows a moment of a longer track
(30-120 s longer, whole-second offset drawn uniformly), several videos (1-4) share a track, and the
video's latent is the track's latent over the moment; moments.csv records where. The test split is the
last n_test videos, so the track at the cut may have videos in both splits (MGSV-EC's splits share tracks).

Families (FAMILIES) change the dynamics, the map and the noise, so that a model's defaults can be chosen
on one family and reported on others: "walk" (the default, described above), "oscillation" (AR(2) noisy
oscillations of 4-20 s periods, a saturating tanh map, more nuisance), "switching" (piecewise-constant
states that switch more often in fast segments, a random 2-layer MLP warp of z per modality before the
relu map, less noise and nuisance: the warp is what makes it hard for linear maps).
"""
import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REGIMES = {
    "meanpool": dict(static=0.6, walk=0.35),
    "trajectory": dict(static=0.1, walk=1.0),
    "library": dict(static=0.1, walk=1.0),
}
FAMILIES = {
    "walk": dict(dynamics="walk", mapping="relu", noise=8.0, nuisance=1.0),
    "oscillation": dict(dynamics="oscillation", mapping="tanh", noise=6.0, nuisance=2.0),
    "switching": dict(dynamics="switching", mapping="mlp", noise=5.0, nuisance=0.5),
}
TANH_SCALE = 4.0  # the tanh map is TANH_SCALE * tanh(x / TANH_SCALE): linear near 0, saturating beyond


@dataclass
class Settings:
    n: int = 1500
    regime: str = "trajectory"
    family: str = "walk"
    video_dim: int = 512
    audio_dim: int = 128
    latent: int = 8  # shared latent dimensions k
    genres: int = 8
    genre_scale: float = 1.5
    static: float = None  # default from REGIMES
    walk: float = None  # default from REGIMES
    reversion: float = 0.9  # walk(t+1) = reversion * walk(t) + step
    nuisance_dims: int = 16
    nuisance: float = None  # default from FAMILIES
    noise: float = None  # per-second noise, per feature; default from FAMILIES
    dynamics: str = None  # default from FAMILIES
    mapping: str = None  # default from FAMILIES
    min_len: int = 40
    max_len: int = 120
    segments: tuple = (4, 9)  # motion segments per video, inclusive
    min_segment: int = 5
    track_extra: tuple = (30, 120)  # library regime: a track is this many seconds longer than its longest video
    videos_per_track: tuple = (1, 4)  # library regime, inclusive
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}; one of {sorted(REGIMES)}")
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; one of {sorted(FAMILIES)}")
        for key, value in (REGIMES[self.regime] | FAMILIES[self.family]).items():
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
    track: str = None  # library regime: the audio's track id (shared by several pairs) and the moment
    start: int = 0  # [start, end) seconds of the track that the video shows
    end: int = None


def cut_points(rng, length, n_segments, min_segment):
    """Sorted boundaries [0, ..., length] of n_segments segments of at least min_segment seconds."""
    n_segments = max(1, min(n_segments, length // min_segment))
    slack = length - n_segments * min_segment
    extra = np.sort(rng.integers(0, slack + 1, size=n_segments - 1))
    inner = [min_segment * (i + 1) + int(e) for i, e in enumerate(extra)]
    return [0, *inner, length]


def _path(rng, s, speed):
    """(T, k) latent dynamics of one sequence under the family's dynamics, centred in time; `speed` (T,)
    is the per-second motion speed."""
    length = len(speed)
    walk = np.zeros((length, s.latent))
    if s.dynamics == "walk":
        for t in range(1, length):
            walk[t] = s.reversion * walk[t - 1] + speed[t] * rng.normal(size=s.latent)
    elif s.dynamics == "oscillation":  # AR(2) with complex roots: noisy oscillations of 4-20 s periods
        periods = rng.uniform(4, 20, size=s.latent)
        a1, a2 = 2 * s.reversion * np.cos(2 * np.pi / periods), -s.reversion ** 2
        for t in range(2, length):
            walk[t] = a1 * walk[t - 1] + a2 * walk[t - 2] + 0.8 * speed[t] * rng.normal(size=s.latent)
    else:  # switching: piecewise constant, a new N(0, I) state with probability 0.1 + 0.3 * speed each second
        state = rng.normal(size=s.latent)
        for t in range(length):
            if rng.random() < 0.1 + 0.3 * speed[t]:
                state = rng.normal(size=s.latent)
            walk[t] = state
    walk -= walk.mean(0)
    return walk


def _features(rng, s, z, a, b, warp):
    """Observed per-second features of latent rows z (T, k): the family's map, a nuisance drawn once per
    sequence, per-second noise. warp = (W1, b1, W2) of the random MLP for mapping "mlp", else None."""
    if warp is not None:
        w1, b1, w2 = warp
        z = np.tanh(z @ w1 + b1) @ w2
    x = z @ a + s.nuisance * rng.normal(size=s.nuisance_dims) @ b + s.noise * rng.normal(size=(len(z), a.shape[1]))
    if s.mapping == "tanh":
        return (TANH_SCALE * np.tanh(x / TANH_SCALE)).astype(np.float32)
    return np.maximum(x, 0).astype(np.float32)


def _flow_ranks(rng, speed, boundaries):
    """Flow ranks of the segments (1 = fastest): the segment's mid-point speed plus a little noise."""
    flow = np.array([speed[(b0 + b1) // 2] for b0, b1 in zip(boundaries[:-1], boundaries[1:])])
    flow = flow + 0.02 * rng.normal(size=len(flow))
    return (np.argsort(np.argsort(-flow)) + 1).tolist()


def _speed(rng, s, length):
    boundaries = cut_points(rng, length, int(rng.integers(s.segments[0], s.segments[1] + 1)), s.min_segment)
    speeds = np.exp(rng.uniform(np.log(0.1), np.log(1.0), size=len(boundaries) - 1))
    return boundaries, np.repeat(speeds, np.diff(boundaries))


def generate(s: Settings):
    """A list of Pairs; the same Settings always give the same pairs. In the library regime several
    consecutive Pairs share one track (the same audio array) and each has its moment in it."""
    rng = np.random.default_rng(s.seed)
    a_v = rng.normal(size=(s.latent, s.video_dim)) / np.sqrt(s.latent)
    a_a = rng.normal(size=(s.latent, s.audio_dim)) / np.sqrt(s.latent)
    b_v = rng.normal(size=(s.nuisance_dims, s.video_dim)) / np.sqrt(s.nuisance_dims)
    b_a = rng.normal(size=(s.nuisance_dims, s.audio_dim)) / np.sqrt(s.nuisance_dims)
    centres = rng.normal(size=(s.genres, s.latent)) * s.genre_scale
    warp_v = warp_a = None
    if s.mapping == "mlp":  # one random 2-layer MLP per modality, so the two see different warps of z
        hidden = 4 * s.latent
        warp_v, warp_a = [(rng.normal(size=(s.latent, hidden)) * 0.5 / np.sqrt(s.latent), rng.normal(size=hidden) * 0.5,
                           rng.normal(size=(hidden, s.latent)) * 3 / np.sqrt(hidden)) for _ in range(2)]
    if s.regime == "library":
        return _library(rng, s, a_v, a_a, b_v, b_a, centres, warp_v, warp_a)
    pairs = []
    for i in range(s.n):
        length = int(rng.integers(s.min_len, s.max_len + 1))
        boundaries, speed = _speed(rng, s, length)
        walk = _path(rng, s, speed)
        genre = int(rng.integers(s.genres))
        z = centres[genre] + s.static * rng.normal(size=s.latent) + s.walk * walk
        video = _features(rng, s, z, a_v, b_v, warp_v)
        audio = _features(rng, s, z, a_a, b_a, warp_a)
        pairs.append(Pair(f"pair{i:05d}", video, audio, boundaries, _flow_ranks(rng, speed, boundaries), genre))
    return pairs


def _library(rng, s, a_v, a_a, b_v, b_a, centres, warp_v, warp_a):
    """Tracks 30-120 s (s.track_extra) longer than their longest video, each shown by 1-4 videos
    (s.videos_per_track) at uniform whole-second offsets; the video's latent is the track's over its moment."""
    pairs = []
    for t in range(s.n):  # at most n tracks: each has at least one video
        if len(pairs) >= s.n:
            break
        lengths = rng.integers(s.min_len, s.max_len + 1, size=int(rng.integers(s.videos_per_track[0], s.videos_per_track[1] + 1)))
        track_len = int(lengths.max() + rng.integers(s.track_extra[0], s.track_extra[1] + 1))
        boundaries, speed = _speed(rng, s, track_len)
        genre = int(rng.integers(s.genres))
        z = centres[genre] + s.static * rng.normal(size=s.latent) + s.walk * _path(rng, s, speed)
        audio = _features(rng, s, z, a_a, b_a, warp_a)
        for length in lengths[: s.n - len(pairs)]:
            start = int(rng.integers(0, track_len - length + 1))
            end = start + int(length)
            cuts = video_cuts(boundaries, start, end, s.min_segment)
            video = _features(rng, s, z[start:end], a_v, b_v, warp_v)
            pairs.append(Pair(f"video{len(pairs):05d}", video, audio, cuts, _flow_ranks(rng, speed[start:end], cuts), genre,
                              track=f"track{t:05d}", start=start, end=end))
    return pairs


def video_cuts(boundaries, start, end, min_segment):
    """The track's motion segments seen through the moment [start, end), in the video's seconds; a piece
    shorter than min_segment at either edge joins its neighbour."""
    cuts = [0, *(b - start for b in boundaries if start < b < end), end - start]
    if len(cuts) > 2 and cuts[1] < min_segment:
        del cuts[1]
    if len(cuts) > 2 and cuts[-1] - cuts[-2] < min_segment:
        del cuts[-2]
    return cuts


def write_dataset(root, pairs, n_test, settings=None):
    """DATA/video/<id>.npy, DATA/audio/<id>.npy, train.csv / test.csv (the last n_test pairs are the
    test split), flow/ranks.csv, and provenance (_feature.json per folder) naming the generator.
    Library pairs (with a track) write DATA/audio/<track>.npy once per track (the whole track) and
    moments.csv (ID,start,end,track: the video's moment in whole seconds of its track)."""
    from feature_extraction.atomic import save_npy, write_json, write_text

    root = Path(root)
    meta = {"model": "synthetic", "weights": "generated", "options": vars(settings) if settings else {}}
    for p in pairs:
        save_npy(root / "video" / f"{p.id}.npy", p.video)
    write_json(root / "video" / "_feature.json", {**meta, "model": "synthetic-video"})
    tracks = {p.track or p.id: p.audio for p in pairs}
    for track, audio in tracks.items():
        save_npy(root / "audio" / f"{track}.npy", audio)
    write_json(root / "audio" / "_feature.json", {**meta, "model": "synthetic-audio"})
    ids = [p.id for p in pairs]
    write_text(root / "train.csv", "ID\n" + "".join(f"{v}\n" for v in ids[: len(ids) - n_test]))
    write_text(root / "test.csv", "ID\n" + "".join(f"{v}\n" for v in ids[len(ids) - n_test:]))
    rows = ["vid,ranks,segments"] + [f"{p.id},\"{' '.join(map(str, p.ranks))}\",\"{' '.join(map(str, p.boundaries))}\"" for p in pairs]
    write_text(root / "flow" / "ranks.csv", "\n".join(rows) + "\n")
    if any(p.track for p in pairs):
        write_text(root / "moments.csv", "ID,start,end,track\n" + "".join(f"{p.id},{p.start},{p.end},{p.track}\n" for p in pairs))
    return root


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True,
                   help="data folder to write (video/, audio/, train.csv, test.csv, flow/ranks.csv; moments.csv in the library regime)")
    p.add_argument("--regime", choices=sorted(REGIMES), default="trajectory",
                   help="where the pair's identity lives; library: moments of longer shared tracks (default trajectory)")
    p.add_argument("--family", choices=sorted(FAMILIES), default="walk",
                   help="latent dynamics, map and noise levels (see above; default walk)")
    p.add_argument("--n", type=int, default=1500, help="pairs, i.e. videos (default 1500)")
    p.add_argument("--n_test", type=int, default=500, help="pairs in the test split, the last ones (default 500)")
    p.add_argument("--video_dim", type=int, default=512, help="video feature width (default 512)")
    p.add_argument("--audio_dim", type=int, default=128, help="audio feature width (default 128)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    args = p.parse_args(argv)
    settings = Settings(n=args.n, regime=args.regime, family=args.family, video_dim=args.video_dim,
                        audio_dim=args.audio_dim, seed=args.seed)
    pairs = generate(settings)
    write_dataset(args.out, pairs, args.n_test, settings)
    tracks = f", {len({p.track for p in pairs})} tracks" if args.regime == "library" else ""
    print(f"wrote {args.n} pairs{tracks} ({args.regime}, {args.family}) to {args.out}")


if __name__ == "__main__":
    main()
