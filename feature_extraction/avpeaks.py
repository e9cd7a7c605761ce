"""AV-Align peaks (token `avpeaks`), as the corrected 2025 AV-Align of Yariv et al. (TempoTokens av_align.py).

Video: every frame at the native frame rate and resolution, grayscale, Farneback between consecutive
frames, mean magnitude per frame (the first value duplicated); peaks are local maxima
a[i-1] < a[i] > a[i+1] with a[i] >= 0.1, at i / fps. Audio: librosa.onset.onset_detect with its
defaults on mono audio at 22,050 Hz, in seconds. Stored so that evaluation needs no raw media:
av_peaks/video/<id>.npy and av_peaks/audio/<id>.npy (float64 seconds), av_peaks/video/<id>.json {"fps", "duration"}.
The metric itself is vmr.metrics.av_align.
"""
import numpy as np

from feature_extraction.base import Extractor, InputError
from feature_extraction.optical_flow import FARNEBACK, farneback, mean_magnitude

AUDIO_RATE = 22050
MIN_PEAK = 0.1


def motion_peaks(values, fps, min_value=MIN_PEAK):
    """Times (s) of strict local maxima >= min_value of a per-frame motion curve."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) < 3:
        return np.zeros(0)
    i = np.flatnonzero((a[1:-1] > a[:-2]) & (a[1:-1] > a[2:]) & (a[1:-1] >= min_value)) + 1
    return i / fps


def onset_times(audio, sr=AUDIO_RATE):
    """librosa onset times (s) with default settings."""
    import librosa

    return np.asarray(librosa.onset.onset_detect(y=np.asarray(audio, dtype=np.float32), sr=sr, units="time"),
                      dtype=np.float64)


def add_arguments(parser):
    """avpeaks has no flags of its own: the definition is fixed so scores stay comparable."""


def build(args):
    return AVPeaksExtractor()


class AVPeaksExtractor(Extractor):
    token = "avpeaks"
    frame_rate = None  # every decoded frame
    audio_rate = AUDIO_RATE
    needs_audio = True

    def outputs(self):
        import librosa

        options = {"farneback": list(FARNEBACK), "min_peak": MIN_PEAK, "audio_rate": AUDIO_RATE,
                   "onsets": f"librosa {librosa.__version__} onset_detect defaults", "variant": "av_align 2025"}
        return {"av_peaks": {"model": "farneback peaks + librosa onsets", "checkpoint": None, "sha256": None,
                             "weights": None, "options": options, "rate": None}}

    def files(self, vid):
        return [f"av_peaks/video/{vid}.npy", f"av_peaks/video/{vid}.json", f"av_peaks/audio/{vid}.npy"]

    def begin(self, info):
        self.vid, self.fps = info.vid, info.fps
        self.prev, self.values, self.audio = None, [], []

    def add_frame(self, index, frame):
        gray = frame.gray()
        if self.prev is not None:
            self.values.append(mean_magnitude(farneback(self.prev, gray)))
        self.prev = gray

    def add_audio(self, samples):
        self.audio.append(samples)

    def end(self, t_video, t_audio):
        if not self.values or not self.fps:
            raise InputError("avpeaks: needs at least 2 video frames and a known frame rate")
        if not self.audio:
            raise InputError("avpeaks: no audio")
        video = motion_peaks(self.values[:1] + self.values, self.fps)
        audio = onset_times(np.concatenate(self.audio))
        return {f"av_peaks/video/{self.vid}.npy": video, f"av_peaks/video/{self.vid}.json": {"fps": self.fps, "duration": (len(self.values) + 1) / self.fps},
                f"av_peaks/audio/{self.vid}.npy": audio}
