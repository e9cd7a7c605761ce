"""VGGish: log-mel, network and PCA against torchvggish on the same random weights; streaming; the music CLI."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from torchvggish import torchvggish, vggish_input

from feature_extraction import inference, vggish
from feature_extraction.base import VideoInfo

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


def waveform(seconds, seed=0, rate=16000):
    """A chirp plus noise: energy across the mel bands, different in every second."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    chirp = 0.4 * np.sin(2 * np.pi * (200 * t + 400 * t**2))
    return (chirp + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def reference(weights_cache):
    """torchvggish's own VGGish + Postprocessor, built with our random files instead of its downloads."""
    files = {torchvggish.VGGISH_WEIGHTS: weights_cache / "random" / "vggish-10086976.pth",
             torchvggish.PCA_PARAMS: weights_cache / "random" / "vggish_pca_params-970ea276.pth"}
    original = torchvggish.hub.load_state_dict_from_url
    torchvggish.hub.load_state_dict_from_url = lambda url, **kw: torch.load(files[url], weights_only=False)
    try:
        return torchvggish.vggish(postprocess=True).eval()
    finally:
        torchvggish.hub.load_state_dict_from_url = original


@pytest.fixture(scope="module")
def ours(weights_cache):
    return vggish.load_model(weights_cache / "random" / "vggish-10086976.pth")


def test_log_mel_examples_match_torchvggish():
    wave = waveform(3.5)
    examples = vggish.examples_per_second(wave)
    assert examples.shape == (3, 96, 64)
    for t in range(3):  # row t = torchvggish's first example of the audio from t s on
        want = vggish_input.waveform_to_examples(wave[16000 * t :].astype(np.float64), 16000, return_tensor=False)[0]
        assert np.abs(examples[t] - want).max() <= 1e-4
    assert not np.allclose(examples[0], examples[1])
    assert len(vggish.examples_per_second(wave[:15999])) == 0


def test_network_matches_torchvggish(ours, reference):
    x = torch.from_numpy(vggish.examples_per_second(waveform(2.0))).float()
    with torch.inference_mode():
        got = ours(x)
        reference.postprocess = False
        want = reference(x[:, None])
        reference.postprocess = True
    assert got.shape == (2, 128)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert got.std() > 0 and (got == 0).float().mean() < 0.5 and (got >= 0).all()  # final ReLU kept
    assert not torch.allclose(got[0], got[1])


def test_prepared_network_equals_eager_float32(weights_cache, ours):
    """inference.prepare in float32 (channels_last) gives the eager float32 output at any batch size."""
    fast = vggish.load_model(weights_cache / "random" / "vggish-10086976.pth")  # prepare converts it in place
    x = torch.from_numpy(vggish.examples_per_second(waveform(3.0, seed=2))).float()
    fast = inference.prepare(fast, "cpu", "float32")
    with torch.inference_mode():
        want = ours(x)
    torch.testing.assert_close(fast(x), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast(x[1:]), want[1:], rtol=1e-4, atol=1e-5)


def test_pca_matches_torchvggish_postprocessor(weights_cache, ours, reference):
    pca = vggish.PCA(weights_cache / "random" / "vggish_pca_params-970ea276.pth")
    with torch.inference_mode():
        embeddings = ours(torch.from_numpy(vggish.examples_per_second(waveform(3.0))).float())
        quantised = reference.pproc.postprocess(embeddings).numpy()
    projected = torch.mm(reference.pproc._pca_matrix, embeddings.t() - reference.pproc._pca_means).t()
    np.testing.assert_allclose(pca.project(embeddings.numpy()), projected.numpy(), rtol=1e-4, atol=1e-4)
    assert projected.std() > 0.1 and (projected.abs() < 2).float().mean() > 0.5  # mostly not clipped
    got = pca(embeddings.numpy())
    assert got.dtype == np.float32 and got.min() >= 0 and got.max() <= 255 and np.all(got == np.round(got))
    assert np.abs(got - quantised).max() <= 1 and (got == quantised).mean() > 0.95  # float32 vs float64 at .5


def test_random_files_have_torchvggish_format(weights_cache):
    state = torch.load(weights_cache / "random" / "vggish-10086976.pth", weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in torchvggish._vgg().state_dict().items()}
    assert state["embeddings.0.weight"].shape == (4096, 12288) and state["features.0.weight"].dtype == torch.float32
    with pytest.raises(Exception):  # a pickle of numpy arrays, as published: refused by the safe loader
        torch.load(weights_cache / "random" / "vggish_pca_params-970ea276.pth", weights_only=True)
    params = torch.load(weights_cache / "random" / "vggish_pca_params-970ea276.pth", weights_only=False)
    assert isinstance(params["pca_eigen_vectors"], np.ndarray) and params["pca_eigen_vectors"].shape == (128, 128)
    assert params["pca_means"].shape == (128,) and params["pca_means"].dtype == np.float64


class Opens:
    """Unpickling this calls open(path, "w"): what any pickle can make the loader run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_pca_file_with_other_objects_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "vggish_pca_params-970ea276.pth"
    torch.save({"pca_eigen_vectors": Opens(marker), "pca_means": np.zeros(128)}, path)
    with pytest.raises(ValueError, match=f"{path}: not a VGGish PCA parameter file"):
        vggish.PCA(path)
    assert not marker.exists()


def test_pca_file_written_with_numpy_1_loads(weights_cache, tmp_path):
    """The published file pickles numpy.core.multiarray._reconstruct (numpy 1's name); ours numpy._core's."""
    import zipfile

    ours = weights_cache / "random" / "vggish_pca_params-970ea276.pth"
    old = tmp_path / "numpy1.pth"
    with zipfile.ZipFile(ours) as src, zipfile.ZipFile(old, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                         if name.endswith("data.pkl") else data)
    assert b"numpy.core.multiarray" in zipfile.ZipFile(old).read(next(n for n in zipfile.ZipFile(old).namelist()
                                                                         if n.endswith("data.pkl")))
    a, b = vggish.PCA(ours), vggish.PCA(old)
    assert np.array_equal(a.eigen_vectors, b.eigen_vectors) and np.array_equal(a.means, b.means)


def test_streaming_rows_equal_whole_signal_rows(ours):
    wave = waveform(4.7, seed=1)
    extractor = vggish.VGGishExtractor(lambda: ours, None, {}, batch_size=3)
    info = VideoInfo(Path("a.wav"), "a", 0.0, 0, 0, False, True)
    extractor.begin(info)
    for chunk in np.split(wave, [1000, 1001, 17000, 40000, 70000]):  # uneven chunks, one of 1 sample
        extractor.add_audio(chunk)
    rows = extractor.end(0, 4)["vggish/a.npy"]
    with torch.inference_mode():
        want = ours(torch.from_numpy(vggish.examples_per_second(wave)).float()).numpy()
    assert rows.shape == (4, 128) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, want, rtol=1e-5, atol=1e-6)


def test_vggish_processor_on_music_and_video(weights_cache, vmr_env, make_clip, tmp_path, capsys):
    from feature_extraction.make_sample import run_ffmpeg

    music = tmp_path / "music"
    music.mkdir()
    soundfile.write(music / "song one.wav", waveform(3.3), 16000)
    soundfile.write(music / "hi.flac", np.stack([waveform(2.5, 0, 44100), waveform(2.5, 1, 44100)], 1), 44100)
    run_ffmpeg(["-i", music / "song one.wav", "-c:a", "libmp3lame", music / "tune.mp3"])
    make_clip("video.mp4", seconds=2.2).rename(music / "video.mp4")
    (music / "broken.mp3").write_text("not audio")
    (music / "notes.txt").write_text("ignored: not a media suffix")
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "feature_extraction" / "vggishProcessor.py"), "--audio", str(music),
           "--out", str(out), "--weights", "random", "--threads", "1"]
    p = subprocess.run(cmd, env=vmr_env, capture_output=True, text=True)
    assert p.returncode == 1, p.stderr
    assert f"{music / 'broken.mp3'}: " in p.stderr and "1 failed" in p.stderr
    rows = {f.stem: np.load(f) for f in (out / "vggish").glob("*.npy")}
    assert {k: v.shape for k, v in rows.items()} == {
        "song one": (3, 128), "hi": (2, 128), "tune": (3, 128), "video": (2, 128)}
    assert all(v.dtype == np.float32 for v in rows.values())
    a, b = rows["tune"], rows["song one"]  # the same audio, once through a lossy mp3
    assert np.all(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1) > 0.8)
    feature = json.loads((out / "vggish" / "_feature.json").read_text())
    assert feature["weights"] == "random" and feature["checkpoint"] == "vggish-10086976.pth"
    assert feature["options"]["pca"] is False

    from feature_extraction import vggishProcessor

    assert vggishProcessor.main(["--audio", str(music / "song one.wav"), "--out", str(out), "--pca",
                                 "--weights", "random", "--threads", "1"]) == 0
    quantised = np.load(out / "vggish_pca" / "song one.npy")
    assert quantised.shape == (3, 128) and quantised.min() >= 0 and quantised.max() <= 255
    assert json.loads((out / "vggish_pca" / "_feature.json").read_text())["options"]["pca_checkpoint"] == \
        "vggish_pca_params-970ea276.pth"
    mtime = (out / "vggish" / "hi.npy").stat().st_mtime_ns
    capsys.readouterr()
    assert vggishProcessor.main(cmd[2:]) == 1  # resume: only the bad file is tried again
    assert "1 failed" in capsys.readouterr().err
    assert (out / "vggish" / "hi.npy").stat().st_mtime_ns == mtime


def test_names_starting_with_dash_or_underscore(weights_cache, vmr_env, tmp_path, monkeypatch):
    """17 SymMV ids start with `-` and 10 with `_`: never read as flags, never skipped."""
    from feature_extraction import vggishProcessor

    music = tmp_path / "music"
    music.mkdir()
    for name in ("-dash", "_under"):
        soundfile.write(music / f"{name}.wav", waveform(2.2), 16000)
    out = tmp_path / "out"
    monkeypatch.chdir(music)  # `--audio .` lists "-dash.wav"
    assert vggishProcessor.main(["--audio", ".", "--out", str(out), "--weights", "random", "--threads", "1"]) == 0
    assert sorted(p.name for p in (out / "vggish").glob("*.npy")) == ["-dash.npy", "_under.npy"]
