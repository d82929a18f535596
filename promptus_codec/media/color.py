"""RGB -> Y'CbCr for the writers: ITU-R BT.601 matrix, limited ("TV", "MPEG") range.

    Y  = 16  + 219 * (Kr R + Kg G + Kb B) / 255          Kr = 0.299, Kb = 0.114
    Cb = 128 + 224 * (B - Y') / (2 (1 - Kb)) / 255       Y' = Kr R + Kg G + Kb B
    Cr = 128 + 224 * (R - Y') / (2 (1 - Kr)) / 255

So Y spans 16..235 and Cb, Cr span 16..240. For 4:2:0 the full-resolution Cb and Cr
are averaged over 2x2 blocks (chroma sited at the block centre, y4m's "420jpeg"); an odd
last row or column is repeated first. Computed in float64 element by element (no BLAS)
and rounded half up, so every machine produces the same bytes. This is also the matrix
FFmpeg assumes for untagged video, so PyAV reads the planes back as the same colours.
"""

from __future__ import annotations

import numpy as np

from promptus_codec.errors import MediaError

KR, KB = 0.299, 0.114
KG = 1.0 - KR - KB
PIX_FMTS = {"420": "yuv420p", "444": "yuv444p"}  # chroma -> FFmpeg pixel format


def pix_fmt(chroma: str) -> str:
    """The FFmpeg pixel format of a chroma ("420" or "444"); MediaError for any other."""
    if chroma not in PIX_FMTS:
        raise MediaError(f"unknown chroma {chroma!r}: choose one of {', '.join(PIX_FMTS)}")
    return PIX_FMTS[chroma]


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def _subsample_2x2(plane: np.ndarray) -> np.ndarray:
    """(H, W) float64 -> (ceil(H/2), ceil(W/2)) block means."""
    h, w = plane.shape
    p = np.pad(plane, ((0, h % 2), (0, w % 2)), mode="edge")
    return (p[0::2, 0::2] + p[0::2, 1::2] + p[1::2, 0::2] + p[1::2, 1::2]) / 4.0


def rgb_to_yuv(frame: np.ndarray, chroma: str = "420") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB uint8 (H, W, 3) -> (Y, Cb, Cr) uint8 planes.

    Y is (H, W); Cb and Cr are (H, W) for chroma "444" and (ceil(H/2), ceil(W/2)) for "420".
    """
    pix_fmt(chroma)  # checks it
    rgb = frame.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # (H, W) each
    luma = KR * r + KG * g + KB * b  # (H, W), 0..255
    y = 16.0 + luma * (219.0 / 255.0)
    cb = 128.0 + (b - luma) * (224.0 / 255.0 / (2.0 * (1.0 - KB)))
    cr = 128.0 + (r - luma) * (224.0 / 255.0 / (2.0 * (1.0 - KR)))
    if chroma == "420":
        cb, cr = _subsample_2x2(cb), _subsample_2x2(cr)
    return _to_u8(y), _to_u8(cb), _to_u8(cr)
