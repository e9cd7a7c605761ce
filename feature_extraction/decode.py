"""One streaming decode pass over a video with PyAV: video and audio packets are demuxed together,
each decoded once, and handed to every extractor on its own clock (see base.py for the time axis).

`VideoSide` turns decoded frames into samples on each extractor's clock, `AudioSide` turns decoded
audio into mono chunks at each extractor's rate, and `decode` is the loop over packets that feeds
them. It runs on a thread of its own: the extractor calls the sides make are handed over
(`Handoff`) and run on the caller's thread, so decoding, colour conversion and resampling overlap
with the models instead of taking turns with them.
Memory stays flat with video length: a clock holds one frame, each audio rate holds a resampling
buffer of about one second, and the handoff holds a bounded number of frames.
"""
import functools
import math
import queue
import sys
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import resampy

from feature_extraction.base import Frame, InputError, VideoInfo

AUDIO_FULL_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2.0**31, "s64": 2.0**63, "flt": 1.0, "dbl": 1.0}
VGGISH_RATE = 16000  # T_audio counts whole seconds at this rate
RESET_SECONDS = 0.5  # a video timestamp that steps back further than this starts a new run of timestamps
# Smaller frames decode on one thread: FFmpeg's frame threads took 2.4x the CPU time of one thread for 320x240 H.264
# (0.15 s against 0.06 s a minute), while the networks keep every core busy and one thread already decodes over
# 1,000 such frames a second; from 720p on, frame threads keep decoding off the critical path.
FRAME_THREADS_PIXELS = 1280 * 720
BANK_COLUMNS = 32  # outputs per block of KaiserBest's product
MAX_BANK = 1 << 22  # largest polyphase weight matrix (float64 entries) KaiserBest builds; beyond it resampy runs
HANDOFF_BYTES = 256 << 20  # decoded frames waiting for the extractors, at most (and at least 2, at most 64 frames)


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


def kaiser_best_table(sr_in, sr_out):
    """(window, delta, num_table, step, reach) as resampy uses them for sr_in -> sr_out: the scaled
    kaiser_best table and its differences, table entries per input sample and per tap, and the most
    input samples an output weighs on each side."""
    window, num_table, _ = resampy.filters.get_filter("kaiser_best")
    ratio = sr_out / sr_in
    if ratio < 1:
        window = ratio * window
    step = int(min(1.0, ratio) * num_table)
    return window, np.diff(window, append=window[-1]), num_table, step, len(window) // step + 1


class KaiserBest:
    """`resampy.resample(x, sr_in, sr_out, filter="kaiser_best")` of a whole signal, as one matrix product.

    For sr_out / sr_in = up / down, output k lies at input time k down / up; its weights (resampy's
    table, linearly interpolated, over the filter's reach on both sides) depend only on where it
    falls between two input samples, which repeats every `up` outputs. The weights of a group of
    outputs (a multiple of `up`) are computed once, as resampy computes them, into a banded
    (span, group) matrix; each group is then the product of the `span` inputs it reads with that
    matrix, which costs a fraction of resampy's per-sample loop.
    """

    def __init__(self, sr_in, sr_out):
        self.sr_in, self.sr_out = sr_in, sr_out
        self.up, self.down, self.group, self.stride, self.span, self.before = self.shape(sr_in, sr_out)
        window, delta, num_table, step, _ = kaiser_best_table(sr_in, sr_out)
        scale = min(1.0, sr_out / sr_in)

        def wing(frac):  # resampy's weights of the inputs 0, 1, 2, ... samples away from the output
            index = frac * num_table
            offset = int(index)
            at = offset + step * np.arange((len(window) - offset) // step)
            return window[at] + (index - offset) * delta[at]

        self.bank = np.zeros((self.span, self.group))
        for j in range(self.group):
            n, frac = divmod(j * self.down, self.up)  # output j lies at input n + frac / up
            left, right = wing(scale * (frac / self.up)), wing(scale - scale * (frac / self.up))
            self.bank[n + self.before - np.arange(len(left)), j] = left  # inputs n, n - 1, ...
            self.bank[n + self.before + 1 + np.arange(len(right)), j] = right  # inputs n + 1, n + 2, ...
        # The matrix is banded: a column reads only 2 x reach of the span's rows. Columns are multiplied in blocks
        # of BANK_COLUMNS, each with only the rows it reads (44.1 -> 16 kHz: half the products).
        self.blocks = []
        for start in range(0, self.group, BANK_COLUMNS):
            columns = slice(start, min(start + BANK_COLUMNS, self.group))
            rows = np.flatnonzero(self.bank[:, columns].any(axis=1))
            lo, hi = (rows[0], rows[-1] + 1) if len(rows) else (0, 0)
            self.blocks.append((columns, lo, hi, np.ascontiguousarray(self.bank[lo:hi, columns])))

    @staticmethod
    def shape(sr_in, sr_out):
        """(up, down, outputs per group, inputs between groups, inputs a group reads, zeros in front)."""
        g = math.gcd(sr_in, sr_out)
        up, down = sr_out // g, sr_in // g
        reach = kaiser_best_table(sr_in, sr_out)[-1]
        repeats = max(1, math.ceil(2 * reach / down))  # a group reads at most twice the inputs it advances
        return up, down, up * repeats, down * repeats, down * repeats + 2 * reach - 1, reach - 1

    def __call__(self, x):
        n_out = int(len(x) * float(self.sr_out) / float(self.sr_in))  # resampy's length
        groups = -(-n_out // self.group)
        padded = np.zeros(max(self.before + len(x), self.stride * (groups - 1) + self.span))
        padded[self.before : self.before + len(x)] = x
        spans = np.lib.stride_tricks.sliding_window_view(padded, self.span)[:: self.stride][:groups]
        out = np.zeros((groups, self.group))
        for columns, lo, hi, weights in self.blocks:
            out[:, columns] = spans[:, lo:hi] @ weights
        return out.reshape(-1)[:n_out]


@functools.cache
def kaiser_best(sr_in, sr_out):
    """x -> resampy's kaiser_best resampling of the whole signal x: KaiserBest for every common rate,
    resampy itself for odd rates whose weight matrix would be large (e.g. 44056 Hz). Built once per pair of
    rates and process (the weights took 20 ms to build, a tenth of a minute of audio's decoding)."""
    _, _, group, _, span, _ = KaiserBest.shape(sr_in, sr_out)
    if group * span <= MAX_BANK:
        return KaiserBest(sr_in, sr_out)
    return lambda x: resampy.resample(x, sr_in, sr_out, filter="kaiser_best")


class StreamResampler:
    """kaiser_best over a stream, equal (to float rounding) to resampling the whole signal at once.

    Each block is resampled as a signal of its own, so each block starts at a multiple of
    sr_in / gcd(sr_in, sr_out) input samples, where input and output grids meet, and includes
    `context` samples on both sides of the part it keeps (at least the filter's reach). Before
    the start and after the end it sees zeros, exactly as resampy's truncated sums do.
    """

    def __init__(self, sr_in, sr_out, block_seconds=1.0):
        self.sr_in, self.sr_out = int(sr_in), int(sr_out)
        g = math.gcd(self.sr_in, self.sr_out)
        self.step_in, self.step_out = self.sr_in // g, self.sr_out // g
        reach = kaiser_best_table(self.sr_in, self.sr_out)[-1]
        self.context = math.ceil(reach / self.step_in) * self.step_in
        self.block = max(1, round(block_seconds * self.sr_in / self.step_in)) * self.step_in
        self.resample = kaiser_best(self.sr_in, self.sr_out) if self.sr_in != self.sr_out else None
        self.buf = np.zeros(self.context)  # starts with the zeros before the signal
        self.buf_start = -self.context  # absolute input index of buf[0]
        self.arrived = []  # chunks not yet in buf (joined once a block is complete)
        self.kept_to = 0  # input index where the next kept block starts (a multiple of step_in)
        self.n_in = 0
        self.n_out = 0

    def _run(self, n_keep):
        a = self.kept_to - self.context - self.buf_start
        y = self.resample(self.buf[a : a + self.context + n_keep + self.context])
        first = self.context // self.step_in * self.step_out
        out = y[first : first + n_keep // self.step_in * self.step_out]
        self.kept_to += n_keep
        drop = self.kept_to - self.context - self.buf_start
        self.buf, self.buf_start = self.buf[drop:], self.buf_start + drop
        return out

    def push(self, x):
        """Next native samples (1-D); returns the float32 output samples now final."""
        if self.resample is None:
            self.n_in += len(x)
            self.n_out += len(x)
            return x.astype(np.float32)
        self.arrived.append(x)
        self.n_in += len(x)
        out = []
        if self.n_in - self.kept_to >= self.block + self.context:
            self.buf, self.arrived = np.concatenate([self.buf, *self.arrived]), []
            while self.n_in - self.kept_to >= self.block + self.context:
                out.append(self._run(self.block))
        return self._emit(out)

    def finish(self):
        """The remaining output samples; the total is resampy's length int(n_in * sr_out / sr_in)."""
        if self.resample is None:
            return np.zeros(0, np.float32)
        total = int(self.n_in * float(self.sr_out) / float(self.sr_in))
        n_keep = math.ceil((self.n_in - self.kept_to) / self.step_in) * self.step_in
        pad = self.kept_to + n_keep + self.context - self.n_in
        self.buf, self.arrived = np.concatenate([self.buf, *self.arrived, np.zeros(pad)]), []
        out = self._run(n_keep) if n_keep else np.zeros(0)
        return self._emit([out[: max(0, total - self.n_out)]])

    def _emit(self, parts):
        out = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        self.n_out += len(out)
        return out


def audio_to_mono(frames):
    """(samples,) float64: the channel mean of decoded audio frames of one sample format and layout, joined."""
    first = frames[0]
    a = np.concatenate([f.to_ndarray() for f in frames], axis=1)
    channels = first.layout.nb_channels
    if not first.format.is_planar:
        a = a.reshape(-1, channels).T
    name = first.format.name.rstrip("p")
    a = a.astype(np.float64)
    if name == "u8":
        a -= 128.0
    return a.mean(axis=0) / AUDIO_FULL_SCALE[name]


def upright_rgb(frame):
    """(H, W, 3) uint8 RGB of a decoded video frame, turned as its display matrix says (as players
    and the ffmpeg CLI show it: a portrait phone video comes out portrait)."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = round(frame.rotation / 90) % 4  # counter-clockwise quarter turns
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def frame_seconds(frame, stream):
    return None if frame.pts is None else Fraction(frame.pts) * stream.time_base


def error_text(e):
    """'Invalid data found when processing input' rather than the errno and path around it."""
    return getattr(e, "strerror", None) or str(e)


def open_video(path, threads=0, hwaccel=None):
    """(container, video stream or None, audio stream or None, VideoInfo); InputError if unreadable.
    threads: the video decoder's threads; 0 = FFmpeg's frame threads (one per core) from FRAME_THREADS_PIXELS on,
    one thread below.
    hwaccel: a PyAV HWAccel the video is decoded with (feature_extraction/gpu_decode.py), None = software."""
    try:
        container = av.open(str(path), hwaccel=hwaccel)
    except (av.FFmpegError, OSError) as e:
        raise InputError(f"cannot open: {error_text(e)}") from None
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    vstream = videos[0] if videos else None
    astream = container.streams.audio[0] if container.streams.audio else None
    if vstream is None and astream is None:
        container.close()
        raise InputError("no video or audio stream")
    if vstream is not None:
        if threads == 0 and vstream.codec_context.width * vstream.codec_context.height < FRAME_THREADS_PIXELS:
            threads = 1
        vstream.thread_type = "AUTO"
        vstream.codec_context.thread_count = threads
        if hwaccel is not None and not vstream.codec_context.is_hwaccel:
            print(f"notice: {path}: NVDEC does not decode {vstream.codec_context.name}; decoding it on the CPU",
                  file=sys.stderr)
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


class VideoSide:
    """Decoded frames -> Frame objects on a monotone clock -> each extractor's samples.

    pts counts from the first decoded frame. A frame whose timestamp steps back by more than
    RESET_SECONDS starts a new run of timestamps (e.g. concatenated streams): the clock goes on one
    frame after the previous frame, and `warnings` names the second. Smaller steps back (a repeated
    or reordered timestamp) drop the frame. A frame without a timestamp comes one frame after the
    previous one. Only frames handed to an extractor are converted to RGB (and turned upright),
    here, on the decoding thread; `send` passes on the extractor calls.
    """

    def __init__(self, path, stream, extractors, limit, send):
        self.path, self.stream, self.limit, self.send = path, stream, limit, send
        framed = [e for e in extractors if e.wants_frames] if stream is not None else []
        self.every_frame = [e for e in framed if e.frame_rate is None]
        self.clocks = {}  # (rate, offset) -> (FrameClock, extractors on it)
        for e in framed:
            if e.frame_rate is not None:
                key = (exact(e.frame_rate), exact(e.frame_offset))
                self.clocks.setdefault(key, (FrameClock(*key), []))[1].append(e)
        self.on = bool(framed)
        self.first = None  # raw timestamp of the first frame
        self.shift = Fraction(0)  # added to raw timestamps after resets
        self.last = self.last_duration = None
        self.count = 0
        self.end = Fraction(0)  # end of the last frame, capped at the limit (set by finish)
        self.warnings = []

    @property
    def position(self):
        return float(self.last or 0)

    def _clock_time(self, frame):
        """Seconds on the monotone clock, or None to drop the frame."""
        raw = frame_seconds(frame, self.stream)
        if raw is None:
            return self.last + self.last_duration if self.last is not None and self.last_duration else None
        if self.first is None:
            self.first = raw
        pts = raw - self.first + self.shift
        if self.last is not None and pts <= self.last:
            if self.last - pts <= RESET_SECONDS:
                return None  # a repeated or out-of-order timestamp
            step = self.last_duration or 1 / exact(self.stream.average_rate or 25)  # 25: no rate known
            self.shift += self.last + step - pts
            pts = self.last + step
            self.warnings.append(f"{self.path}: video timestamps restart at {float(pts):.1f} s; "
                                 "the frames after it continue on a monotone clock")
        return pts

    def add(self, frame):
        pts = self._clock_time(frame)
        if pts is None:
            return
        if self.limit is not None and pts >= self.limit:
            self.on = False
            return
        if self.last is not None:
            self.last_duration = pts - self.last
        if frame.duration:
            self.last_duration = Fraction(frame.duration) * self.stream.time_base
        self.last = pts
        sample = Frame(float(pts), lambda: upright_rgb(frame))
        calls = [(e.add_frame, self.count, sample) for e in self.every_frame]
        self.count += 1
        for clock, users in self.clocks.values():
            calls += [(e.add_frame, j, f) for j, f in clock.push(pts, sample) for e in users]
        self._send(calls)

    def finish(self):
        """Hands out the last samples and sets `end`, the end of the last frame (capped at the limit)."""
        end = self.last + (self.last_duration or 0) if self.last is not None else Fraction(0)
        self.end = min(end, self.limit) if self.limit is not None else end
        self._send([(e.add_frame, j, f) for clock, users in self.clocks.values()
                    for j, f in clock.finish(self.end) for e in users])

    def _send(self, calls):
        for _, _, frame in calls:
            frame.rgb()
        if calls:
            self.send(calls)


class AudioSide:
    """Decoded audio -> channel mean -> resampled to each rate an extractor asked for, in chunks.

    Time counts decoded samples, so it is monotone whatever the timestamps say. When the sample
    rate changes mid-stream, the resamplers are flushed and restart at the new rate (a warning says
    where), so each extractor still gets one continuous signal.
    """

    def __init__(self, path, stream, extractors, limit, send):
        self.path, self.stream, self.limit, self.send = path, stream, limit, send
        self.listeners = {}  # rate -> extractors
        for e in extractors:
            if e.audio_rate and stream is not None:
                self.listeners.setdefault(int(e.audio_rate), []).append(e)
        self.on = bool(self.listeners)
        self.rate = None  # native rate of the current run of samples
        self.samples = 0  # native samples of the current run
        self.resamplers = {}
        self.pending, self.pending_samples, self.pending_kind = [], 0, None  # frames not yet converted
        self.earlier_seconds = Fraction(0)  # length of the runs before the current one
        self.earlier_16k = 0  # their samples at 16 kHz
        self.warnings = []

    @property
    def seconds(self):
        return self.earlier_seconds + (Fraction(self.samples, self.rate) if self.rate else 0)

    @property
    def position(self):
        return float(self.seconds)

    @property
    def t_audio(self):
        """floor(decoded samples at 16 kHz / 16000), each run of one native rate counted on its own."""
        current = self.samples * VGGISH_RATE // self.rate if self.rate else 0
        return (self.earlier_16k + current) // VGGISH_RATE

    def _feed(self, chunks):
        calls = [(e.add_audio, chunk) for rate, chunk in chunks if len(chunk) for e in self.listeners[rate]]
        if calls:
            self.send(calls)

    def _start(self, rate):
        if self.rate is not None:
            self.warnings.append(f"{self.path}: audio sample rate changes from {self.rate} to {rate} Hz at "
                                 f"{self.position:.1f} s; resampling restarts at the new rate")
            self.finish()
            self.earlier_seconds = self.seconds
            self.earlier_16k += self.samples * VGGISH_RATE // self.rate
        self.rate, self.samples = rate, 0
        self.resamplers = {out: StreamResampler(rate, out) for out in self.listeners}

    def add(self, frame):
        """Takes one decoded frame; frames are converted and resampled about a second at a time (per frame, the
        numpy calls cost twice the decoding)."""
        kind = (frame.sample_rate, frame.format.name, frame.layout.nb_channels)
        if self.pending and kind != self.pending_kind:
            self._flush()
        if frame.sample_rate != self.rate:
            self._start(frame.sample_rate)
        self.pending_kind = kind
        n = frame.samples
        if self.limit is not None:
            room = math.floor((self.limit - self.earlier_seconds) * self.rate) - self.samples
            n = max(0, min(n, room))
            self.on = n < room
        if n:
            self.pending.append(frame)
            self.pending_samples += n
            self.samples += n
        if self.pending_samples >= self.rate or not self.on:
            self._flush()

    def _flush(self):
        """Converts and resamples the frames taken since the last flush (their first pending_samples samples)."""
        if self.pending:
            mono = audio_to_mono(self.pending)[: self.pending_samples]
            self.pending, self.pending_samples = [], 0
            self._feed((out, r.push(mono)) for out, r in self.resamplers.items())

    def finish(self):
        """Hands out the resamplers' last samples."""
        self._flush()
        self._feed((out, r.finish()) for out, r in self.resamplers.items())
        self.resamplers = {}


@dataclass
class PassResult:
    info: VideoInfo
    t_video: int  # floor(end of the last decoded frame), capped by max_seconds
    t_audio: int  # floor(decoded samples / 16000 at 16 kHz)
    seconds_decoded: float
    warnings: list = field(default_factory=list)  # one line each, `path: what happened`


class Stopped(Exception):
    """The caller stopped taking extractor calls (an extractor raised): decoding ends."""


class Handoff:
    """Extractor calls made on the decoding thread, run in order on the caller's thread.

    Each item is the list of calls for one decoded frame or audio chunk; at most `size` items wait,
    which bounds both the memory in flight and how far decoding runs ahead of the models.
    """

    DONE = None

    def __init__(self, size):
        self.queue = queue.Queue(size)
        self.stopped = threading.Event()
        self.error = None  # what ended the decoding thread, re-raised on the caller's thread

    def send(self, calls):
        """On the decoding thread: waits for room; raises Stopped once the caller stopped."""
        while not self.stopped.is_set():
            try:
                return self.queue.put(calls, timeout=0.05)
            except queue.Full:
                pass
        raise Stopped

    def run(self):
        """On the caller's thread: runs the calls until the decoding thread is done."""
        while (calls := self.queue.get()) is not self.DONE:
            for method, *args in calls:
                method(*args)
        if self.error is not None:
            raise self.error


def decode(container, video, audio, handoff):
    """The decoding thread: each packet of the streams some extractor uses goes to its side, then
    the sides hand out their last samples. A decoding failure is kept as an InputError for the caller."""
    sides = {side.stream.index: side for side in (video, audio) if side.on}
    try:
        packets = container.demux([side.stream for side in sides.values()]) if sides else []
        for packet in packets:
            side = sides[packet.stream.index]
            for frame in packet.decode():
                if not side.on:
                    break
                side.add(frame)
            if not (video.on or audio.on):
                break
        video.finish()
        audio.finish()
    except av.FFmpegError as e:
        handoff.error = InputError(f"decode failed near {max(video.position, audio.position):.1f} s: {error_text(e)}")
    except Stopped:
        return
    except BaseException as e:  # a bug here must reach the caller, not end with the thread
        handoff.error = e
    finally:
        container.close()
    try:
        handoff.send(Handoff.DONE)
    except Stopped:
        pass


@functools.cache
def blas():
    """threadpoolctl's controller of numpy's BLAS (torch has its own threads)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def run_pass(path, extractors, max_seconds=None, threads=0, hwaccel=None):
    """Decode `path` once and feed every extractor (begin, add_frame, add_audio, all called on this
    thread); the caller calls end(). Raises InputError when the file cannot be opened or decoding fails.
    hwaccel: decode the video on the GPU (see open_video), None = FFmpeg's software decoders.

    numpy's BLAS runs on one thread meanwhile: its products here (resampling, log-mel) are small and
    run beside torch's threads and the decoding thread, and more BLAS threads fight them for the
    cores (a 1 ms resampling product took 40 ms on a busy 2-core machine).
    """
    path = Path(path)
    container, vstream, astream, info = open_video(path, threads, hwaccel)
    limit = exact(max_seconds) if max_seconds else None
    for e in extractors:
        e.begin(info)
    frame_bytes = max(1, info.width * info.height * 3)
    handoff = Handoff(min(64, max(2, HANDOFF_BYTES // frame_bytes)))
    video = VideoSide(path, vstream, extractors, limit, handoff.send)
    audio = AudioSide(path, astream, extractors, limit, handoff.send)
    decoder = threading.Thread(target=decode, args=(container, video, audio, handoff), name="decode", daemon=True)
    with blas().limit(limits=1, user_api="blas"):
        decoder.start()
        try:
            handoff.run()
        finally:
            handoff.stopped.set()
            decoder.join()
    return PassResult(info, math.floor(video.end), audio.t_audio, max(float(video.end), audio.position),
                      video.warnings + audio.warnings)
