"""Records <-> bytes, and the value checks of format_spec.md §7.

The byte layout is in :mod:`.schema`; this module maps it onto the dataclasses of
:mod:`.records` and refuses forbidden values. Lengths are checked against what the header
allows *before* a payload is parsed, so a hostile count cannot make us allocate.
"""

from __future__ import annotations

import json
import math
import zlib
from fractions import Fraction

import numpy as np

from promptus_codec.container import schema
from promptus_codec.container.records import (
    LATENT_DTYPES,
    EncoderSettingsRecord,
    EndRecord,
    FileHeader,
    FitMode,
    GenerationConstants,
    KeyframeRecord,
    LatentFormat,
    PaddingRecord,
    ModelIdentity,
    NoiseGenerator,
    PredictionType,
    QualityRecord,
    QuantScheme,
    ReconThumbnailRecord,
    Record,
    RecordType,
    Rect,
    SceneRecord,
    SeekEntry,
    SeekIndexRecord,
    SourceGeometry,
    UnknownAncillaryRecord,
    is_ancillary,
)
from promptus_codec.errors import (
    ForbiddenValueError,
    LengthError,
    UnknownCriticalRecordError,
    UnsupportedVersionError,
)

HEADER_BODY_V1_SIZE = 164  # header_body with an empty model_name (spec §3.2); asserted in tests


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
    _forbid(not 0 < h.prompt_tokens <= schema.MAX_PROMPT_TOKENS, f"prompt_tokens {h.prompt_tokens} out of range", offset)
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
    _forbid(h.minor_version != schema.MINOR_VERSION, f"this writer writes only the 1.{schema.MINOR_VERSION} header body")
    g, c, m = h.geometry, h.generation, h.model
    body = schema.build(
        schema.header_body,
        dict(
            coded_width=h.coded_width,
            coded_height=h.coded_height,
            source_width=g.source_width,
            source_height=g.source_height,
            fit_mode=int(g.fit_mode),
            source_rect=vars(g.source_rect),
            coded_rect=vars(g.coded_rect),
            frame_rate_num=h.frame_rate.numerator,
            frame_rate_den=h.frame_rate.denominator,
            frame_count=h.frame_count,
            prompt_tokens=h.prompt_tokens,
            prompt_dim=h.prompt_dim,
            latent_channels=h.latent_channels,
            latent_height=h.latent_height,
            latent_width=h.latent_width,
            noise_seed=c.noise_seed,
            noise_generator=int(c.noise_generator),
            prediction_type=int(c.prediction_type),
            timestep=c.timestep,
            latent_weight=c.latent_weight,
            noise_weight=c.noise_weight,
            alpha_cumprod=c.alpha_cumprod,
            denoiser_sha256=m.denoiser_sha256,
            decoder_sha256=m.decoder_sha256,
            encoder_sha256=m.encoder_sha256,
            model_name=m.name,
        ),
    )
    preamble = schema.build(
        schema.header_preamble,
        dict(major_version=h.major_version, minor_version=h.minor_version, flags=h.flags, header_length=len(body)),
    )
    return preamble + body + schema.build(schema.crc32_field, dict(crc32=crc32(preamble + body)))


def check_preamble(preamble) -> None:
    """Checks that must pass before the header body is read (spec §3.1, §8)."""
    if preamble.major_version != schema.MAJOR_VERSION:
        raise UnsupportedVersionError(
            f"major version {preamble.major_version} is not supported "
            f"(this reader implements {schema.MAJOR_VERSION})",
            0,
        )
    if not HEADER_BODY_V1_SIZE < preamble.header_length <= schema.MAX_HEADER_BODY:
        raise LengthError(f"header_length {preamble.header_length} is impossible", 12)


def header_from_parts(preamble, body: bytes) -> FileHeader:
    """Build the FileHeader from a checked preamble and its CRC-verified body."""
    name_length = body[HEADER_BODY_V1_SIZE - 1]
    if HEADER_BODY_V1_SIZE + name_length > len(body):
        raise LengthError(f"model_name of {name_length} bytes runs past header_length {len(body)}", 16)
    try:
        body[HEADER_BODY_V1_SIZE : HEADER_BODY_V1_SIZE + name_length].decode("utf-8")
    except UnicodeDecodeError:
        raise ForbiddenValueError("model_name is not valid UTF-8", 16) from None
    b = schema.parse(schema.header_body, body, schema.header_preamble.sizeof())
    try:
        frame_rate = Fraction(b.frame_rate_num, b.frame_rate_den)
    except ZeroDivisionError:
        raise ForbiddenValueError("frame_rate_den is 0", 16) from None
    header = FileHeader(
        coded_width=b.coded_width,
        coded_height=b.coded_height,
        geometry=SourceGeometry(
            source_width=b.source_width,
            source_height=b.source_height,
            fit_mode=_enum(FitMode, b.fit_mode, "fit_mode", 16),
            source_rect=Rect(b.source_rect.x, b.source_rect.y, b.source_rect.width, b.source_rect.height),
            coded_rect=Rect(b.coded_rect.x, b.coded_rect.y, b.coded_rect.width, b.coded_rect.height),
        ),
        frame_rate=frame_rate,
        frame_count=b.frame_count,
        prompt_tokens=b.prompt_tokens,
        prompt_dim=b.prompt_dim,
        latent_channels=b.latent_channels,
        latent_height=b.latent_height,
        latent_width=b.latent_width,
        generation=GenerationConstants(
            noise_seed=b.noise_seed,
            noise_generator=_enum(NoiseGenerator, b.noise_generator, "noise_generator", 16),
            latent_weight=b.latent_weight,
            noise_weight=b.noise_weight,
            timestep=b.timestep,
            alpha_cumprod=b.alpha_cumprod,
            prediction_type=_enum(PredictionType, b.prediction_type, "prediction_type", 16),
        ),
        model=ModelIdentity(b.model_name, b.denoiser_sha256, b.decoder_sha256, b.encoder_sha256),
        flags=preamble.flags,
        major_version=preamble.major_version,
        minor_version=preamble.minor_version,
    )
    if header.frame_rate.denominator != b.frame_rate_den or header.frame_rate.numerator != b.frame_rate_num:
        raise ForbiddenValueError("frame rate must be stored in lowest terms", 16)
    check_header(header, 16)
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


def scene_payload_size(header: FileHeader, latent_format: LatentFormat) -> int:
    c, h, w = header.latent_shape
    return schema.SCENE_FIXED_SIZE + c * h * w * LATENT_DTYPES[latent_format].itemsize


def keyframe_payload_size(header: FileHeader, rank: int) -> int:
    return schema.KEYFRAME_FIXED_SIZE + rank * (header.prompt_tokens + header.prompt_dim)


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
    _forbid(tuple(r.latent.shape) != header.latent_shape, f"latent shape {r.latent.shape} != header {header.latent_shape}", offset)


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


def recon_thumbnail_payload_size(width: int, height: int) -> int:
    return schema.RECON_THUMBNAIL_FIXED_SIZE + width * height


def _check_recon_thumbnail(width: int, height: int, header: FileHeader, offset: int | None) -> None:
    _forbid(width == 0 or height == 0, f"ReconThumbnail of {width}x{height} is empty", offset)
    _forbid(
        width > header.coded_width or height > header.coded_height,
        f"ReconThumbnail of {width}x{height} is larger than the coded frame {header.coded_width}x{header.coded_height}",
        offset,
    )


def record_to_bytes(record: Record, header: FileHeader) -> bytes:
    """A framed record, checked against the header (spec §4, §6)."""
    if isinstance(record, SceneRecord):
        _check_dtype(record.latent, LATENT_DTYPES[record.latent_format], "Scene latent")
        _check_scene(record, header, None)
        latent = np.ascontiguousarray(record.latent, dtype=LATENT_DTYPES[record.latent_format])
        payload = schema.build(
            schema.scene_payload,
            dict(
                first_frame=record.first_frame,
                latent_format=int(record.latent_format),
                latent_scale=record.latent_scale,
                latent=latent.tobytes(),
            ),
        )
    elif isinstance(record, KeyframeRecord):
        _check_dtype(record.u, np.dtype("i1"), "Keyframe u")
        _check_dtype(record.v, np.dtype("i1"), "Keyframe v")
        _check_keyframe(record, header, None)
        payload = schema.build(
            schema.keyframe_payload,
            dict(
                frame_index=record.frame_index,
                rank=record.rank,
                quant_scheme=int(record.quant_scheme),
                u_scale=record.u_scale,
                u_zero_point=record.u_zero_point,
                v_scale=record.v_scale,
                v_zero_point=record.v_zero_point,
                u=np.ascontiguousarray(record.u, dtype=np.int8).tobytes(),
                v=np.ascontiguousarray(record.v, dtype=np.int8).tobytes(),
            ),
            prompt_tokens=header.prompt_tokens,
            prompt_dim=header.prompt_dim,
        )
    elif isinstance(record, EndRecord):
        payload = schema.build(schema.end_payload, vars(record))
    elif isinstance(record, EncoderSettingsRecord):
        _forbid(not isinstance(record.settings, dict), "EncoderSettings must hold a JSON object (a dict)")
        try:
            text = json.dumps(record.settings, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ForbiddenValueError(f"EncoderSettings cannot be written as JSON: {exc}") from None
        payload = schema.build(schema.encoder_settings_payload, dict(settings_json=text.encode("utf-8")))
    elif isinstance(record, SeekIndexRecord):
        payload = schema.build(
            schema.seek_index_payload,
            dict(entry_count=len(record.entries), entries=[vars(e) for e in record.entries]),
        )
    elif isinstance(record, QualityRecord):
        if len(record.psnr_db) != len(record.loss):
            raise LengthError("quality record: psnr_db and loss differ in length")
        payload = schema.build(
            schema.quality_payload,
            dict(first_frame=record.first_frame, frame_count=len(record.psnr_db), psnr_db=record.psnr_db, loss=record.loss),
        )
    elif isinstance(record, ReconThumbnailRecord):
        _check_dtype(record.luma, np.dtype("u1"), "ReconThumbnail luma")
        _forbid(record.luma.ndim != 2, f"ReconThumbnail luma must be (height, width), not {record.luma.shape}")
        height, width = record.luma.shape
        _check_recon_thumbnail(width, height, header, None)
        payload = schema.build(
            schema.recon_thumbnail_payload,
            dict(
                frame_index=record.frame_index,
                thumbnail_width=width,
                thumbnail_height=height,
                luma=np.ascontiguousarray(record.luma).tobytes(),
            ),
        )
    elif isinstance(record, PaddingRecord):
        if not 0 <= record.size <= schema.MAX_RECORD_LENGTH:
            raise LengthError(f"Padding of {record.size} bytes is outside 0..{schema.MAX_RECORD_LENGTH}")
        payload = bytes(record.size)
    elif isinstance(record, UnknownAncillaryRecord):
        _forbid(
            not is_ancillary(record.record_type) or record.record_type in KNOWN_TYPES,
            f"record type 0x{record.record_type:04x} is not an unknown ancillary type",
        )
        payload = record.payload
    else:
        raise TypeError(f"not a record: {record!r}")
    return frame_record(record.record_type, payload)


KNOWN_TYPES = frozenset(int(t) for t in RecordType)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _expect_length(actual: int, expected: int, what: str, offset: int | None) -> None:
    if actual != expected:
        raise LengthError(f"{what} payload is {actual} bytes, the header implies {expected}", offset)


def record_from_payload(record_type: int, payload: bytes, header: FileHeader, offset: int | None = None) -> Record:
    """Decode a CRC-verified payload into its record (spec §6). ``offset``: the record's start."""
    if record_type == RecordType.SCENE:
        if len(payload) < schema.SCENE_FIXED_SIZE:
            raise LengthError(f"Scene payload is {len(payload)} bytes, shorter than its fixed part", offset)
        fmt = _enum(LatentFormat, payload[4], "latent_format", offset)
        _expect_length(len(payload), scene_payload_size(header, fmt), "Scene", offset)
        p = schema.parse(schema.scene_payload, payload, offset)
        latent = np.frombuffer(p.latent, dtype=LATENT_DTYPES[fmt]).reshape(header.latent_shape)
        record = SceneRecord(p.first_frame, fmt, p.latent_scale, latent)
        _check_scene(record, header, offset)
        return record
    if record_type == RecordType.KEYFRAME:
        if len(payload) < schema.KEYFRAME_FIXED_SIZE:
            raise LengthError(f"Keyframe payload is {len(payload)} bytes, shorter than its fixed part", offset)
        rank = int.from_bytes(payload[4:6], "little")
        _forbid(rank == 0, "keyframe rank 0 is forbidden", offset)
        _expect_length(len(payload), keyframe_payload_size(header, rank), "Keyframe", offset)
        p = schema.parse(
            schema.keyframe_payload, payload, offset, prompt_tokens=header.prompt_tokens, prompt_dim=header.prompt_dim
        )
        m, n = header.prompt_shape
        record = KeyframeRecord(
            frame_index=p.frame_index,
            rank=p.rank,
            quant_scheme=_enum(QuantScheme, p.quant_scheme, "quant_scheme", offset),
            u_scale=p.u_scale,
            u_zero_point=p.u_zero_point,
            v_scale=p.v_scale,
            v_zero_point=p.v_zero_point,
            u=np.frombuffer(p.u, dtype=np.int8).reshape(m, p.rank),
            v=np.frombuffer(p.v, dtype=np.int8).reshape(p.rank, n),
        )
        _check_keyframe(record, header, offset)
        return record
    if record_type == RecordType.END:
        _expect_length(len(payload), schema.END_PAYLOAD_SIZE, "End", offset)
        p = schema.parse(schema.end_payload, payload, offset)
        return EndRecord(p.frame_count, p.scene_count, p.keyframe_count, p.seek_index_offset)
    if record_type == RecordType.ENCODER_SETTINGS:
        try:
            settings = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ForbiddenValueError("EncoderSettings is not strict UTF-8 JSON", offset) from None
        _forbid(not isinstance(settings, dict), "EncoderSettings must hold a JSON object", offset)
        return EncoderSettingsRecord(settings)
    if record_type == RecordType.SEEK_INDEX:
        if len(payload) < 4:
            raise LengthError("SeekIndex payload is shorter than its count", offset)
        count = int.from_bytes(payload[:4], "little")
        _expect_length(len(payload), 4 + count * schema.SEEK_ENTRY_SIZE, "SeekIndex", offset)
        p = schema.parse(schema.seek_index_payload, payload, offset)
        return SeekIndexRecord(tuple(SeekEntry(e.frame_index, e.byte_offset) for e in p.entries))
    if record_type == RecordType.QUALITY:
        if len(payload) < schema.QUALITY_FIXED_SIZE:
            raise LengthError("Quality payload is shorter than its fixed part", offset)
        count = int.from_bytes(payload[4:8], "little")
        _expect_length(len(payload), schema.QUALITY_FIXED_SIZE + count * schema.QUALITY_PER_FRAME, "Quality", offset)
        p = schema.parse(schema.quality_payload, payload, offset)
        return QualityRecord(p.first_frame, tuple(p.psnr_db), tuple(p.loss))
    if record_type == RecordType.RECON_THUMBNAIL:
        if len(payload) < schema.RECON_THUMBNAIL_FIXED_SIZE:
            raise LengthError("ReconThumbnail payload is shorter than its fixed part", offset)
        width, height = int.from_bytes(payload[4:6], "little"), int.from_bytes(payload[6:8], "little")
        _expect_length(len(payload), recon_thumbnail_payload_size(width, height), "ReconThumbnail", offset)
        _check_recon_thumbnail(width, height, header, offset)
        p = schema.parse(schema.recon_thumbnail_payload, payload, offset)
        return ReconThumbnailRecord(p.frame_index, np.frombuffer(p.luma, dtype=np.uint8).reshape(height, width))
    if record_type == RecordType.PADDING:
        return PaddingRecord(len(payload))  # contents are ignored (spec §6.7)
    if is_ancillary(record_type):
        return UnknownAncillaryRecord(record_type, bytes(payload))
    raise UnknownCriticalRecordError(f"unknown critical record type 0x{record_type:04x}", offset)
