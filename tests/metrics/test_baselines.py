"""The classic codecs reach their bitrate, and the bitrate recorded is the file's."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("imageio_ffmpeg")

from promptus_codec.media import open_video  # noqa: E402
from promptus_codec.metrics.baselines import achieved_kbps, encode_baseline, ffmpeg_exe  # noqa: E402
from promptus_codec.metrics.quality import psnr  # noqa: E402
from tolerances import gamma64  # noqa: E402  (tests/ is on sys.path)

from .helpers import moving_frames, write_y4m  # noqa: E402

FRAMES, RATE = 30, Fraction(30)  # one second


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """1 s of 128x128: colour ramps under a panning noise texture, so the bits are needed."""
    rng = np.random.default_rng(0)
    texture = rng.integers(-40, 41, (128, 128 + 2 * FRAMES, 1))
    frames = [
        np.clip(f.astype(np.int64) + texture[:, 2 * i : 2 * i + 128], 0, 255).astype(np.uint8)
        for i, f in enumerate(moving_frames(FRAMES))
    ]
    folder = tmp_path_factory.mktemp("baselines")
    return write_y4m(folder / "clip.y4m", frames, RATE), frames


def test_achieved_kbps_is_bytes_over_duration():
    assert achieved_kbps(12_500, 30, Fraction(30)) == 100.0
    # float64: 4 roundings in achieved_kbps (the frame rate, a multiply, two divides), 3 here
    assert achieved_kbps(1000, 60, Fraction(30000, 1001)) == pytest.approx(
        8 * 1000 / (60 * 1001 / 30000) / 1000, rel=gamma64(7), abs=0
    )


@pytest.mark.parametrize("codec", ["x265", "vvenc"])
def test_two_pass_baselines_reach_the_target(codec, clip, tmp_path):
    if codec == "vvenc":
        ffmpeg_exe()  # raises (fails the test) when the binary lacks libvvenc
    y4m, frames = clip
    run = encode_baseline(codec, y4m, tmp_path, 100.0)
    size = run.stream.stat().st_size
    assert run.bytes == size and run.frames == FRAMES and run.frame_rate == RATE
    assert run.achieved_kbps == pytest.approx(
        size * 8 / (FRAMES / 30) / 1000, rel=gamma64(8), abs=0
    )  # float64, 4 + 4 roundings
    # One second is short for rate control; measured here: x265 +11%, vvenc -15%.
    assert 65 < run.achieved_kbps < 135, run.achieved_kbps
    with open_video(str(run.decoded), fps=RATE) as decoded:
        out = list(decoded)
    assert len(out) == FRAMES and out[0].shape == (128, 128, 3)
    assert psnr(frames[FRAMES // 2], out[FRAMES // 2]) > 18


def test_svtav1_records_what_it_achieved(clip, tmp_path):
    if "libsvtav1" not in av.codecs_available:
        pytest.skip("this PyAV build has no libsvtav1")
    run = encode_baseline("svtav1", clip[0], tmp_path, 100.0)
    assert run.achieved_kbps == pytest.approx(
        run.stream.stat().st_size * 8 / 1000, rel=gamma64(6), abs=0
    )  # float64, 4 + 2 roundings
    with open_video(str(run.decoded), fps=RATE) as decoded:
        assert sum(1 for _ in decoded) == FRAMES
