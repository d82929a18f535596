"""A lossless JSON form of a parsed .prx file, for the conformance suite (conformance/).

:func:`file_to_json` turns a :class:`~promptus_codec.container.reader.PrxFile` into plain
JSON values; :func:`json_to_bytes` writes such a document back through
:class:`~promptus_codec.container.writer.PrxWriter`, so a valid file survives
``bytes -> PrxFile -> JSON -> bytes`` unchanged.

Keys are the field names of format_spec.md (§3 header, §6 record payloads). So that
nothing is lost:

- every float field (all float32 in the file) is a ``float.hex()`` string, e.g.
  ``"0x1.99999a0000000p-5"``; NaN and infinities are ``"nan"``, ``"inf"``, ``"-inf"``;
- digests and unknown payloads are lowercase hex strings;
- arrays (``latent``, ``u``, ``v``, ``luma``) are ``{"dtype", "shape", "hex"}`` where ``hex`` is
  the raw little-endian bytes, C-order, exactly as stored;
- enumerated fields keep their integer id (the spec's value tables name them);
- Padding (§6.7) is ``record_length`` alone: readers ignore its filler and writers
  write zero bytes.

The document is::

    {"header": {major_version, minor_version, flags, coded_width, ..., model_name},
     "records": [{"type": "Scene", "record_type": 1, first_frame, ...}, ...],
     "truncation": null | {offset, tail_bytes, frames_complete}}

Records are listed in file order, End included. An ancillary record this reader does
not know is ``{"type": "Unknown", "record_type": id, "payload": hex}``.

Limits: the reader keeps neither header body bytes appended by a later minor version
(§10) nor the exact text of EncoderSettings, so those come back as this writer writes
them (no extension; canonical JSON). A NaN keeps no payload bits: it is written back as
the quiet NaN 0x7fc00000.
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np

from promptus_codec.container.records import (
    EncoderSettingsRecord,
    EndRecord,
    FileHeader,
    FitMode,
    GenerationConstants,
    KeyframeRecord,
    LatentFormat,
    ModelIdentity,
    NoiseGenerator,
    PaddingRecord,
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
)
from promptus_codec.container.reader import PrxFile
from promptus_codec.container.writer import PrxWriter

__all__ = [
    "RECORD_TYPE_NAMES",
    "file_to_json",
    "header_to_json",
    "json_to_bytes",
    "json_to_header",
    "json_to_record",
    "record_to_json",
]

# The record names of the §4.2 table. Written out, never derived from enum order.
RECORD_TYPE_NAMES = {
    RecordType.SCENE: "Scene",
    RecordType.KEYFRAME: "Keyframe",
    RecordType.END: "End",
    RecordType.ENCODER_SETTINGS: "EncoderSettings",
    RecordType.SEEK_INDEX: "SeekIndex",
    RecordType.QUALITY: "Quality",
    RecordType.PADDING: "Padding",
    RecordType.RECON_THUMBNAIL: "ReconThumbnail",
}
UNKNOWN_TYPE_NAME = "Unknown"
_TYPE_BY_NAME = {name: record_type for record_type, name in RECORD_TYPE_NAMES.items()}


# ---------------------------------------------------------------------------
# Scalars and arrays
# ---------------------------------------------------------------------------


def _f(value: float) -> str:
    return float(value).hex()


def _unf(text: str) -> float:
    return float.fromhex(text)


def _array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    little = a.dtype.newbyteorder("<") if a.dtype.byteorder not in ("|", "<", "=") else a.dtype
    return {"dtype": little.str, "shape": list(a.shape), "hex": a.astype(little, copy=False).tobytes().hex()}


def _unarray(doc: dict) -> np.ndarray:
    dtype = np.dtype(doc["dtype"])
    return np.frombuffer(bytes.fromhex(doc["hex"]), dtype=dtype).reshape(tuple(doc["shape"]))


def _rect(r: Rect) -> dict:
    return {"x": r.x, "y": r.y, "width": r.width, "height": r.height}


def _unrect(doc: dict) -> Rect:
    return Rect(doc["x"], doc["y"], doc["width"], doc["height"])


# ---------------------------------------------------------------------------
# Header (§3)
# ---------------------------------------------------------------------------


def header_to_json(h: FileHeader) -> dict:
    """The header's fields in spec order (§3.1 preamble, then the §3.2-§3.5 body)."""
    g, c, m = h.geometry, h.generation, h.model
    return {
        "major_version": h.major_version,
        "minor_version": h.minor_version,
        "flags": h.flags,
        "coded_width": h.coded_width,
        "coded_height": h.coded_height,
        "source_width": g.source_width,
        "source_height": g.source_height,
        "fit_mode": int(g.fit_mode),
        "source_rect": _rect(g.source_rect),
        "coded_rect": _rect(g.coded_rect),
        "frame_rate_num": h.frame_rate.numerator,
        "frame_rate_den": h.frame_rate.denominator,
        "frame_count": h.frame_count,
        "prompt_tokens": h.prompt_tokens,
        "prompt_dim": h.prompt_dim,
        "latent_channels": h.latent_channels,
        "latent_height": h.latent_height,
        "latent_width": h.latent_width,
        "noise_seed": c.noise_seed,
        "noise_generator": int(c.noise_generator),
        "prediction_type": int(c.prediction_type),
        "timestep": c.timestep,
        "latent_weight": _f(c.latent_weight),
        "noise_weight": _f(c.noise_weight),
        "alpha_cumprod": _f(c.alpha_cumprod),
        "denoiser_sha256": m.denoiser_sha256.hex(),
        "decoder_sha256": m.decoder_sha256.hex(),
        "encoder_sha256": m.encoder_sha256.hex(),
        "model_name": m.name,
    }


def json_to_header(doc: dict) -> FileHeader:
    """Inverse of :func:`header_to_json`."""
    frame_rate = Fraction(doc["frame_rate_num"], doc["frame_rate_den"])
    if (frame_rate.numerator, frame_rate.denominator) != (doc["frame_rate_num"], doc["frame_rate_den"]):
        raise ValueError(f"frame rate {doc['frame_rate_num']}/{doc['frame_rate_den']} is not in lowest terms")
    return FileHeader(
        coded_width=doc["coded_width"],
        coded_height=doc["coded_height"],
        geometry=SourceGeometry(
            source_width=doc["source_width"],
            source_height=doc["source_height"],
            fit_mode=FitMode(doc["fit_mode"]),
            source_rect=_unrect(doc["source_rect"]),
            coded_rect=_unrect(doc["coded_rect"]),
        ),
        frame_rate=frame_rate,
        frame_count=doc["frame_count"],
        prompt_tokens=doc["prompt_tokens"],
        prompt_dim=doc["prompt_dim"],
        latent_channels=doc["latent_channels"],
        latent_height=doc["latent_height"],
        latent_width=doc["latent_width"],
        generation=GenerationConstants(
            noise_seed=doc["noise_seed"],
            noise_generator=NoiseGenerator(doc["noise_generator"]),
            latent_weight=_unf(doc["latent_weight"]),
            noise_weight=_unf(doc["noise_weight"]),
            timestep=doc["timestep"],
            alpha_cumprod=_unf(doc["alpha_cumprod"]),
            prediction_type=PredictionType(doc["prediction_type"]),
        ),
        model=ModelIdentity(
            name=doc["model_name"],
            denoiser_sha256=bytes.fromhex(doc["denoiser_sha256"]),
            decoder_sha256=bytes.fromhex(doc["decoder_sha256"]),
            encoder_sha256=bytes.fromhex(doc["encoder_sha256"]),
        ),
        flags=doc["flags"],
        major_version=doc["major_version"],
        minor_version=doc["minor_version"],
    )


# ---------------------------------------------------------------------------
# Records (§6)
# ---------------------------------------------------------------------------


def record_to_json(record: Record) -> dict:
    """One record: its §4.2 type name and id, then its payload fields in spec order."""
    if isinstance(record, UnknownAncillaryRecord):
        return {"type": UNKNOWN_TYPE_NAME, "record_type": record.record_type, "payload": record.payload.hex()}
    doc = {"type": RECORD_TYPE_NAMES[record.record_type], "record_type": int(record.record_type)}
    if isinstance(record, SceneRecord):
        doc.update(
            first_frame=record.first_frame,
            latent_format=int(record.latent_format),
            latent_scale=_f(record.latent_scale),
            latent=_array(record.latent),
        )
    elif isinstance(record, KeyframeRecord):
        doc.update(
            frame_index=record.frame_index,
            rank=record.rank,
            quant_scheme=int(record.quant_scheme),
            u_scale=_f(record.u_scale),
            u_zero_point=_f(record.u_zero_point),
            v_scale=_f(record.v_scale),
            v_zero_point=_f(record.v_zero_point),
            u=_array(record.u),
            v=_array(record.v),
        )
    elif isinstance(record, EndRecord):
        doc.update(
            frame_count=record.frame_count,
            scene_count=record.scene_count,
            keyframe_count=record.keyframe_count,
            seek_index_offset=record.seek_index_offset,
        )
    elif isinstance(record, EncoderSettingsRecord):
        doc.update(settings_json=record.settings)  # the decoded JSON object
    elif isinstance(record, SeekIndexRecord):
        doc.update(
            entry_count=len(record.entries),
            entries=[{"frame_index": e.frame_index, "byte_offset": e.byte_offset} for e in record.entries],
        )
    elif isinstance(record, QualityRecord):
        doc.update(
            first_frame=record.first_frame,
            frame_count=len(record.psnr_db),
            psnr_db=[_f(x) for x in record.psnr_db],
            loss=[_f(x) for x in record.loss],
        )
    elif isinstance(record, ReconThumbnailRecord):
        doc.update(
            frame_index=record.frame_index,
            thumbnail_width=record.thumbnail_width,
            thumbnail_height=record.thumbnail_height,
            luma=_array(record.luma),
        )
    elif isinstance(record, PaddingRecord):
        doc.update(record_length=record.size)  # the filler's bytes are not kept (§6.7)
    else:  # pragma: no cover - every Record is handled above
        raise TypeError(f"not a record: {record!r}")
    return doc


def json_to_record(doc: dict) -> Record:
    """Inverse of :func:`record_to_json`."""
    name = doc["type"]
    if name == UNKNOWN_TYPE_NAME:
        return UnknownAncillaryRecord(doc["record_type"], bytes.fromhex(doc["payload"]))
    record_type = _TYPE_BY_NAME[name]
    if doc["record_type"] != record_type:
        raise ValueError(f"record type {name} has id {int(record_type)}, not {doc['record_type']}")
    if record_type == RecordType.SCENE:
        return SceneRecord(
            first_frame=doc["first_frame"],
            latent_format=LatentFormat(doc["latent_format"]),
            latent_scale=_unf(doc["latent_scale"]),
            latent=_unarray(doc["latent"]),
        )
    if record_type == RecordType.KEYFRAME:
        return KeyframeRecord(
            frame_index=doc["frame_index"],
            rank=doc["rank"],
            quant_scheme=QuantScheme(doc["quant_scheme"]),
            u_scale=_unf(doc["u_scale"]),
            u_zero_point=_unf(doc["u_zero_point"]),
            v_scale=_unf(doc["v_scale"]),
            v_zero_point=_unf(doc["v_zero_point"]),
            u=_unarray(doc["u"]),
            v=_unarray(doc["v"]),
        )
    if record_type == RecordType.END:
        return EndRecord(doc["frame_count"], doc["scene_count"], doc["keyframe_count"], doc["seek_index_offset"])
    if record_type == RecordType.ENCODER_SETTINGS:
        return EncoderSettingsRecord(doc["settings_json"])
    if record_type == RecordType.SEEK_INDEX:
        entries = tuple(SeekEntry(e["frame_index"], e["byte_offset"]) for e in doc["entries"])
        if doc["entry_count"] != len(entries):
            raise ValueError(f"SeekIndex entry_count {doc['entry_count']} but {len(entries)} entries")
        return SeekIndexRecord(entries)
    if record_type == RecordType.PADDING:
        return PaddingRecord(doc["record_length"])
    if record_type == RecordType.RECON_THUMBNAIL:
        luma = _unarray(doc["luma"])
        if luma.shape != (doc["thumbnail_height"], doc["thumbnail_width"]):
            raise ValueError(
                f"ReconThumbnail of {doc['thumbnail_width']}x{doc['thumbnail_height']} holds luma of shape {luma.shape}"
            )
        return ReconThumbnailRecord(doc["frame_index"], luma)
    # RecordType.QUALITY
    psnr, loss = tuple(_unf(x) for x in doc["psnr_db"]), tuple(_unf(x) for x in doc["loss"])
    if not doc["frame_count"] == len(psnr) == len(loss):
        raise ValueError(f"Quality frame_count {doc['frame_count']} but {len(psnr)} psnr_db and {len(loss)} loss")
    return QualityRecord(doc["first_frame"], psnr, loss)


# ---------------------------------------------------------------------------
# Whole files
# ---------------------------------------------------------------------------


def file_to_json(prx: PrxFile) -> dict:
    """The JSON form of a parsed file (see the module docstring)."""
    t = prx.truncation
    return {
        "header": header_to_json(prx.header),
        "records": [record_to_json(r) for r in prx.records],
        "truncation": None
        if t is None
        else {"offset": t.offset, "tail_bytes": t.tail_bytes, "frames_complete": t.frames_complete},
    }


def json_to_bytes(doc: dict) -> bytes:
    """Write the header and every listed record, in order, with :class:`PrxWriter`.

    SeekIndex and End are written as listed (``finish()`` is not called), so a document
    without an End record gives a file without one. ``truncation`` is ignored: the
    bytes of an incomplete tail are not in the document.
    """
    stream = io.BytesIO()
    writer = PrxWriter(stream, json_to_header(doc["header"]))
    for record in doc["records"]:
        writer.write(json_to_record(record))
    return stream.getvalue()
