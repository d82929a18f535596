"""Small synthetic clips for the metrics tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def moving_frames(count: int, width: int = 128, height: int = 128) -> list[np.ndarray]:
    """Smooth colour ramps with a drifting wave, (height, width, 3) uint8: easy for every codec."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = []
    for i in range(count):
        r = 40 + 160 * x / width + 2 * i
        g = 40 + 160 * y / height
        b = 120 + 60 * np.sin((x + y + 3 * i) / 9.0)
        frames.append(np.stack([r, g, b], axis=-1).round().astype(np.uint8))
    return frames


def write_y4m(path: Path, frames: list[np.ndarray], rate: Fraction = Fraction(30)) -> Path:
    from promptus_codec.media import Y4MWriter

    height, width = frames[0].shape[:2]
    with Y4MWriter(str(path), width, height, rate) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def write_pngs(path: Path, frames: list[np.ndarray]) -> Path:
    """Lossless RGB frames, so a test knows every pixel the reader returns."""
    from promptus_codec.media import PngDirWriter

    with PngDirWriter(str(path)) as writer:
        for frame in frames:
            writer.write(frame)
    return path
