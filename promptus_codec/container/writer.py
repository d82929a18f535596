"""Streaming .prx writer (format_spec.md §4-§5).

The header is written at once; records are appended as the encoder finishes them, each
checked by the same decode-order rules the reader applies; :meth:`PrxWriter.finish`
appends the SeekIndex and End records.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Iterable

from promptus_codec.container import codec
from promptus_codec.container.order import DecodeOrder
from promptus_codec.container.records import EndRecord, FileHeader, Record, SeekEntry, SeekIndexRecord
from promptus_codec.fileio import atomic_path


class PrxWriter:
    """Appends records to ``stream``; ``stream`` is positioned where the file starts.

    ``resume_from`` continues a file whose first bytes (header and complete records) are
    already in ``stream``: pass the :class:`DecodeOrder` its reader ended with and the
    stream positioned at the end of the last complete record.
    """

    def __init__(self, stream: BinaryIO, header: FileHeader, resume_from: DecodeOrder | None = None, offset: int = 0):
        self._stream = stream
        self.header = header
        if resume_from is None:
            self.order = DecodeOrder(header)
            self.offset = 0
            self._put(codec.header_to_bytes(header))
        else:
            self.order = resume_from
            self.offset = offset

    def _put(self, data: bytes) -> int:
        start = self.offset
        self._stream.write(data)
        self.offset += len(data)
        return start

    def write(self, record: Record) -> int:
        """Append one record; returns its byte offset."""
        data = codec.record_to_bytes(record, self.header)
        self.order.accept(record, self.offset)
        return self._put(data)

    def finish(self, seek_index: bool = True) -> EndRecord:
        """Append the SeekIndex (unless disabled) and the End record; flush the stream."""
        if seek_index:
            entries = tuple(SeekEntry(f, o) for f, o in self.order.scene_offsets)
            self.write(SeekIndexRecord(entries))
        end = EndRecord(
            frame_count=self.order.frames_complete,
            scene_count=self.order.scene_count,
            keyframe_count=self.order.keyframe_count,
            seek_index_offset=self.order.seek_index_offset,
        )
        self.write(end)
        self._stream.flush()
        return end


def write_prx(
    path: str | os.PathLike, header: FileHeader, records: Iterable[Record], seek_index: bool = True
) -> EndRecord:
    """Write a complete file atomically: records, then SeekIndex and End."""
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        writer = PrxWriter(stream, header)
        for record in records:
            writer.write(record)
        return writer.finish(seek_index)
