"""Wav2CLIP audio embeddings in CLIP's image-embedding space (token `wav2clip`).

Our own port of descriptinc/lyrebird-wav2clip (PyPI wav2clip 0.1.0, MIT), loading its published
Wav2CLIP.pt. Everything below was read from that package's source:

- Front end (its torchaudio `Spectrogram(n_fft=512, hop_length=353)`): 16 kHz mono waveform, STFT with
  n_fft 512, hop 353, a 512-sample periodic Hann window (the checkpoint's `spectrogram.window` buffer),
  centred with reflect padding, power 2 -> (257, 1 + samples // 353); then log(x + 1e-7), then
  (x - mean) / (std + 1e-9) with one mean and one (unbiased) std over the whole batch tensor.
- Network: ResNet-18 (torchvision's BasicBlock layout [2, 2, 2, 2], one input channel: 7x7/2 conv,
  3x3/2 max pool, global average pool) -> 512, then `audio_transform`, an MLP
  Linear(512, 512)-ReLU-Dropout(0.1)-Linear(512, 512). Its output is the one trained against the
  CLIP image embeddings (the `clip_loss_x` cross-projection loss) and what `wav2clip.get_model()`
  returns, so it is comparable with our `clip` rows.

Two outputs per file:
- `wav2clip/<id>.npy` (T, 512): row t embeds the 1 s frame of samples [16000 t, 16000 (t + 1)),
  T = floor(samples / 16000), exactly as `get_model(frame_length=16000, hop_length=16000)` does for one
  track: all T frames are normalised together, so the rows are finished when the file ends.
- `wav2clip_track/<id>.npy` (1, 512): the whole waveform in one pass, as `get_model()` does (the
  package's "clip-level" embedding). It is not the mean of the rows: one spectrogram over the whole
  track, one normalisation and one average pool. It holds the whole track's activations at once
  (see the README for its memory per minute).
"""
import numpy as np
import torch
from torch import nn

from feature_extraction import inference
from feature_extraction.atomic import atomic_path
from feature_extraction.base import Extractor, InputError

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 353
LOG_OFFSET = 1e-7
STD_OFFSET = 1e-9
FRAME_SAMPLES = SAMPLE_RATE  # one row per second
EMBEDDING = 512
ENCODER, TRANSFORM = "audio_encoder.", "audio_transform.sequential."  # prefixes in the published file
WINDOW_KEY = ENCODER + "spectrogram.window"


def normalize(spec):
    """One mean and one std over the whole tensor (all items of the batch), as the package does."""
    return (spec - spec.mean()) / (spec.std() + STD_OFFSET)


class Wav2CLIP(nn.Module):
    """(N, samples) 16 kHz waveforms -> (N, 512) embeddings in CLIP's image space."""

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT))
        self.dtype = torch.float32  # of the encoder and transform: bfloat16 after build()'s inference.for_cpu
        import torchvision  # here, not at import: importing it takes 2-3 s (it imports torch._dynamo)

        self.encoder = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2])
        self.encoder.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.encoder.fc = nn.Identity()  # the package's forward stops at the average pool
        self.transform = nn.Sequential(nn.Linear(EMBEDDING, EMBEDDING), nn.ReLU(), nn.Dropout(0.1),
                                       nn.Linear(EMBEDDING, EMBEDDING))

    def log_spectrogram(self, waveforms):
        """(N, samples) -> (N, 1, 257, 1 + samples // 353) log power spectrogram, not yet normalised."""
        spec = torch.stft(waveforms, N_FFT, HOP, N_FFT, self.window, center=True, pad_mode="reflect",
                          normalized=False, onesided=True, return_complex=True)
        return torch.log(spec.abs().pow(2) + LOG_OFFSET)[:, None]

    def embed(self, spec):
        """Normalised (N, 1, 257, F) float32 spectrograms -> (N, 512) float32, computed in `self.dtype`."""
        return self.transform(self.encoder(inference.channels_last(spec.to(self.dtype)))).float()

    def forward(self, waveforms):
        """The package's utterance mode: one normalisation over the whole batch."""
        return self.embed(normalize(self.log_spectrogram(waveforms)))


def published_state(model):
    """Our state dict under the published names: audio_encoder.* (with spectrogram.window) and
    audio_transform.sequential.* (the keys the package's loader requires)."""
    state = {WINDOW_KEY: model.window}
    state.update({ENCODER + k: v for k, v in model.encoder.state_dict().items()})
    state.update({TRANSFORM + k: v for k, v in model.transform.state_dict().items()})
    return state


def from_published(state, source="checkpoint"):
    """A Wav2CLIP in eval mode from a published-layout state dict (other keys are ignored)."""
    model = Wav2CLIP()
    want = published_state(model)
    missing = [k for k in want if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{source}: not a Wav2CLIP checkpoint, missing {len(missing)} keys: {', '.join(missing[:3])}")
    ours = {"window": state[WINDOW_KEY]}
    ours.update({"encoder." + k[len(ENCODER):]: state[k] for k in want if k.startswith(ENCODER) and k in state
                 and k != WINDOW_KEY})
    ours.update({"transform." + k[len(TRANSFORM):]: state[k] for k in want if k.startswith(TRANSFORM)})
    model.load_state_dict(ours)
    return model.eval()


def load_model(path):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or a pickle holding more than tensors
        raise ValueError(f"{path}: not a Wav2CLIP checkpoint ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a Wav2CLIP checkpoint (a {type(state).__name__}, not a state dict)")
    return from_published(state, path)


def write_random_checkpoint(path, seed):
    """Seeded random Wav2CLIP in the published layout: a torch.save'd flat dict of float32 tensors,
    audio_encoder.* (ResNet-18 with num_batches_tracked, spectrogram.window = periodic Hann) and
    audio_transform.sequential.{0,3}.*. BatchNorm gets running_var 1 and random gains and biases,
    so the output is not degenerate.
    """
    torch.manual_seed(seed)
    model = Wav2CLIP()
    with torch.no_grad():
        for module in model.encoder.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.fill_(1.0)
    with atomic_path(path) as tmp:
        torch.save({k: v.clone() for k, v in published_state(model).items()}, tmp)
    return path


class Wav2CLIPExtractor(Extractor):
    token = "wav2clip"
    wants_frames = False
    audio_rate = SAMPLE_RATE
    needs_audio = True

    def __init__(self, load_model, provenance, batch_size=16, device="cpu", precision="float32"):
        """`load_model()` returns the Wav2CLIP module; load() calls it once, so that building is cheap."""
        self.load_model, self.model, self.provenance = load_model, None, provenance
        self.batch_size, self.device, self.precision = max(1, int(batch_size)), device, precision

    def outputs(self):
        # absent precision means float32, as in folders made before the flag
        precision = {"precision": self.precision} if self.precision != "float32" else {}
        rows = {**self.provenance, "options": {"rows": "1 s frames, one normalisation over all frames of the file",
                                               **precision}}
        track = {**self.provenance, "options": {"embedding": "whole waveform in one pass (get_model())", **precision},
                 "rate": None}
        return {"wav2clip": rows, "wav2clip_track": track}

    def files(self, vid):
        return [f"wav2clip/{vid}.npy", f"wav2clip_track/{vid}.npy"]

    def load(self):
        if self.model is None:
            self.model = self.load_model()

    def begin(self, info):
        self.load()
        self.vid = info.vid
        self.samples = []  # every chunk, for the whole-track pass
        self.buffer = np.zeros(0, np.float32)  # audio not yet covered by a whole second
        self.specs = []  # log spectrograms of the whole seconds so far

    def add_audio(self, samples):
        samples = np.asarray(samples, dtype=np.float32)
        self.samples.append(samples)
        self.buffer = np.concatenate([self.buffer, samples])
        seconds = len(self.buffer) // FRAME_SAMPLES
        if seconds:
            frames = torch.from_numpy(self.buffer[: seconds * FRAME_SAMPLES].reshape(seconds, FRAME_SAMPLES))
            with torch.inference_mode():
                self.specs.append(self.model.log_spectrogram(frames.to(self.device)))
            self.buffer = self.buffer[seconds * FRAME_SAMPLES:]

    def end(self, t_video, t_audio):
        specs, samples = self.specs, np.concatenate(self.samples) if self.samples else np.zeros(0, np.float32)
        self.specs, self.samples = [], []
        if t_audio < 1 or not specs:
            raise InputError("less than one second of audio")
        with torch.inference_mode():
            spec = normalize(torch.cat(specs))
            rows = torch.cat([self.model.embed(spec[i:i + self.batch_size]) for i in range(0, len(spec), self.batch_size)])
            track = self.model(torch.from_numpy(samples)[None].to(self.device))
        if len(rows) < t_audio:
            raise InputError(f"wav2clip: {len(rows)} frames for {t_audio} s of audio")
        return {f"wav2clip/{self.vid}.npy": np.ascontiguousarray(rows[:t_audio].float().cpu().numpy()),
                f"wav2clip_track/{self.vid}.npy": np.ascontiguousarray(track.float().cpu().numpy())}


def add_arguments(parser):
    """No flags of its own: --device, --batch_size (1 s frames per call) and --max_seconds apply."""


def build(args):
    from feature_extraction import weights

    path = weights.checkpoint_path("wav2clip", args.weights)
    info = {"model": "wav2clip", **weights.provenance("wav2clip", args.weights), "rate": 1.0}
    cpu = torch.device(args.device).type == "cpu"
    precision = inference.resolve(args.precision, args.device, "wav2clip") if cpu else "float32"  # CUDA: as before

    def load():
        try:
            model = load_model(path).to(args.device)
        except ValueError as e:
            raise weights.WeightsError(str(e)) from None
        if cpu:  # the spectrogram stays float32; the ResNet-18 and the projection run in `precision`
            inference.for_cpu(model.encoder, precision)
            inference.for_cpu(model.transform, precision)
            model.dtype = inference.DTYPES[precision]
        return model

    return Wav2CLIPExtractor(load, info, args.batch_size, args.device, precision)
