"""Per-second image features, shared by the ResNet and CLIP extractors.

Row t is the model's output for the last frame with pts <= t + 0.5 s (base.py's clock with
frame_offset 0.5), i.e. the frame showing the middle of second [t, t+1). Frames are resized on
the model's device as they arrive and run through the model in batches, so memory holds at most
one batch of 224x224 crops plus the (T, D) rows.
"""
import numpy as np
import torch
import torch.nn.functional as F

from feature_extraction.base import Extractor, InputError


def resize_center_crop(rgb, resize, crop, mode, device="cpu"):
    """(H, W, 3) uint8 -> (3, crop, crop) float32 in 0..255.

    The tensor version of torchvision's PIL `Resize(resize)` (short side to `resize`, long side
    truncated with int()) + `CenterCrop(crop)` (offsets int(round(...))). Like PIL, it resamples
    the width first, then the height, rounding and clipping to 8 bits after each pass; torch's
    antialiased interpolation uses PIL's filters (bicubic a = -0.5).
    """
    h, w = rgb.shape[:2]
    out_h, out_w = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float()
    for size in ((h, out_w), (out_h, out_w)):
        if size != tuple(x.shape[2:]):
            x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True).round_().clamp_(0, 255)
    top, left = int(round((out_h - crop) / 2.0)), int(round((out_w - crop) / 2.0))
    return x[0, :, top : top + crop, left : left + crop]


class ImagePreprocess:
    """uint8 RGB frame -> normalised (3, crop, crop) float32 tensor on `device`."""

    def __init__(self, resize, crop, mode, mean, std):
        self.resize, self.crop, self.mode = resize, crop, mode
        self.mean = torch.tensor(mean).view(3, 1, 1) * 255
        self.std = torch.tensor(std).view(3, 1, 1) * 255

    def __call__(self, rgb, device="cpu"):
        x = resize_center_crop(rgb, self.resize, self.crop, self.mode, device)
        return (x - self.mean.to(device)) / self.std.to(device)


class FramewiseExtractor(Extractor):
    """Runs a model ((N, 3, S, S) float32 -> (N, D)) on one frame per second; writes folder/<vid>.npy.

    `load_model()` returns the model; it is called once, by load(), so that building is cheap.
    """

    frame_rate = 1.0
    frame_offset = 0.5

    def __init__(self, token, folder, load_model, preprocess, provenance, batch_size=16, device="cpu"):
        self.token, self.folder = token, folder
        self.load_model, self.model, self.preprocess = load_model, None, preprocess
        self.provenance = provenance
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
        self.pending, self.rows = [], []

    def add_frame(self, index, frame):
        self.pending.append(self.preprocess(frame.rgb(), self.device))
        if len(self.pending) >= self.batch_size:
            self._run_batch()

    def _run_batch(self):
        if self.pending:
            with torch.inference_mode():
                out = self.model(torch.stack(self.pending))
            self.rows.append(out.float().cpu().numpy())
            self.pending = []

    def end(self, t_video, t_audio):
        self._run_batch()
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, 0), np.float32)
        self.rows = []
        if t_video < 1:
            raise InputError("less than one second of video")
        if len(rows) < t_video:
            raise InputError(f"{self.token}: {len(rows)} sampled frames for {t_video} s of video")
        return {f"{self.folder}/{self.vid}.npy": np.ascontiguousarray(rows[:t_video], dtype=np.float32)}


def provenance(model, checkpoint_name, weights, options):
    """The _feature.json dict: model, checkpoint, sha256, weights, options, rate."""
    from feature_extraction import weights as weights_module

    return {"model": model, **weights_module.provenance(checkpoint_name, weights), "options": options, "rate": 1.0}
