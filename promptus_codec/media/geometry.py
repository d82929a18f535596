"""Fit a source picture into the coded frame, and undo it after decoding (spec §3.3).

The coded frame's sides are multiples of 64 (the VAE downsamples by 8 and the UNet by 8
more). A source of another shape is fitted one of three ways::

    crop: scale to cover the coded frame, cut the centre   source_rect = centre part
    pad:  scale to fit inside, centre it, black bars        coded_rect  = picture part
    scale: stretch the whole source over the whole frame    both rects whole

Rects are integers, computed with exact integer arithmetic so that every machine plans
the same geometry. Resizing goes through FFmpeg's swscale (PyAV) with BITEXACT flags, so
it is deterministic too. Only :func:`resize` needs PyAV; it imports it when called.
"""

from __future__ import annotations

import numpy as np

from promptus_codec.container.records import FitMode, Rect, SourceGeometry
from promptus_codec.errors import MediaError, require

FITS = {"crop": FitMode.CROP, "pad": FitMode.PAD, "scale": FitMode.SCALE}


def _round_div(a: int, b: int) -> int:
    """a / b rounded half up, for non-negative integers."""
    return (2 * a + b) // (2 * b)


def _nearest_multiple(value, multiple: int) -> int:
    """The positive multiple of ``multiple`` nearest to ``value`` (for error messages)."""
    if not isinstance(value, (int, float)):
        return multiple
    return max(multiple, round(value / multiple) * multiple)


def _centred(inner_w: int, inner_h: int, outer_w: int, outer_h: int) -> Rect:
    return Rect((outer_w - inner_w) // 2, (outer_h - inner_h) // 2, inner_w, inner_h)


def default_coded_size(
    source_width: int, source_height: int, short_side: int = 512, multiple: int = 64
) -> tuple[int, int]:
    """The coded size keeping the aspect ratio: short side ``short_side``, long side
    rounded to the nearest multiple of ``multiple``."""
    if short_side <= 0 or short_side % multiple:
        raise MediaError(f"short side {short_side} is not a positive multiple of {multiple}")
    if source_width <= source_height:
        long = _round_div(source_height * short_side, source_width * multiple) * multiple
        return short_side, long
    long = _round_div(source_width * short_side, source_height * multiple) * multiple
    return long, short_side


def plan_geometry(
    source_width: int,
    source_height: int,
    size: tuple[int, int] | None = None,
    fit: str = "crop",
    short_side: int = 512,
    multiple: int = 64,
    minimum: int = 64,
) -> tuple[int, int, SourceGeometry]:
    """Choose the coded size and how the source maps onto it.

    ``size`` = (width, height) forces the coded size; both must be positive multiples of
    ``multiple``. ``fit`` is "crop", "pad" or "scale" (stretch). Returns
    (coded_width, coded_height, geometry). A geometry that maps the whole source onto the
    whole frame is always recorded as FitMode.SCALE.
    """
    if source_width < minimum or source_height < minimum:
        raise MediaError(
            f"the source video is {source_width}x{source_height}, below the minimum of {minimum}x{minimum} pixels"
        )
    if fit not in FITS:
        raise MediaError(f"unknown fit {fit!r}: choose one of {', '.join(FITS)}")
    if size is None:
        coded_w, coded_h = default_coded_size(source_width, source_height, short_side, multiple)
    else:
        coded_w, coded_h = size
        for name, value in (("width", coded_w), ("height", coded_h)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise MediaError(
                    f"coded {name} {value!r} is not a positive multiple of {multiple}: "
                    f"choose a multiple of {multiple}, such as {_nearest_multiple(value, multiple)}"
                )

    source_rect = Rect(0, 0, source_width, source_height)
    coded_rect = Rect(0, 0, coded_w, coded_h)
    # Compare aspect ratios exactly: source wider than coded <=> sw * ch > sh * cw.
    wider = source_width * coded_h > source_height * coded_w
    if FITS[fit] == FitMode.CROP:
        if wider:  # keep full height, cut the sides
            w = min(source_width, _round_div(source_height * coded_w, coded_h))
            source_rect = _centred(w, source_height, source_width, source_height)
        else:  # keep full width, cut top and bottom
            h = min(source_height, _round_div(source_width * coded_h, coded_w))
            source_rect = _centred(source_width, h, source_width, source_height)
    elif FITS[fit] == FitMode.PAD:
        if wider:  # full coded width, bars above and below
            h = max(1, min(coded_h, _round_div(source_height * coded_w, source_width)))
            coded_rect = _centred(coded_w, h, coded_w, coded_h)
        else:  # full coded height, bars left and right
            w = max(1, min(coded_w, _round_div(source_width * coded_h, source_height)))
            coded_rect = _centred(w, coded_h, coded_w, coded_h)

    whole_source = source_rect == Rect(0, 0, source_width, source_height)
    whole_coded = coded_rect == Rect(0, 0, coded_w, coded_h)
    mode = FitMode.SCALE if whole_source and whole_coded else FITS[fit]
    geometry = SourceGeometry(source_width, source_height, mode, source_rect, coded_rect)
    return coded_w, coded_h, geometry


def resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an RGB uint8 frame (H, W, 3) -> (height, width, 3), deterministically.

    Area averaging when shrinking both sides, bicubic otherwise; swscale with
    ACCURATE_RND | BITEXACT on one thread, so the result does not depend on the CPU.
    """
    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    av = require("av", "media")
    from av.video.reformatter import Interpolation

    shrink = width <= frame.shape[1] and height <= frame.shape[0]
    kernel = Interpolation.AREA if shrink else Interpolation.BICUBIC
    src = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    out = src.reformat(
        width,
        height,
        interpolation=kernel | Interpolation.ACCURATE_RND | Interpolation.BITEXACT,
        threads=1,
    )
    return out.to_ndarray(format="rgb24")


def _cut(frame: np.ndarray, rect: Rect) -> np.ndarray:
    return frame[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width]


def _check_frame(frame: np.ndarray, width: int, height: int, what: str) -> None:
    if frame.dtype != np.uint8 or frame.shape != (height, width, 3):
        raise MediaError(f"{what} frame is {frame.shape} {frame.dtype}, expected ({height}, {width}, 3) uint8")


def apply_geometry(frame: np.ndarray, coded_width: int, coded_height: int, geometry: SourceGeometry) -> np.ndarray:
    """Source frame (sh, sw, 3) uint8 -> coded frame (coded_height, coded_width, 3) uint8:
    cut source_rect, scale it to coded_rect, black outside coded_rect."""
    _check_frame(frame, geometry.source_width, geometry.source_height, "source")
    src, dst = geometry.source_rect, geometry.coded_rect
    picture = resize(_cut(frame, src), dst.width, dst.height)  # (dst.h, dst.w, 3)
    if dst == Rect(0, 0, coded_width, coded_height):
        return np.ascontiguousarray(picture)
    out = np.zeros((coded_height, coded_width, 3), np.uint8)
    _cut(out, dst)[...] = picture
    return out


def restore_geometry(frame: np.ndarray, geometry: SourceGeometry) -> np.ndarray:
    """Decoded frame (coded_h, coded_w, 3) -> (source_rect.height, source_rect.width, 3).

    Takes coded_rect out of the frame (dropping pad bars) and scales it to source_rect's
    size. For FitMode.CROP that is the cropped part only, smaller than the source: the
    parts cut away were never coded and are not invented. For PAD and SCALE it is the
    full source size.
    """
    src, dst = geometry.source_rect, geometry.coded_rect
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise MediaError(f"decoded frame is {frame.shape} {frame.dtype}, expected (H, W, 3) uint8")
    if dst.x + dst.width > frame.shape[1] or dst.y + dst.height > frame.shape[0]:
        raise MediaError(
            f"decoded frame is {frame.shape[1]}x{frame.shape[0]}, too small for the coded picture at {dst}"
        )
    return np.ascontiguousarray(resize(_cut(frame, dst), src.width, src.height))
