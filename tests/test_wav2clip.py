"""Wav2CLIP: published layout and front end, parity with the wav2clip package, the extraction token, the weights entry."""
import json
import subprocess
import sys
import types
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile
import torch

from feature_extraction import wav2clip, weights
from feature_extraction.base import VideoInfo

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tones(seconds, freqs, rate=16000, seed=0):
    """One tone per second (freqs cycles), plus a little noise: every second differs in the spectrogram."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f = np.asarray(freqs, float)[np.arange(n) // rate % len(freqs)]
    return (0.3 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def ours(wav2clip_checkpoint):
    return wav2clip.load_model(wav2clip_checkpoint)


@pytest.fixture(scope="module")
def reference_module():
    """The wav2clip package (0.1.0) as published. Its frame mode calls librosa.util.frame positionally,
    which librosa >= 0.10 refuses; the same call with keywords is put in its place, nothing else."""
    encoder = pytest.importorskip("wav2clip.model.encoder")
    frame = lambda x, frame_length, hop_length: librosa.util.frame(x, frame_length=frame_length, hop_length=hop_length)
    encoder.librosa = types.SimpleNamespace(util=types.SimpleNamespace(frame=frame))
    return encoder


def test_random_checkpoint_has_the_published_layout(wav2clip_checkpoint, reference_module):
    state = torch.load(wav2clip_checkpoint, weights_only=True)
    ref = reference_module.ResNetExtractor(scenario="supervise")  # built with the package's own classes
    ref.transform = reference_module.MLPLayers(units=[512, 512, 512], dropout=0.1)
    want = {**{f"audio_encoder.{k}": tuple(v.shape) for k, v in ref.encoder.state_dict().items()},
            **{f"audio_transform.{k}": tuple(v.shape) for k, v in ref.transform.state_dict().items()}}
    assert {k: tuple(v.shape) for k, v in state.items()} == want
    # facts read from its source: 1-channel 7x7 stem, ResNet-18 BasicBlocks, no fc, the MLP at indices 0 and 3
    assert state["audio_encoder.conv1.weight"].shape == (64, 1, 7, 7)
    assert state["audio_encoder.layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert state["audio_encoder.layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert not any(k.startswith("audio_encoder.fc.") for k in state)
    assert state["audio_transform.sequential.3.weight"].shape == (512, 512)
    torch.testing.assert_close(state["audio_encoder.spectrogram.window"], torch.hann_window(512, periodic=True))
    assert all(v.dtype == torch.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))


def test_front_end_constants(ours):
    """n_fft 512, hop 353, periodic Hann, centred reflect padding, power 2, log(x + 1e-7): 1 s -> 257 x 46."""
    x = tones(1.0, [440.0])
    spec = ours.log_spectrogram(torch.from_numpy(x)[None])
    assert spec.shape == (1, 1, 257, 1 + 16000 // 353) == (1, 1, 257, 46)
    padded = np.pad(x.astype(np.float64), 256, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, 512)[::353]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(512) / 512)
    want = np.log(np.abs(np.fft.rfft(frames * hann, 512)) ** 2 + 1e-7).T
    np.testing.assert_allclose(spec[0, 0].numpy(), want, atol=2e-3)  # float32 FFT vs float64
    assert wav2clip.normalize(spec).mean().abs() < 1e-5 and abs(wav2clip.normalize(spec).std() - 1) < 1e-5


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # inside the package's frame mode
def test_matches_the_wav2clip_package(wav2clip_checkpoint, ours, reference_module):
    """The same seeded weights and waveform through our port and the package: both modes."""
    state = torch.load(wav2clip_checkpoint, weights_only=True)
    x = tones(3.6, [300.0, 950.0, 2500.0], seed=1)
    whole = reference_module.ResNetExtractor(checkpoint=state, scenario="frozen", transform=True)
    frames = reference_module.ResNetExtractor(checkpoint=state, scenario="frozen", transform=True,
                                              frame_length=16000, hop_length=16000)
    extractor = wav2clip.Wav2CLIPExtractor(lambda: ours, {}, batch_size=2)
    extractor.begin(VideoInfo(Path("a.wav"), "a", 0.0, 0, 0, False, True))
    for chunk in np.split(x, [1, 1000, 17000, 40000]):  # uneven chunks, one of a single sample
        extractor.add_audio(chunk)
    out = extractor.end(0, 3)
    with torch.inference_mode():
        want_track = whole.eval()(torch.from_numpy(x)[None])
        want_rows = frames.eval()(torch.from_numpy(x)[None])[0].T  # (512, T) -> (T, 512)
    assert out["wav2clip/a.npy"].shape == (3, 512) and out["wav2clip_track/a.npy"].shape == (1, 512)
    torch.testing.assert_close(torch.from_numpy(out["wav2clip/a.npy"]), want_rows, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(out["wav2clip_track/a.npy"]), want_track, rtol=1e-4, atol=1e-5)
    rows, track = out["wav2clip/a.npy"], out["wav2clip_track/a.npy"][0]
    assert rows.std(axis=0).mean() > 1e-3  # the seconds differ
    mean = rows.mean(axis=0)
    assert np.abs(track - mean).max() > 1e-2  # the whole-track embedding is not the mean of the rows


def test_refuses_a_state_dict_of_another_model(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match=r"other.pt: not a Wav2CLIP checkpoint, missing \d+ keys: audio_encoder"):
        wav2clip.load_model(path)
    path.write_text("not a torch file")
    with pytest.raises(ValueError, match=r"other.pt: not a Wav2CLIP checkpoint \("):
        wav2clip.load_model(path)


def test_weights_entry_pins_the_first_download(server, tmp_path, monkeypatch):
    """No sha256 is published for Wav2CLIP.pt: the entry says so, and the first download pins one."""
    entry = weights.CHECKPOINTS["wav2clip"]
    assert entry.check == "unpublished" and entry.filename == "Wav2CLIP.pt"
    assert entry.url == "https://github.com/descriptinc/lyrebird-wav2clip/releases/download/v0.1.0-alpha/Wav2CLIP.pt"
    server.files["/Wav2CLIP.pt"] = b"checkpoint bytes"
    monkeypatch.setitem(weights.CHECKPOINTS, "wav2clip", weights.Checkpoint(f"{server.url}/Wav2CLIP.pt", "Wav2CLIP.pt",
                                                                            "unpublished"))
    path = weights.checkpoint_path("wav2clip", cache=tmp_path)
    sha = weights.file_hashes(path)[0]
    assert weights.sidecar(path).read_text().strip() == sha
    path.write_bytes(b"another file")  # changed after the first download: refused
    with pytest.raises(weights.WeightsError, match="differs from"):
        weights.checkpoint_path("wav2clip", cache=tmp_path)


def test_token_on_music_files_and_videos(weights_cache, vmr_env, make_clip, tmp_path):
    """vggishProcessor --features wav2clip vggish: one pass, every music type and a video's audio, one row per second."""
    from feature_extraction.make_sample import run_ffmpeg

    music = tmp_path / "music"
    music.mkdir()
    a, b = tones(1.0, [440.0], seed=2), tones(1.0, [1800.0], seed=3)
    soundfile.write(music / "abab.wav", np.concatenate([a, b, a, b, a[:8000]]), 16000)  # seconds 0 = 2, 1 = 3
    soundfile.write(music / "stereo.flac", np.stack([tones(2.5, [500.0], 44100), tones(2.5, [700.0], 44100)], 1), 44100)
    run_ffmpeg(["-i", music / "abab.wav", "-c:a", "libmp3lame", music / "song.mp3"])
    run_ffmpeg(["-i", music / "abab.wav", "-c:a", "aac", music / "song2.m4a"])
    run_ffmpeg(["-i", music / "abab.wav", "-c:a", "libopus", music / "song3.webm"])
    make_clip("video.mp4", seconds=2.2).rename(music / "video.mp4")
    (music / "broken.flac").write_text("not audio")
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "feature_extraction" / "vggishProcessor.py"), "--audio", str(music),
           "--out", str(out), "--features", "wav2clip", "vggish", "--weights", "random", "--threads", "1"]
    p = subprocess.run(cmd, env=vmr_env, capture_output=True, text=True)
    assert p.returncode == 1 and f"{music / 'broken.flac'}: " in p.stderr and "1 failed" in p.stderr, p.stderr
    rows = {f.stem: np.load(f) for f in (out / "wav2clip").glob("*.npy")}
    tracks = {f.stem: np.load(f) for f in (out / "wav2clip_track").glob("*.npy")}
    assert {k: v.shape for k, v in rows.items()} == {
        "abab": (4, 512), "stereo": (2, 512), "song": (4, 512), "song2": (4, 512), "song3": (4, 512), "video": (2, 512)}
    assert {k: v.shape for k, v in tracks.items()} == {k: (1, 512) for k in rows}
    assert len(list((out / "vggish").glob("*.npy"))) == 6  # the same pass
    x = rows["abab"]  # row t depends on second t only (and the track's normalisation)
    np.testing.assert_allclose(x[0], x[2], atol=1e-5)
    np.testing.assert_allclose(x[1], x[3], atol=1e-5)
    assert np.abs(x[0] - x[1]).max() > 1e-2
    cos = np.sum(rows["song"] * x, 1) / np.linalg.norm(rows["song"], axis=1) / np.linalg.norm(x, axis=1)
    assert np.all(cos > 0.9)  # the same audio through a lossy mp3
    feature = json.loads((out / "wav2clip" / "_feature.json").read_text())
    assert feature["weights"] == "random" and feature["checkpoint"] == "Wav2CLIP.pt" and feature["rate"] == 1.0
    assert json.loads((out / "wav2clip_track" / "_feature.json").read_text())["rate"] is None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["folders"]["wav2clip_track"]["arrays"]["abab"] == [1, 512]
