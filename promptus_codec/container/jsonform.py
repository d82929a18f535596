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
  fill it with 0x00 bytes.

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

import numpy as np

from promptus_codec.container import codec
from promptus_codec.container.reader import PrxFile
from promptus_codec.container.records import (
    RECORD_CLASSES,
    RECORD_NAMES,
    FileHeader,
    Record,
    UnknownAncillaryRecord,
)
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

RECORD_TYPE_NAMES = RECORD_NAMES  # the §4.2 names, from records.py
UNKNOWN_TYPE_NAME = "Unknown"
_TYPE_BY_NAME = {name: record_type for record_type, name in RECORD_TYPE_NAMES.items()}


# ---------------------------------------------------------------------------
# Values <-> JSON. Fields and their order come from the container (codec.to_fields and
# the schema's structs); this module only spells each value.
# ---------------------------------------------------------------------------


def _array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    little = a.dtype.newbyteorder("<") if a.dtype.byteorder not in ("|", "<", "=") else a.dtype
    return {"dtype": little.str, "shape": list(a.shape), "hex": a.astype(little, copy=False).tobytes().hex()}


def _unarray(doc: dict) -> np.ndarray:
    dtype = np.dtype(doc["dtype"])
    return np.frombuffer(bytes.fromhex(doc["hex"]), dtype=dtype).reshape(tuple(doc["shape"]))


def _to_json(value):
    """One field value: floats and bytes as hex, arrays as {dtype, shape, hex}; objects as they are."""
    if isinstance(value, (float, np.floating)):
        return float(value).hex()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, np.ndarray):
        return _array(value)
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value


def _from_json(hint, value):
    """The inverse of :func:`_to_json` for a field of type ``hint`` (codec.from_fields' hook)."""
    if hint is float and isinstance(value, str):
        return float.fromhex(value)
    if hint is bytes and isinstance(value, str):
        return bytes.fromhex(value)
    if hint is np.ndarray and isinstance(value, dict):
        return _unarray(value)
    return value


# ---------------------------------------------------------------------------
# Header (§3)
# ---------------------------------------------------------------------------


def header_to_json(h: FileHeader) -> dict:
    """The header's fields in spec order (§3.1 preamble, then the §3.2-§3.5 body)."""
    return {name: _to_json(value) for name, value in codec.header_fields(h).items()}


def json_to_header(doc: dict) -> FileHeader:
    """Inverse of :func:`header_to_json`."""
    return codec.from_fields(FileHeader, doc, convert=_from_json)


# ---------------------------------------------------------------------------
# Records (§6)
# ---------------------------------------------------------------------------


def record_to_json(record: Record) -> dict:
    """One record: its §4.2 type name and id, then its payload fields in spec order."""
    name = UNKNOWN_TYPE_NAME if isinstance(record, UnknownAncillaryRecord) else RECORD_TYPE_NAMES[record.record_type]
    doc = {"type": name, "record_type": int(record.record_type)}
    doc.update((key, _to_json(value)) for key, value in codec.record_fields(record).items())
    return doc


def json_to_record(doc: dict) -> Record:
    """Inverse of :func:`record_to_json`."""
    name = doc["type"]
    if name == UNKNOWN_TYPE_NAME:
        return codec.from_fields(UnknownAncillaryRecord, doc, convert=_from_json)
    record_type = _TYPE_BY_NAME[name]
    if doc["record_type"] != record_type:
        raise ValueError(f"record type {name} has id {int(record_type)}, not {doc['record_type']}")
    record_class = RECORD_CLASSES[record_type]
    record = codec.from_fields(record_class, doc, convert=_from_json)
    # the counts a record derives from its arrays (entry_count, frame_count, thumbnail size) must agree
    given = codec.spec_names(record_class)
    for key, value in codec.record_fields(record).items():
        if key not in given and doc[key] != value:
            raise ValueError(f"{name} {key} is {doc[key]}, but its arrays give {value}")
    return record


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
