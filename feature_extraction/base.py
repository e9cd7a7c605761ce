"""The contract between the single decode pass (extract.py) and each feature.

Time axis, the same for every feature: each stream's t = 0 is its first decoded frame or
sample, and row t of every per-second array describes second [t, t+1).
T_video = floor(end of the last decoded frame) and T_audio = floor(decoded samples / 16000),
never the container's header duration. Consumers use rows [0, min(T_video, T_audio)) and warn
(`time_axis_warning`) when the two differ by more than 1.

The pass decodes a video once and hands each extractor only what it asked for:
- frames sampled on its own clock (`frame_rate`, `frame_offset`): sample j is the last decoded
  frame with pts <= frame_offset + j / frame_rate, for every sample time before the end of the
  last frame; `frame_rate = None` means every decoded frame; `wants_frames = False` means none;
- mono float32 audio resampled to `audio_rate` (resampy kaiser_best), in consecutive chunks.
Frames are turned upright as the stream's display matrix says before any extractor sees them.
An extractor returns its files from `end()`; the pass writes them temp-then-rename.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class InputError(Exception):
    """A problem with one input video (reported as `path: reason`; the run goes on)."""


def time_axis_warning(name, t_video, t_audio):
    """The one-line warning for a video whose T_video and T_audio (seconds, or row counts of its
    video and audio features) differ by more than 1, else None. Print it once per video."""
    if abs(t_video - t_audio) <= 1:
        return None
    return (f"{name}: video {t_video} s and audio {t_audio} s differ by more than 1 s; "
            f"only the first {min(t_video, t_audio)} s are paired")


@dataclass
class VideoInfo:
    path: Path
    vid: str  # Path(path).stem
    fps: float  # average frame rate of the video stream (0.0 when unknown or no video)
    width: int  # of the coded frames, before the display rotation the frames get
    height: int
    has_video: bool
    has_audio: bool


class Frame:
    """One decoded frame. Pixel conversion happens only when asked, and only once."""

    def __init__(self, pts, to_rgb):
        self.pts = pts  # seconds since the first decoded frame
        self._to_rgb = to_rgb
        self._rgb = None

    def rgb(self):
        """(H, W, 3) uint8 RGB at the native resolution, turned upright."""
        if self._rgb is None:
            self._rgb, self._to_rgb = self._to_rgb(), None  # the decoded frame is no longer needed
        return self._rgb

    def gray(self):
        """(H, W) uint8 luma, as OpenCV's RGB2GRAY computes it."""
        import cv2

        return cv2.cvtColor(self.rgb(), cv2.COLOR_RGB2GRAY)


class Extractor:
    """One FEATURES token. Subclasses set the class attributes and implement the hooks.

    A module that provides a token defines `add_arguments(parser)` (its own CLI flags) and
    `build(args) -> Extractor`, which reads no weights: `load()` does, so that a run whose
    outputs all exist loads no model.
    """

    token = ""
    wants_frames = True  # False: never receives frames
    frame_rate = 1.0  # samples per second; None: every decoded frame
    frame_offset = 0.0  # seconds added to each sample time
    audio_rate = None  # Hz of the mono float32 audio it receives; None: no audio
    needs_audio = False  # True: a video without an audio stream is a failure for this token

    def outputs(self):
        """{folder: provenance dict} written once per folder as OUT/<folder>/_feature.json.

        The dict holds model, checkpoint, sha256, weights ('official' or 'random'), options and
        rate; a later run whose dict differs refuses to write into the same folder.
        """
        raise NotImplementedError

    def files(self, vid):
        """Paths relative to OUT that `end()` writes for video `vid` (used to skip finished work)."""
        raise NotImplementedError

    def load(self):
        """Read the weights, once: extract.py calls it (and times it) before the first video that
        needs this extractor; extractors with weights also call it from begin()."""

    def begin(self, info: VideoInfo):
        """Start a new video; drop all state of the previous one."""

    def add_frame(self, index, frame: Frame):
        """Sample `index` of this extractor's clock (or the running frame index)."""

    def add_audio(self, samples: np.ndarray):
        """The next chunk of mono float32 audio at `audio_rate`."""

    def end(self, t_video, t_audio):
        """Finish the video. Returns {relative path: content}; content is an ndarray (.npy),
        a dict (.json) or bytes (e.g. a .png). Raise InputError for a per-video problem."""
        raise NotImplementedError
