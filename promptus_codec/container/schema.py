"""Every byte of a .prx file, declared once with construct (format_spec.md §2-§6).

Field names are the spec's. All integers and floats are little-endian. This is the only
module in the project that packs or unpacks bytes; :func:`parse` and :func:`build` are
the one place where construct's errors become :class:`~promptus_codec.errors.PrxError`.

Each record payload is a *fixed* struct followed by its *arrays*, whose sizes follow
from the fixed fields and from the file header's numbers. Those numbers come in as
construct context parameters: ``prompt_tokens``, ``prompt_dim`` and ``latent_elements``
(and ``json_length`` for EncoderSettings, whose text has no declared size). Every size
anywhere in the codec is a ``sizeof()`` of these structs: :func:`payload_size`,
:func:`record_size`, :func:`header_size`.
"""

from __future__ import annotations

from functools import lru_cache

from construct import (
    Array,
    Bytes,
    Const,
    ConstError,
    Construct,
    ConstructError,
    Float32l,
    GreedyBytes,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    PascalString,
    SizeofError,
    StreamError,
    Struct,
    this,
)
from construct.core import evaluate

from promptus_codec.container.records import LATENT_DTYPES, RecordType
from promptus_codec.errors import (
    BadMagicError,
    ForbiddenValueError,
    FormatError,
    LengthError,
    TruncatedError,
)

# §3.1 -- 8 bytes: a non-ASCII byte, "PRX", CR LF, Ctrl-Z, LF (PNG's trick: catches text-mode
# transfers and 7-bit channels, and stops `type` on DOS).
SIGNATURE = b"\x8bPRX\r\n\x1a\n"
MAJOR_VERSION = 1
MINOR_VERSION = 0

# §8 limits, checked before anything is allocated.
MAX_HEADER_BODY = 4096
MAX_RECORD_LENGTH = 1 << 24  # 16 MiB
MAX_CODED_SIDE = 16384
MAX_PROMPT_TOKENS = 1024
MAX_PROMPT_DIM = 8192
MAX_LATENT_ELEMENTS = 1 << 21  # 2 Mi values: a float32 Scene (8 MiB) fits MAX_RECORD_LENGTH


class Rest(Construct):
    """The bytes that end a payload, ``size`` of them by the context (for :meth:`sizeof`).

    Parsing takes every byte that is left, as ``GreedyBytes`` does, so a payload also parses
    without the header's numbers; the codec checks its length against :func:`payload_size`
    first.
    """

    def __init__(self, size):
        super().__init__()
        self.size = size

    def _parse(self, stream, context, path):
        return GreedyBytes._parse(stream, context, path)

    def _build(self, obj, stream, context, path):
        return GreedyBytes._build(obj, stream, context, path)

    def _sizeof(self, context, path):
        try:
            return evaluate(self.size, context)
        except (KeyError, AttributeError):
            raise SizeofError("cannot calculate size, key not found in context", path=path) from None


# ---------------------------------------------------------------------------
# §3 File header
# ---------------------------------------------------------------------------

header_preamble = Struct(
    "signature" / Const(SIGNATURE),
    "major_version" / Int8ul,
    "minor_version" / Int8ul,
    "flags" / Int16ul,
    "header_length" / Int32ul,  # bytes of header_body that follow
)
"""§3.1: fixed 16 bytes that every version of the format keeps."""

rect = Struct("x" / Int16ul, "y" / Int16ul, "width" / Int16ul, "height" / Int16ul)

header_body_fixed = Struct(
    # §3.2 coded picture
    "coded_width" / Int16ul,
    "coded_height" / Int16ul,
    # §3.3 source geometry
    "source_width" / Int16ul,
    "source_height" / Int16ul,
    "fit_mode" / Int8ul,
    "source_rect" / rect,
    "coded_rect" / rect,
    # §3.2 timing
    "frame_rate_num" / Int32ul,
    "frame_rate_den" / Int32ul,
    "frame_count" / Int32ul,
    # §3.2 shapes
    "prompt_tokens" / Int16ul,
    "prompt_dim" / Int16ul,
    "latent_channels" / Int16ul,
    "latent_height" / Int16ul,
    "latent_width" / Int16ul,
    # §3.4 generation constants
    "noise_seed" / Int32ul,
    "noise_generator" / Int8ul,
    "prediction_type" / Int8ul,
    "timestep" / Int16ul,
    "latent_weight" / Float32l,
    "noise_weight" / Float32l,
    "alpha_cumprod" / Float32l,
    # §3.5 model identity
    "denoiser_sha256" / Bytes(32),
    "decoder_sha256" / Bytes(32),
    "encoder_sha256" / Bytes(32),
)
"""§3.2-§3.5: the fixed fields of the version 1.0 header body."""

model_name_length = Int8ul
header_body = Struct(*header_body_fixed.subcons, "model_name" / PascalString(model_name_length, "utf8"))
"""§3.2-§3.5: the version 1.0 header body. Later minor versions may append fields."""

HEADER_BODY_V1_SIZE = header_body_fixed.sizeof() + model_name_length.sizeof()  # with an empty model_name

_header_body_unchecked = Struct(
    *header_body_fixed.subcons,
    "model_name_length" / model_name_length,
    "rest" / GreedyBytes,  # model_name's bytes, then any fields of a later minor version (§10)
)

crc32_field = Struct("crc32" / Int32ul)
CRC_SIZE = crc32_field.sizeof()


def signature_so_far(data: bytes) -> bool:
    """True while ``data``, the first bytes of a file, could still be a .prx signature (§3.1)."""
    return data[: len(SIGNATURE)] == SIGNATURE[: len(data)]


def header_size(model_name: str) -> int:
    """Bytes of a complete 1.0 file header: preamble, body and CRC (spec §3)."""
    return header_preamble.sizeof() + HEADER_BODY_V1_SIZE + len(model_name.encode("utf-8")) + CRC_SIZE


def parse_header_body(body: bytes, offset: int):
    """The fields of a CRC-checked header body that starts at byte ``offset`` (spec §3.2, §7.1 H6 H7).

    ``model_name``'s length and encoding are checked before it is decoded. The caller has
    checked that the body is longer than :data:`HEADER_BODY_V1_SIZE`.
    """
    raw = parse(_header_body_unchecked, body, offset)
    if raw.model_name_length > len(raw.rest):
        raise LengthError(f"model_name of {raw.model_name_length} bytes runs past header_length {len(body)}", offset)
    try:
        raw.rest[: raw.model_name_length].decode("utf-8")
    except UnicodeDecodeError:
        raise ForbiddenValueError("model_name is not valid UTF-8", offset) from None
    return parse(header_body, body, offset)


def unpack_crc(data: bytes) -> int:
    """The u(32) CRC-32 that ends a header or a record (spec §2.3)."""
    return crc32_field.parse(data).crc32


# ---------------------------------------------------------------------------
# §4 Record framing
# ---------------------------------------------------------------------------

record_prefix = Struct(
    "record_type" / Int16ul,
    "record_length" / Int32ul,  # payload bytes, excluding this prefix and the CRC
)
RECORD_PREFIX_SIZE = record_prefix.sizeof()
RECORD_CRC_SIZE = CRC_SIZE
RECORD_FRAMING_SIZE = RECORD_PREFIX_SIZE + RECORD_CRC_SIZE  # bytes a record adds around its payload

# ---------------------------------------------------------------------------
# §6 Record payloads: the fixed struct, then the whole payload (fixed fields and arrays)
# ---------------------------------------------------------------------------

scene_fixed = Struct(
    "first_frame" / Int32ul,
    "latent_format" / Int8ul,
    "latent_scale" / Float32l,
)
scene_payload = Struct(
    *scene_fixed.subcons,
    # latent_elements values of latent_format, C-order (C, H, W)
    "latent" / Rest(lambda this: this._params.latent_elements * LATENT_DTYPES[this.latent_format].itemsize),
)
"""§6.1 Scene: the fixed part, then the latent."""

keyframe_fixed = Struct(
    "frame_index" / Int32ul,
    "rank" / Int16ul,
    "quant_scheme" / Int8ul,
    "u_scale" / Float32l,
    "u_zero_point" / Float32l,
    "v_scale" / Float32l,
    "v_zero_point" / Float32l,
)
keyframe_payload = Struct(
    *keyframe_fixed.subcons,
    "u" / Bytes(this._params.prompt_tokens * this.rank),  # int8 (m, r), row-major
    "v" / Bytes(this.rank * this._params.prompt_dim),  # int8 (r, n), row-major
)
"""§6.2 Keyframe: the fixed part, then U and V."""

end_payload = Struct(
    "frame_count" / Int32ul,
    "scene_count" / Int32ul,
    "keyframe_count" / Int32ul,
    "seek_index_offset" / Int64ul,
)
"""§6.3 End: fixed, no arrays."""

encoder_settings_fixed = Struct()
encoder_settings_payload = Struct("settings_json" / Rest(this._params.json_length))
"""§6.4 EncoderSettings: a UTF-8 JSON object of ``json_length`` bytes."""

seek_entry = Struct("frame_index" / Int32ul, "byte_offset" / Int64ul)
seek_index_fixed = Struct("entry_count" / Int32ul)
seek_index_payload = Struct(*seek_index_fixed.subcons, "entries" / Array(this.entry_count, seek_entry))
"""§6.5 SeekIndex: the count, then its entries."""

quality_fixed = Struct("first_frame" / Int32ul, "frame_count" / Int32ul)
quality_payload = Struct(
    *quality_fixed.subcons,
    "psnr_db" / Array(this.frame_count, Float32l),
    "loss" / Array(this.frame_count, Float32l),
)
"""§6.6 Quality: the fixed part, then two values per frame."""

recon_thumbnail_fixed = Struct(
    "frame_index" / Int32ul,
    "thumbnail_width" / Int16ul,
    "thumbnail_height" / Int16ul,
)
recon_thumbnail_payload = Struct(
    *recon_thumbnail_fixed.subcons,
    "luma" / Bytes(this.thumbnail_width * this.thumbnail_height),  # u(8) (height, width), row-major
)
"""§6.8 ReconThumbnail: the fixed part, then one luma byte per thumbnail pixel."""

PAYLOADS: dict[RecordType, tuple[Struct, Struct]] = {
    RecordType.SCENE: (scene_fixed, scene_payload),
    RecordType.KEYFRAME: (keyframe_fixed, keyframe_payload),
    RecordType.END: (end_payload, end_payload),
    RecordType.ENCODER_SETTINGS: (encoder_settings_fixed, encoder_settings_payload),
    RecordType.SEEK_INDEX: (seek_index_fixed, seek_index_payload),
    RecordType.QUALITY: (quality_fixed, quality_payload),
    RecordType.RECON_THUMBNAIL: (recon_thumbnail_fixed, recon_thumbnail_payload),
}
"""(fixed, whole) payload structs of every record type that has fields. Padding (§6.7) has none."""


def field_names(struct: Struct) -> list[str]:
    """The spec's field names of ``struct``, in byte order (constants and lengths left out)."""
    return [sc.name for sc in struct.subcons if sc.name not in ("signature", "header_length")]


def fixed_size(record_type: RecordType) -> int:
    """Bytes of the fixed part of a ``record_type`` payload."""
    return PAYLOADS[record_type][0].sizeof()


@lru_cache(maxsize=4096)
def _payload_size(record_type: RecordType, counts: tuple) -> int:
    fixed, whole = PAYLOADS[record_type]
    arrays = whole.subcons[len(fixed.subcons) :]
    return fixed.sizeof() + sum(a.sizeof(**dict(counts)) for a in arrays)


def payload_size(record_type: RecordType, **counts) -> int:
    """Payload bytes of a ``record_type`` record whose arrays are sized by ``counts``.

    ``counts`` are the fixed fields the arrays depend on and the header's numbers, by their
    spec names: Scene ``latent_format, latent_elements``; Keyframe ``rank, prompt_tokens,
    prompt_dim``; EncoderSettings ``json_length``; SeekIndex ``entry_count``; Quality
    ``frame_count``; ReconThumbnail ``thumbnail_width, thumbnail_height``; End none.
    Padding is ``record_length`` bytes of filler, and has no struct.
    """
    try:
        return _payload_size(RecordType(record_type), tuple(sorted(counts.items())))
    except ConstructError as exc:
        raise TypeError(f"payload_size({RecordType(record_type).name}) needs more counts: {exc}") from None


def record_size(record_type: RecordType, **counts) -> int:
    """Bytes of a whole ``record_type`` record: framing and :func:`payload_size`."""
    return RECORD_FRAMING_SIZE + payload_size(record_type, **counts)


def parse(struct: Struct, data: bytes, offset: int | None = None, **params):
    """Parse ``data`` with ``struct``; construct's errors become FormatError here only."""
    try:
        return struct.parse(data, **params)
    except StreamError as exc:
        raise TruncatedError(f"structure ends early: {exc}", offset) from None
    except ConstError:
        raise BadMagicError("not a .prx file: the signature is wrong", offset) from None
    except ConstructError as exc:
        raise FormatError(f"cannot parse: {exc}", offset) from None


def build(struct: Struct, value: dict, **params) -> bytes:
    """Build bytes from ``value``; a value that does not fit becomes FormatError."""
    try:
        return struct.build(value, **params)
    except ConstructError as exc:
        raise FormatError(f"cannot build: {exc}") from None
