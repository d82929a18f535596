"""Typed records of a .prx stream (format_spec.md §3-§6).

These dataclasses are what the rest of the codec sees. They hold numpy arrays and plain
numbers; the bytes are declared once, in :mod:`promptus_codec.container.schema`.
Field names follow the spec.
"""

from __future__ import annotations

import enum
import typing
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

# Field metadata that maps a dataclass onto the spec's field names (container/codec.py
# walks dataclasses.fields() with it, so a field declared in schema.py and here needs no
# other code).
SPEC_NAME = "spec_name"  # the spec's name of a field, where it differs from the attribute's
INLINE = "inline"  # True: a group whose own fields stand inline in the spec's layout


def spec_name(name: str) -> dict:
    """Field metadata: this field is called ``name`` in format_spec.md."""
    return {SPEC_NAME: name}


# ---------------------------------------------------------------------------
# Integer ids. Each one is fixed by a table in format_spec.md; never renumber.
# ---------------------------------------------------------------------------


class RecordType(enum.IntEnum):
    """Record type ids (spec §4.2). Bit 15 set = ancillary (safe to skip)."""

    SCENE = 0x0001
    KEYFRAME = 0x0002
    END = 0x0003
    ENCODER_SETTINGS = 0x8001
    SEEK_INDEX = 0x8002
    QUALITY = 0x8003
    PADDING = 0x8004
    RECON_THUMBNAIL = 0x8005


# The record names of the §4.2 table. Written out, never derived from enum order.
RECORD_NAMES = {
    RecordType.SCENE: "Scene",
    RecordType.KEYFRAME: "Keyframe",
    RecordType.END: "End",
    RecordType.ENCODER_SETTINGS: "EncoderSettings",
    RecordType.SEEK_INDEX: "SeekIndex",
    RecordType.QUALITY: "Quality",
    RecordType.PADDING: "Padding",
    RecordType.RECON_THUMBNAIL: "ReconThumbnail",
}

ANCILLARY_BIT = 0x8000


def is_ancillary(record_type: int) -> bool:
    """True when a reader may skip an unknown record of this type (spec §4.2)."""
    return bool(record_type & ANCILLARY_BIT)


class FitMode(enum.IntEnum):
    """How the source picture was fitted into the coded frame (spec §3.3)."""

    SCALE = 0  # the whole source scaled to the whole coded frame
    CROP = 1  # a centred part of the source scaled to fill the coded frame
    PAD = 2  # the whole source scaled into a part of the coded frame, bars around it


class NoiseGenerator(enum.IntEnum):
    """Noise generators (spec §3.4)."""

    NUMPY_MT19937_RANDN = 1  # numpy.random.RandomState(seed).randn, float64 -> float32


class PredictionType(enum.IntEnum):
    """What the denoiser predicts (spec §3.4)."""

    EPSILON = 1
    V_PREDICTION = 2
    SAMPLE = 3


class LatentFormat(enum.IntEnum):
    """Storage of a scene's first-frame latent (spec §6.1)."""

    FLOAT32 = 1
    FLOAT16 = 2
    INT8 = 3  # value = latent_scale * q


class QuantScheme(enum.IntEnum):
    """Quantisation of prompt factors (spec §6.2)."""

    AFFINE_INT8 = 1  # value = scale * (q - zero_point), q int8, computed in float32


def as_float32(value: float) -> float:
    """``value`` rounded to the nearest float32: every float field of the format is one."""
    return float(np.float32(value))


LATENT_DTYPES = {
    LatentFormat.FLOAT32: np.dtype("<f4"),
    LatentFormat.FLOAT16: np.dtype("<f2"),
    LatentFormat.INT8: np.dtype("i1"),
}

# ---------------------------------------------------------------------------
# Header parts
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rect:
    """An axis-aligned rectangle in pixels."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class SourceGeometry:
    """Where the coded picture came from, so a decoder can restore it (spec §3.3).

    ``source_rect`` (in source pixels) was scaled onto ``coded_rect`` (in coded pixels).
    """

    source_width: int
    source_height: int
    fit_mode: FitMode
    source_rect: Rect
    coded_rect: Rect

    @classmethod
    def identity(cls, width: int, height: int) -> "SourceGeometry":
        """Geometry of a source that was coded at its own size."""
        whole = Rect(0, 0, width, height)
        return cls(width, height, FitMode.SCALE, whole, whole)


def scaled_linear_alpha_cumprod(
    timestep: int, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000
) -> float:
    """SD's scaled-linear DDPM schedule at ``timestep``, computed in float64 as sgm does.

    sgm (the reference's sampler) builds betas = linspace(sqrt(beta_start), sqrt(beta_end),
    steps, float64) ** 2 and takes the cumulative product of (1 - beta) in float64. diffusers
    does the same in float32, which at t = 999 lands 7 float32 ulps away (0x3B98B3B6 instead
    of 0x3B98B3BD); the stream stores sgm's value rounded once to float32.
    """
    betas = np.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=np.float64) ** 2
    return float(np.cumprod(1.0 - betas)[timestep])


@dataclass(frozen=True)
class GenerationConstants:
    """The numbers the decoder needs to turn a prompt into a frame (spec §3.4).

    noisy = latent_weight * z_prev + noise_weight * N0, then one denoiser call at
    ``timestep`` and x0 from the DDPM formula with ``alpha_cumprod``.
    """

    noise_seed: int = 88  # the reference's seed
    noise_generator: NoiseGenerator = NoiseGenerator.NUMPY_MT19937_RANDN
    latent_weight: float = 0.05  # weight of the previous keyframe's latent
    noise_weight: float = 0.95  # weight of N0
    timestep: int = 999  # SD-Turbo's single step
    alpha_cumprod: float = scaled_linear_alpha_cumprod(999)  # sgm's float64 schedule at t=999, stored as float32
    prediction_type: PredictionType = PredictionType.EPSILON

    def __post_init__(self):
        for name in ("latent_weight", "noise_weight", "alpha_cumprod"):
            object.__setattr__(self, name, as_float32(getattr(self, name)))


UNKNOWN_DIGEST = bytes(32)  # spec §3.5: the writer did not know the weights' fingerprint


@dataclass(frozen=True)
class ModelIdentity:
    """Which weights made the stream (spec §3.5). Digests are SHA-256, 32 bytes each."""

    name: str = field(metadata=spec_name("model_name"))
    denoiser_sha256: bytes
    decoder_sha256: bytes
    encoder_sha256: bytes

    @property
    def unknown(self) -> bool:
        """True when all three digests are zero: only the name identifies the model."""
        return self.denoiser_sha256 == self.decoder_sha256 == self.encoder_sha256 == UNKNOWN_DIGEST

    def short(self) -> str:
        """A human-readable id: the name and the first bytes of each digest."""
        return (
            f"{self.name} (denoiser {self.denoiser_sha256.hex()[:12]}, "
            f"decoder {self.decoder_sha256.hex()[:12]}, encoder {self.encoder_sha256.hex()[:12]})"
        )


@dataclass(frozen=True)
class FileHeader:
    """The file header (spec §3)."""

    coded_width: int
    coded_height: int
    geometry: SourceGeometry = field(metadata={INLINE: True})
    frame_rate: Fraction  # frame_rate_num / frame_rate_den, in lowest terms
    frame_count: int  # 0 = unknown (stream still being written)
    prompt_tokens: int  # m
    prompt_dim: int  # n
    latent_channels: int
    latent_height: int
    latent_width: int
    generation: GenerationConstants = field(metadata={INLINE: True})
    model: ModelIdentity = field(metadata={INLINE: True})
    flags: int = 0
    major_version: int = 1
    minor_version: int = 0

    @property
    def prompt_shape(self) -> tuple[int, int]:
        return (self.prompt_tokens, self.prompt_dim)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_height, self.latent_width)


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class SceneRecord:
    """A random-access point: a scene's first frame and its latent (spec §6.1).

    ``latent`` has the header's latent shape (C, H, W) and the dtype of ``latent_format``.
    """

    first_frame: int
    latent_format: LatentFormat
    latent_scale: float  # 1.0 for float formats
    latent: np.ndarray  # (C, H, W) float32 | float16 | int8

    def __post_init__(self):
        self.latent_scale = as_float32(self.latent_scale)

    def latent_float32(self) -> np.ndarray:
        """The latent as float32 values (spec §6.1.1)."""
        if self.latent_format == LatentFormat.INT8:
            return self.latent.astype(np.float32) * np.float32(self.latent_scale)
        return self.latent.astype(np.float32)

    record_type = RecordType.SCENE


@dataclass(eq=False)
class KeyframeRecord:
    """One keyframe's quantised prompt factors (spec §6.2).

    u: (m, r) int8, v: (r, n) int8. Dequantised value = scale * (q - zero_point).
    """

    frame_index: int
    rank: int
    quant_scheme: QuantScheme
    u_scale: float
    u_zero_point: float
    v_scale: float
    v_zero_point: float
    u: np.ndarray  # (m, r) int8
    v: np.ndarray  # (r, n) int8

    def __post_init__(self):
        for name in ("u_scale", "u_zero_point", "v_scale", "v_zero_point"):
            setattr(self, name, as_float32(getattr(self, name)))

    record_type = RecordType.KEYFRAME


@dataclass(frozen=True)
class EndRecord:
    """Totals that mark a complete file (spec §6.3)."""

    frame_count: int
    scene_count: int
    keyframe_count: int
    seek_index_offset: int = 0  # byte offset of the SeekIndex record, 0 = none

    record_type = RecordType.END


@dataclass(frozen=True)
class EncoderSettingsRecord:
    """The encoder configuration that made the stream, as a JSON object (spec §6.4)."""

    settings: dict = field(metadata=spec_name("settings_json"))

    record_type = RecordType.ENCODER_SETTINGS


@dataclass(frozen=True)
class SeekEntry:
    frame_index: int  # first frame of a scene
    byte_offset: int  # offset of its Scene record from the start of the file


@dataclass(frozen=True)
class SeekIndexRecord:
    """Offsets of every Scene record (spec §6.5)."""

    entries: tuple[SeekEntry, ...]

    @property
    def entry_count(self) -> int:
        return len(self.entries)

    record_type = RecordType.SEEK_INDEX


@dataclass(frozen=True)
class QualityRecord:
    """Encoder-side quality of consecutive frames (spec §6.6).

    ``psnr_db[i]`` and ``loss[i]`` belong to frame ``first_frame + i``; NaN = not measured.
    """

    first_frame: int
    psnr_db: tuple[float, ...]
    loss: tuple[float, ...]

    @property
    def frame_count(self) -> int:
        """Entries in the record (not the stream's frame count)."""
        return len(self.psnr_db)

    record_type = RecordType.QUALITY


@dataclass(frozen=True)
class PaddingRecord:
    """Filler that makes a stream hit its target size exactly (spec §6.7); written as 0x00 bytes."""

    size: int = field(metadata=spec_name("record_length"))  # payload bytes

    record_type = RecordType.PADDING


@dataclass(eq=False)
class ReconThumbnailRecord:
    """A luma thumbnail of the encoder's own reconstruction of one keyframe (spec §6.8).

    ``luma`` is (thumbnail_height, thumbnail_width) uint8, computed by §6.8.1 from the frame
    ``frame_index`` as the encoder decoded it; a decoder recomputes it from its own frame
    to measure how far it drifted.
    """

    frame_index: int
    luma: np.ndarray  # (h, w) uint8

    @property
    def thumbnail_width(self) -> int:
        return int(self.luma.shape[-1]) if self.luma.ndim == 2 else 0

    @property
    def thumbnail_height(self) -> int:
        return int(self.luma.shape[0]) if self.luma.ndim == 2 else 0

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, ReconThumbnailRecord)
            and self.frame_index == other.frame_index
            and self.luma.shape == other.luma.shape
            and bool(np.array_equal(self.luma, other.luma))
        )

    record_type = RecordType.RECON_THUMBNAIL


@dataclass(frozen=True)
class UnknownAncillaryRecord:
    """An ancillary record this reader does not know; kept so it can be rewritten."""

    record_type: int
    payload: bytes = field(repr=False)


Record = (
    SceneRecord
    | KeyframeRecord
    | EndRecord
    | EncoderSettingsRecord
    | SeekIndexRecord
    | QualityRecord
    | PaddingRecord
    | ReconThumbnailRecord
    | UnknownAncillaryRecord
)


# record_type -> its dataclass, for every type of the §4.2 table
RECORD_CLASSES = {
    cls.record_type: cls for cls in typing.get_args(Record) if isinstance(getattr(cls, "record_type", None), RecordType)
}
