"""Decoding on the GPU's video decoder (NVDEC) for --device cuda, through PyAV's own FFmpeg.

PyAV's bundled FFmpeg has NVDEC hwaccels (h264, hevc, vp8, vp9, av1, mpeg1/2/4, vc1, mjpeg), so no
extra package is needed. Opened with `HWAccel("cuda", is_hw_owned=True)`, every frame is decoded on
the GPU and stays there; only the frames some feature samples are copied to the host (PyAV's
reformatter downloads them) and converted to RGB by the same swscale call as the CPU pass. H.264
decoding is bit-exact, so the features equal the CPU pass's. The pass is decode.run_pass itself; only
the container is opened with the hwaccel.

Where NVDEC cannot be had (no NVIDIA driver, a CPU-only machine), `gpu_decoder` prints one notice
and extract.py decodes with PyAV on the CPU; a codec that NVDEC does not take is decoded in software
by FFmpeg, with a notice naming the video.
"""
import functools
import sys

import av
from av.codec.hwaccel import HWAccel

from feature_extraction import decode


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
    """The decode pass for torch device `device`: decode.run_pass with NVDEC for a CUDA device whose decoder
    opens, else decode.run_pass with FFmpeg's software decoders (PyAV on the CPU)."""
    import torch

    hwaccel = gpu_decoder(device) if torch.device(device).type == "cuda" else None
    return functools.partial(decode.run_pass, hwaccel=hwaccel) if hwaccel is not None else decode.run_pass
