"""Decoding on the GPU's video decoder (NVDEC) for --device cuda, through PyAV's own FFmpeg.

PyAV's bundled FFmpeg has NVDEC hwaccels (h264, hevc, vp8, vp9, av1, mpeg1/2/4, vc1, mjpeg), so no
extra package is needed. Opened with `HWAccel("cuda", is_hw_owned=True)`, every frame is decoded on
the GPU and stays there; only the frames some feature samples are copied to the host (PyAV's
reformatter downloads them) and converted to RGB by the same swscale call as the CPU pass. H.264
decoding is bit-exact, so the features equal the CPU pass's. The pass is decode.py's own
(VideoSide, AudioSide, Handoff, decode); only the container is opened with the hwaccel.

Where NVDEC cannot be had (no NVIDIA driver, a CPU-only machine), `gpu_decoder` prints one notice
and extract.py decodes with PyAV on the CPU; a codec that NVDEC does not take is decoded in software
by FFmpeg, with a notice naming the video.
"""
import functools
import math
import sys
import threading
from pathlib import Path

import av
from av.codec.hwaccel import HWAccel

from feature_extraction import decode
from feature_extraction.base import InputError


def gpu_decoder(device):
    """An HWAccel for NVDEC on torch device `device` (cuda or cuda:N), or None after a one-line notice
    when this machine's FFmpeg cannot open that GPU's decoder."""
    import torch

    index = torch.device(device).index or 0
    hwaccel = HWAccel("cuda", device=str(index), allow_software_fallback=True, is_hw_owned=True)
    try:
        hwaccel.create(av.Codec("h264", "r"))  # opens the device once, as each video will
    except Exception as e:
        print(f"notice: --device {device}: no NVDEC video decoder here ({type(e).__name__}: {e}); "
              "decoding with PyAV on the CPU", file=sys.stderr)
        return None
    return hwaccel


def pass_for(device):
    """The decode pass for torch device `device`: this module's run_pass with NVDEC for a CUDA device whose
    decoder opens, else decode.run_pass (PyAV on the CPU)."""
    import torch

    hwaccel = gpu_decoder(device) if torch.device(device).type == "cuda" else None
    return functools.partial(run_pass, hwaccel=hwaccel) if hwaccel is not None else decode.run_pass


def open_video(path, threads, hwaccel):
    """decode.open_video's (container, video stream, audio stream, VideoInfo), the video decoded by `hwaccel`."""
    probe, *streams, info = decode.open_video(path, threads)  # the CPU pass's checks, streams and VideoInfo
    indices = [s.index if s is not None else None for s in streams]
    probe.close()
    try:
        container = av.open(str(path), hwaccel=hwaccel)
    except (av.FFmpegError, OSError) as e:
        raise InputError(f"cannot open: {decode.error_text(e)}") from None
    vstream, astream = (container.streams[i] if i is not None else None for i in indices)
    if vstream is not None:
        vstream.codec_context.thread_count = threads
        if hwaccel is not None and not vstream.codec_context.is_hwaccel:
            print(f"notice: {path}: NVDEC does not decode {vstream.codec_context.name}; decoding it on the CPU",
                  file=sys.stderr)
    return container, vstream, astream, info


def run_pass(path, extractors, max_seconds=None, threads=0, hwaccel=None):
    """decode.run_pass, with the video decoded by `hwaccel` (None: FFmpeg's software decoders)."""
    path = Path(path)
    container, vstream, astream, info = open_video(path, threads, hwaccel)
    limit = decode.exact(max_seconds) if max_seconds else None
    for e in extractors:
        e.begin(info)
    frame_bytes = max(1, info.width * info.height * 3)
    handoff = decode.Handoff(min(64, max(2, decode.HANDOFF_BYTES // frame_bytes)))
    video = decode.VideoSide(path, vstream, extractors, limit, handoff.send)
    audio = decode.AudioSide(path, astream, extractors, limit, handoff.send)
    decoder = threading.Thread(target=decode.decode, args=(container, video, audio, handoff), name="decode",
                               daemon=True)
    with decode.blas().limit(limits=1, user_api="blas"):
        decoder.start()
        try:
            handoff.run()
        finally:
            handoff.stopped.set()
            decoder.join()
    return decode.PassResult(info, math.floor(video.end), audio.t_audio, max(float(video.end), audio.position),
                             video.warnings + audio.warnings)
