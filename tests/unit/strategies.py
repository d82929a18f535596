"""Hypothesis strategies and small builders for valid .prx streams (shared by the unit tests).

``streams()`` draws a :class:`Stream`: a file header plus the records an encoder would hand
to :class:`~promptus_codec.container.writer.PrxWriter` (Scene, Keyframe and ancillary
records, without the SeekIndex and End that ``finish`` appends). Everything it draws is
valid, so the writer must accept it and the reader must give it back unchanged.

Small arrays are drawn element by element (so hypothesis can find edge values such as
-128, -0.0 or float16 subnormals); big ones (77x1024 prompts) come from a drawn numpy
seed, which keeps generation fast.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, fields, is_dataclass, replace
from fractions import Fraction

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from promptus_codec.container import codec
from promptus_codec.container.records import (
    ANCILLARY_BIT,
    LATENT_DTYPES,
    EncoderSettingsRecord,
    FileHeader,
    FitMode,
    GenerationConstants,
    KeyframeRecord,
    LatentFormat,
    ModelIdentity,
    NoiseGenerator,
    PredictionType,
    QualityRecord,
    QuantScheme,
    Rect,
    SceneRecord,
    SeekEntry,
    SeekIndexRecord,
    SourceGeometry,
    UnknownAncillaryRecord,
)
from promptus_codec.container.writer import PrxWriter

U8, U16, U32 = 0xFF, 0xFFFF, 0xFFFFFFFF
F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).smallest_subnormal)
SMALL_ARRAY = 256  # arrays with more elements than this are drawn from a seed

# Ancillary record types with no record assigned (spec §4.2, §12.1): the reserved 0x8000,
# the unassigned ids and the private-use block, i.e. every id with the ancillary bit set that
# the container's registry (RecordType, via codec.KNOWN_TYPES) does not name. Derived from the
# registry, so a newly registered type (as Padding 0x8004 was) drops out of this set by itself.
UNKNOWN_ANCILLARY_TYPES = st.integers(ANCILLARY_BIT, U16).filter(lambda t: t not in codec.KNOWN_TYPES)


@dataclass
class Stream:
    """A valid stream before writing: what a caller passes to write_prx."""

    header: FileHeader
    records: list  # Scene, Keyframe and ancillary records, in file order

    @property
    def frames(self) -> int:
        keyframes = [r.frame_index for r in self.records if isinstance(r, KeyframeRecord)]
        return keyframes[-1] + 1


# ---------------------------------------------------------------------------
# Header
# ---------------------------------------------------------------------------


def f32(min_value: float, max_value: float, **kw) -> st.SearchStrategy[float]:
    """Finite float32-representable values in [min_value, max_value]."""
    return st.floats(min_value, max_value, width=32, allow_nan=False, allow_infinity=False, **kw)


@st.composite
def rects(draw, width: int, height: int) -> Rect:
    """A non-empty rectangle inside a width x height frame."""
    x = draw(st.integers(0, width - 1))
    y = draw(st.integers(0, height - 1))
    return Rect(x, y, draw(st.integers(1, width - x)), draw(st.integers(1, height - y)))


def sides() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(1, 64), st.integers(1, 16384))


@st.composite
def frame_rates(draw) -> Fraction:
    """Positive rates whose lowest terms fit u32 / u32; common rates and odd ones."""
    common = st.sampled_from([Fraction(30), Fraction(25), Fraction(30000, 1001), Fraction(24000, 1001), Fraction(1, 7)])
    odd = st.builds(Fraction, st.integers(1, U32), st.integers(1, U32))
    return draw(st.one_of(common, odd))


def model_names() -> st.SearchStrategy[str]:
    """Non-empty names whose UTF-8 fits the u8 length (non-ASCII included, no surrogates)."""
    ascii_names = st.sampled_from(["sd-turbo", "x", "stabilityai/sd-turbo"])
    unicode_names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60)
    return st.one_of(ascii_names, unicode_names, st.just("模型-ünïcødé-🎞")).filter(
        lambda s: 0 < len(s.encode("utf-8")) <= U8
    )


def generation_constants() -> st.SearchStrategy[GenerationConstants]:
    return st.builds(
        GenerationConstants,
        noise_seed=st.integers(0, U32),
        noise_generator=st.sampled_from(NoiseGenerator),
        latent_weight=f32(0.0, 1.0),
        noise_weight=f32(0.0, 1.0),
        timestep=st.integers(0, U16),
        alpha_cumprod=f32(0.0, 1.0, exclude_min=True, exclude_max=True),
        prediction_type=st.sampled_from(PredictionType),
    )


def prompt_shapes() -> st.SearchStrategy[tuple[int, int]]:
    """(m, n): mostly tiny, one draw in ten the real SD-Turbo 77 x 1024."""
    small = st.tuples(st.integers(1, 8), st.integers(1, 8))
    return st.integers(0, 9).flatmap(lambda i: st.just((77, 1024)) if i == 0 else small)


@st.composite
def headers(draw, prompt_shape=None, frame_count: int = 0) -> FileHeader:
    coded_w, coded_h = draw(sides()), draw(sides())
    src_w, src_h = draw(sides()), draw(sides())
    geometry = SourceGeometry(
        source_width=src_w,
        source_height=src_h,
        fit_mode=draw(st.sampled_from(FitMode)),
        source_rect=draw(rects(src_w, src_h)),
        coded_rect=draw(rects(coded_w, coded_h)),
    )
    m, n = prompt_shape or draw(prompt_shapes())
    digest = st.binary(min_size=32, max_size=32)
    return FileHeader(
        coded_width=coded_w,
        coded_height=coded_h,
        geometry=geometry,
        frame_rate=draw(frame_rates()),
        frame_count=frame_count,
        prompt_tokens=m,
        prompt_dim=n,
        latent_channels=draw(st.integers(1, 4)),
        latent_height=draw(st.integers(1, 5)),
        latent_width=draw(st.integers(1, 5)),
        generation=draw(generation_constants()),
        model=ModelIdentity(draw(model_names()), draw(digest), draw(digest), draw(digest)),
    )


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


@st.composite
def int8_arrays(draw, shape: tuple[int, ...]) -> np.ndarray:
    if int(np.prod(shape)) <= SMALL_ARRAY:
        return draw(hnp.arrays(np.int8, shape))
    rng = np.random.default_rng(draw(st.integers(0, U32)))
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


@st.composite
def latents(draw, fmt: LatentFormat, shape: tuple[int, int, int]) -> np.ndarray:
    dtype = LATENT_DTYPES[fmt]
    if fmt == LatentFormat.INT8:
        return draw(int8_arrays(shape))
    width = 32 if fmt == LatentFormat.FLOAT32 else 16
    elements = st.floats(width=width, allow_nan=False, allow_infinity=False)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def scene_records(draw, header: FileHeader, first_frame: int) -> SceneRecord:
    fmt = draw(st.sampled_from(LatentFormat))
    scale = draw(f32(F32_TINY, F32_MAX)) if fmt == LatentFormat.INT8 else 1.0
    return SceneRecord(first_frame, fmt, scale, draw(latents(fmt, header.latent_shape)))


@st.composite
def keyframe_records(draw, header: FileHeader, frame_index: int) -> KeyframeRecord:
    m, n = header.prompt_shape
    rank = draw(st.one_of(st.integers(1, min(m, n, 8)), st.integers(1, min(m, n))))  # 1..min(m, n), small ones often
    scale = f32(F32_TINY, F32_MAX)
    zero_point = st.integers(-128, 127).map(float)
    return KeyframeRecord(
        frame_index=frame_index,
        rank=rank,
        quant_scheme=QuantScheme.AFFINE_INT8,
        u_scale=draw(scale),
        u_zero_point=draw(zero_point),
        v_scale=draw(scale),
        v_zero_point=draw(zero_point),
        u=draw(int8_arrays((m, rank))),
        v=draw(int8_arrays((rank, n))),
    )


def json_values() -> st.SearchStrategy:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=12,
    )


def ancillary_records() -> st.SearchStrategy:
    settings = st.builds(EncoderSettingsRecord, st.dictionaries(st.text(max_size=10), json_values(), max_size=5))
    measured = st.floats(width=32)  # NaN = not measured (spec §6.6)
    quality = st.integers(0, 20).flatmap(
        lambda k: st.builds(
            QualityRecord,
            st.integers(0, U32),
            st.lists(measured, min_size=k, max_size=k).map(tuple),
            st.lists(measured, min_size=k, max_size=k).map(tuple),
        )
    )
    unknown = st.builds(
        UnknownAncillaryRecord,
        UNKNOWN_ANCILLARY_TYPES,
        st.binary(max_size=40),
    )
    return st.one_of(settings, quality, unknown)


@st.composite
def streams(draw, prompt_shape=None, max_scenes: int = 3, max_keyframes: int = 4) -> Stream:
    """A valid stream: 1..max_scenes scenes of 1..max_keyframes keyframes, ancillaries anywhere."""
    header = draw(headers(prompt_shape))
    records: list = []
    frame = 0
    for _ in range(draw(st.integers(1, max_scenes))):
        records.append(draw(scene_records(header, frame)))
        for k in range(draw(st.integers(1, max_keyframes))):
            if k:
                frame += draw(st.one_of(st.integers(1, 12), st.integers(1, 100_000)))
            records.append(draw(keyframe_records(header, frame)))
        frame += 1
    for _ in range(draw(st.integers(0, 3))):
        records.insert(draw(st.integers(0, len(records))), draw(ancillary_records()))
    if draw(st.booleans()):  # a complete file may state its frame count up front
        header = replace(header, frame_count=frame)
    return Stream(header, records)


# ---------------------------------------------------------------------------
# Deterministic streams for the fault tests
# ---------------------------------------------------------------------------


def small_header(m: int = 3, n: int = 5, latent=(2, 3, 3), frame_count: int = 0, name: str = "tiny-ü") -> FileHeader:
    return FileHeader(
        coded_width=48,
        coded_height=32,
        geometry=SourceGeometry(
            source_width=96,
            source_height=60,
            fit_mode=FitMode.PAD,
            source_rect=Rect(0, 0, 96, 60),
            coded_rect=Rect(0, 1, 48, 30),
        ),
        frame_rate=Fraction(30000, 1001),
        frame_count=frame_count,
        prompt_tokens=m,
        prompt_dim=n,
        latent_channels=latent[0],
        latent_height=latent[1],
        latent_width=latent[2],
        generation=GenerationConstants(),
        model=ModelIdentity(name, bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))),
    )


def keyframe(header: FileHeader, frame_index: int, rank: int, rng: np.random.Generator) -> KeyframeRecord:
    m, n = header.prompt_shape
    return KeyframeRecord(
        frame_index,
        rank,
        QuantScheme.AFFINE_INT8,
        0.0125,
        -3.0,
        0.5,
        7.0,
        rng.integers(-128, 128, (m, rank), dtype=np.int8),
        rng.integers(-128, 128, (rank, n), dtype=np.int8),
    )


def scene(header: FileHeader, first_frame: int, fmt: LatentFormat, rng: np.random.Generator) -> SceneRecord:
    shape = header.latent_shape
    if fmt == LatentFormat.INT8:
        return SceneRecord(first_frame, fmt, 0.03125, rng.integers(-128, 128, shape, dtype=np.int8))
    return SceneRecord(first_frame, fmt, 1.0, rng.standard_normal(shape).astype(LATENT_DTYPES[fmt]))


def small_stream(seed: int = 0, ancillary: bool = True) -> Stream:
    """Two scenes, five keyframes with changing rank, every latent format and ancillary type."""
    rng = np.random.default_rng(seed)
    h = small_header()
    records = [
        EncoderSettingsRecord({"rank": 2, "interval": 4, "note": "réglage"}),
        scene(h, 0, LatentFormat.FLOAT16, rng),
        keyframe(h, 0, 2, rng),
        keyframe(h, 4, 3, rng),
        QualityRecord(0, (31.5, float("nan"), 30.25), (0.01, float("nan"), 0.02)),
        keyframe(h, 5, 1, rng),
        scene(h, 6, LatentFormat.INT8, rng),
        keyframe(h, 6, 3, rng),
        UnknownAncillaryRecord(0xC0DE, b"future stuff"),
        keyframe(h, 9, 2, rng),
    ]
    if not ancillary:
        records = [r for r in records if isinstance(r, (SceneRecord, KeyframeRecord))]
    return Stream(h, records)


def sd_turbo_stream(seed: int = 1) -> Stream:
    """77 x 1024 prompts at rank 8, keyframe interval 10, 4x16x16 float32 latents, two scenes."""
    rng = np.random.default_rng(seed)
    h = small_header(77, 1024, latent=(4, 16, 16), frame_count=71)
    records = [scene(h, 0, LatentFormat.FLOAT32, rng)]
    records += [keyframe(h, f, 8, rng) for f in range(0, 41, 10)]
    records.append(scene(h, 41, LatentFormat.FLOAT32, rng))
    records += [keyframe(h, f, 8, rng) for f in range(41, 71, 10)] + [keyframe(h, 70, 8, rng)]
    return Stream(h, records)


def write_bytes(stream: Stream, seek_index: bool = True) -> bytes:
    buf = io.BytesIO()
    writer = PrxWriter(buf, stream.header)
    for record in stream.records:
        writer.write(record)
    writer.finish(seek_index)
    return buf.getvalue()


# ---------------------------------------------------------------------------
# Comparing records
# ---------------------------------------------------------------------------


def _f32_bits(value: float) -> bytes:
    return struct.pack("<f", value)


def canonical(value):
    """A comparable form of a record: arrays by dtype, shape and bytes; floats by float32 bits."""
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, float):
        return ("f32", _f32_bits(value)) if value != value or value == np.float32(value) else ("float", value)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(canonical(v) for v in value))
    if isinstance(value, dict):
        return ("dict", json.dumps(value, sort_keys=True))
    if is_dataclass(value):
        return (type(value).__name__, tuple((f.name, canonical(getattr(value, f.name))) for f in fields(value)))
    return (type(value).__name__, value)


def record_offsets(header: FileHeader, records: list) -> list[int]:
    """Byte offset of each record, and the file size last, from the framed sizes."""
    offsets = [len(codec.header_to_bytes(header))]
    for r in records:
        offsets.append(offsets[-1] + len(codec.record_to_bytes(r, header)))
    return offsets


def expected_seek_index(header: FileHeader, records: list) -> SeekIndexRecord:
    offsets = record_offsets(header, records)
    return SeekIndexRecord(
        tuple(SeekEntry(r.first_frame, o) for r, o in zip(records, offsets) if isinstance(r, SceneRecord))
    )
