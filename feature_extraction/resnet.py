"""ResNet-101 (or -50) ImageNet features, one 2048-d row per second (token `resnet`).

The architecture is torchvision's ResNet (bottleneck blocks with the stride on the 3x3 conv, "v1.5"),
written here with torchvision's module names so that the official IMAGENET1K_V1 state dicts
(resnet101-63fe2227.pth / resnet50-0676ba61.pth) load strictly; fc is removed after loading: a row is
the post-ReLU global-average-pool vector, as video_features writes it. tests/test_backbones.py checks
it against torchvision's resnet101 (not imported here: importing torchvision takes 2-3 s).
Preprocessing is torchvision's ImageClassification preset: short side to 256 (bilinear,
antialiased), center crop 224, ImageNet mean/std. The network runs as inference.prepare makes it
(BatchNorm folded, bfloat16 where --precision auto picks it on the CPU; autocast on CUDA).
"""
import torch
from torch import nn

from feature_extraction import inference, int8
from feature_extraction.atomic import atomic_path
from feature_extraction.framewise import FramewiseExtractor, ImagePreprocess, provenance

DEPTHS = (50, 101)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS = ImagePreprocess(256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)


BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}  # bottleneck blocks per stage


class Bottleneck(nn.Module):
    """1x1 conv to `planes`, 3x3 conv (with the stride), 1x1 conv to 4 x planes, each with BatchNorm; the
    shortcut is a strided 1x1 conv + BatchNorm (`downsample`) where the shape changes."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != 4 * planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.relu(self.bn3(self.conv3(x)) + shortcut)


class ResNet(nn.Module):
    """ResNet-50 / 101: 7x7/2 stem and 3x3/2 max-pool, four stages of bottlenecks (64-512 planes, stride 2
    from the second stage on), global average pool, fc to the 1,000 ImageNet classes."""

    def __init__(self, depth=101):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), BLOCKS[depth])):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(inplanes, planes, 2 if stage > 0 and b == 0 else 1))
                inplanes = 4 * planes
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_model(state_dict, depth=101):
    """ResNet-`depth` with `state_dict` loaded (strict) and fc replaced by Identity. Built on the meta device
    (no initialisation to overwrite) and given the loaded tensors."""
    with torch.device("meta"):
        model = ResNet(depth)
    model.load_state_dict(state_dict, assign=True)
    model.fc = nn.Identity()
    return model.eval()


def load_model(path, depth=101):
    return build_model(inference.read_checkpoint(path), depth)


def write_random_checkpoint(path, seed, depth=101):
    """Seeded random ResNet-`depth` in the official layout (torchvision keys incl. fc and num_batches_tracked).

    Convs get torchvision's He init (normal, fan_out); BatchNorm gets running_var 1, small random means
    and biases, and gammas that keep activations near the real network's scale (bn3 ~0.2, so the
    residual sum does not explode over 33 blocks).
    """
    torch.manual_seed(seed)
    model = ResNet(depth)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                scale = 0.2 if name.endswith("bn3") else 1.0
                module.weight.uniform_(0.5 * scale, 1.5 * scale)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.fill_(1.0)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return path


def int8_calibration():
    """--precision int8's calibration inputs: int8.calibration_images, normalised as ResNet's frames are."""
    return int8.calibration_images(IMAGENET_MEAN, IMAGENET_STD)


def add_arguments(parser):
    parser.add_argument("--resnet", type=int, choices=DEPTHS, default=101,
                        help="ResNet depth for the resnet token: 101 (default, what the original project used) "
                        "or 50; output folder resnet101 or resnet50")


def build(args):
    from feature_extraction.weights import checkpoint_path

    depth, precision = args.resnet, inference.resolve(args.precision, args.device, "resnet")
    name = f"resnet{depth}"
    path = checkpoint_path(name, args.weights)
    options = {"preprocess": "resize256-bilinear-antialias/crop224/imagenet-norm", "frame_offset": 0.5}
    if precision != "float32":  # absent means float32, as in folders made before the flag
        options["precision"] = precision
    info = provenance(name, name, args.weights, options)

    def load():
        if precision == "int8":
            return int8.prepare(load_model(path, depth), path, int8_calibration)
        return inference.prepare(load_model(path, depth), args.device, precision)

    return FramewiseExtractor("resnet", name, load, PREPROCESS, info, args.batch_size, args.device)
