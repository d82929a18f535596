"""The ReconThumbnail fingerprint of a frame (format_spec.md §6.8.1), in numpy: no torch.

    frame RGB uint8 (H, W, 3)
      --quality.luma (BT.601 limited range, binary64, rounded half up)--> Y uint8 (H, W)
      --area mean over a T_h x T_w grid, integers only, rounded half up--> (T_h, T_w) uint8

Cell (i, j) covers rows floor(i*H/T_h) .. floor((i+1)*H/T_h) - 1 and the columns alike, so
cells tile the frame exactly even when T does not divide the side. Its value is
floor((2*S + N) / (2*N)) for the sum S of its N luma samples. Every step is exact or
correctly rounded, so any decoder recomputes the encoder's bytes from the same frame.

The encoder stores the thumbnail of each keyframe it reconstructs; ``promptus decode
--verify`` recomputes it from its own frames and reports the PSNR between the two.
"""

from __future__ import annotations

import numpy as np

from promptus_codec.metrics.quality import luma, psnr

THUMBNAIL_SIDE = 16  # the encoder's thumbnails: 16 x 16 (smaller only for a smaller frame)


def thumbnail_shape(width: int, height: int, side: int = THUMBNAIL_SIDE) -> tuple[int, int]:
    """(T_w, T_h) the encoder uses for a ``width`` x ``height`` frame: ``side``, at most the frame."""
    return min(side, width), min(side, height)


def luma_thumbnail(frame: np.ndarray, width: int = THUMBNAIL_SIDE, height: int = THUMBNAIL_SIDE) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (height, width) uint8 area means of its luma (spec §6.8.1)."""
    y = luma(frame).astype(np.int64)  # (H, W), 16..235
    rows, cols = y.shape
    if not (0 < width <= cols and 0 < height <= rows):
        raise ValueError(f"a {width}x{height} thumbnail does not fit a {cols}x{rows} frame")
    row_starts = np.arange(height) * rows // height  # strictly increasing because height <= rows
    col_starts = np.arange(width) * cols // width
    sums = np.add.reduceat(np.add.reduceat(y, row_starts, axis=0), col_starts, axis=1)  # (height, width)
    counts = np.diff(np.append(row_starts, rows))[:, None] * np.diff(np.append(col_starts, cols))[None, :]
    return ((2 * sums + counts) // (2 * counts)).astype(np.uint8)


def compare_thumbnails(stored: np.ndarray, own: np.ndarray) -> tuple[float, int]:
    """(PSNR in dB, capped at 100 for identical; the largest difference in 8-bit levels)."""
    levels = int(np.abs(stored.astype(np.int16) - own.astype(np.int16)).max())
    return psnr(stored, own), levels
