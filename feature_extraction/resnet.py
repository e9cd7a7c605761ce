"""ResNet-101 (or -50) ImageNet features, one 2048-d row per second (token `resnet`).

The architecture is torchvision's (stride 2 on the 3x3 conv), built with weights=None and loaded
from our cached IMAGENET1K_V1 state dict (resnet101-63fe2227.pth / resnet50-0676ba61.pth), with fc
removed: a row is the post-ReLU global-average-pool vector, as video_features writes it.
Preprocessing is torchvision's ImageClassification preset: short side to 256 (bilinear,
antialiased), center crop 224, ImageNet mean/std. The network runs as inference.prepare makes it
(frozen with oneDNN fusion on CPU; --precision on CUDA).
"""
import torch
from torch import nn

from feature_extraction import inference
from feature_extraction.atomic import atomic_path
from feature_extraction.framewise import FramewiseExtractor, ImagePreprocess, provenance

DEPTHS = (50, 101)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS = ImagePreprocess(256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)


def torchvision_resnet(depth):
    """torchvision's ResNet-`depth`, untrained. torchvision is imported here, not with this module: importing
    it costs 2-3 s (it imports torch._dynamo), which extract.py runs without resnet need not pay."""
    import torchvision

    return getattr(torchvision.models, f"resnet{depth}")(weights=None)


def build_model(state_dict, depth=101):
    """torchvision ResNet-`depth` with `state_dict` loaded (strict) and fc replaced by Identity."""
    model = torchvision_resnet(depth)
    model.load_state_dict(state_dict)
    model.fc = nn.Identity()
    return model.eval()


def load_model(path, depth=101):
    return build_model(torch.load(path, map_location="cpu", weights_only=True), depth)


def write_random_checkpoint(path, seed, depth=101):
    """Seeded random ResNet-`depth` in the official layout (torchvision keys incl. fc and num_batches_tracked).

    Convs keep torchvision's He init; BatchNorm gets running_var 1, small random means and
    biases, and gammas that keep activations near the real network's scale (bn3 ~0.2, so the
    residual sum does not explode over 33 blocks).
    """
    torch.manual_seed(seed)
    model = torchvision_resnet(depth)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                scale = 0.2 if name.endswith("bn3") else 1.0
                module.weight.uniform_(0.5 * scale, 1.5 * scale)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.fill_(1.0)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return path


def add_arguments(parser):
    parser.add_argument("--resnet", type=int, choices=DEPTHS, default=101,
                        help="ResNet depth for the resnet token: 101 (default, what the original project used) "
                        "or 50; output folder resnet101 or resnet50")


def build(args):
    from feature_extraction.weights import checkpoint_path

    depth, precision = args.resnet, args.precision
    inference.check_precision(precision, args.device)
    name = f"resnet{depth}"
    path = checkpoint_path(name, args.weights)
    options = {"preprocess": "resize256-bilinear-antialias/crop224/imagenet-norm", "frame_offset": 0.5}
    if precision != "float32":  # absent means float32, as in folders made before the flag
        options["precision"] = precision
    info = provenance(name, name, args.weights, options)

    def load():
        example = torch.zeros(1, 3, PREPROCESS.crop, PREPROCESS.crop)
        return inference.prepare(load_model(path, depth), example, args.device, precision)

    return FramewiseExtractor("resnet", name, load, PREPROCESS, info, args.batch_size, args.device)
