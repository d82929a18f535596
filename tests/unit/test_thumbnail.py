"""The ReconThumbnail fingerprint (format_spec.md §6.8.1) and the decode --verify bookkeeping, without torch."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from promptus_codec.container.records import KeyframeRecord, QuantScheme, ReconThumbnailRecord
from promptus_codec.decoder.verify import VERIFY_MIN_PSNR_DB, Verifier
from promptus_codec.metrics.thumbnail import compare_thumbnails, luma_thumbnail, thumbnail_shape

REPO = Path(__file__).resolve().parents[2]


def spec_thumbnail(frame: np.ndarray, width: int, height: int) -> list[list[int]]:
    """§6.8.1 written out in plain Python: binary64 floats (Python's float), then integers."""
    k_r, k_b = 0.299, 0.114
    k_g = (1 - k_r) - k_b
    rows, cols = frame.shape[:2]
    luma = [
        [
            min(255, max(0, math.floor(16 + ((k_r * int(r) + k_g * int(g)) + k_b * int(b)) * (219 / 255) + 0.5)))
            for r, g, b in row
        ]
        for row in frame
    ]
    out = []
    for i in range(height):
        y0, y1 = i * rows // height, (i + 1) * rows // height
        line = []
        for j in range(width):
            x0, x1 = j * cols // width, (j + 1) * cols // width
            total = sum(luma[y][x] for y in range(y0, y1) for x in range(x0, x1))
            count = (y1 - y0) * (x1 - x0)
            line.append((2 * total + count) // (2 * count))
        out.append(line)
    return out


@pytest.mark.parametrize(
    "size, thumb",
    [((64, 64), (16, 16)), ((96, 40), (16, 16)), ((37, 23), (5, 3)), ((16, 16), (16, 16)), ((9, 7), (1, 1))],
)
def test_thumbnail_is_the_spec_computation(size, thumb):
    rng = np.random.default_rng(sum(size))
    frame = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    frame[0, :3] = [[0, 0, 0], [255, 255, 255], [255, 0, 0]]  # the ends of the luma range
    got = luma_thumbnail(frame, *thumb)
    assert got.dtype == np.uint8 and got.shape == (thumb[1], thumb[0])
    assert got.tolist() == spec_thumbnail(frame, *thumb)


def test_spec_example():
    """format_spec.md §6.8.1's informative example."""
    frame = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[255, 255, 255], [0, 0, 0], [128, 128, 128]]], np.uint8)
    assert spec_thumbnail(frame, 3, 2) == [[81, 145, 41], [235, 16, 126]]
    assert luma_thumbnail(frame, 2, 1).tolist() == [[158, 82]]


def test_thumbnail_rounds_half_up_and_keeps_flat_frames_flat():
    frame = np.zeros((2, 2, 3), np.uint8)
    frame[0, 0] = 1  # luma 17 there, 16 elsewhere: mean 16.25 -> 16
    assert luma_thumbnail(frame, 1, 1).tolist() == [[16]]
    frame[0, 1] = 1  # mean 16.5 -> 17 (half up)
    assert luma_thumbnail(frame, 1, 1).tolist() == [[17]]
    assert (
        luma_thumbnail(np.full((64, 48, 3), 200, np.uint8)) == luma_thumbnail(np.full((1, 1, 3), 200, np.uint8), 1, 1)
    ).all()


def test_thumbnail_refuses_a_grid_finer_than_the_frame():
    with pytest.raises(ValueError, match="does not fit"):
        luma_thumbnail(np.zeros((8, 8, 3), np.uint8), 16, 4)
    assert thumbnail_shape(512, 512) == (16, 16) and thumbnail_shape(12, 512) == (12, 16)


def test_compare_thumbnails():
    a = np.full((16, 16), 100, np.uint8)
    assert compare_thumbnails(a, a) == (100.0, 0)
    b = a + 1
    psnr, levels = compare_thumbnails(a, b)
    assert levels == 1 and psnr == pytest.approx(20 * math.log10(255), abs=1e-9)  # 48.13 dB: one level everywhere


def _keyframe(index: int) -> KeyframeRecord:
    return KeyframeRecord(
        index, 1, QuantScheme.AFFINE_INT8, 1.0, 0.0, 1.0, 0.0, np.zeros((2, 1), np.int8), np.zeros((1, 3), np.int8)
    )


def _feed(verifier: Verifier, frames: dict[int, np.ndarray], stored: dict[int, np.ndarray]) -> None:
    """What decode_frames and run_decode do: each keyframe, its interval's frames, then its thumbnail."""
    previous = -1
    for k in sorted(stored):
        verifier.record(_keyframe(k))
        for index in range(previous + 1, k + 1):
            verifier.frame(index, frames[index])
        verifier.record(ReconThumbnailRecord(k, stored[k]))
        previous = k


def test_verifier_matches_reports_and_flags_drift():
    rng = np.random.default_rng(1)
    frames = {i: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(9)}
    stored = {k: luma_thumbnail(frames[k]) for k in (0, 4, 8)}
    ok = Verifier()
    _feed(ok, frames, stored)
    assert [c.frame_index for c in ok.checks] == [0, 4, 8] and ok.ok
    assert all(c.psnr_db == 100.0 and c.max_levels == 0 for c in ok.checks)
    assert ok.summary().startswith("verify: OK: 3 keyframes match")

    drifted = dict(frames)
    drifted[4] = np.clip(frames[4].astype(int) + 40, 0, 255).astype(np.uint8)  # a wrong picture at keyframe 4
    drifted[3] = np.zeros_like(frames[3])  # a non-keyframe: not fingerprinted, not checked
    bad = Verifier()
    _feed(bad, drifted, stored)
    assert not bad.ok and [c.frame_index for c in bad.failed] == [4]
    assert bad.failed[0].psnr_db < VERIFY_MIN_PSNR_DB and "DRIFT" in bad.failed[0].line(bad.min_psnr_db)
    assert bad.summary().startswith("verify: FAILED: 1 of 3 keyframes drifted below 40 dB")
    assert "worst keyframe 4" in bad.summary()


def test_verifier_without_thumbnails_says_so():
    verifier = Verifier()
    verifier.record(_keyframe(0))
    verifier.frame(0, np.zeros((16, 16, 3), np.uint8))
    assert verifier.ok and verifier.checks == []
    assert "holds no ReconThumbnail records" in verifier.summary()


def test_verify_modules_do_not_import_torch():
    code = (
        "import sys, promptus_codec.decoder.verify, promptus_codec.metrics.thumbnail; sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0
