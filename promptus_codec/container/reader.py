"""Streaming .prx reader (format_spec.md §4-§5).

Records are yielded as soon as their bytes have arrived and their CRC matches, so a
decoder can start on a file that is still being written. A file that stops early is
not an exception in the default mode: iteration ends and :attr:`PrxReader.truncation`
says where the complete part ends. Every other fault raises a
:class:`~promptus_codec.errors.FormatError` subclass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from promptus_codec.container import codec, schema
from promptus_codec.container.order import DecodeOrder
from promptus_codec.container.records import EndRecord, FileHeader, Record
from promptus_codec.errors import (
    BadMagicError,
    CrcMismatchError,
    LengthError,
    TrailingDataError,
    TruncatedError,
)


@dataclass(frozen=True)
class Truncation:
    """Where a stream without its End record stops being complete."""

    offset: int  # start of the incomplete tail (= end of the last complete record)
    tail_bytes: int  # bytes after it that do not form a complete record
    frames_complete: int  # frames decodable from the complete records

    def describe(self) -> str:
        part = f"{self.tail_bytes} bytes of an incomplete record" if self.tail_bytes else "no End record"
        return f"stream is truncated at byte {self.offset} ({part}); {self.frames_complete} frames are complete"


class PrxReader:
    """Reads the header on construction, then yields records in file order.

    ``strict=True`` turns a truncated tail into :class:`TruncatedError` instead of
    recording it in :attr:`truncation`.
    """

    def __init__(self, stream: BinaryIO, strict: bool = False):
        self._stream = stream
        self._offset = 0
        self.strict = strict
        self.header: FileHeader = self._read_header()
        self.order = DecodeOrder(self.header)
        self.truncation: Truncation | None = None
        self.record_span: tuple[int, int] = (0, self._offset)  # (start, end) of the record just yielded

    @property
    def end(self) -> EndRecord | None:
        return self.order.end

    def _read_exact(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at end of stream (pipes may return short reads)."""
        chunks, wanted = [], size
        while wanted:
            chunk = self._stream.read(wanted)
            if not chunk:
                break
            chunks.append(chunk)
            wanted -= len(chunk)
        data = b"".join(chunks)
        self._offset += len(data)
        return data

    def _read_header(self) -> FileHeader:
        size = schema.header_preamble.sizeof()
        raw = self._read_exact(size)
        if not schema.signature_so_far(raw):
            raise BadMagicError("not a .prx file: the signature is wrong", 0)
        if len(raw) < size:
            raise TruncatedError("file ends inside the header", len(raw))
        preamble = schema.parse(schema.header_preamble, raw, 0)
        codec.check_preamble(preamble)
        body = self._read_exact(preamble.header_length)
        crc = self._read_exact(schema.CRC_SIZE)
        if len(body) < preamble.header_length or len(crc) < schema.CRC_SIZE:
            raise TruncatedError("file ends inside the header", self._offset)
        if schema.unpack_crc(crc) != codec.crc32(raw + body):
            raise CrcMismatchError("header CRC-32 mismatch", self._offset - schema.CRC_SIZE)
        return codec.header_from_parts(preamble, body)

    def _truncated(self, start: int, tail: int) -> None:
        self.truncation = Truncation(start, tail, self.order.frames_complete)
        if self.strict:
            raise TruncatedError(self.truncation.describe(), start)

    def __iter__(self) -> Iterator[Record]:
        while self.order.end is None:
            start = self._offset
            prefix = self._read_exact(schema.RECORD_PREFIX_SIZE)
            if len(prefix) < schema.RECORD_PREFIX_SIZE:
                return self._truncated(start, len(prefix))
            p = schema.parse(schema.record_prefix, prefix, start)
            if p.record_length > schema.MAX_RECORD_LENGTH:
                raise LengthError(
                    f"record_length {p.record_length} exceeds the limit {schema.MAX_RECORD_LENGTH}", start + 2
                )
            payload = self._read_exact(p.record_length)
            crc = self._read_exact(schema.RECORD_CRC_SIZE)
            if len(payload) < p.record_length or len(crc) < schema.RECORD_CRC_SIZE:
                return self._truncated(start, self._offset - start)
            if schema.unpack_crc(crc) != codec.crc32(prefix + payload):
                raise CrcMismatchError(f"record CRC-32 mismatch (type 0x{p.record_type:04x})", start)
            record = codec.record_from_payload(p.record_type, payload, self.header, start)
            self.order.accept(record, start)
            self.record_span = (start, self._offset)
            yield record
        if self._read_exact(1):
            raise TrailingDataError("bytes follow the End record", self._offset - 1)


@dataclass
class PrxFile:
    """A whole file in memory: what :func:`read_prx` returns."""

    header: FileHeader
    records: list[Record] = field(default_factory=list)
    end: EndRecord | None = None
    truncation: Truncation | None = None
    size: int = 0  # bytes read


def read_prx(source: str | os.PathLike | BinaryIO, strict: bool = True) -> PrxFile:
    """Read a whole .prx file. ``strict`` (the default) refuses a truncated one."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as stream:
            return read_prx(stream, strict)
    reader = PrxReader(source, strict=strict)
    records = list(reader)
    return PrxFile(reader.header, records, reader.end, reader.truncation, reader._offset)
