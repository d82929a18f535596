"""Records <-> bytes, and the value checks of format_spec.md §7.

The byte layout is in :mod:`.schema`, the records are the dataclasses of :mod:`.records`,
and the two meet by the spec's field names: :func:`to_fields` and :func:`from_fields` walk
``dataclasses.fields()``, so a field declared in a struct and in its dataclass needs no code
here. What each record type adds -- its arrays and its checks -- is one row of
:data:`RECORDS`. Lengths are checked against what the header allows *before* a payload is
parsed, so a hostile count cannot make us allocate.
"""

from __future__ import annotations

import enum
import json
import math
import typing
import zlib
from dataclasses import MISSING, fields, is_dataclass
from fractions import Fraction
from functools import cache
from typing import Callable, NamedTuple

import numpy as np

from promptus_codec.container import schema
from promptus_codec.container.records import (
    INLINE,
    LATENT_DTYPES,
    RECORD_CLASSES,
    RECORD_NAMES,
    SPEC_NAME,
    EncoderSettingsRecord,
    EndRecord,
    FileHeader,
    KeyframeRecord,
    LatentFormat,
    PaddingRecord,
    QualityRecord,
    ReconThumbnailRecord,
    Record,
    RecordType,
    SceneRecord,
    SeekIndexRecord,
    UnknownAncillaryRecord,
    is_ancillary,
)
from promptus_codec.errors import (
    ForbiddenValueError,
    LengthError,
    UnknownCriticalRecordError,
    UnsupportedVersionError,
)

HEADER_BODY_V1_SIZE = schema.HEADER_BODY_V1_SIZE  # kept for conformance/make_vectors.py
HEADER_OFFSET = schema.header_preamble.sizeof()  # where the header body starts: its errors point here


def crc32(data: bytes) -> int:
    """CRC-32 of ISO-HDLC (zlib, PNG, gzip), spec §2.3."""
    return zlib.crc32(data) & 0xFFFFFFFF


def _forbid(condition: bool, message: str, offset: int | None = None) -> None:
    if condition:
        raise ForbiddenValueError(message, offset)


def _enum(enum_type, value: int, field: str, offset: int | None):
    try:
        return enum_type(value)
    except ValueError:
        raise ForbiddenValueError(f"{field} {value} is not defined", offset) from None


def _is_f32_in(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


# ---------------------------------------------------------------------------
# Dataclasses <-> the spec's field values, by dataclasses.fields()
# ---------------------------------------------------------------------------


@cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _spec_name(f) -> str:
    return f.metadata.get(SPEC_NAME, f.name)


def spec_names(cls) -> set[str]:
    """The spec names that :func:`to_fields` gives for dataclass ``cls``."""
    names = set()
    for f in fields(cls):
        if f.metadata.get(INLINE):
            names |= spec_names(_hints(cls)[f.name])
        elif _hints(cls)[f.name] is Fraction:
            names |= {f"{_spec_name(f)}_num", f"{_spec_name(f)}_den"}
        else:
            names.add(_spec_name(f))
    return names


def _plain(value):
    if isinstance(value, enum.IntEnum):
        return int(value)
    if is_dataclass(value):
        return to_fields(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def to_fields(obj) -> dict:
    """A dataclass's values under the spec's names, ready for construct.

    Groups marked ``INLINE`` (the header's geometry, generation constants, model) are
    flattened; a Fraction ``x`` becomes ``x_num`` and ``x_den``; enums become their ids;
    nested dataclasses become dicts and tuples lists. Arrays stay as they are.
    """
    values = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get(INLINE):
            values.update(to_fields(value))
        elif _hints(type(obj))[f.name] is Fraction:
            values[f"{_spec_name(f)}_num"], values[f"{_spec_name(f)}_den"] = value.numerator, value.denominator
        else:
            values[_spec_name(f)] = _plain(value)
    return values


def _fraction(name: str, numerator: int, denominator: int, offset: int | None) -> Fraction:
    if denominator == 0:
        raise ForbiddenValueError(f"{name}_den is 0", offset)
    value = Fraction(numerator, denominator)
    if (value.numerator, value.denominator) != (numerator, denominator):
        raise ForbiddenValueError(f"{name.replace('_', ' ')} must be stored in lowest terms", offset)
    return value


def _value(hint, value, name: str, offset: int | None, convert):
    if convert is not None:
        value = convert(hint, value)
    if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
        return _enum(hint, value, name, offset)
    if is_dataclass(hint):
        return from_fields(hint, value, offset, convert)
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return tuple(_value(item, v, name, offset, convert) for v in value)
    return value


def from_fields(cls, values: typing.Mapping, offset: int | None = None, convert: Callable | None = None):
    """The inverse of :func:`to_fields`: build ``cls`` from values under the spec's names.

    An undefined enum id or a frame rate that is not in lowest terms raises
    ForbiddenValueError at ``offset``. ``convert(type_hint, value)``, when given, turns each
    value into the field's type first (the JSON form's hex strings).
    """
    hints = _hints(cls)
    kwargs = {}
    for f in fields(cls):
        hint, name = hints[f.name], _spec_name(f)
        if f.metadata.get(INLINE):
            kwargs[f.name] = from_fields(hint, values, offset, convert)
        elif hint is Fraction:
            kwargs[f.name] = _fraction(name, values[f"{name}_num"], values[f"{name}_den"], offset)
        elif name in values:
            kwargs[f.name] = _value(hint, values[name], name, offset, convert)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise KeyError(name)
    return cls(**kwargs)


def record_fields(record: Record) -> dict:
    """A record's values under the spec's names, in payload order, counts included."""
    values = to_fields(record)
    if isinstance(record, UnknownAncillaryRecord) or record.record_type not in schema.PAYLOADS:
        return values
    whole = schema.PAYLOADS[record.record_type][1]
    return {
        name: values[name] if name in values else _plain(getattr(record, name)) for name in schema.field_names(whole)
    }


def header_params(header: FileHeader) -> dict:
    """The header's numbers that size record arrays (schema.py's context parameters)."""
    c, h, w = header.latent_shape
    return dict(prompt_tokens=header.prompt_tokens, prompt_dim=header.prompt_dim, latent_elements=c * h * w)


def header_fields(header: FileHeader) -> dict:
    """The header's values under the spec's names, in file order (§3.1 preamble, then the body)."""
    values = to_fields(header)
    names = schema.field_names(schema.header_preamble) + schema.field_names(schema.header_body)
    return {name: values[name] for name in names}


# ---------------------------------------------------------------------------
# §3 File header
# ---------------------------------------------------------------------------


def check_header(h: FileHeader, offset: int | None = None) -> None:
    """Refuse the forbidden header values of spec §7.1."""
    if h.major_version != schema.MAJOR_VERSION:
        raise UnsupportedVersionError(
            f"major version {h.major_version} is not supported (this reader implements {schema.MAJOR_VERSION})",
            offset,
        )
    _forbid(h.coded_width == 0 or h.coded_height == 0, f"coded size {h.coded_width}x{h.coded_height} is empty", offset)
    _forbid(
        h.coded_width > schema.MAX_CODED_SIDE or h.coded_height > schema.MAX_CODED_SIDE,
        f"coded size {h.coded_width}x{h.coded_height} exceeds {schema.MAX_CODED_SIDE}",
        offset,
    )
    g = h.geometry
    _forbid(g.source_width == 0 or g.source_height == 0, "source size is empty", offset)
    for name, r, w, ht in (
        ("source_rect", g.source_rect, g.source_width, g.source_height),
        ("coded_rect", g.coded_rect, h.coded_width, h.coded_height),
    ):
        _forbid(r.width == 0 or r.height == 0, f"{name} is empty", offset)
        _forbid(r.x + r.width > w or r.y + r.height > ht, f"{name} lies outside its frame", offset)
    _forbid(h.frame_rate.numerator <= 0, "frame rate must be positive", offset)
    _forbid(
        not 0 < h.prompt_tokens <= schema.MAX_PROMPT_TOKENS, f"prompt_tokens {h.prompt_tokens} out of range", offset
    )
    _forbid(not 0 < h.prompt_dim <= schema.MAX_PROMPT_DIM, f"prompt_dim {h.prompt_dim} out of range", offset)
    _forbid(0 in h.latent_shape, f"latent shape {h.latent_shape} is empty", offset)
    elements = h.latent_channels * h.latent_height * h.latent_width
    if elements > schema.MAX_LATENT_ELEMENTS:
        raise LengthError(f"latent shape {h.latent_shape} exceeds {schema.MAX_LATENT_ELEMENTS} values", offset)
    c = h.generation
    _forbid(not _is_f32_in(c.latent_weight, 0.0, 1.0), f"latent_weight {c.latent_weight} outside [0, 1]", offset)
    _forbid(not _is_f32_in(c.noise_weight, 0.0, 1.0), f"noise_weight {c.noise_weight} outside [0, 1]", offset)
    _forbid(
        not (_is_f32_in(c.alpha_cumprod, 0.0, 1.0) and 0.0 < c.alpha_cumprod < 1.0),
        f"alpha_cumprod {c.alpha_cumprod} outside (0, 1)",
        offset,
    )
    _forbid(not h.model.name, "model_name is empty", offset)


def header_to_bytes(h: FileHeader) -> bytes:
    """The complete file header: preamble, body and CRC (spec §3)."""
    check_header(h)
    _forbid(h.flags != 0, f"flags {h.flags:#06x}: version 1.0 defines no flags; writers MUST write 0")
    _forbid(
        h.minor_version != schema.MINOR_VERSION, f"this writer writes only the 1.{schema.MINOR_VERSION} header body"
    )
    values = to_fields(h)
    body = schema.build(schema.header_body, values)
    preamble = schema.build(schema.header_preamble, {**values, "header_length": len(body)})
    return preamble + body + schema.build(schema.crc32_field, dict(crc32=crc32(preamble + body)))


def check_preamble(preamble) -> None:
    """Checks that must pass before the header body is read (spec §3.1, §8)."""
    if preamble.major_version != schema.MAJOR_VERSION:
        raise UnsupportedVersionError(
            f"major version {preamble.major_version} is not supported (this reader implements {schema.MAJOR_VERSION})",
            0,
        )
    if not schema.HEADER_BODY_V1_SIZE < preamble.header_length <= schema.MAX_HEADER_BODY:
        raise LengthError(f"header_length {preamble.header_length} is impossible", 12)


def header_from_parts(preamble, body: bytes) -> FileHeader:
    """Build the FileHeader from a checked preamble and its CRC-verified body."""
    values = schema.parse_header_body(body, HEADER_OFFSET)
    header = from_fields(FileHeader, {**preamble, **values}, HEADER_OFFSET)
    check_header(header, HEADER_OFFSET)
    return header


# ---------------------------------------------------------------------------
# §4 framing and §6 payloads
# ---------------------------------------------------------------------------


def frame_record(record_type: int, payload: bytes) -> bytes:
    """record_type, record_length, payload, record_crc (spec §4.1)."""
    if len(payload) > schema.MAX_RECORD_LENGTH:
        raise LengthError(f"record payload of {len(payload)} bytes exceeds {schema.MAX_RECORD_LENGTH}")
    prefix = schema.build(schema.record_prefix, dict(record_type=record_type, record_length=len(payload)))
    return prefix + payload + schema.build(schema.crc32_field, dict(crc32=crc32(prefix + payload)))


def recon_thumbnail_payload_size(width: int, height: int) -> int:
    """Payload bytes of a ReconThumbnail of ``width`` x ``height`` (spec §6.8)."""
    return schema.payload_size(RecordType.RECON_THUMBNAIL, thumbnail_width=width, thumbnail_height=height)


def settings_json(settings: dict) -> bytes:
    """The canonical EncoderSettings text (spec §6.4): sorted keys, no spaces, ASCII, no NaN."""
    _forbid(not isinstance(settings, dict), "EncoderSettings must hold a JSON object (a dict)")
    try:
        text = json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ForbiddenValueError(f"EncoderSettings cannot be written as JSON: {exc}") from None
    return text.encode("utf-8")


def _check_dtype(array: np.ndarray, dtype: np.dtype, what: str) -> None:
    """Writers get no silent casts: a wrong dtype would wrap or overflow (spec §6)."""
    if not isinstance(array, np.ndarray) or array.dtype.newbyteorder("<") != dtype.newbyteorder("<"):
        raise ForbiddenValueError(f"{what} must be a numpy {dtype} array, got {getattr(array, 'dtype', type(array))}")


def _check_scene(r: SceneRecord, header: FileHeader, offset: int | None) -> None:
    if r.latent_format == LatentFormat.INT8:
        _forbid(
            not (math.isfinite(r.latent_scale) and r.latent_scale > 0),
            f"int8 latent_scale {r.latent_scale} must be finite and positive",
            offset,
        )
    else:
        _forbid(r.latent_scale != 1.0, f"latent_scale must be 1.0 for float latents, not {r.latent_scale}", offset)
        _forbid(not np.isfinite(r.latent).all(), "scene latent holds NaN or infinity", offset)
    _forbid(
        tuple(r.latent.shape) != header.latent_shape,
        f"latent shape {r.latent.shape} != header {header.latent_shape}",
        offset,
    )


def _check_keyframe(r: KeyframeRecord, header: FileHeader, offset: int | None) -> None:
    _forbid(r.rank == 0, "keyframe rank 0 is forbidden", offset)
    _forbid(
        r.rank > min(header.prompt_tokens, header.prompt_dim),
        f"keyframe rank {r.rank} exceeds min(m, n) = {min(header.prompt_shape)}",
        offset,
    )
    for name in ("u_scale", "v_scale"):
        value = getattr(r, name)
        _forbid(not (math.isfinite(value) and value > 0), f"{name} {value} must be finite and positive", offset)
    for name in ("u_zero_point", "v_zero_point"):
        value = getattr(r, name)
        _forbid(
            not (math.isfinite(value) and value == int(value) and -128 <= value <= 127),
            f"{name} {value} must be an integer in [-128, 127]",
            offset,
        )
    m, n = header.prompt_shape
    _forbid(r.u.shape != (m, r.rank) or r.v.shape != (r.rank, n), "factor shapes do not match the header", offset)


def _check_recon_thumbnail(width: int, height: int, header: FileHeader, offset: int | None) -> None:
    _forbid(width == 0 or height == 0, f"ReconThumbnail of {width}x{height} is empty", offset)
    _forbid(
        width > header.coded_width or height > header.coded_height,
        f"ReconThumbnail of {width}x{height} is larger than the coded frame {header.coded_width}x{header.coded_height}",
        offset,
    )


# Each record type's own part, both ways. *_values: a checked record -> the values its
# payload struct builds from; *_record: a parsed payload (length already checked) -> the
# checked record; *_counts: the fixed fields that size the arrays, or None for any length.


def _scene_counts(fixed, header: FileHeader, offset: int | None) -> dict:
    fmt = _enum(LatentFormat, fixed.latent_format, "latent_format", offset)
    return dict(latent_format=fmt, latent_elements=header_params(header)["latent_elements"])


def _scene_values(r: SceneRecord, header: FileHeader) -> dict:
    _check_dtype(r.latent, LATENT_DTYPES[r.latent_format], "Scene latent")
    _check_scene(r, header, None)
    return {
        **record_fields(r),
        "latent": np.ascontiguousarray(r.latent, dtype=LATENT_DTYPES[r.latent_format]).tobytes(),
    }


def _scene_record(p, header: FileHeader, offset: int | None) -> SceneRecord:
    fmt = _enum(LatentFormat, p.latent_format, "latent_format", offset)
    latent = np.frombuffer(p.latent, dtype=LATENT_DTYPES[fmt]).reshape(header.latent_shape)  # (C, H, W)
    record = from_fields(SceneRecord, {**p, "latent": latent}, offset)
    _check_scene(record, header, offset)
    return record


def _keyframe_counts(fixed, header: FileHeader, offset: int | None) -> dict:
    _forbid(fixed.rank == 0, "keyframe rank 0 is forbidden", offset)
    return dict(rank=fixed.rank, prompt_tokens=header.prompt_tokens, prompt_dim=header.prompt_dim)


def _keyframe_values(r: KeyframeRecord, header: FileHeader) -> dict:
    _check_dtype(r.u, np.dtype("i1"), "Keyframe u")
    _check_dtype(r.v, np.dtype("i1"), "Keyframe v")
    _check_keyframe(r, header, None)
    u, v = (np.ascontiguousarray(a, dtype=np.int8).tobytes() for a in (r.u, r.v))
    return {**record_fields(r), "u": u, "v": v}


def _keyframe_record(p, header: FileHeader, offset: int | None) -> KeyframeRecord:
    m, n = header.prompt_shape
    u = np.frombuffer(p.u, dtype=np.int8).reshape(m, p.rank)  # (m, r)
    v = np.frombuffer(p.v, dtype=np.int8).reshape(p.rank, n)  # (r, n)
    record = from_fields(KeyframeRecord, {**p, "u": u, "v": v}, offset)
    _check_keyframe(record, header, offset)
    return record


def _settings_values(r: EncoderSettingsRecord, header: FileHeader) -> dict:
    return {**record_fields(r), "settings_json": settings_json(r.settings)}


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _settings_record(p, header: FileHeader, offset: int | None) -> EncoderSettingsRecord:
    try:
        text = p.settings_json.decode("utf-8")
        settings = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ForbiddenValueError("EncoderSettings is not strict UTF-8 JSON", offset) from None
    _forbid(not isinstance(settings, dict), "EncoderSettings must hold a JSON object", offset)
    return from_fields(EncoderSettingsRecord, {**p, "settings_json": settings}, offset)


def _quality_values(r: QualityRecord, header: FileHeader) -> dict:
    if len(r.psnr_db) != len(r.loss):
        raise LengthError("quality record: psnr_db and loss differ in length")
    return record_fields(r)


def _thumbnail_counts(fixed, header: FileHeader, offset: int | None) -> dict:
    return dict(thumbnail_width=fixed.thumbnail_width, thumbnail_height=fixed.thumbnail_height)


def _thumbnail_values(r: ReconThumbnailRecord, header: FileHeader) -> dict:
    _check_dtype(r.luma, np.dtype("u1"), "ReconThumbnail luma")
    _forbid(r.luma.ndim != 2, f"ReconThumbnail luma must be (height, width), not {r.luma.shape}")
    _check_recon_thumbnail(r.thumbnail_width, r.thumbnail_height, header, None)
    return {**record_fields(r), "luma": np.ascontiguousarray(r.luma).tobytes()}


def _thumbnail_record(p, header: FileHeader, offset: int | None) -> ReconThumbnailRecord:
    _check_recon_thumbnail(p.thumbnail_width, p.thumbnail_height, header, offset)
    luma = np.frombuffer(p.luma, dtype=np.uint8).reshape(p.thumbnail_height, p.thumbnail_width)  # (h, w)
    return from_fields(ReconThumbnailRecord, {**p, "luma": luma}, offset)


def _fields_only(r, header: FileHeader) -> dict:
    return record_fields(r)


def _fields_record(record_class):
    return lambda p, header, offset: from_fields(record_class, p, offset)


def _fixed_counts(fixed, header: FileHeader, offset: int | None) -> dict:
    return dict(fixed)


class RecordMap(NamedTuple):
    """How one record type's dataclass maps onto its payload struct (schema.PAYLOADS)."""

    struct: object  # the whole payload: fixed fields, then arrays
    to_record: Callable  # (parsed payload, header, offset) -> checked record
    from_record: Callable  # (record, header) -> the values ``struct`` builds, after the writer's checks
    counts: Callable | None  # (parsed fixed part, header, offset) -> schema.payload_size's counts; None: any length


RECORDS: dict[RecordType, RecordMap] = {
    RecordType.SCENE: RecordMap(schema.scene_payload, _scene_record, _scene_values, _scene_counts),
    RecordType.KEYFRAME: RecordMap(schema.keyframe_payload, _keyframe_record, _keyframe_values, _keyframe_counts),
    RecordType.END: RecordMap(schema.end_payload, _fields_record(EndRecord), _fields_only, _fixed_counts),
    RecordType.ENCODER_SETTINGS: RecordMap(schema.encoder_settings_payload, _settings_record, _settings_values, None),
    RecordType.SEEK_INDEX: RecordMap(
        schema.seek_index_payload, _fields_record(SeekIndexRecord), _fields_only, _fixed_counts
    ),
    RecordType.QUALITY: RecordMap(
        schema.quality_payload, _fields_record(QualityRecord), _quality_values, _fixed_counts
    ),
    RecordType.RECON_THUMBNAIL: RecordMap(
        schema.recon_thumbnail_payload, _thumbnail_record, _thumbnail_values, _thumbnail_counts
    ),
}
"""Every record type with a payload struct. Padding (§6.7) has none: its payload is filler."""

KNOWN_TYPES = frozenset(int(t) for t in RecordType)


def record_to_bytes(record: Record, header: FileHeader) -> bytes:
    """A framed record, checked against the header (spec §4, §6)."""
    if isinstance(record, PaddingRecord):
        if not 0 <= record.size <= schema.MAX_RECORD_LENGTH:
            raise LengthError(f"Padding of {record.size} bytes is outside 0..{schema.MAX_RECORD_LENGTH}")
        payload = bytes(record.size)  # §6.7: every filler byte is 0x00
    elif isinstance(record, UnknownAncillaryRecord):
        _forbid(
            not is_ancillary(record.record_type) or record.record_type in KNOWN_TYPES,
            f"record type 0x{record.record_type:04x} is not an unknown ancillary type",
        )
        payload = record.payload
    elif type(record) is RECORD_CLASSES.get(getattr(record, "record_type", None)):
        mapping = RECORDS[record.record_type]
        payload = schema.build(mapping.struct, mapping.from_record(record, header), **header_params(header))
    else:
        raise TypeError(f"not a record: {record!r}")
    return frame_record(record.record_type, payload)


def _expect_length(actual: int, expected: int, what: str, offset: int | None) -> None:
    if actual != expected:
        raise LengthError(f"{what} payload is {actual} bytes, the header implies {expected}", offset)


def record_from_payload(record_type: int, payload: bytes, header: FileHeader, offset: int | None = None) -> Record:
    """Decode a CRC-verified payload into its record (spec §6). ``offset``: the record's start."""
    if record_type == RecordType.PADDING:
        return PaddingRecord(len(payload))  # contents are ignored (spec §6.7)
    mapping = RECORDS.get(record_type)
    if mapping is None:
        if is_ancillary(record_type):
            return UnknownAncillaryRecord(record_type, bytes(payload))
        raise UnknownCriticalRecordError(f"unknown critical record type 0x{record_type:04x}", offset)
    name, fixed = RECORD_NAMES[record_type], schema.PAYLOADS[record_type][0]
    if len(payload) < fixed.sizeof():
        raise LengthError(f"{name} payload is {len(payload)} bytes, shorter than its fixed part", offset)
    if mapping.counts is not None:
        counts = mapping.counts(schema.parse(fixed, payload, offset), header, offset)
        _expect_length(len(payload), schema.payload_size(record_type, **counts), name, offset)
    return mapping.to_record(schema.parse(mapping.struct, payload, offset, **header_params(header)), header, offset)
