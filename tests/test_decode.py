"""The decode pass: which frame each sample gets, T_video / T_audio, channel mean, streaming resampler."""
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import resampy

from feature_extraction.base import Extractor, InputError
from feature_extraction.decode import FrameClock, StreamResampler, run_pass
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


@pytest.mark.parametrize("sr_in,sr_out", [(44100, 16000), (48000, 16000), (22050, 16000), (8000, 16000), (44100, 22050)])
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
    class Frames(Recorder):
        def add_frame(self, index, frame):
            self.frames.append((frame.pts, frame.rgb().astype(np.int16)))

    rec = Frames(frame_rate=None)
    run_pass(make_clip("moving.mp4", seconds=3, motion=[(1, 2)], audio=False), [rec])
    moved = [t for (_, a), (t, b) in zip(rec.frames, rec.frames[1:]) if np.abs(b - a).max() > 40]
    assert moved and min(moved) > 1 and max(moved) <= 2.04
