"""ResNet and CLIP: our code against the PyPI references (torchvision, clip-anytorch) on the same random weights."""
import argparse
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from feature_extraction import clip as our_clip
from feature_extraction import inference, resnet
from feature_extraction.base import Extractor
from feature_extraction.decode import run_pass

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip-anytorch imports pkg_resources
    import clip as openai_clip
    from clip.model import VisionTransformer


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


def assert_not_degenerate(rows):
    rows = torch.as_tensor(rows)
    assert rows.std() > 0
    assert (rows == 0).float().mean() < 0.5
    assert not torch.allclose(rows[0], rows[1])  # depends on the input


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


class Grab(Extractor):
    """Keeps the uint8 frames the pass hands out on the per-second clock."""

    token = "grab"
    frame_offset = 0.5

    def begin(self, info):
        self.frames = []

    def add_frame(self, index, frame):
        self.frames.append(frame.rgb())


def textured_frame(height, width, seed=0):
    """Gradients, a checkerboard and noise: a frame where resampling differences would show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([255 * x / width, 255 * y / height, 128 + 100 * ((x // 7 + y // 5) % 2 - 0.5)], -1)
    return np.clip(frame + rng.normal(0, 20, frame.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def decoded_frames(tmp_path_factory):
    from feature_extraction.make_sample import make_clip

    path = make_clip(tmp_path_factory.mktemp("clip") / "moving.mp4", seconds=2.0, width=320, height=240,
                     motion=[(0, 2)])
    grab = Grab()
    run_pass(path, [grab])
    return grab.frames


def frames_for_preprocessing(decoded):
    return [decoded[0], textured_frame(240, 320), textured_frame(480, 270, 1), textured_frame(97, 131, 2),
            textured_frame(224, 224, 3)]


def random_images(n, size, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- ResNet


@pytest.fixture(scope="module")
def torchvision_resnet101(weights_cache):
    """(state dict, torchvision's resnet101 with it loaded and fc = Identity): the reference network."""
    state = torch.load(weights_cache / "random" / "resnet101-63fe2227.pth", weights_only=True)
    reference = torchvision.models.resnet101(weights=None)
    reference.load_state_dict(state)
    reference.fc = torch.nn.Identity()
    return state, reference.eval()


def test_resnet101_matches_torchvision(torchvision_resnet101):
    state, reference = torchvision_resnet101
    ours = resnet.build_model(state, 101)
    x = random_images(2, 96)  # the network is size-agnostic; small inputs keep the test fast
    with torch.inference_mode():
        got, want = ours(x), reference(x)
    assert got.shape == (2, 2048)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert_not_degenerate(got)
    assert (got >= 0).all()  # the post-ReLU average pool


def test_prepared_resnet101_equals_eager_float32(weights_cache, torchvision_resnet101):
    """inference.prepare in float32: BatchNorm folded into the convolutions, channels_last, at any batch size,
    gives the eager float32 output."""
    fast = resnet.load_model(weights_cache / "random" / "resnet101-63fe2227.pth", 101)
    x = random_images(3, 96)
    fast = inference.prepare(fast, "cpu", "float32")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.network.modules())  # folded
    with torch.inference_mode():
        want = torchvision_resnet101[1](x)
    torch.testing.assert_close(fast(x), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast(x[:2]), want[:2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("depth", [50, 101])
def test_random_resnet_checkpoint_has_official_layout(weights_cache, depth):
    name = {50: "resnet50-0676ba61.pth", 101: "resnet101-63fe2227.pth"}[depth]
    state = torch.load(weights_cache / "random" / name, weights_only=True)
    official = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
    assert list(state) == list(official)  # incl. fc.* and num_batches_tracked
    assert all(state[k].shape == v.shape and state[k].dtype == v.dtype for k, v in official.items())
    assert state["conv1.weight"].shape == (64, 3, 7, 7) and state["fc.weight"].shape == (1000, 2048)
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    assert all(torch.equal(v, torch.ones_like(v)) for v in variances)
    fan_out = 64 * 7 * 7  # torchvision's He init
    assert 0.9 < state["conv1.weight"].std().item() / (2 / fan_out) ** 0.5 < 1.1


def test_resnet_preprocessing_matches_torchvision_pil_transform(decoded_frames):
    reference = torchvision.models.ResNet101_Weights.IMAGENET1K_V1.transforms()
    for frame in frames_for_preprocessing(decoded_frames):
        got, want = resnet.PREPROCESS(frame), reference(Image.fromarray(frame))
        assert got.shape == want.shape == (3, 224, 224)
        assert cosine(got, want) >= 0.9999, frame.shape
        assert (got - want).abs().max() < 3 / 255 / 0.224  # at most a few 8-bit levels


def test_resnet_extractor_rows_match_reference_pipeline(weights_cache, torchvision_resnet101, monkeypatch, tmp_path):
    """Whole path: our pass + preprocessing + model vs PIL transform + torchvision on the frames the pass picked."""
    monkeypatch.setenv("VMR_CACHE", str(weights_cache))
    from feature_extraction.make_sample import make_clip

    path = make_clip(tmp_path / "v.mp4", seconds=2.4, width=160, height=120, motion=[(0, 2.4)])
    args = argparse.Namespace(resnet=101, weights="random", device="cpu", batch_size=1, precision="float32")
    extractor, grab = resnet.build(args), Grab()
    result = run_pass(path, [extractor, grab])
    rows = extractor.end(result.t_video, result.t_audio)["resnet101/v.npy"]
    assert rows.shape == (2, 2048) and rows.dtype == np.float32
    assert extractor.outputs()["resnet101"]["weights"] == "random"
    reference = torchvision_resnet101[1]
    transform = torchvision.models.ResNet101_Weights.IMAGENET1K_V1.transforms()
    with torch.inference_mode():
        want = reference(torch.stack([transform(Image.fromarray(f)) for f in grab.frames[:2]]))
    for t in range(2):
        assert cosine(torch.from_numpy(rows[t]), want[t]) >= 0.9999


# ---------------------------------------------------------------- CLIP


def test_random_clip_archive_matches_openai_visual(weights_cache):
    state = our_clip.read_state_dict(weights_cache / "random" / "ViT-B-32.pt")
    assert state["visual.conv1.weight"].shape == (768, 3, 32, 32)
    assert state["visual.proj"].shape == (768, 512) and state["token_embedding.weight"].shape == (49408, 512)
    assert {int(state[k]) for k in ("input_resolution", "context_length", "vocab_size")} == {224, 77, 49408}
    assert all(v.dtype == torch.float16 for k, v in state.items() if v.is_floating_point())
    assert sum(k.endswith("attn.in_proj_weight") and k.startswith("visual.") for k in state) == 12
    with warnings.catch_warnings():  # torch.jit.load, the reference reader, is deprecated
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(weights_cache / "random" / "ViT-B-32.pt")).state_dict()
    assert set(scripted) == set(state)
    assert all(state[k].dtype == v.dtype and torch.equal(state[k], v) for k, v in scripted.items())
    visual = our_clip.read_state_dict(weights_cache / "random" / "ViT-B-32.pt", "visual.")
    assert set(visual) == {k for k in state if k.startswith("visual.")}

    ours = our_clip.build_visual(state)
    reference = VisionTransformer(224, 32, 768, 12, 12, 512)  # clip-anytorch's, as build_model makes it
    reference.load_state_dict({k.removeprefix("visual."): v.float() for k, v in state.items() if k.startswith("visual.")})
    x = random_images(2, 224)
    with torch.inference_mode():
        got, want = ours(x), reference.eval()(x)
    assert got.shape == (2, 512)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert_not_degenerate(got)


def test_prepared_clip_equals_eager_float32(weights_cache):
    visual = our_clip.load_visual(weights_cache / "random" / "ViT-B-32.pt")
    x = random_images(3, 224, seed=4)
    with torch.inference_mode():
        want = visual(x)
    fast = inference.prepare(visual, "cpu", "float32")
    torch.testing.assert_close(fast(x), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast(x[2:]), want[2:], rtol=1e-4, atol=1e-5)


def test_tiny_clip_archive_shapes_are_inferred(tmp_path):
    path = our_clip.write_random_checkpoint(tmp_path / "tiny.pt", seed=3, resolution=48, patch=16, width=128,
                                            layers=2, embed_dim=24, text_width=64, text_layers=1, vocab_size=50,
                                            context_length=8)
    ours = our_clip.load_visual(path)
    reference, preprocess = openai_clip.load(str(path), device="cpu", jit=False)
    assert preprocess.transforms[0].size == 48
    assert (ours.resolution, len(ours.transformer.resblocks), ours.proj.shape) == (48, 2, (128, 24))
    assert ours.transformer.resblocks[0].attn.num_heads == 2
    x = random_images(3, 48, seed=1)
    with torch.inference_mode():
        got, want = ours(x), reference.visual(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert_not_degenerate(got)


def test_clip_preprocessing_matches_openai_pil_transform(decoded_frames):
    reference = openai_clip.clip._transform(224)
    ours = our_clip.ImagePreprocess(224, 224, "bicubic", our_clip.CLIP_MEAN, our_clip.CLIP_STD)
    for frame in frames_for_preprocessing(decoded_frames):
        got, want = ours(frame), reference(Image.fromarray(frame))
        assert got.shape == want.shape == (3, 224, 224)
        assert cosine(got, want) >= 0.9999, frame.shape


def test_clip_l2_writes_unit_rows_into_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("VMR_CACHE", str(tmp_path))
    our_clip.write_random_checkpoint(tmp_path / "random" / "ViT-B-32.pt", seed=0, resolution=224, patch=32,
                                     width=64, layers=1, embed_dim=16, text_width=64, text_layers=1,
                                     vocab_size=10, context_length=4)
    from feature_extraction.make_sample import make_clip

    path = make_clip(tmp_path / "v.mp4", seconds=3.2, motion=[(0, 3.2)])
    for l2, folder in ((False, "clip"), (True, "clip_l2")):
        args = argparse.Namespace(clip_l2=l2, weights="random", device="cpu", batch_size=2, precision="float32")
        extractor = our_clip.build(args)
        assert list(extractor.outputs()) == [folder] and extractor.files("v") == [f"{folder}/v.npy"]
        result = run_pass(path, [extractor])
        rows = extractor.end(result.t_video, result.t_audio)[f"{folder}/v.npy"]
        assert rows.shape == (3, 16) and rows.dtype == np.float32
        norms = np.linalg.norm(rows, axis=1)
        if l2:
            np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
            np.testing.assert_allclose(rows, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
        else:
            assert not np.allclose(norms, 1.0)
            raw = rows
