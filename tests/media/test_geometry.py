"""Geometry planning (exact integer rects), applying it to frames and restoring it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promptus_codec.container.records import FitMode, Rect, SourceGeometry
from promptus_codec.errors import MediaError
from promptus_codec.media.geometry import (
    apply_geometry,
    default_coded_size,
    plan_geometry,
    resize,
    restore_geometry,
)

pytest.importorskip("av")  # resize() needs it

# (source size, coded size, crop source_rect, pad coded_rect), worked out by hand:
# long side = round(long * 512 / short / 64) * 64; crop keeps the coded aspect ratio.
CASES = [
    ((1920, 1080), (896, 512), Rect(15, 0, 1890, 1080), Rect(0, 4, 896, 504)),
    ((1280, 720), (896, 512), Rect(10, 0, 1260, 720), Rect(0, 4, 896, 504)),
    ((720, 1280), (512, 896), Rect(0, 10, 720, 1260), Rect(4, 0, 504, 896)),
    ((640, 480), (704, 512), Rect(0, 7, 640, 465), Rect(10, 0, 683, 512)),
    ((100, 64), (832, 512), Rect(0, 1, 100, 62), Rect(16, 0, 800, 512)),  # long side rounded up
]


@pytest.mark.parametrize("source, coded, crop_rect, pad_rect", CASES)
def test_default_size_crop_and_pad(source, coded, crop_rect, pad_rect):
    sw, sh = source
    cw, ch, crop = plan_geometry(sw, sh)
    assert (cw, ch) == coded and cw % 64 == 0 and ch % 64 == 0 and min(cw, ch) == 512
    assert crop == SourceGeometry(sw, sh, FitMode.CROP, crop_rect, Rect(0, 0, cw, ch))
    assert plan_geometry(sw, sh, fit="pad") == (
        cw,
        ch,
        SourceGeometry(sw, sh, FitMode.PAD, Rect(0, 0, sw, sh), pad_rect),
    )


@pytest.mark.parametrize("fit", ["crop", "pad", "scale"])
def test_same_aspect_is_scale(fit):
    assert plan_geometry(512, 512, fit=fit) == (512, 512, SourceGeometry.identity(512, 512))
    w, h, geometry = plan_geometry(1024, 768, size=(512, 384), fit=fit)
    assert (w, h, geometry.fit_mode) == (512, 384, FitMode.SCALE)
    assert geometry.source_rect == Rect(0, 0, 1024, 768)
    assert geometry.coded_rect == Rect(0, 0, 512, 384)


def test_forced_size_and_options():
    assert plan_geometry(1920, 1080, size=(512, 512))[2].source_rect == Rect(420, 0, 1080, 1080)
    w, h, g = plan_geometry(1920, 1080, size=(512, 512), fit="scale")
    assert g.fit_mode == FitMode.SCALE and g.coded_rect == Rect(0, 0, 512, 512)
    assert plan_geometry(100, 100, size=(72, 72), multiple=8)[:2] == (72, 72)
    assert default_coded_size(1920, 1080, short_side=256) == (448, 256)
    assert plan_geometry(32, 48, short_side=64, minimum=16)[:2] == (64, 128)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(size=(500, 512)), ["500", "multiple of 64", "512"]),
        (dict(size=(512, 0)), ["height 0", "multiple of 64"]),
        (dict(size=(-64, 64)), ["width -64"]),
        (dict(size=(72, 64)), ["width 72", "multiple of 64"]),
        (dict(fit="stretch"), ["stretch", "crop, pad, scale"]),
        (dict(short_side=500), ["short side 500"]),
    ],
)
def test_bad_arguments(kwargs, words):
    with pytest.raises(MediaError) as info:
        plan_geometry(640, 480, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("size", [(63, 480), (640, 40), (10, 10)])
def test_too_small_source(size):
    with pytest.raises(MediaError, match=f"is {size[0]}x{size[1]}, below the minimum of 64x64"):
        plan_geometry(*size)


@settings(max_examples=200, deadline=None)
@given(
    sw=st.integers(64, 4000),
    sh=st.integers(64, 4000),
    fit=st.sampled_from(["crop", "pad"]),
)
def test_rects_are_inside_and_centred(sw, sh, fit):
    cw, ch, g = plan_geometry(sw, sh, fit=fit)
    assert cw % 64 == 0 and ch % 64 == 0 and min(cw, ch) == 512
    for rect, (w, h) in ((g.source_rect, (sw, sh)), (g.coded_rect, (cw, ch))):
        assert 0 <= rect.x and 0 <= rect.y and rect.width >= 1 and rect.height >= 1
        assert rect.x + rect.width <= w and rect.y + rect.height <= h
        assert w - rect.width - 2 * rect.x in (0, 1) and h - rect.height - 2 * rect.y in (0, 1)
    s, c = g.source_rect, g.coded_rect
    # The mapped rects have the same aspect ratio, to within one pixel of rounding.
    assert abs(s.width * c.height - s.height * c.width) <= max(c.width, c.height, s.width, s.height)


def three_bands(width: int, height: int) -> np.ndarray:
    """Red left quarter, green middle half, blue right quarter: (height, width, 3) uint8."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:, : width // 4] = (255, 0, 0)
    frame[:, width // 4 : 3 * width // 4] = (0, 255, 0)
    frame[:, 3 * width // 4 :] = (0, 0, 255)
    return frame


def test_apply_and_restore_crop():
    source = three_bands(256, 128)
    cw, ch, g = plan_geometry(256, 128, size=(64, 64))
    assert g.source_rect == Rect(64, 0, 128, 128)
    coded = apply_geometry(source, cw, ch, g)
    assert coded.shape == (64, 64, 3) and coded.dtype == np.uint8
    assert (coded == (0, 255, 0)).all()  # only the green middle survives the crop
    restored = restore_geometry(coded, g)
    assert restored.shape == (128, 128, 3)  # source_rect's size, not the source's
    assert (restored == (0, 255, 0)).all()


def test_apply_and_restore_pad():
    source = np.full((128, 256, 3), 200, np.uint8)
    cw, ch, g = plan_geometry(256, 128, size=(64, 64), fit="pad")
    assert g.coded_rect == Rect(0, 16, 64, 32)
    coded = apply_geometry(source, cw, ch, g)
    assert (coded[:16] == 0).all() and (coded[48:] == 0).all()  # black bars
    assert (coded[16:48] == 200).all()
    restored = restore_geometry(coded, g)
    assert restored.shape == (128, 256, 3) and (restored == 200).all()


def test_identity_geometry_is_exact():
    frame = np.random.default_rng(3).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    g = SourceGeometry.identity(128, 64)
    assert np.array_equal(apply_geometry(frame, 128, 64, g), frame)
    assert np.array_equal(restore_geometry(frame, g), frame)


def test_resize_is_deterministic_and_averages():
    frame = np.random.default_rng(4).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    small = resize(frame, 80, 48)
    assert small.shape == (48, 80, 3)
    assert np.array_equal(small, resize(frame.copy(), 80, 48))
    block_means = frame.reshape(48, 2, 80, 2, 3).astype(np.float64).mean(axis=(1, 3))
    # area filter at exactly 2x: an integer output (0.5 from rounding the mean) from swscale's
    # fixed-point filter (coefficients and intermediates in 14-15 bits): under 1 level in all
    assert np.abs(small - block_means).max() <= 1.0
    big = resize(frame, 320, 192)
    assert big.shape == (192, 320, 3) and np.array_equal(big, resize(frame, 320, 192))


def test_wrong_frame_shapes():
    _, _, g = plan_geometry(128, 64, size=(64, 64))
    with pytest.raises(MediaError, match=r"expected \(64, 128, 3\) uint8"):
        apply_geometry(np.zeros((64, 64, 3), np.uint8), 64, 64, g)
    with pytest.raises(MediaError, match="too small"):
        restore_geometry(np.zeros((32, 32, 3), np.uint8), g)
