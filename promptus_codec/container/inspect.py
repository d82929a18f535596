"""What `promptus inspect` shows: a pretty-print of a parsed file and its bitrate split.

Bytes are split three ways (format_spec.md §11): *prompt* bytes are the quantised U and V
codes of keyframes, *latent* bytes are the scene latents' values, and *overhead* is
everything else (header, record framing and CRCs, scales and indices, ancillary records).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, fields

from promptus_codec.container import codec, schema
from promptus_codec.container.reader import PrxReader, Truncation
from promptus_codec.container.records import (
    EncoderSettingsRecord,
    FileHeader,
    KeyframeRecord,
    ReconThumbnailRecord,
    RecordType,
    SceneRecord,
)


def _shown(group) -> dict:
    """A header group's fields (GenerationConstants, ModelIdentity): enums by name, digests in hex."""
    values = {}
    for f in fields(group):
        value = getattr(group, f.name)
        if isinstance(value, enum.Enum):
            value = value.name.lower()
        elif isinstance(value, bytes):
            value = value.hex()
        values[f.name] = value
    return values


def _array_bytes(record_type: RecordType, header: FileHeader, **counts) -> int:
    """Bytes of a record's arrays: its payload less the fixed part (schema.py's sizes)."""
    return schema.payload_size(record_type, **codec.header_params(header), **counts) - schema.fixed_size(record_type)


@dataclass
class SceneInfo:
    first_frame: int
    latent_format: str
    record_bytes: int
    reason: str = "?"  # first | cut | refresh, from the encoder's settings; "?" when it did not say


@dataclass
class KeyframeInfo:
    frame_index: int
    rank: int
    record_bytes: int


@dataclass
class StreamSummary:
    """Everything `inspect` prints, computed from one pass over the file."""

    header: FileHeader
    file_bytes: int
    scenes: list[SceneInfo] = field(default_factory=list)
    keyframes: list[KeyframeInfo] = field(default_factory=list)
    prompt_bytes: int = 0
    latent_bytes: int = 0
    complete: bool = False
    truncation: Truncation | None = None
    thumbnail_count: int = 0  # ReconThumbnail records (§6.8), part of the overhead
    thumbnail_bytes: int = 0  # their framed size
    thumbnail_sizes: set[tuple[int, int]] = field(default_factory=set)  # (width, height) of each

    @property
    def frame_count(self) -> int:
        return self.keyframes[-1].frame_index + 1 if self.keyframes else 0

    @property
    def duration_s(self) -> float:
        return float(self.frame_count / self.header.frame_rate)

    @property
    def overhead_bytes(self) -> int:
        return self.file_bytes - self.prompt_bytes - self.latent_bytes

    def kbps(self, byte_count: int) -> float:
        """Bits per second over the stream's duration, in kb/s (1 kb = 1000 bits)."""
        return byte_count * 8 / self.duration_s / 1000 if self.duration_s else 0.0

    def to_json(self) -> dict:
        h = self.header
        split = {
            "prompt": self.prompt_bytes,
            "latent": self.latent_bytes,
            "overhead": self.overhead_bytes,
            "total": self.file_bytes,
        }
        return {
            "version": f"{h.major_version}.{h.minor_version}",
            "complete": self.complete,
            "truncation": None if self.truncation is None else self.truncation.describe(),
            "coded_size": [h.coded_width, h.coded_height],
            "source_size": [h.geometry.source_width, h.geometry.source_height],
            "fit_mode": h.geometry.fit_mode.name.lower(),
            "frame_rate": f"{h.frame_rate.numerator}/{h.frame_rate.denominator}",
            "frame_count": self.frame_count,
            "header_frame_count": h.frame_count,
            "duration_s": self.duration_s,
            "prompt_shape": list(h.prompt_shape),
            "latent_shape": list(h.latent_shape),
            "generation": _shown(h.generation),
            "model": _shown(h.model),
            "scenes": [vars(s) for s in self.scenes],
            "keyframes": [vars(k) for k in self.keyframes],
            "recon_thumbnails": {
                "count": self.thumbnail_count,
                "sizes": sorted(list(size) for size in self.thumbnail_sizes),
                "bytes": self.thumbnail_bytes,
            },
            "bytes": split,
            "kbps": {name: self.kbps(count) for name, count in split.items()},
        }


def summarize(path: str | os.PathLike) -> StreamSummary:
    """Read ``path`` once (tolerating a truncated tail) and account for every byte."""
    with open(path, "rb") as stream:
        reader = PrxReader(stream)
        summary = StreamSummary(reader.header, file_bytes=os.fstat(stream.fileno()).st_size)
        header = reader.header
        reasons: dict[int, str] = {}
        for record in reader:
            record_bytes = reader.record_span[1] - reader.record_span[0]
            if isinstance(record, EncoderSettingsRecord):
                reasons = _scene_reasons(record.settings)
            elif isinstance(record, SceneRecord):
                summary.scenes.append(
                    SceneInfo(
                        record.first_frame,
                        record.latent_format.name.lower(),
                        record_bytes,
                        reasons.get(record.first_frame, "?"),
                    )
                )
                summary.latent_bytes += _array_bytes(RecordType.SCENE, header, latent_format=record.latent_format)
            elif isinstance(record, KeyframeRecord):
                summary.keyframes.append(KeyframeInfo(record.frame_index, record.rank, record_bytes))
                summary.prompt_bytes += _array_bytes(RecordType.KEYFRAME, header, rank=record.rank)
            elif isinstance(record, ReconThumbnailRecord):
                summary.thumbnail_count += 1
                summary.thumbnail_bytes += record_bytes
                summary.thumbnail_sizes.add((record.thumbnail_width, record.thumbnail_height))
        summary.complete = reader.end is not None
        summary.truncation = reader.truncation
    return summary


def _scene_reasons(settings: dict) -> dict[int, str]:
    """first frame -> why the scene starts there, from settings["scene_starts"] ([[frame, reason], ...])."""
    starts = settings.get("scene_starts")
    if not isinstance(starts, list):
        return {}
    return {
        s[0]: s[1]
        for s in starts
        if isinstance(s, list) and len(s) == 2 and isinstance(s[0], int) and isinstance(s[1], str)
    }


def format_summary(s: StreamSummary) -> str:
    """The human-readable report."""
    h = s.header
    g = h.generation
    lines = [
        f"format      .prx {h.major_version}.{h.minor_version}" + ("" if s.complete else "  (TRUNCATED)"),
        f"coded size  {h.coded_width}x{h.coded_height}   source {h.geometry.source_width}x{h.geometry.source_height}"
        f" ({h.geometry.fit_mode.name.lower()})",
        f"frames      {s.frame_count} at {h.frame_rate.numerator}/{h.frame_rate.denominator} fps"
        f" = {s.duration_s:.3f} s",
        f"prompt      {h.prompt_tokens} x {h.prompt_dim}   "
        f"latent {h.latent_channels} x {h.latent_height} x {h.latent_width}",
        f"generation  seed {g.noise_seed} ({g.noise_generator.name.lower()}), noisy = {g.latent_weight:.6g} z_prev"
        f" + {g.noise_weight:.6g} N0, timestep {g.timestep}, alpha_cumprod {g.alpha_cumprod:.9g},"
        f" {g.prediction_type.name.lower()}",
        f"model       {h.model.name}",
        f"  denoiser  {h.model.denoiser_sha256.hex()}",
        f"  decoder   {h.model.decoder_sha256.hex()}",
        f"  encoder   {h.model.encoder_sha256.hex()}",
        f"scenes      {len(s.scenes)}",
    ]
    lines += [
        f"  frame {sc.first_frame:>6}  latent {sc.latent_format:<7} {sc.record_bytes:>9} B  {sc.reason}"
        for sc in s.scenes
    ]
    ranks = sorted({k.rank for k in s.keyframes})
    lines.append(f"keyframes   {len(s.keyframes)} (rank {', '.join(map(str, ranks))})")
    lines += [f"  frame {k.frame_index:>6}  rank {k.rank:>3} {k.record_bytes:>9} B" for k in s.keyframes]
    if s.thumbnail_count:
        sizes = ", ".join(f"{w}x{h}" for w, h in sorted(s.thumbnail_sizes))
        lines.append(
            f"thumbnails  {s.thumbnail_count} ReconThumbnail ({sizes} luma) {s.thumbnail_bytes} B"
            f" = {s.kbps(s.thumbnail_bytes):.2f} kb/s of the overhead"
        )
    else:
        lines.append("thumbnails  none (decode --verify has nothing to compare)")
    lines.append("bitrate     bytes        kb/s    share")
    for name, count in (
        ("prompts", s.prompt_bytes),
        ("latents", s.latent_bytes),
        ("overhead", s.overhead_bytes),
        ("total", s.file_bytes),
    ):
        share = count / s.file_bytes * 100 if s.file_bytes else 0.0
        lines.append(f"  {name:<9} {count:>9} {s.kbps(count):>11.2f} {share:>7.1f}%")
    if s.truncation is not None:
        lines.append(f"warning     {s.truncation.describe()}")
    return "\n".join(lines)
