"""Every byte of a .prx file, declared once with construct (format_spec.md §2-§6).

Field names are the spec's. All integers and floats are little-endian. This is the only
module in the project that packs or unpacks bytes; :func:`parse` and :func:`build` are
the one place where construct's errors become :class:`~promptus_codec.errors.PrxError`.

Record payloads that depend on the file header (latent and factor sizes) take the header
numbers as construct context parameters: ``prompt_tokens``, ``prompt_dim`` and
``latent_elements``.
"""

from __future__ import annotations

from construct import (
    ConstError,
    Array,
    Bytes,
    Const,
    ConstructError,
    Float32l,
    GreedyBytes,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    PascalString,
    StreamError,
    Struct,
    this,
)

from promptus_codec.errors import BadMagicError, FormatError, TruncatedError

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

header_body = Struct(
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
    "model_name" / PascalString(Int8ul, "utf8"),
)
"""§3.2-§3.5: the version 1.0 header body. Later minor versions may append fields."""

crc32_field = Struct("crc32" / Int32ul)

# ---------------------------------------------------------------------------
# §4 Record framing
# ---------------------------------------------------------------------------

record_prefix = Struct(
    "record_type" / Int16ul,
    "record_length" / Int32ul,  # payload bytes, excluding this prefix and the CRC
)
RECORD_PREFIX_SIZE = 6
RECORD_CRC_SIZE = 4
RECORD_FRAMING_SIZE = RECORD_PREFIX_SIZE + RECORD_CRC_SIZE  # bytes a record adds around its payload

# ---------------------------------------------------------------------------
# §6 Record payloads
# ---------------------------------------------------------------------------

scene_payload = Struct(
    "first_frame" / Int32ul,
    "latent_format" / Int8ul,
    "latent_scale" / Float32l,
    "latent" / GreedyBytes,  # latent_elements values of latent_format, C-order (C, H, W)
)
"""§6.1 Scene: 9 bytes, then the latent."""
SCENE_FIXED_SIZE = 9

keyframe_payload = Struct(
    "frame_index" / Int32ul,
    "rank" / Int16ul,
    "quant_scheme" / Int8ul,
    "u_scale" / Float32l,
    "u_zero_point" / Float32l,
    "v_scale" / Float32l,
    "v_zero_point" / Float32l,
    "u" / Bytes(this._params.prompt_tokens * this.rank),  # int8 (m, r), row-major
    "v" / Bytes(this.rank * this._params.prompt_dim),  # int8 (r, n), row-major
)
"""§6.2 Keyframe: 23 bytes, then U and V."""
KEYFRAME_FIXED_SIZE = 23

end_payload = Struct(
    "frame_count" / Int32ul,
    "scene_count" / Int32ul,
    "keyframe_count" / Int32ul,
    "seek_index_offset" / Int64ul,
)
"""§6.3 End: 20 bytes."""
END_PAYLOAD_SIZE = 20

encoder_settings_payload = Struct("settings_json" / GreedyBytes)
"""§6.4 EncoderSettings: a UTF-8 JSON object."""

seek_entry = Struct("frame_index" / Int32ul, "byte_offset" / Int64ul)
SEEK_ENTRY_SIZE = 12
seek_index_payload = Struct(
    "entry_count" / Int32ul,
    "entries" / Array(this.entry_count, seek_entry),
)
"""§6.5 SeekIndex: 4 bytes, then 12 bytes per entry."""

quality_payload = Struct(
    "first_frame" / Int32ul,
    "frame_count" / Int32ul,
    "psnr_db" / Array(this.frame_count, Float32l),
    "loss" / Array(this.frame_count, Float32l),
)
"""§6.6 Quality: 8 bytes, then 8 bytes per frame."""
QUALITY_FIXED_SIZE = 8
QUALITY_PER_FRAME = 8

recon_thumbnail_payload = Struct(
    "frame_index" / Int32ul,
    "thumbnail_width" / Int16ul,
    "thumbnail_height" / Int16ul,
    "luma" / Bytes(this.thumbnail_width * this.thumbnail_height),  # u(8) (height, width), row-major
)
"""§6.8 ReconThumbnail: 8 bytes, then one luma byte per thumbnail pixel."""
RECON_THUMBNAIL_FIXED_SIZE = 8


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
