"""Dense optical flow between frame pairs: RAFT (torchvision port of the Sintel model), Farneback, TV-L1.

All three return flow in pixels, (N, 2, H, W) float32 with channels (x, y), for N pairs of uint8 RGB
frames. RAFT pads each frame to a multiple of 8 by replication and, as video_features, keeps the
padded size (the I3D centre crop removes the border).
"""
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from feature_extraction import weights
from feature_extraction.inference import SharedBatches

METHODS = ("raft", "farneback", "tvl1")
# cv2.calcOpticalFlowFarneback(prev, next, None, *FARNEBACK): the original project's and AV-Align's parameters.
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)  # pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags


def farneback(prev_gray, next_gray):
    """(H, W, 2) float32 flow between two uint8 gray frames."""
    return cv2.calcOpticalFlowFarneback(prev_gray, next_gray, None, *FARNEBACK)


def mean_magnitude(flow):
    """Mean over pixels of sqrt(dx^2 + dy^2) of an (H, W, 2) flow."""
    return float(np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2).mean())


def load_raft(path, device="cpu"):
    """torchvision's RAFT-large with a state dict in torchvision's key format (raft_large_C_T_SKHT_V1)."""
    from torchvision.models.optical_flow import raft_large

    model = raft_large(weights=None, progress=False)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().to(device)


def write_random_raft(path, seed):
    """Seeded random RAFT-large weights with torchvision's keys, shapes and dtypes (default init, BN var 1)."""
    from torchvision.models.optical_flow import raft_large

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = raft_large(weights=None, progress=False)
    torch.save(model.state_dict(), path)
    return path


def pad_to_8(x):
    """Replicate-pad (N, C, H, W) to multiples of 8, split evenly (video_features' InputPadder, sintel mode)."""
    ph, pw = -x.shape[2] % 8, -x.shape[3] % 8
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], mode="replicate")


class Raft:
    """RAFT on batches of frame pairs. With float16 it runs under CUDA autocast (the correlation volume and
    the update convolutions in half precision); the pairs of videos decoded at once share batches."""

    def __init__(self, model, device, iters=20, dtype=torch.float32):
        self.device, self.iters = torch.device(device), iters
        half = dtype != torch.float32

        def flow(a, b):
            with torch.inference_mode(), torch.autocast(self.device.type, dtype, enabled=half):
                return model(a, b, num_flow_updates=iters)[-1].float()

        self.model = SharedBatches(flow)

    def __call__(self, frames_a, frames_b):
        def prep(frames):
            x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).to(self.device, torch.float32)
            return pad_to_8(x * (2.0 / 255.0) - 1.0)

        with torch.inference_mode():
            return self.model(prep(frames_a), prep(frames_b)).cpu()


class OpenCVFlow:
    def __init__(self, method):
        self.method = method
        self.tvl1 = cv2.optflow.DualTVL1OpticalFlow_create() if method == "tvl1" else None

    def __call__(self, frames_a, frames_b):
        flows = []
        for a, b in zip(frames_a, frames_b):
            prev, nxt = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
            flows.append(self.tvl1.calc(prev, nxt, None) if self.tvl1 else farneback(prev, nxt))
        return torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).contiguous()


def make_flow(method, device="cpu", weights_kind="official", iters=20, dtype=torch.float32):
    """A callable (frames_a, frames_b) -> (N, 2, H, W) float32 flow in px, for lists of (H, W, 3) uint8 frames.
    `dtype` float16 runs RAFT under autocast (CUDA)."""
    if method == "raft":
        return Raft(load_raft(weights.checkpoint_path("raft_large", weights_kind), device), device, iters, dtype)
    if method in ("farneback", "tvl1"):
        return OpenCVFlow(method)
    raise ValueError(f"unknown flow method {method!r} (one of {', '.join(METHODS)})")
