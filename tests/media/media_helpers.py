"""Helpers for the media tests: small synthetic frames, and files made with PyAV directly.

Importing it skips the importing test module when PyAV is not installed.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def gradient_frames(count: int, width: int = 64, height: int = 48) -> list[np.ndarray]:
    """Smooth moving colour ramps, (height, width, 3) uint8; lossy codecs keep them well."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = []
    for i in range(count):
        r = 40 + 160 * x / width + 2 * i
        g = 40 + 160 * y / height
        b = 120 + 60 * np.sin((x + y + 3 * i) / 9.0)
        frames.append(np.stack([r, g, b], axis=-1).round().astype(np.uint8))
    return frames


def noise_frames(count: int, width: int = 64, height: int = 48, seed: int = 0) -> list[np.ndarray]:
    """Random frames, (height, width, 3) uint8: every pixel value matters."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def write_video(path, frames, codec: str, pix_fmt: str, rate=Fraction(25), options=None) -> None:
    """Write RGB frames with PyAV directly (not through the code under test)."""
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_image(path, rgb: np.ndarray, codec: str = "png") -> None:
    """Encode one RGB frame as a PNG ("png") or JPEG ("mjpeg") file."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height = rgb.shape[1], rgb.shape[0]
    ctx.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    packets = ctx.encode(frame) + ctx.encode(None)
    Path(path).write_bytes(b"".join(bytes(p) for p in packets))


def decoded_planes(path) -> list[list[np.ndarray]]:
    """The Y, Cb, Cr planes PyAV decodes from each frame of a y4m file."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out.append([np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes])
    return out
