"""VGGish audio features, one 128-d row per second (token `vggish`).

Our own port of the VGGish front end and network, loading torchvggish's vggish-10086976.pth.
Front end (as torchvggish's mel_features, in float64): 16 kHz mono, 25 ms periodic Hann window,
10 ms hop, |FFT 512|, 64 HTK mel bands 125-7500 Hz, log(mel + 0.01), 96 frames x 64 bands per
example. Network: 6 convs + 3 FC with the final ReLU kept, as the original project and
video_features use it. `--pca` applies AudioSet's PCA + clip to [-2, 2] + 8-bit quantisation
(torchvggish's rounding) from vggish_pca_params-970ea276.pth, into folder vggish_pca.

Time axis: row t is the 0.96 s example starting at t, i.e. samples [16000 t, 16000 t + 15600),
so examples hop by 1.0 s (not 0.96 s as in torchvggish) and rows line up with the per-second
video rows. T = floor(samples / 16000). Rows are computed as the audio streams in.
"""
import numpy as np
import torch
from torch import nn

from feature_extraction import inference, int8
from feature_extraction.atomic import atomic_path
from feature_extraction.base import Extractor, InputError

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
FFT = 512
N_MELS = 64
MEL_MIN_HZ, MEL_MAX_HZ = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96
EXAMPLE_SAMPLES = (EXAMPLE_FRAMES - 1) * HOP + WINDOW  # 15600 samples = 0.975 s
EMBEDDING = 128


def hertz_to_mel(hz):
    return 1127.0 * np.log(1.0 + hz / 700.0)


def mel_matrix():
    """(257, 64) HTK triangular filters, edges evenly spaced in mel, DC bin zeroed."""
    bins_mel = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT // 2 + 1))
    edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), N_MELS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0] = 0.0
    return weights


MEL = mel_matrix()
HANN = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)  # periodic


def log_mel(samples):
    """(N,) waveform at 16 kHz -> (1 + (N - 400) // 160, 64) float64 log-mel frames (no padding)."""
    samples = np.asarray(samples, dtype=np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(samples, WINDOW)[::HOP]
    return np.log(np.abs(np.fft.rfft(frames * HANN, FFT)) @ MEL + LOG_OFFSET)


def examples_per_second(samples):
    """(N,) waveform at 16 kHz -> (floor(N / 16000), 96, 64): row t from samples [16000 t, 16000 t + 15600)."""
    n = len(samples) // SAMPLE_RATE
    return np.stack([log_mel(samples[t * SAMPLE_RATE : t * SAMPLE_RATE + EXAMPLE_SAMPLES]) for t in range(n)]) \
        if n else np.zeros((0, EXAMPLE_FRAMES, N_MELS))


class VGGish(nn.Module):
    """(N, 96, 64) log-mel examples -> (N, 128) embeddings (final ReLU kept). Keys as torchvggish."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING), nn.ReLU(inplace=True),
        )

    def forward(self, x):
        x = self.features(x[:, None])  # (N, 512, 6, 4)
        return self.embeddings(x.permute(0, 2, 3, 1).flatten(1))  # flattened in TF's NHWC order


def load_model(path):
    """VGGish with the state dict at `path` (strict), built on the meta device (no initialisation to overwrite)
    and given the tensors read_checkpoint maps from the file."""
    with torch.device("meta"):
        model = VGGish()
    model.load_state_dict(inference.read_checkpoint(path), assign=True)
    return model.eval()


# The only globals a torch pickle of float numpy arrays needs, under numpy 2's and numpy 1's names (the
# published file was written with numpy 1). Anything else in the file is refused, not run.
NUMPY_ARRAY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.float64)),
                       type(np.dtype(np.float32)),
                       (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]


def load_pca_params(path):
    """(eigen vectors (128, 128), means (128,)) float64 from torchvggish's PCA file, a torch pickle of numpy
    arrays, read by torch's weights-only unpickler with only numpy's array globals allowed."""
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            params = torch.load(path, map_location="cpu", weights_only=True)
        eigen_vectors = np.asarray(params["pca_eigen_vectors"], dtype=np.float64)
        means = np.asarray(params["pca_means"], dtype=np.float64).reshape(-1)
    except Exception as e:  # anything but the two arrays: unpickling refused, missing keys, other types
        raise ValueError(f"{path}: not a VGGish PCA parameter file ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if eigen_vectors.shape != (EMBEDDING, EMBEDDING) or means.shape != (EMBEDDING,):
        raise ValueError(f"{path}: PCA shapes {eigen_vectors.shape} and {means.shape}, expected (128, 128) and (128,)")
    return eigen_vectors, means


class PCA:
    """AudioSet postprocessing: E (x - mu), clip to [-2, 2], quantise to 0..255 (torchvggish rounds)."""

    def __init__(self, path):
        self.eigen_vectors, self.means = load_pca_params(path)

    def project(self, embeddings):
        """(N, 128) -> (N, 128) float64 before clipping and quantisation."""
        return (np.asarray(embeddings, dtype=np.float64) - self.means) @ self.eigen_vectors.T

    def __call__(self, embeddings):
        clipped = np.clip(self.project(embeddings), -2.0, 2.0)
        return np.round((clipped + 2.0) * (255.0 / 4.0)).astype(np.float32)


def write_random_checkpoint(path, seed):
    """Seeded random VGGish state dict with torchvggish's keys and shapes (float32).

    He-scaled weights (std sqrt(2 / fan_in)) and small random biases, so activations keep their
    scale through the ReLUs and the 128-d outputs are mostly non-zero.
    """
    torch.manual_seed(seed)
    model = VGGish()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                module.bias.normal_(0.1, 0.05)
        model.embeddings[4].bias.normal_(0.5, 0.1)  # most final pre-ReLU values positive
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return path


def write_random_pca(path, seed):
    """Seeded random PCA parameters as torchvggish publishes them: a torch pickle of float64 numpy arrays."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((EMBEDDING, EMBEDDING)))
    params = {
        "pca_eigen_vectors": np.ascontiguousarray(rotation * rng.uniform(0.2, 0.6, EMBEDDING)[:, None]),
        "pca_means": rng.uniform(0.0, 1.0, EMBEDDING),
    }
    with atomic_path(path) as tmp:
        torch.save(params, tmp)
    return path


class VGGishExtractor(Extractor):
    token = "vggish"
    wants_frames = False
    audio_rate = SAMPLE_RATE
    needs_audio = True

    def __init__(self, load_model, pca, provenance, batch_size=32, device="cpu"):
        """`load_model()` returns the network; load() calls it once, so that building is cheap."""
        self.load_model, self.model, self.pca, self.provenance = load_model, None, pca, provenance
        self.folder = "vggish_pca" if pca is not None else "vggish"
        self.batch_size, self.device = max(1, int(batch_size)), device

    def outputs(self):
        return {self.folder: self.provenance}

    def files(self, vid):
        return [f"{self.folder}/{vid}.npy"]

    def load(self):
        if self.model is None:
            self.model = self.load_model()

    def begin(self, info):
        self.load()
        self.vid = info.vid
        self.buffer = np.zeros(0, np.float32)  # audio not yet covered by a whole second
        self.pending, self.rows = [], []

    def add_audio(self, samples):
        self.buffer = np.concatenate([self.buffer, np.asarray(samples, dtype=np.float32)])
        seconds = len(self.buffer) // SAMPLE_RATE
        if seconds:
            self.pending.extend(examples_per_second(self.buffer[: seconds * SAMPLE_RATE]))
            self.buffer = self.buffer[seconds * SAMPLE_RATE :]
            if len(self.pending) >= self.batch_size:
                self._run_batch()

    def _run_batch(self):
        if self.pending:
            x = torch.from_numpy(np.stack(self.pending).astype(np.float32)).to(self.device)
            with torch.inference_mode():
                out = self.model(x).float().cpu().numpy()
            self.rows.append(self.pca(out) if self.pca is not None else out)
            self.pending = []

    def end(self, t_video, t_audio):
        self._run_batch()
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, EMBEDDING), np.float32)
        self.rows = []
        if t_audio < 1:
            raise InputError("less than one second of audio")
        if len(rows) < t_audio:
            raise InputError(f"vggish: {len(rows)} examples for {t_audio} s of audio")
        return {f"{self.folder}/{self.vid}.npy": np.ascontiguousarray(rows[:t_audio], dtype=np.float32)}


def int8_calibration():
    """--precision int8's calibration inputs: int8.calibration_examples as VGGish's log-mel examples."""
    return int8.calibration_examples(log_mel)


def add_arguments(parser):
    parser.add_argument("--pca", action="store_true",
                        help="apply AudioSet's PCA, clipping and 8-bit quantisation to VGGish rows "
                        "(values 0..255, folder vggish_pca; the network then runs in float32 whatever "
                        "--precision says: bfloat16 changes a third of the bytes); by default the raw 128-d "
                        "embeddings with the final ReLU, as video_features writes them (folder vggish)")


def build(args):
    from feature_extraction import weights

    pca = args.pca
    precision = inference.resolve(args.precision, args.device, "vggish")
    # On CUDA --precision acts on resnet and clip, as before. The 8-bit PCA output needs float32: bfloat16 rows,
    # within cosine 0.9999 of float32, changed a third of its bytes on the test clips (tests/test_precision.py).
    if pca or torch.device(args.device).type == "cuda":
        precision = "float32"
    path = weights.checkpoint_path("vggish", args.weights)
    info = {"model": "vggish", **weights.provenance("vggish", args.weights),
            "options": {"pca": pca, "example_seconds": 0.96, "hop_seconds": 1.0},
            "rate": 1.0}
    if precision != "float32":  # absent means float32, as in folders made before the flag
        info["options"]["precision"] = precision
    if pca:
        pca_info = weights.provenance("vggish_pca", args.weights)
        info["options"].update(pca_checkpoint=pca_info["checkpoint"], pca_sha256=pca_info["sha256"])
    try:
        postprocess = PCA(weights.checkpoint_path("vggish_pca", args.weights)) if pca else None
    except ValueError as e:
        raise weights.WeightsError(str(e)) from None

    def load():
        if precision == "int8":
            return int8.prepare(load_model(path), path, int8_calibration)
        return inference.prepare(load_model(path), args.device, precision)

    return VGGishExtractor(load, postprocess, info, args.batch_size, args.device)
