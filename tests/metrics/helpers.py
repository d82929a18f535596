"""Small synthetic clips for the metrics tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from media.media_helpers import gradient_frames


def moving_frames(count: int, width: int = 128, height: int = 128) -> list[np.ndarray]:
    """Smooth colour ramps with a drifting wave, (height, width, 3) uint8: easy for every codec."""
    return gradient_frames(count, width, height)


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
