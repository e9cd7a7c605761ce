"""CLIP ViT-B/32 image features, one 512-d row per second (token `clip`).

Our own visual encoder (the architecture of openai/CLIP's VisionTransformer: patch conv, class
token, pre-LN transformer with QuickGELU, ln_post(CLS) @ proj) loading OpenAI's TorchScript
archive ViT-B-32.pt. Only the `visual.*` tensors are used, cast to float32; on CUDA --precision
float16/bfloat16 runs it under autocast (OpenAI's loader runs fp16 on CUDA). It runs as
inference.prepare makes it (bfloat16 weights where --precision auto picks them on the CPU). Widths,
layers and patch size come from the tensor shapes (heads = width // 64, as OpenAI's build_model), so
tiny test archives load too.
Rows are not L2-normalised unless --clip_l2 (folder clip_l2).
Preprocessing is CLIP's: short side to 224 (bicubic, antialiased as PIL), center crop, CLIP mean/std.
"""
import io
import math
import pickle
import warnings
import zipfile
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from feature_extraction import inference
from feature_extraction.atomic import atomic_path
from feature_extraction.framewise import FramewiseExtractor, ImagePreprocess, provenance

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """(N, 3, R, R) normalised images -> (N, output_dim) = ln_post(CLS) @ proj."""

    def __init__(self, resolution=224, patch=32, width=768, layers=12, heads=12, output_dim=512):
        super().__init__()
        self.resolution = resolution
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((resolution // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (N, grid*grid, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


def build_visual(state_dict):
    """Our VisionTransformer, in float32, from the `visual.*` tensors of an OpenAI CLIP state dict. Built on the meta
    device (no initialisation to overwrite) and given the loaded tensors."""
    state = {k.removeprefix("visual."): v.float() for k, v in state_dict.items() if k.startswith("visual.")}
    width, _, patch, _ = state["conv1.weight"].shape
    grid = round(math.sqrt(state["positional_embedding"].shape[0] - 1))
    layers = sum(k.endswith(".attn.in_proj_weight") for k in state)
    with torch.device("meta"):
        model = VisionTransformer(patch * grid, patch, width, layers, max(1, width // 64), state["proj"].shape[1])
    model.load_state_dict(state, assign=True)
    return model.eval()


STORAGE_DTYPES = {"HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
                  "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                  "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                  "BoolStorage": torch.bool}


class _ScriptObject:
    """Any TorchScript class in the archive's data.pkl (a module or a helper): keeps the attributes it is built with."""

    def __init__(self, *args):
        pass

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)


class _TensorRecord(NamedTuple):
    """Where one tensor of the archive lies: storage entry data/<key>, its dtype, and the view on it."""
    key: str
    dtype: torch.dtype
    offset: int
    size: tuple
    stride: tuple


class _ArchiveUnpickler(pickle.Unpickler):
    """data.pkl of a TorchScript archive read as plain objects: tensors become _TensorRecords (no bytes read),
    every other class a _ScriptObject. Nothing in the file is executed."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: _TensorRecord(*storage, offset, tuple(size), tuple(stride))
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        return _ScriptObject

    def persistent_load(self, pid):  # ("storage", dtype (via find_class), key, location, numel)
        return pid[2], pid[1]


def _tensor_records(obj, prefix=""):
    """{dotted name: _TensorRecord} of every tensor attribute under the unpickled module `obj`."""
    found = {}
    for name, value in vars(obj).items():
        if isinstance(value, _TensorRecord):
            found[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            found.update(_tensor_records(value, f"{prefix}{name}."))
    return found


def read_state_dict(path, prefix=""):
    """The tensors of an OpenAI CLIP TorchScript archive whose names start with `prefix`, as saved (float16).

    The archive is a zip: data.pkl describes the modules, data/<key> holds each storage's raw bytes. It is read
    directly, not through torch.jit.load (deprecated in torch 2.14): only the storages asked for are read, so the
    visual tower's 88 M parameters load without the text tower's (1.0 s -> 0.2 s for ViT-B-32.pt here)."""
    with zipfile.ZipFile(path) as archive:
        pickled = next(n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
        root = pickled.removesuffix("data.pkl")
        records = {k: r for k, r in _tensor_records(_ArchiveUnpickler(io.BytesIO(archive.read(pickled))).load()).items()
                   if k.startswith(prefix)}
        storages = {r.key: torch.frombuffer(bytearray(archive.read(f"{root}data/{r.key}")), dtype=r.dtype)
                    for r in records.values()}
    return {k: storages[r.key].as_strided(r.size, r.stride, r.offset) for k, r in records.items()}


def load_visual(path):
    return build_visual(read_state_dict(path, "visual."))


class _Archive(nn.Module):
    """The tensors of OpenAI's CLIP module under their official names; scripted for write_random_checkpoint."""

    def __init__(self, resolution, patch, width, layers, embed_dim, text_width, text_layers, vocab_size,
                 context_length):
        super().__init__()
        self.visual = VisionTransformer(resolution, patch, width, layers, max(1, width // 64), embed_dim)
        self.transformer = Transformer(text_width, text_layers, max(1, text_width // 64))
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, text_width))
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.zeros(text_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("input_resolution", torch.tensor(resolution))
        self.register_buffer("context_length", torch.tensor(context_length))
        self.register_buffer("vocab_size", torch.tensor(vocab_size))

    def forward(self, image):
        return self.visual(image)


def write_random_checkpoint(path, seed, resolution=224, patch=32, width=768, layers=12, embed_dim=512,
                            text_width=512, text_layers=12, vocab_size=49408, context_length=77):
    """Seeded random CLIP as a TorchScript archive with OpenAI's names, shapes and fp16 tensors.

    Defaults are ViT-B/32; smaller sizes make tiny archives for tests. Scales follow OpenAI's
    initialisation (width^-0.5 embeddings, depth-scaled projections); LayerNorms get random
    gains and biases so that a swapped or missing LN tensor changes the output.
    """
    torch.manual_seed(seed)
    model = _Archive(resolution, patch, width, layers, embed_dim, text_width, text_layers, vocab_size,
                     context_length)
    with torch.no_grad():
        for name, p in model.named_parameters():
            owner, _, kind = name.rpartition(".")
            module = owner.rpartition(".")[2]
            layers_here = text_layers if name.startswith("transformer.") else layers
            if module.startswith("ln_") and kind == "weight":
                p.uniform_(0.8, 1.2)
            elif kind in ("bias", "in_proj_bias"):
                p.normal_(0, 0.02)
            elif name == "visual.conv1.weight":
                nn.init.kaiming_normal_(p)
            elif kind == "in_proj_weight" or module == "c_fc":
                p.normal_(0, p.shape[1] ** -0.5)
            elif module in ("out_proj", "c_proj"):
                p.normal_(0, p.shape[1] ** -0.5 * (2 * layers_here) ** -0.5)
            elif name.startswith("visual."):  # class_embedding, positional_embedding, proj
                p.normal_(0, width ** -0.5)
            elif name == "text_projection":
                p.normal_(0, text_width ** -0.5)
            elif name in ("token_embedding.weight", "positional_embedding"):
                p.normal_(0, 0.02 if name.startswith("token") else 0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model.half().eval())
    with atomic_path(path) as tmp:
        scripted.save(str(tmp))
    return path


def add_arguments(parser):
    parser.add_argument("--clip_l2", action="store_true",
                        help="L2-normalise CLIP rows (folder clip_l2); by default rows are the raw "
                        "ln_post(CLS) @ proj as video_features writes them (folder clip)")


RESOLUTION = 224  # ViT-B/32's input size, known before its archive is read


def build(args):
    from feature_extraction.weights import WeightsError, checkpoint_path

    l2, precision = args.clip_l2, inference.resolve(args.precision, args.device, "clip")
    path = checkpoint_path("clip_vit_b32", args.weights)

    def load():
        visual = load_visual(path)
        if visual.resolution != RESOLUTION:
            raise WeightsError(f"{path}: a CLIP ViT for {visual.resolution} px input; ViT-B/32 takes {RESOLUTION}")
        visual = inference.prepare(visual, args.device, precision)
        return (lambda x: F.normalize(visual(x), dim=-1)) if l2 else visual

    preprocess = ImagePreprocess(RESOLUTION, RESOLUTION, "bicubic", CLIP_MEAN, CLIP_STD)
    folder = "clip_l2" if l2 else "clip"
    info = provenance("clip_vit_b32", "clip_vit_b32", args.weights,
                      {"l2": l2, "precision": precision, "frame_offset": 0.5,
                       "preprocess": f"resize{RESOLUTION}-bicubic-antialias/crop/clip-norm"})
    return FramewiseExtractor("clip", folder, load, preprocess, info, args.batch_size, args.device)
