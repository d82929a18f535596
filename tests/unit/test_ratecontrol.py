"""Rate control: exact byte accounting, and the (rank, K) choice for a target bitrate."""

from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest

from promptus_codec.container import codec
from promptus_codec.container.records import (
    EncoderSettingsRecord,
    FileHeader,
    GenerationConstants,
    KeyframeRecord,
    LatentFormat,
    ModelIdentity,
    PaddingRecord,
    QualityRecord,
    QuantScheme,
    ReconThumbnailRecord,
    SceneRecord,
    SourceGeometry,
)
from promptus_codec.container.writer import write_prx
from promptus_codec.errors import RateControlError
from promptus_codec.ratecontrol import StreamLayout, keyframe_offsets, plan_rate, reachable_kbps, stream_bytes


def write_planned_stream(path, layout: StreamLayout, plan, settings: dict, thumbnail: tuple[int, int] | None = None):
    """Write a stream with exactly the records the plan accounts for (``thumbnail``: (w, h) after each keyframe)."""
    m, n = layout.prompt_shape
    c, h, w = layout.latent_shape
    header = FileHeader(
        coded_width=w * 8,
        coded_height=h * 8,
        geometry=SourceGeometry.identity(w * 8, h * 8),
        frame_rate=layout.frame_rate,
        frame_count=layout.frame_count,
        prompt_tokens=m,
        prompt_dim=n,
        latent_channels=c,
        latent_height=h,
        latent_width=w,
        generation=GenerationConstants(),
        model=ModelIdentity(layout.model_name, bytes(32), bytes(32), bytes(32)),
    )
    records = [EncoderSettingsRecord(settings)]
    ranks = iter(plan.ranks)
    start, previous = 0, None
    for length in layout.scene_lengths:
        latent = np.zeros(layout.latent_shape, np.float16)
        records.append(SceneRecord(start, layout.latent_format, 1.0, latent))
        previous = None
        for offset in keyframe_offsets(length, plan.interval):
            frame, r = start + offset, next(ranks)
            records.append(
                KeyframeRecord(
                    frame,
                    r,
                    QuantScheme.AFFINE_INT8,
                    1.0,
                    0.0,
                    1.0,
                    0.0,
                    np.zeros((m, r), np.int8),
                    np.zeros((r, n), np.int8),
                )
            )
            if thumbnail:
                records.append(ReconThumbnailRecord(frame, np.full(thumbnail[::-1], 128, np.uint8)))
            first = frame if previous is None else previous + 1
            records.append(QualityRecord(first, (30.0,) * (frame - first + 1), (0.5,) * (frame - first + 1)))
            previous = frame
        start += length
    if plan.padding_bytes >= 0:
        records.append(PaddingRecord(plan.padding_bytes))
    write_prx(path, header, records)


SETTINGS = {"preset": "fast", "alpha": 0.8}
SETTINGS_BYTES = len(b'{"alpha":0.8,"preset":"fast"}')


@pytest.mark.parametrize(
    "scenes, fps, target",
    [
        ((60,), Fraction(30), 100.0),
        ((60,), Fraction(30), 225.0),
        ((141,), Fraction(30), 225.0),
        ((40, 25, 90), Fraction(30000, 1001), 550.0),
        ((48,), Fraction(24), 1000.0),
    ],
)
def test_planned_size_is_the_written_size_and_hits_target(tmp_path, scenes, fps, target):
    layout = StreamLayout(scenes, fps, latent_shape=(4, 16, 16), model_name="tiny", settings_bytes=SETTINGS_BYTES)
    plan = plan_rate(layout, target)
    path = tmp_path / "s.prx"
    write_planned_stream(path, layout, plan, SETTINGS)
    size = path.stat().st_size
    assert size == plan.total_bytes == stream_bytes(layout, plan.interval, plan.ranks, plan.padding_bytes)
    achieved = size * 8 / float(layout.duration_s) / 1000
    assert abs(achieved - target) / target < 0.01


def test_smallest_interval_that_keeps_the_rank_floor():
    layout = StreamLayout((141,), Fraction(30), latent_shape=(4, 64, 64))
    plan = plan_rate(layout, 225, min_rank=8)
    assert min(plan.ranks) >= 8
    shorter = plan_rate(layout, 225, interval=plan.interval - 1)
    assert min(shorter.ranks) < 8  # one step shorter no longer keeps rank 8
    assert plan.keyframes[0] == 0 and plan.keyframes[-1] == 140


def test_max_interval_stops_shortening_before_the_rank_floor():
    layout = StreamLayout((141,), Fraction(30), latent_shape=(4, 16, 16))
    free = plan_rate(layout, 100, min_rank=8)
    assert free.interval > 12 and min(free.ranks) >= 8  # rank 8 needs a long K at 100k
    capped = plan_rate(layout, 100, min_rank=8, max_interval=12)
    assert capped.interval == 12 and min(capped.ranks) < 8
    assert capped.total_bytes == free.total_bytes  # the same budget, spent on more keyframes
    floored = plan_rate(layout, 100, min_rank=8, max_interval=12, least_rank=4)
    assert min(floored.ranks) >= 4 > min(capped.ranks)  # rank 3 at K 12: K grows until rank 4 fits
    assert min(plan_rate(layout, 100, min_rank=8, max_interval=floored.interval - 1).ranks) < 4
    assert plan_rate(layout, 225, min_rank=8, max_interval=30).interval == plan_rate(layout, 225, min_rank=8).interval
    lowest, _ = reachable_kbps(layout)
    assert plan_rate(layout, lowest, max_interval=2).interval > 2  # nothing that short fits: K grows past it


def test_keyframes_close_every_scene():
    assert keyframe_offsets(10, 4) == [0, 4, 8, 9]
    assert keyframe_offsets(9, 4) == [0, 4, 8]
    assert keyframe_offsets(1, 4) == [0]
    layout = StreamLayout((10, 5), Fraction(30), latent_shape=(4, 8, 8))
    assert plan_rate(layout, None, rank=2, interval=4).keyframes == [0, 4, 8, 9, 10, 14]


def test_forced_rank_and_interval():
    layout = StreamLayout((60,), Fraction(30), latent_shape=(4, 16, 16))
    plan = plan_rate(layout, None, rank=8, interval=4)
    assert plan.ranks == [8] * 16 and plan.padding_bytes == -1
    with pytest.raises(RateControlError, match="need at least"):
        plan_rate(layout, 100, rank=8, interval=4)


@pytest.mark.parametrize("target", [1.0, 10**6])
def test_unreachable_bitrate_states_the_range(target):
    layout = StreamLayout((60,), Fraction(30), latent_shape=(4, 16, 16))
    low, high = reachable_kbps(layout)
    with pytest.raises(RateControlError, match=f"reachable range is {low:.1f}-{high:.1f} kb/s"):
        plan_rate(layout, target)


def test_float32_latents_cost_twice_float16():
    base = dict(scene_lengths=(60,), frame_rate=Fraction(30), latent_shape=(4, 64, 64))
    f16 = plan_rate(StreamLayout(**base), None, rank=8, interval=10).total_bytes
    f32 = plan_rate(StreamLayout(**base, latent_format=LatentFormat.FLOAT32), None, rank=8, interval=10).total_bytes
    assert f32 - f16 == 4 * 64 * 64 * 2


@pytest.mark.parametrize("target", [100.0, 225.0])
def test_recon_thumbnails_are_counted(tmp_path, target):
    """One 16x16 ReconThumbnail per keyframe (18 + 256 bytes each, spec §11) still hits the target to the byte."""
    payload = codec.recon_thumbnail_payload_size(16, 16)
    layout = StreamLayout(
        (60, 31),
        Fraction(30),
        latent_shape=(4, 16, 16),
        model_name="tiny",
        settings_bytes=SETTINGS_BYTES,
        thumbnail_payload=payload,
    )
    plan = plan_rate(layout, target)
    path = tmp_path / "s.prx"
    write_planned_stream(path, layout, plan, SETTINGS, thumbnail=(16, 16))
    assert path.stat().st_size == plan.total_bytes
    assert abs(plan.total_bytes * 8 / float(layout.duration_s) / 1000 - target) / target < 0.01
    bare = replace(layout, thumbnail_payload=0)
    count = len(plan.keyframes)
    assert (
        stream_bytes(layout, plan.interval, plan.ranks) - stream_bytes(bare, plan.interval, plan.ranks) == count * 274
    )
