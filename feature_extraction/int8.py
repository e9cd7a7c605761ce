"""--precision int8 on the CPU: ResNet and VGGish as chains of oneDNN's int8 operators.

Each convolution and linear layer runs as torch.ops.onednn.qconv2d_pointwise / qlinear_pointwise, the
operators that torch.compile's x86 int8 lowering emits (torch.ao.quantization, which torch 2.14 deprecates, is
not used, and nothing is compiled): int8 weights, symmetric per output channel; uint8 activations, one scale per
tensor; ReLU and ResNet's residual sum fused into the convolution, whose output comes out already quantised for
the next layer. The chain is what makes int8 fast: quantising each layer's float input on every call made
ResNet-101 slower than bfloat16. The first convolution (3 or 1 input channels) and ResNet's max-pool run in
bfloat16 before the chain; the last pool (ResNet) or linear layer (VGGish) returns float32.

Activation ranges are calibrated once per checkpoint on a fixed synthetic set (`calibration_images`,
`calibration_examples`: seeded pictures and sounds with the 1/f spectrum of natural ones, nothing to
download), widened by MARGIN so that real inputs louder or brighter than the set are not clipped, and kept
beside the checkpoint (`<checkpoint>.int8.json`, with the checkpoint's sha256) for the next process.
The accuracy bar is tested in tests/test_precision.py on the test clips; the ranges were not checked against
the official weights on real video here (none can be downloaded), so `--precision auto` does not pick int8.
"""
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from feature_extraction.atomic import write_json
from feature_extraction.inference import SharedBatches, fold_batchnorm, release_freed_memory

MARGIN = 2.0  # ranges = calibrated ranges x MARGIN: cost on the test clips < 1e-4 of cosine
CALIBRATION = "1/f-noise-v1"  # changes when the calibration sets do; a cached file of another version is redone
ops = torch.ops.onednn


def quantise(x, scale, zero_point):
    """float tensor -> uint8 with that scale and zero point (its memory format kept)."""
    return (x.float() * (1.0 / scale)).round_().add_(zero_point).clamp_(0, 255).to(torch.uint8)


def uint8_params(lo, hi):
    """(scale, zero point) of the uint8 grid covering [lo, hi] (always including 0) widened by MARGIN."""
    lo, hi = min(lo, 0.0) * MARGIN, max(hi, 1e-6) * MARGIN
    scale = (hi - lo) / 255.0
    return scale, int(round(-lo / scale))


def int8_weight(weight):
    """(int8 weight, float32 per-output-channel scales): symmetric, 127 = the channel's largest |w|."""
    w = weight.detach().float()
    scales = (w.flatten(1).abs().amax(1) / 127.0).clamp(min=1e-12)
    return torch.round_(w / scales.view((-1,) + (1,) * (w.dim() - 1))).to(torch.int8), scales


class Conv:
    """A convolution from uint8 input (x_q = (scale, zero point)) to uint8 output (out_q), ReLU fused or not.
    oneDNN reorders the weights for each input shape once (prepack), so the batch sizes seen are cached."""

    def __init__(self, conv, x_q, out_q, relu):
        self.weight, self.scales = int8_weight(conv.weight)
        self.weight = self.weight.contiguous(memory_format=torch.channels_last)
        self.zero_points = torch.zeros(len(self.scales), dtype=torch.int64)
        self.bias = None if conv.bias is None else conv.bias.detach().float()
        self.geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        self.x_q, self.out_q, self.unary = x_q, out_q, "relu" if relu else "none"
        self.packed = {}

    def _packed(self, shape):
        if shape not in self.packed:
            self.packed[shape] = ops.qconv_prepack(self.weight, self.scales, *self.x_q, *self.geometry, list(shape))
        return self.packed[shape]

    def __call__(self, x):
        return ops.qconv2d_pointwise(x, *self.x_q, self._packed(tuple(x.shape)), self.scales, self.zero_points,
                                     self.bias, *self.geometry, *self.out_q, None, self.unary, [], "")

    def plus(self, x, other, other_q):
        """relu(conv(x) + other), `other` a uint8 tensor of the output's shape (overwritten with the result)."""
        return ops.qconv2d_pointwise.binary(x, *self.x_q, self._packed(tuple(x.shape)), self.scales,
                                            self.zero_points, other, self.bias, *self.geometry, *self.out_q, None,
                                            *other_q, "sum", 1.0, "relu", [], "")


class Linear:
    """A linear layer from uint8 input to uint8 output (out_q) or, with out_q None, float32; ReLU fused."""

    def __init__(self, linear, x_q, out_q):
        weight, self.scales = int8_weight(linear.weight)
        self.packed = ops.qlinear_prepack(weight, None)
        self.zero_points = torch.zeros(len(self.scales), dtype=torch.int64)
        self.bias = None if linear.bias is None else linear.bias.detach().float()
        self.x_q, self.out = x_q, (*out_q, None) if out_q else (1.0, 0, torch.float32)

    def __call__(self, x):
        return ops.qlinear_pointwise(x, *self.x_q, self.packed, self.scales, self.zero_points, self.bias,
                                     *self.out, "relu", [None], "")


def max_pool_2x2(x):
    """2x2/2 max-pool of a channels_last uint8 (N, C, H, W) tensor, as the maximum of its four strided quarters
    (torch's max_pool2d refuses uint8 in channels_last). Exact: max commutes with the monotone quantisation."""
    nhwc = x.permute(0, 2, 3, 1)
    h, w = nhwc.shape[1] // 2 * 2, nhwc.shape[2] // 2 * 2
    top = torch.maximum(nhwc[:, 0:h:2, 0:w:2], nhwc[:, 0:h:2, 1:w:2])
    bottom = torch.maximum(nhwc[:, 1:h:2, 0:w:2], nhwc[:, 1:h:2, 1:w:2])
    return torch.maximum(top, bottom).permute(0, 3, 1, 2)


def record_ranges(model, modules, inputs):
    """{name: (min, max)} of the outputs of `modules` ({name: module}) over one float32 pass of `inputs`."""
    seen, hooks = {}, []
    for name, module in modules.items():
        def hook(_, __, out, name=name):
            seen[name] = (float(out.min()), float(out.max()))
        hooks.append(module.register_forward_hook(hook))
    with torch.inference_mode():
        model(inputs)
    for h in hooks:
        h.remove()
    return seen


def pink_noise(generator, shape):
    """Noise with a 1/f amplitude spectrum over the last two dimensions, scaled to zero mean, unit std."""
    white = torch.randn(shape, generator=generator)
    fy = torch.fft.fftfreq(shape[-2]).abs()[:, None]
    fx = torch.fft.rfftfreq(shape[-1])[None, :]
    spectrum = torch.fft.rfft2(white) / torch.sqrt(fy**2 + fx**2).clamp(min=1.0 / max(shape[-2:]))
    noise = torch.fft.irfft2(spectrum, s=shape[-2:])
    return (noise - noise.mean(dim=(-2, -1), keepdim=True)) / noise.std(dim=(-2, -1), keepdim=True)


def calibration_images(mean, std, n=16, size=224, seed=0):
    """(n, 3, size, size) normalised pictures: 1/f noise in RGB with correlated channels, at contrasts from
    flat to saturated (pixels clipped to [0, 1], as frames are), then the network's mean / std."""
    g = torch.Generator().manual_seed(seed)
    luma, colour = pink_noise(g, (n, 1, size, size)), pink_noise(g, (n, 3, size, size))
    contrast = torch.linspace(0.05, 0.6, n).view(n, 1, 1, 1)
    pixels = (0.5 + contrast * (luma + 0.3 * colour) + 0.2 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)).clamp(0, 1)
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def calibration_examples(log_mel, n=32, seed=0):
    """(n, 96, 64) log-mel examples of pink-noise sound from silence (-80 dB) to full scale (0 dB)."""
    g = torch.Generator().manual_seed(seed)
    samples = 15600
    levels = 10 ** (torch.linspace(-80, 0, n) / 20)
    sound = pink_noise(g, (n, 1, samples))[:, 0] * levels[:, None] * 0.3
    return torch.from_numpy(np.stack([log_mel(s.numpy().astype(np.float64)) for s in sound])).float()


def cached_ranges(checkpoint, compute):
    """`compute()` ({name: [min, max]}), kept in `<checkpoint>.int8.json` with the checkpoint's sha256 (from its
    `.sha256` file, written when it was downloaded or made) and the calibration version; a stale file is redone."""
    from feature_extraction.weights import sidecar

    checkpoint = Path(checkpoint)
    key = {"checkpoint_sha256": sidecar(checkpoint).read_text().strip(), "calibration": CALIBRATION, "margin": MARGIN}
    cache = checkpoint.with_name(checkpoint.name + ".int8.json")
    try:
        stored = json.loads(cache.read_text())
        if {k: stored.get(k) for k in key} == key:
            return {name: tuple(r) for name, r in stored["ranges"].items()}
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    ranges = compute()
    try:
        write_json(cache, {**key, "ranges": ranges})
    except OSError:  # a read-only cache: calibrate again next time
        pass
    return ranges


class ResNetInt8(nn.Module):
    """ResNet (BatchNorm folded, fc = Identity) in int8: (N, 3, 224, 224) float32 -> (N, 2048) float32."""

    def __init__(self, model, ranges):
        super().__init__()
        q = {name: uint8_params(*r) for name, r in ranges.items()}
        self.stem = nn.Sequential(model.conv1, nn.ReLU(), nn.MaxPool2d(3, 2, 1)).to(torch.bfloat16,
                                                                                   memory_format=torch.channels_last)
        self.stem_q, self.blocks, previous = q["stem"], [], q["stem"]
        for name, block in blocks(model):
            shortcut = None if block.downsample is None else Conv(block.downsample[0], previous, q[f"{name}.down"], False)
            self.blocks.append((Conv(block.conv1, previous, q[f"{name}.conv1"], True),
                                Conv(block.conv2, q[f"{name}.conv1"], q[f"{name}.conv2"], True),
                                Conv(block.conv3, q[f"{name}.conv2"], q[name], True),
                                shortcut, previous if shortcut is None else q[f"{name}.down"]))
            previous = q[name]
        self.out_q = previous

    def forward(self, x):
        x = quantise(self.stem(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)), *self.stem_q)
        for conv1, conv2, conv3, down, shortcut_q in self.blocks:
            shortcut = x if down is None else down(x)
            x = conv3.plus(conv2(conv1(x)), shortcut, shortcut_q)
        scale, zero_point = self.out_q
        return (x.float().mean(dim=(2, 3)) - zero_point) * scale


def blocks(model):
    """(name, bottleneck) of a ResNet, in order."""
    return [(f"layer{i}.{j}", b) for i in range(1, 5) for j, b in enumerate(getattr(model, f"layer{i}"))]


def resnet_ranges(model, images):
    """The ranges ResNetInt8 needs, from the folded float32 `model` on `images` (calibration_images)."""
    modules = {"stem": model.maxpool}
    for name, block in blocks(model):
        modules.update({f"{name}.conv1": block.conv1, f"{name}.conv2": block.conv2, name: block})
        if block.downsample is not None:
            modules[f"{name}.down"] = block.downsample
    seen = record_ranges(model, modules, images)
    for name in list(seen):  # conv1 / conv2 are followed by ReLU: their quantised outputs are the ReLU's
        if name.endswith((".conv1", ".conv2")):
            seen[name] = (0.0, max(seen[name][1], 0.0))
    return seen


class VGGishInt8(nn.Module):
    """VGGish in int8: (N, 96, 64) log-mel float32 -> (N, 128) float32 (final ReLU kept)."""

    def __init__(self, model, ranges):
        super().__init__()
        q = {name: uint8_params(*r) for name, r in ranges.items()}
        first, _, *rest = model.features  # the first convolution and its ReLU run in bfloat16
        self.first = nn.Sequential(first, nn.ReLU()).to(torch.bfloat16, memory_format=torch.channels_last)
        self.first_q, previous, self.steps, convs = q["conv0"], q["conv0"], [], 0
        for layer in rest:  # pools, convolutions and their ReLUs (fused into the convolution)
            if isinstance(layer, nn.MaxPool2d):
                self.steps.append(max_pool_2x2)
            elif isinstance(layer, nn.Conv2d):
                convs += 1
                self.steps.append(Conv(layer, previous, q[f"conv{convs}"], True))
                previous = q[f"conv{convs}"]
        linears = [m for m in model.embeddings if isinstance(m, nn.Linear)]
        self.linears = []
        for k, linear in enumerate(linears):
            out_q = q[f"linear{k}"] if k < len(linears) - 1 else None  # the last returns float32
            self.linears.append(Linear(linear, previous, out_q))
            previous = out_q

    def forward(self, x):
        x = quantise(self.first(x[:, None].to(torch.bfloat16).contiguous(memory_format=torch.channels_last)),
                     *self.first_q)
        for step in self.steps:
            x = step(x)
        x = x.permute(0, 2, 3, 1).flatten(1)  # TF's NHWC order, as VGGish.forward
        for linear in self.linears:
            x = linear(x)
        return x


def vggish_ranges(model, examples):
    """The ranges VGGishInt8 needs (the outputs of every ReLU), from `model` on `examples` (calibration_examples)."""
    relus = [m for m in model.features if isinstance(m, nn.ReLU)]
    modules = {f"conv{k}": m for k, m in enumerate(relus)}
    modules.update({f"linear{k}": m for k, m in enumerate(m for m in model.embeddings if isinstance(m, nn.ReLU))})
    return record_ranges(model, modules, examples)


def prepare(model, checkpoint, calibration):
    """A SharedBatches running `model` (an eval-mode ResNet or VGGish loaded from `checkpoint`) in int8 on the CPU:
    BatchNorm folded, ranges from cached_ranges (on the inputs `calibration()` returns, when not cached), then
    ResNetInt8 / VGGishInt8. float32 in and out."""
    model = fold_batchnorm(model.eval())
    resnet = hasattr(model, "layer1")
    ranges = cached_ranges(checkpoint, lambda: (resnet_ranges if resnet else vggish_ranges)(model, calibration()))
    network = (ResNetInt8 if resnet else VGGishInt8)(model, ranges).eval()
    release_freed_memory()

    def run(x):
        with torch.inference_mode():
            return network(x)
    shared = SharedBatches(run)
    shared.network = network
    return shared
