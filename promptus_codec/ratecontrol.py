"""Rate control by arithmetic: every byte of the stream is known before it is fitted.

A stream's size follows from its layout (frames, scenes, frame rate, shapes) and two
choices: the keyframe interval K and the rank r of each keyframe. :func:`plan_rate` picks
them for a target bitrate:

1. for K = 1, 2, ... take the largest uniform rank that fits the budget; stop at the first
   K whose rank reaches ``min_rank`` (the paper: at equal bitrate a smaller K wins, e.g.
   rank 8 / K 4 beats rank 16 / K 8 at 550 kb/s), or at the first K from ``max_interval``
   on whose rank reaches ``least_rank`` (a model's trained range: intervals up to
   max_interval, ranks from least_rank);
2. spend what is left on +1 rank for evenly spread keyframes;
3. fill the last few bytes (less than one rank step) with a Padding record, so the file
   hits the target to the byte.

Pure Python: sizes come from :mod:`promptus_codec.container`, the only place that knows them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from promptus_codec.container import schema
from promptus_codec.container.records import LatentFormat, RecordType
from promptus_codec.errors import RateControlError
from promptus_codec.models.base import ModelSpec

FRAMING = schema.RECORD_FRAMING_SIZE  # what a record adds around its payload (Padding, ReconThumbnail)


@dataclass(frozen=True)
class StreamLayout:
    """What the encoder knows before fitting: the scene structure and the shapes."""

    scene_lengths: tuple[int, ...]  # frames per scene, in order
    frame_rate: Fraction
    prompt_shape: tuple[int, int] = (77, 1024)
    latent_shape: tuple[int, int, int] = (4, 64, 64)
    latent_format: LatentFormat = LatentFormat.FLOAT16
    model_name: str = "sd-turbo"
    settings_bytes: int = 0  # payload of the EncoderSettings record, 0 = none
    quality_records: bool = True  # one Quality record per keyframe
    thumbnail_payload: int = 0  # payload bytes of the ReconThumbnail record after each keyframe; 0 = none

    @property
    def frame_count(self) -> int:
        return sum(self.scene_lengths)

    @property
    def duration_s(self) -> Fraction:
        return self.frame_count / self.frame_rate

    @property
    def max_rank(self) -> int:
        return min(self.prompt_shape)


def keyframe_offsets(scene_length: int, interval: int) -> list[int]:
    """Keyframes of one scene, relative to its first frame: 0, K, 2K, ... and its last frame."""
    offsets = list(range(0, scene_length, interval))
    if offsets[-1] != scene_length - 1:
        offsets.append(scene_length - 1)
    return offsets


def keyframe_count(layout: StreamLayout, interval: int) -> int:
    return sum(len(keyframe_offsets(length, interval)) for length in layout.scene_lengths)


def header_bytes(model_name: str) -> int:
    return schema.header_size(model_name)


def keyframe_record_bytes(layout: StreamLayout, rank: int) -> int:
    m, n = layout.prompt_shape
    return schema.record_size(RecordType.KEYFRAME, rank=rank, prompt_tokens=m, prompt_dim=n)


def rank_step_bytes(layout: StreamLayout) -> int:
    """Bytes one more rank adds to a keyframe (a row of U and a column of V)."""
    return keyframe_record_bytes(layout, 1) - keyframe_record_bytes(layout, 0)


def fixed_bytes(layout: StreamLayout, interval: int) -> int:
    """Every byte except the keyframes' U and V codes and the padding."""
    c, h, w = layout.latent_shape
    scenes = len(layout.scene_lengths)
    keyframes = keyframe_count(layout, interval)
    total = header_bytes(layout.model_name)
    total += scenes * schema.record_size(
        RecordType.SCENE, latent_format=layout.latent_format, latent_elements=c * h * w
    )
    total += keyframes * keyframe_record_bytes(layout, 0)
    if layout.settings_bytes:
        total += schema.record_size(RecordType.ENCODER_SETTINGS, json_length=layout.settings_bytes)
    if layout.quality_records:  # one per keyframe; between them they hold one entry per frame
        empty = schema.record_size(RecordType.QUALITY, frame_count=0)
        per_frame = schema.record_size(RecordType.QUALITY, frame_count=1) - empty
        total += keyframes * empty + layout.frame_count * per_frame
    if layout.thumbnail_payload:
        total += keyframes * (FRAMING + layout.thumbnail_payload)
    return total + tail_bytes(scenes)


def tail_bytes(scene_count: int) -> int:
    """The SeekIndex and End records that close every stream."""
    return schema.record_size(RecordType.SEEK_INDEX, entry_count=scene_count) + schema.record_size(RecordType.END)


@dataclass
class RatePlan:
    """The choice rate control made, and the bytes it will produce."""

    interval: int
    ranks: list[int]  # one per keyframe, in stream order
    padding_bytes: int  # payload of the Padding record; -1 = no Padding record
    total_bytes: int
    layout: StreamLayout = field(repr=False)

    @property
    def kbps(self) -> float:
        return float(self.total_bytes * 8 / self.layout.duration_s) / 1000

    @property
    def keyframes(self) -> list[int]:
        """Absolute frame indices of all keyframes."""
        frames, start = [], 0
        for length in self.layout.scene_lengths:
            frames += [start + k for k in keyframe_offsets(length, self.interval)]
            start += length
        return frames


def stream_bytes(layout: StreamLayout, interval: int, ranks: list[int], padding_bytes: int = -1) -> int:
    """Exact file size for this layout and choice."""
    factors = sum(ranks) * rank_step_bytes(layout)
    padding = FRAMING + padding_bytes if padding_bytes >= 0 else 0
    return fixed_bytes(layout, interval) + factors + padding


def _spread(count: int, extra: int) -> list[int]:
    """0/1 increments for ``count`` keyframes, ``extra`` of them 1, spread evenly."""
    return [((i + 1) * extra) // count - (i * extra) // count for i in range(count)]


def _uniform_rank(layout: StreamLayout, interval: int, budget: int) -> int:
    """Largest rank r for which every keyframe at rank r fits ``budget`` bytes (0 if none)."""
    spare = budget - fixed_bytes(layout, interval)
    per_rank = keyframe_count(layout, interval) * rank_step_bytes(layout)
    return max(0, min(layout.max_rank, spare // per_rank))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def reachable_kbps(layout: StreamLayout) -> tuple[float, float]:
    """The lowest and highest bitrate any (rank, K) choice gives, in kb/s."""
    longest = max(layout.scene_lengths)
    low = stream_bytes(layout, longest, [1] * keyframe_count(layout, longest))
    high = stream_bytes(layout, 1, [layout.max_rank] * layout.frame_count)

    def to_kbps(total_bytes: int) -> float:
        return float(total_bytes * 8 / layout.duration_s) / 1000

    return to_kbps(low), to_kbps(high)


def plan_rate(
    layout: StreamLayout,
    target_kbps: float | None = None,
    rank: int | None = None,
    interval: int | None = None,
    min_rank: int = ModelSpec.min_rank,
    max_interval: int = ModelSpec.max_interval,
    least_rank: int = ModelSpec.least_rank,
) -> RatePlan:
    """Choose K and per-keyframe ranks. ``rank``/``interval`` force those choices.

    With no target, ``rank`` and ``interval`` must both be given and no padding is added.
    """
    if rank is not None and not 1 <= rank <= layout.max_rank:
        raise RateControlError(f"--rank {rank} is outside 1..{layout.max_rank}")
    if interval is not None and interval < 1:
        raise RateControlError(f"--interval {interval} must be at least 1")
    longest = max(layout.scene_lengths)
    if target_kbps is None:
        if rank is None or interval is None:
            raise RateControlError("give --bitrate, or both --rank and --interval")
        ranks = [rank] * keyframe_count(layout, interval)
        return RatePlan(interval, ranks, -1, stream_bytes(layout, interval, ranks), layout)

    budget = math.floor(Fraction(target_kbps).limit_denominator(10**6) * 1000 * layout.duration_s / 8)
    low, high = reachable_kbps(layout)
    if not low <= target_kbps <= high:
        raise RateControlError(
            f"{target_kbps:g} kb/s cannot be reached for this clip: the reachable range is "
            f"{low:.1f}-{high:.1f} kb/s "
            f"({_count(layout.frame_count, 'frame')}, {_count(len(layout.scene_lengths), 'scene')})"
        )
    candidates = [interval] if interval is not None else range(1, longest + 1)
    chosen = None
    for k in candidates:
        r = rank if rank is not None else _uniform_rank(layout, k, budget)
        if r == 0 or stream_bytes(layout, k, [r] * keyframe_count(layout, k)) > budget:
            continue
        chosen = (k, r)
        if r >= min_rank or rank is not None or (max_interval and k >= max_interval and r >= least_rank):
            break
    if chosen is None:  # only possible when rank or interval is forced
        k = interval or longest
        need = stream_bytes(layout, k, [rank or 1] * keyframe_count(layout, k))
        raise RateControlError(
            f"{target_kbps:g} kb/s cannot be reached with the forced --rank/--interval: they need at least "
            f"{float(need * 8 / layout.duration_s) / 1000:.1f} kb/s"
        )
    k, r = chosen
    count = keyframe_count(layout, k)
    ranks = [r] * count
    if rank is None and r < layout.max_rank:
        spare = budget - stream_bytes(layout, k, ranks)
        extra = min(count, spare // rank_step_bytes(layout))
        ranks = [r + step for r, step in zip(ranks, _spread(count, extra))]
    padding = budget - stream_bytes(layout, k, ranks) - FRAMING
    padding = padding if padding >= 0 else -1
    return RatePlan(k, ranks, padding, stream_bytes(layout, k, ranks, padding), layout)
