"""One streaming decode pass over a video with PyAV: video and audio packets are demuxed together,
each decoded once, and handed to every extractor on its own clock (see base.py for the time axis).

Memory stays flat with video length: a clock holds one frame, and each audio rate holds a
resampling buffer of about one second.
"""
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import resampy

from feature_extraction.base import Frame, InputError, VideoInfo

AUDIO_FULL_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2.0**31, "s64": 2.0**63, "flt": 1.0, "dbl": 1.0}
VGGISH_RATE = 16000  # T_audio counts whole seconds at this rate


def exact(x):
    """A rate or offset as an exact fraction, so that `pts <= t` has no rounding ties."""
    return Fraction(x).limit_denominator(1_000_000)


class FrameClock:
    """Sample j = the last frame with pts <= offset + j / rate, for sample times before the end.

    A sample is decided once the next frame's pts is known (or at the end), so only one frame is held.
    """

    def __init__(self, rate, offset=0.0):
        self.rate, self.offset = exact(rate), exact(offset)
        self.next_index = 0
        self.held = None

    def _due(self, before):
        while self.held is not None and self.offset + self.next_index / self.rate < before:
            yield self.next_index, self.held
            self.next_index += 1

    def push(self, pts, frame):
        """Frame at `pts` (Fraction seconds); yields the (index, frame) samples decided by it."""
        yield from self._due(pts)
        self.held = frame

    def finish(self, end):
        """Yields the samples left before `end` (the end of the last frame)."""
        yield from self._due(end)


class StreamResampler:
    """resampy kaiser_best over a stream, equal (to float rounding) to resampling the whole signal.

    resampy restarts its time grid at every call, so each call starts at a multiple of
    sr_in / gcd(sr_in, sr_out) input samples, where input and output grids meet, and includes
    `context` samples on both sides of the block it keeps (at least the filter's reach). Before
    the start and after the end it sees zeros, exactly as resampy's truncated sums do.
    """

    def __init__(self, sr_in, sr_out, block_seconds=1.0):
        self.sr_in, self.sr_out = int(sr_in), int(sr_out)
        g = math.gcd(self.sr_in, self.sr_out)
        self.step_in, self.step_out = self.sr_in // g, self.sr_out // g
        window, num_table, _ = resampy.filters.get_filter("kaiser_best")
        scale = min(1.0, self.sr_out / self.sr_in)
        reach = len(window) // int(scale * num_table) + 1
        self.context = math.ceil(reach / self.step_in) * self.step_in
        self.block = max(1, round(block_seconds * self.sr_in / self.step_in)) * self.step_in
        self.buf = np.zeros(self.context)  # starts with the zeros before the signal
        self.buf_start = -self.context  # absolute input index of buf[0]
        self.kept_to = 0  # input index where the next kept block starts (a multiple of step_in)
        self.n_in = 0
        self.n_out = 0

    def _run(self, n_keep):
        a = self.kept_to - self.context - self.buf_start
        segment = self.buf[a : a + self.context + n_keep + self.context]
        y = resampy.resample(segment, self.sr_in, self.sr_out, filter="kaiser_best")
        first = self.context // self.step_in * self.step_out
        out = y[first : first + n_keep // self.step_in * self.step_out]
        self.kept_to += n_keep
        drop = self.kept_to - self.context - self.buf_start
        self.buf, self.buf_start = self.buf[drop:], self.buf_start + drop
        return out

    def push(self, x):
        """Next native samples (1-D); returns the float32 output samples now final."""
        if self.sr_in == self.sr_out:
            self.n_in += len(x)
            self.n_out += len(x)
            return x.astype(np.float32)
        self.buf = np.concatenate([self.buf, x])
        self.n_in += len(x)
        out = []
        while self.n_in - self.kept_to >= self.block + self.context:
            out.append(self._run(self.block))
        return self._emit(out)

    def finish(self):
        """The remaining output samples; the total is resampy's length int(n_in * sr_out / sr_in)."""
        if self.sr_in == self.sr_out:
            return np.zeros(0, np.float32)
        total = int(self.n_in * float(self.sr_out) / float(self.sr_in))
        n_keep = math.ceil((self.n_in - self.kept_to) / self.step_in) * self.step_in
        pad = self.kept_to + n_keep + self.context - (self.buf_start + len(self.buf))
        self.buf = np.concatenate([self.buf, np.zeros(pad)])
        out = self._run(n_keep) if n_keep else np.zeros(0)
        return self._emit([out[: max(0, total - self.n_out)]])

    def _emit(self, parts):
        out = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        self.n_out += len(out)
        return out


def audio_to_mono(frame):
    """(samples,) float64: the channel mean of one decoded audio frame of any sample format."""
    a = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        a = a.reshape(-1, channels).T
    name = frame.format.name.rstrip("p")
    a = a.astype(np.float64)
    if name == "u8":
        a -= 128.0
    return a.mean(axis=0) / AUDIO_FULL_SCALE[name]


def frame_seconds(frame, stream):
    return None if frame.pts is None else Fraction(frame.pts) * stream.time_base


def error_text(e):
    """'Invalid data found when processing input' rather than the errno and path around it."""
    return getattr(e, "strerror", None) or str(e)


def open_video(path, threads=0):
    """(container, video stream or None, audio stream or None, VideoInfo); InputError if unreadable."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise InputError(f"cannot open: {error_text(e)}") from None
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    vstream = videos[0] if videos else None
    astream = container.streams.audio[0] if container.streams.audio else None
    if vstream is None and astream is None:
        container.close()
        raise InputError("no video or audio stream")
    if vstream is not None:
        vstream.thread_type = "AUTO"
        vstream.codec_context.thread_count = threads
    rate = vstream.average_rate if vstream is not None else None
    info = VideoInfo(
        path=path,
        vid=path.stem,
        fps=float(rate) if rate else 0.0,
        width=vstream.codec_context.width if vstream is not None else 0,
        height=vstream.codec_context.height if vstream is not None else 0,
        has_video=vstream is not None,
        has_audio=astream is not None,
    )
    return container, vstream, astream, info


@dataclass
class PassResult:
    info: VideoInfo
    t_video: int  # floor(end of the last decoded frame), capped by max_seconds
    t_audio: int  # floor(decoded samples / 16000 at 16 kHz)
    seconds_decoded: float


def run_pass(path, extractors, max_seconds=None, threads=0):
    """Decode `path` once and feed every extractor (begin, add_frame, add_audio); the caller calls end().

    Raises InputError when the file cannot be opened or decoding fails.
    """
    path = Path(path)
    container, vstream, astream, info = open_video(path, threads)
    limit = exact(max_seconds) if max_seconds else None
    for e in extractors:
        e.begin(info)
    framed = [e for e in extractors if e.wants_frames and vstream is not None]
    every_frame = [e for e in framed if e.frame_rate is None]
    clocks = {}  # (rate, offset) -> (FrameClock, extractors on it)
    for e in framed:
        if e.frame_rate is not None:
            key = (exact(e.frame_rate), exact(e.frame_offset))
            clocks.setdefault(key, (FrameClock(*key), []))[1].append(e)
    listeners = {}  # rate -> extractors
    for e in extractors:
        if e.audio_rate and astream is not None:
            listeners.setdefault(int(e.audio_rate), []).append(e)

    video_on = bool(framed)
    audio_on = bool(listeners)
    first_pts = last_pts = last_dur = None
    n_frames = 0
    sr = None
    resamplers = {}
    n_native = 0

    def feed_frame(pts, vframe):
        nonlocal n_frames
        frame = Frame(float(pts), lambda: vframe.to_ndarray(format="rgb24"))
        for e in every_frame:
            e.add_frame(n_frames, frame)
        n_frames += 1
        for clock, users in clocks.values():
            for j, f in clock.push(pts, frame):
                for e in users:
                    e.add_frame(j, f)

    def feed_audio(mono):
        for rate, users in listeners.items():
            chunk = resamplers[rate].push(mono)
            if len(chunk):
                for e in users:
                    e.add_audio(chunk)

    streams = [s for s, on in ((vstream, video_on), (astream, audio_on)) if on]
    position = 0.0
    try:
        for packet in container.demux(streams):
            if not (video_on or audio_on):
                break
            if packet.stream is vstream and video_on:
                for vframe in packet.decode():
                    t = frame_seconds(vframe, vstream)
                    if t is not None and first_pts is None:
                        first_pts = t
                    if t is not None:
                        pts = t - first_pts
                    elif last_pts is not None and last_dur:
                        pts = last_pts + last_dur  # no timestamp: one frame after the previous
                    else:
                        continue
                    if last_pts is not None and pts <= last_pts:
                        continue  # a repeated or out-of-order timestamp
                    if limit is not None and pts >= limit:
                        video_on = False
                        break
                    if last_pts is not None:
                        last_dur = pts - last_pts
                    if vframe.duration:
                        last_dur = Fraction(vframe.duration) * vstream.time_base
                    last_pts = pts
                    position = float(pts)
                    feed_frame(pts, vframe)
            elif packet.stream is astream and audio_on:
                for aframe in packet.decode():
                    if sr is None:
                        sr = aframe.sample_rate
                        resamplers = {rate: StreamResampler(sr, rate) for rate in listeners}
                    elif aframe.sample_rate != sr:
                        raise InputError(f"audio sample rate changes from {sr} to {aframe.sample_rate} Hz")
                    mono = audio_to_mono(aframe)
                    if limit is not None:
                        mono = mono[: max(0, math.floor(limit * sr) - n_native)]
                        if n_native + len(mono) >= limit * sr:
                            audio_on = False
                    n_native += len(mono)
                    position = max(position, n_native / sr)
                    feed_audio(mono)
                    if not audio_on:
                        break
    except av.FFmpegError as e:
        raise InputError(f"decode failed near {position:.1f} s: {error_text(e)}") from None
    finally:
        container.close()

    end = last_pts + (last_dur or 0) if last_pts is not None else Fraction(0)
    if limit is not None:
        end = min(end, limit)
    for clock, users in clocks.values():
        for j, f in clock.finish(end):
            for e in users:
                e.add_frame(j, f)
    for rate, users in listeners.items():
        if rate in resamplers:
            chunk = resamplers[rate].finish()
            if len(chunk):
                for e in users:
                    e.add_audio(chunk)
    t_audio = (n_native * VGGISH_RATE // sr) // VGGISH_RATE if sr else 0
    return PassResult(info, math.floor(end), t_audio, max(float(end), n_native / sr if sr else 0.0))
