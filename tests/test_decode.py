"""The decode pass: which frame each sample gets, T_video / T_audio, channel mean, streaming resampler,
rotated videos, timestamp resets and sample-rate changes."""
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import resampy

from feature_extraction.base import Extractor, InputError
from feature_extraction.decode import FrameClock, KaiserBest, StreamResampler, kaiser_best, open_video, run_pass
from feature_extraction.make_sample import ffmpeg_exe, run_ffmpeg


class Recorder(Extractor):
    """Keeps what the pass hands it: (index, pts, frame number read from the counter picture), audio."""

    token = "recorder"

    def __init__(self, frame_rate=1.0, frame_offset=0.5, audio_rate=None):
        self.frame_rate, self.frame_offset, self.audio_rate = frame_rate, frame_offset, audio_rate

    def begin(self, info):
        self.info, self.frames, self.chunks = info, [], []

    def add_frame(self, index, frame):
        luma = 16 + frame.rgb().astype(np.float64).mean() * 219 / 255  # flat grey: R = G = B
        self.frames.append((index, frame.pts, int(round((luma - 16) / 2))))

    def add_audio(self, samples):
        assert samples.dtype == np.float32 and samples.ndim == 1
        self.chunks.append(samples)

    @property
    def audio(self):
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


class Pictures(Recorder):
    """Keeps (pts, RGB picture) of every frame it gets."""

    def add_frame(self, index, frame):
        self.frames.append((frame.pts, frame.rgb()))


def expected_samples(frame_times, end, rate, offset):
    """Brute force of base.py's rule: sample j = last frame with pts <= offset + j / rate, for times < end."""
    out, j = [], 0
    while offset + Fraction(j) / rate < end:
        t = offset + Fraction(j) / rate
        out.append(max(k for k, p in enumerate(frame_times) if p <= t or k == 0))
        j += 1
    return out


@pytest.mark.parametrize("rate,offset", [(1, Fraction(1, 2)), (3, 0), (32, 0), (Fraction(7, 3), Fraction(1, 10))])
def test_frame_clock_matches_the_rule_on_variable_frame_times(rate, offset):
    rng = np.random.default_rng(0)
    times = [Fraction(0)]
    for _ in range(120):  # gaps of 1..90 ms, including exact ties with sample times
        times.append(times[-1] + Fraction(int(rng.integers(1, 10)), 100))
    end = times[-1] + Fraction(1, 25)
    clock, got = FrameClock(rate, offset), []
    for k, t in enumerate(times):
        got += list(clock.push(t, k))
    got += list(clock.finish(end))
    assert [j for j, _ in got] == list(range(len(got)))
    assert [k for _, k in got] == expected_samples(times, end, rate, offset)


@pytest.mark.parametrize("fps,picked", [(25, [12, 37, 62]), (29.97, [14, 44, 74]), (30, [15, 45, 75])])
def test_each_second_gets_the_last_frame_at_or_before_its_middle(make_clip, fps, picked):
    # 30 fps: the frame at exactly t + 0.5 s counts (video_features' fps filter takes the one before).
    clip = make_clip(f"count{fps}.mp4", seconds=3, fps=fps, counter=True, audio=False)
    per_second, every = Recorder(), Recorder(frame_rate=None)
    result = run_pass(clip, [per_second, every])
    assert (result.t_video, result.t_audio) == (3, 0)
    assert [n for _, _, n in per_second.frames] == picked
    rate = Fraction(30000, 1001) if fps == 29.97 else Fraction(fps)
    assert [p for _, p, _ in per_second.frames] == pytest.approx([float(k / rate) for k in picked], abs=1e-3)
    assert [n for _, _, n in every.frames] == list(range(len(every.frames)))  # presentation order, none lost
    assert len(every.frames) == round(3 * rate)


def test_variable_frame_rate(tmp_path):
    # frames 0..24 at n/25 s, then one every 0.12 s: frame n >= 25 is at 1 + 0.12 (n - 25) s
    clip = tmp_path / "vfr.mkv"
    run_ffmpeg(["-f", "lavfi", "-i", "color=c=gray:s=64x48:r=25:d=2,format=yuv420p,geq=lum='16+2*N':cb=128:cr=128,"
                "setpts='if(lt(N,25),N/25,1+0.12*(N-25))/TB'", "-fps_mode", "passthrough", "-c:v", "libx264", clip])
    rec, every = Recorder(), Recorder(frame_rate=None)
    result = run_pass(clip, [rec, every])
    assert [p for _, p, _ in every.frames][24:27] == pytest.approx([0.96, 1.0, 1.12], abs=1e-3)
    assert [n for _, _, n in every.frames] == list(range(50))
    assert result.t_video == 3  # the last frame starts at 3.88 s; the file gives it 40 ms (end 3.92 s)
    assert [n for _, _, n in rec.frames] == [12, 29, 37, 45]


def test_five_one_audio_is_the_channel_mean_and_t_audio_counts_16k_samples(make_clip):
    clip = make_clip("surround.mkv", seconds=3, channels=6, sample_rate=44100)  # FLAC: lossless
    native, at16k = Recorder(audio_rate=44100), Recorder(audio_rate=16000)
    result = run_pass(clip, [native, at16k])
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(clip), "-f", "f32le", "-c:a", "pcm_f32le", "-"],
                         capture_output=True, check=True).stdout
    channels = np.frombuffer(raw, np.float32).reshape(-1, 6)
    assert channels.std(axis=0).min() > 0.1 and not np.allclose(channels[:, 0], channels[:, 1])
    np.testing.assert_allclose(native.audio, channels.mean(axis=1), atol=1e-6)
    assert len(native.audio) == 3 * 44100
    assert len(at16k.audio) == 48000 and result.t_audio == 3
    np.testing.assert_allclose(at16k.audio, resampy.resample(channels.mean(axis=1).astype(np.float64), 44100, 16000),
                               atol=1e-5)


@pytest.mark.parametrize("sr_in", [8000, 22050, 44100, 48000, 44056])
def test_kaiser_best_equals_resampy(sr_in):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(int(sr_in * 0.77) + 3)
    x[: sr_in // 10] = np.sin(np.arange(sr_in // 10) * 0.3)  # a tone near the cut-off as well as noise
    ours = kaiser_best(sr_in, 16000)
    assert isinstance(ours, KaiserBest) == (sr_in != 44056)  # odd rates (large weight matrix) run resampy
    assert kaiser_best(sr_in, 16000) is ours  # the weights are built once per pair of rates
    whole = resampy.resample(x, sr_in, 16000, filter="kaiser_best")
    y = ours(x)
    assert len(y) == len(whole)
    np.testing.assert_allclose(y, whole, rtol=0, atol=1e-9)


@pytest.mark.parametrize("sr_in,sr_out", [(44100, 16000), (48000, 16000), (22050, 16000), (8000, 16000), (44100, 22050),
                                          (44056, 16000)])
def test_streaming_resampler_equals_whole_signal_resampy(sr_in, sr_out):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(int(sr_in * 1.37)) * 0.1
    x[: sr_in // 10] += np.sin(np.arange(sr_in // 10) * 0.05)
    r = StreamResampler(sr_in, sr_out, block_seconds=0.05)
    out, start, biggest = [], 0, 0
    while start < len(x):
        n = int(rng.integers(1, 3000))
        out.append(r.push(x[start : start + n]))
        start += n
        biggest = max(biggest, len(r.buf))
    out.append(r.finish())
    y = np.concatenate(out)
    whole = resampy.resample(x, sr_in, sr_out, filter="kaiser_best")
    assert y.dtype == np.float32 and len(y) == len(whole)
    np.testing.assert_allclose(y, whole, atol=1e-6)
    assert biggest <= r.block + 2 * r.context + 3000  # memory does not grow with the signal


def test_frames_under_720p_decode_on_one_thread(make_clip):
    small, hd = make_clip("small.mp4", seconds=1), make_clip("hd.mp4", seconds=1, width=1280, height=720)
    for path, threads, want in ((small, 0, 1), (small, 3, 3), (hd, 0, 0)):  # 0: FFmpeg's frame threads
        container, vstream, _, _ = open_video(path, threads)
        assert vstream.codec_context.thread_count == want
        container.close()


def test_max_seconds_cuts_both_streams(make_clip):
    clip = make_clip("long.mp4", seconds=3)
    rec = Recorder(audio_rate=16000)
    result = run_pass(clip, [rec], max_seconds=2)
    assert (result.t_video, result.t_audio) == (2, 2)
    assert len(rec.frames) == 2 and len(rec.audio) == 32000


def test_missing_streams_and_unreadable_files(make_clip, tmp_path):
    silent = Recorder(audio_rate=16000)
    result = run_pass(make_clip("silent.webm", seconds=2, audio=False), [silent])
    assert not result.info.has_audio and result.t_audio == 0 and result.t_video == 2 and len(silent.audio) == 0
    audio_only = tmp_path / "tone.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", "sine=d=2", "-c:a", "aac", audio_only])
    rec = Recorder(audio_rate=16000)
    result = run_pass(audio_only, [rec])
    assert not result.info.has_video and result.t_video == 0 and result.t_audio == 2 and rec.frames == []
    text = tmp_path / "text.mp4"
    text.write_text("not a video")
    with pytest.raises(InputError, match="cannot open: Invalid data"):
        run_pass(text, [Recorder()])
    with pytest.raises(InputError, match="cannot open: No such file"):
        run_pass(tmp_path / "missing.mp4", [Recorder()])
    whole = make_clip("whole.mp4", seconds=3)
    faststart = tmp_path / "faststart.mp4"  # index first: a cut file opens, then decoding fails
    run_ffmpeg(["-i", whole, "-c", "copy", "-movflags", "+faststart", faststart])
    data = faststart.read_bytes()
    faststart.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"decode failed near \d+\.\d s: Invalid data"):
        run_pass(faststart, [Recorder(audio_rate=16000)])


def test_make_clip_is_deterministic_and_follows_its_arguments(tmp_path):
    import av

    from feature_extraction.make_sample import make_clip

    a = make_clip(tmp_path / "a.mov", seconds=1.5, fps=29.97, channels=1, sample_rate=22050, seed=3)
    b = make_clip(tmp_path / "b.mov", seconds=1.5, fps=29.97, channels=1, sample_rate=22050, seed=3)
    assert a.read_bytes() == b.read_bytes()
    with av.open(str(a)) as c:
        v, s = c.streams.video[0], c.streams.audio[0]
        assert (v.codec_context.name, v.average_rate, v.width, v.height) == ("h264", Fraction(30000, 1001), 64, 48)
        assert (s.codec_context.name, s.sample_rate, s.channels) == ("aac", 22050, 1)
    with av.open(str(make_clip(tmp_path / "c.webm", seconds=1, channels=6))) as c:
        assert c.streams.video[0].codec_context.name == "vp9" and c.streams.audio[0].channels == 6


def test_motion_square_moves_only_in_the_given_seconds(make_clip):
    rec = Pictures(frame_rate=None)
    run_pass(make_clip("moving.mp4", seconds=3, motion=[(1, 2)], audio=False), [rec])
    moved = [t for (_, a), (t, b) in zip(rec.frames, rec.frames[1:]) if np.abs(b.astype(int) - a).max() > 40]
    assert moved and min(moved) > 1 and max(moved) <= 2.04


def test_rotation_metadata_is_applied_before_extractors_see_a_frame(tmp_path):
    # a lossless 4:4:4 clip, then the same stream with a display matrix, and the content physically turned
    base = tmp_path / "base.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", "testsrc=s=96x64:r=5:d=1", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p",
                base])
    upright = Pictures(frame_rate=None)
    run_pass(base, [upright])
    assert upright.frames[0][1].shape == (64, 96, 3)
    turned = {90: "transpose=cclock", 180: "hflip,vflip", 270: "transpose=clock"}  # counter-clockwise degrees
    for degrees, filters in turned.items():
        tagged, physical = tmp_path / f"tagged{degrees}.mp4", tmp_path / f"physical{degrees}.mp4"
        run_ffmpeg(["-display_rotation:v", degrees, "-i", base, "-c", "copy", tagged])
        run_ffmpeg(["-i", base, "-vf", filters, "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", physical])
        got, want = Pictures(frame_rate=None), Pictures(frame_rate=None)
        run_pass(tagged, [got])
        run_pass(physical, [want])
        assert len(got.frames) == len(want.frames) == 5
        for (_, a), (_, b) in zip(got.frames, want.frames):
            assert a.shape == b.shape == ((96, 64, 3) if degrees != 180 else (64, 96, 3))
            assert np.abs(a.astype(int) - b).max() <= 1
        assert np.abs(got.frames[0][1].astype(int) - np.rot90(upright.frames[0][1], degrees // 90)).max() <= 1


def ts_piece(path, sample_rate, frequency, offset=0):
    """A 3 s MPEG-TS clip: grey frames numbered by luma (16 + 2 n) at 25 fps, a sine of `frequency` Hz,
    timestamps from `offset` s. Concatenated pieces are what a splice or a restarted stream looks like."""
    run_ffmpeg(["-f", "lavfi", "-i", "color=c=gray:s=64x48:r=25:d=3,format=yuv420p,geq=lum='16+2*N':cb=128:cr=128",
                "-f", "lavfi", "-i", f"sine=f={frequency}:r={sample_rate}:d=3", "-c:v", "libx264", "-bf", "0",
                "-c:a", "aac",
                "-output_ts_offset", offset, "-f", "mpegts", path])
    return path.read_bytes()


def peak_hz(samples, rate):
    return np.argmax(np.abs(np.fft.rfft(samples * np.hanning(len(samples))))) * rate / len(samples)


def test_timestamp_reset_continues_on_a_monotone_clock(tmp_path):
    clip = tmp_path / "spliced.ts"
    clip.write_bytes(ts_piece(tmp_path / "a.ts", 44100, 440) * 2)  # the second piece's timestamps restart
    every, per_second, audio = Recorder(frame_rate=None), Recorder(), Recorder(audio_rate=16000)
    result = run_pass(clip, [every, per_second, audio])
    assert [n for _, _, n in every.frames] == list(range(75)) * 2
    times = [p for _, p, _ in every.frames]
    assert times == pytest.approx([k / 25 for k in range(150)], abs=1e-3)
    assert [n for _, _, n in per_second.frames] == [12, 37, 62] * 2
    assert (result.t_video, result.t_audio) == (6, 6)
    assert result.warnings == [f"{clip}: video timestamps restart at 3.0 s; the frames after it continue on a "
                               "monotone clock"]


def test_audio_sample_rate_change_restarts_the_resampler(tmp_path):
    clip = tmp_path / "rates.ts"
    clip.write_bytes(ts_piece(tmp_path / "a.ts", 44100, 440) + ts_piece(tmp_path / "b.ts", 48000, 1000, offset=3.1))
    frames, audio = Recorder(), Recorder(audio_rate=16000)
    result = run_pass(clip, [frames, audio])
    assert (result.t_video, result.t_audio) == (6, 6) and len(frames.frames) == 6
    assert 6 * 16000 <= len(audio.audio) < 6.2 * 16000
    assert peak_hz(audio.audio[8000:40000], 16000) == pytest.approx(440, abs=2)
    assert peak_hz(audio.audio[56000:88000], 16000) == pytest.approx(1000, abs=2)
    assert [w for w in result.warnings if "sample rate" in w] == [
        f"{clip}: audio sample rate changes from 44100 to 48000 Hz at 3.0 s; resampling restarts at the new rate"]


def test_an_extractor_error_stops_the_decoding_thread(make_clip):
    import threading

    class Failing(Recorder):
        def add_frame(self, index, frame):
            super().add_frame(index, frame)
            if len(self.frames) == 3:
                raise RuntimeError("model failed")

    before = threading.active_count()
    failing, audio = Failing(frame_rate=None), Recorder(audio_rate=16000)
    with pytest.raises(RuntimeError, match="model failed"):
        run_pass(make_clip("long.mp4", seconds=20, width=320, height=240), [failing, audio])
    assert threading.active_count() == before  # the decoding thread ended
    assert len(failing.frames) == 3 and len(audio.audio) < 20 * 16000  # it stopped early, not at the end
