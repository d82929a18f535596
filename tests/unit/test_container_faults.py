"""Fault tests for the .prx reader and writer (STYLE.md item 6; format_spec.md §4, §5, §7, §8).

What may come out of the reader, whatever the bytes:

* a clean read: the records, End, and ``truncation`` where the file stops early (lenient mode);
* a :class:`~promptus_codec.errors.PrxError` (a FormatError subclass for bad bytes);
* the ``OSError`` the stream raised, unchanged. A failing disk or socket is not a corrupt
  file: wrapping it in a FormatError would tell the user to throw away a good file, and
  treating it as end of file would silently drop frames from a lenient read. So the
  reader must let it through untouched, and these tests check that it is the very
  exception object the stream raised.

Nothing else (no construct, struct, numpy, json or Unicode error, no RecursionError) may
escape. Sizes are checked before anything is allocated, so hostile counts cost nothing.
"""

from __future__ import annotations

import bisect
import errno
import io
import json
import os
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from promptus_codec.container import codec, schema
from promptus_codec.container.reader import PrxReader, read_prx
from promptus_codec.container.records import (
    EncoderSettingsRecord,
    EndRecord,
    GenerationConstants,
    KeyframeRecord,
    LatentFormat,
    QualityRecord,
    ReconThumbnailRecord,
    Rect,
    SceneRecord,
    SeekEntry,
    SeekIndexRecord,
    SourceGeometry,
    UnknownAncillaryRecord,
)
from promptus_codec.container.writer import PrxWriter, write_prx
from promptus_codec.errors import (
    BadMagicError,
    CrcMismatchError,
    ForbiddenValueError,
    FormatError,
    LengthError,
    PrxError,
    RecordOrderError,
    TrailingDataError,
    TruncatedError,
    UnknownCriticalRecordError,
    UnsupportedVersionError,
)

from .strategies import (
    canonical,
    keyframe,
    record_offsets,
    scene,
    sd_turbo_stream,
    small_header,
    small_stream,
    write_bytes,
)

# ---------------------------------------------------------------------------
# Streams and files
# ---------------------------------------------------------------------------


class ChunkyStream(io.RawIOBase):
    """A pipe-like stream: each read(n) returns between 1 and ``max_chunk`` bytes."""

    def __init__(self, data: bytes, max_chunk: int = 7, seed: int = 0):
        self._data, self._pos = data, 0
        self._rng = np.random.default_rng(seed)
        self._max = max_chunk

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = len(self._data)
        n = min(n, int(self._rng.integers(1, self._max + 1)))
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk


class FailingStream(io.RawIOBase):
    """Returns data (in chunks of at most ``chunk`` bytes) until read call ``fail_at``, which raises."""

    def __init__(self, data: bytes, fail_at: int | None, chunk: int | None = None):
        self._data, self._pos = data, 0
        self.fail_at, self.chunk, self.calls = fail_at, chunk, 0
        self.error = OSError(errno.EIO, "injected I/O error")

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        call, self.calls = self.calls, self.calls + 1
        if call == self.fail_at:
            raise self.error
        if n is None or n < 0:
            n = len(self._data)
        if self.chunk:
            n = min(n, self.chunk)
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk


def outcome(make_stream, strict: bool):
    """What a whole read gives: records, End, truncation and size; or the error's type and text."""
    try:
        f = read_prx(make_stream(), strict=strict)
    except PrxError as exc:
        return ("error", type(exc), str(exc))
    return ("ok", [canonical(r) for r in f.records], canonical(f.end), f.truncation, f.size)


class Parsed:
    """A valid file with its records and the byte offset of every record."""

    def __init__(self, stream, seek_index: bool = True):
        self.data = write_bytes(stream, seek_index)
        full = read_prx(io.BytesIO(self.data))
        self.header, self.records = full.header, full.records
        self.offsets = record_offsets(full.header, full.records)  # starts of records, then the size
        assert self.offsets[-1] == len(self.data)
        frames, self.frames_before = 0, []
        for r in self.records:
            self.frames_before.append(frames)
            if isinstance(r, KeyframeRecord):
                frames = r.frame_index + 1
        self.frames_before.append(frames)
        self.canonical = [canonical(r) for r in self.records]


@pytest.fixture(scope="module")
def small_files() -> list[Parsed]:
    return [Parsed(small_stream(0), True), Parsed(small_stream(1, ancillary=False), False)]


@pytest.fixture(scope="module")
def sd_turbo_file() -> Parsed:
    return Parsed(sd_turbo_stream(), True)


# ---------------------------------------------------------------------------
# Cut at every byte
# ---------------------------------------------------------------------------


def check_cut(f: Parsed, cut: int) -> None:
    prefix = f.data[:cut]
    header_end = f.offsets[0]
    if cut < header_end:  # no header: nothing to give back, in either mode
        for strict in (False, True):
            with pytest.raises(TruncatedError):
                read_prx(io.BytesIO(prefix), strict=strict)
        return
    lenient = read_prx(io.BytesIO(prefix), strict=False)
    assert lenient.header == f.header and lenient.size == cut
    if cut == len(f.data):
        assert lenient.truncation is None and lenient.end == f.records[-1]
        assert [canonical(r) for r in lenient.records] == f.canonical
        return
    complete = bisect.bisect_right(f.offsets, cut) - 1  # records wholly inside the prefix
    assert [canonical(r) for r in lenient.records] == f.canonical[:complete], f"cut at {cut}"
    assert lenient.end is None
    t = lenient.truncation
    assert t is not None, f"cut at {cut}"
    assert t.offset == f.offsets[complete] and t.tail_bytes == cut - t.offset
    assert t.frames_complete == f.frames_before[complete]
    assert isinstance(t.describe(), str)
    with pytest.raises(TruncatedError) as exc:
        read_prx(io.BytesIO(prefix), strict=True)
    assert exc.value.offset == t.offset


def test_cut_at_every_byte(small_files):
    for f in small_files:
        for cut in range(len(f.data) + 1):
            check_cut(f, cut)


def test_cut_sd_turbo_shape(sd_turbo_file):
    f = sd_turbo_file
    cuts = set(range(0, len(f.data), 509)) | set(range(300)) | {len(f.data)}
    for boundary in f.offsets:
        cuts |= {c for c in range(boundary - 12, boundary + 13) if 0 <= c <= len(f.data)}
    for cut in sorted(cuts):
        check_cut(f, cut)


def test_short_reads_give_identical_results(small_files, sd_turbo_file):
    """A stream that returns 1-7 bytes per read (a pipe) reads exactly like a file."""
    for f in small_files:
        for cut in range(len(f.data) + 1):
            prefix = f.data[:cut]
            for strict in (False, True):
                assert outcome(lambda: ChunkyStream(prefix, seed=cut), strict) == outcome(
                    lambda: io.BytesIO(prefix), strict
                )
    f = sd_turbo_file
    for cut in [*range(0, 300, 7), *f.offsets, *(o - 3 for o in f.offsets[1:]), len(f.data) - 1]:
        prefix = f.data[:cut]
        for strict in (False, True):
            assert outcome(lambda: ChunkyStream(prefix, 4096, seed=cut), strict) == outcome(
                lambda: io.BytesIO(prefix), strict
            )


def test_streaming_reader_stops_cleanly_and_reports_truncation(small_files):
    f = small_files[0]
    cut = f.offsets[4] + 3
    reader = PrxReader(io.BytesIO(f.data[:cut]))
    got = list(reader)
    assert [canonical(r) for r in got] == f.canonical[:4]
    assert reader.end is None and reader.truncation.offset == f.offsets[4] and reader.truncation.tail_bytes == 3


def test_read_from_path_and_file_object(tmp_path, small_files):
    f = small_files[0]
    path = tmp_path / "cut.prx"
    path.write_bytes(f.data[: f.offsets[3]])
    for source in (path, str(path)):
        assert read_prx(source, strict=False).truncation.offset == f.offsets[3]
        with pytest.raises(TruncatedError):
            read_prx(source)
    with open(path, "rb") as stream:
        assert len(read_prx(stream, strict=False).records) == 3


@pytest.mark.parametrize("extra", [b"\x00", b"garbage after the end", None], ids=["one-byte", "text", "whole-record"])
def test_bytes_after_end_are_refused(small_files, extra):
    f = small_files[0]
    if extra is None:
        extra = codec.record_to_bytes(UnknownAncillaryRecord(0x9000, b"late"), f.header)
    for strict in (False, True):
        with pytest.raises(TrailingDataError):
            read_prx(io.BytesIO(f.data + extra), strict=strict)


def test_not_a_prx_file():
    for data in (b"\x89PNG\r\n\x1a\n" + bytes(200), b"PRX", b"\x8bPRY", bytes(16)):
        with pytest.raises(BadMagicError):
            read_prx(io.BytesIO(data), strict=False)


# ---------------------------------------------------------------------------
# I/O failures
# ---------------------------------------------------------------------------


def read_calls(data: bytes, chunk: int | None, strict: bool) -> int:
    stream = FailingStream(data, None, chunk)
    try:
        read_prx(stream, strict=strict)
    except PrxError:
        pass
    return stream.calls


@pytest.mark.parametrize("chunk", [None, 5])
@pytest.mark.parametrize("strict", [False, True])
def test_read_error_at_every_call_propagates_unchanged(small_files, chunk, strict):
    f = small_files[0]
    for data in (f.data, f.data[: f.offsets[5] + 9]):  # a complete file and a truncated one
        calls = read_calls(data, chunk, strict)
        assert calls > len(f.records)
        for k in range(calls):
            stream = FailingStream(data, k, chunk)
            with pytest.raises(OSError) as exc:
                read_prx(stream, strict=strict)
            assert exc.value is stream.error, f"call {k}: {exc.value!r} instead of the stream's own error"
            assert not isinstance(exc.value, PrxError)
        assert outcome(lambda: FailingStream(data, calls, chunk), strict) == outcome(lambda: io.BytesIO(data), strict)


def test_read_error_midway_through_streaming_reader(small_files):
    """Records yielded before the failure stay valid; the error surfaces from the iterator."""
    f = small_files[0]
    stream = FailingStream(f.data, 6)
    reader = PrxReader(stream)
    got = []
    with pytest.raises(OSError) as exc:
        for r in reader:
            got.append(r)
    assert exc.value is stream.error
    assert [canonical(r) for r in got] == f.canonical[: len(got)]


def test_write_error_propagates_and_write_prx_leaves_nothing(tmp_path, small_files):
    f = small_files[0]
    stream = small_stream()

    class FailingSink(io.BytesIO):
        def __init__(self, fail_at):
            super().__init__()
            self.fail_at, self.calls = fail_at, 0
            self.error = OSError(errno.ENOSPC, "disk full")

        def write(self, data):
            self.calls += 1
            if self.calls > self.fail_at:
                raise self.error
            return super().write(data)

    for k in range(len(f.records) + 1):  # header write, then one write per record
        sink = FailingSink(k)
        with pytest.raises(OSError) as exc:
            writer = PrxWriter(sink, stream.header)
            for r in stream.records:
                writer.write(r)
            writer.finish()
        assert exc.value is sink.error

    def failing_records():
        yield from stream.records[:4]
        raise OSError(errno.EIO, "encoder input vanished")

    target = tmp_path / "out" / "clip.prx"
    with pytest.raises(OSError, match="vanished"):
        write_prx(target, stream.header, failing_records())
    assert list(target.parent.iterdir()) == []


# ---------------------------------------------------------------------------
# Bit flips
# ---------------------------------------------------------------------------


def flip_expectation(f: Parsed, byte: int):
    """The error class a flip at ``byte`` must raise in strict mode."""
    if byte < len(schema.SIGNATURE):
        return BadMagicError
    if byte == 8:  # major_version
        return UnsupportedVersionError
    if 12 <= byte < 16:  # header_length: too long, too short or simply a CRC mismatch
        return FormatError
    if byte < f.offsets[0]:  # minor_version, flags, header body, header CRC
        return CrcMismatchError
    start = f.offsets[bisect.bisect_right(f.offsets, byte) - 1]
    if byte - start >= schema.RECORD_PREFIX_SIZE or byte - start < 2:  # record_type, payload, record CRC
        return CrcMismatchError
    return FormatError  # record_length: LengthError, TruncatedError or a CRC mismatch


def test_every_single_bit_flip_is_detected(small_files):
    for f in small_files:
        data = bytearray(f.data)
        for byte in range(len(data)):
            expected = flip_expectation(f, byte)
            for bit in range(8):
                data[byte] ^= 1 << bit
                corrupted = bytes(data)
                data[byte] ^= 1 << bit
                try:
                    read_prx(io.BytesIO(corrupted), strict=True)
                except expected:
                    pass
                except Exception as exc:  # noqa: BLE001 - report which bit let what through
                    pytest.fail(
                        f"flip of byte {byte} bit {bit}: {type(exc).__name__}: {exc}, expected {expected.__name__}"
                    )
                else:
                    pytest.fail(f"flip of byte {byte} bit {bit} went unnoticed")
                try:
                    lenient = read_prx(io.BytesIO(corrupted), strict=False)
                except PrxError:
                    continue
                assert lenient.truncation is not None, f"flip of byte {byte} bit {bit} went unnoticed (lenient)"


# ---------------------------------------------------------------------------
# Absurd sizes are refused before allocation (format_spec.md §8)
# ---------------------------------------------------------------------------


MAX_PEAK = 3 << 20  # bytes


def forge_header(
    header_length: int | None = None, major: int = 1, body_tail: bytes = b"", raw_name: bytes | None = None, **fields
) -> bytes:
    """A header with arbitrary field values and a correct CRC (the checks must not rely on the CRC).

    ``raw_name`` replaces the model_name field (u8 length and bytes) with raw bytes.
    """
    body = schema.header_body.build({**codec.to_fields(small_header()), **fields}) + body_tail
    if raw_name is not None:
        body = body[: schema.HEADER_BODY_V1_SIZE - 1] + raw_name
    length = len(body) if header_length is None else header_length
    preamble = schema.SIGNATURE + bytes([major, 0]) + b"\x00\x00" + length.to_bytes(4, "little")
    return preamble + body + codec.crc32(preamble + body).to_bytes(4, "little")


def forge_record(record_type: int, payload: bytes, record_length: int | None = None) -> bytes:
    """A framed record whose length field may lie; the CRC matches the bytes."""
    length = len(payload) if record_length is None else record_length
    prefix = record_type.to_bytes(2, "little") + length.to_bytes(4, "little")
    return prefix + payload + codec.crc32(prefix + payload).to_bytes(4, "little")


def peak_of(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


SCENE0 = codec.record_to_bytes(scene(small_header(), 0, LatentFormat.INT8, np.random.default_rng(0)), small_header())
KEY0 = codec.record_to_bytes(keyframe(small_header(), 0, 2, np.random.default_rng(0)), small_header())

HOSTILE = {
    "latent 65535^3": (
        forge_header(latent_channels=65535, latent_height=65535, latent_width=65535),
        (LengthError, ForbiddenValueError),
    ),
    "latent just over 4 Mi": (forge_header(latent_channels=4, latent_height=1024, latent_width=1025), LengthError),
    "prompt 65535x65535": (forge_header(prompt_tokens=65535, prompt_dim=65535), (ForbiddenValueError, LengthError)),
    "coded 65535x65535": (
        forge_header(coded_width=65535, coded_height=65535, coded_rect=dict(x=0, y=0, width=65535, height=65535)),
        ForbiddenValueError,
    ),
    "header_length 0xFFFFFFFF": (forge_header(header_length=0xFFFFFFFF), LengthError),
    "header_length 4097": (forge_header(header_length=4097), LengthError),
    "header_length 164 (no model name)": (forge_header(header_length=164), LengthError),
    "record_length 0xFFFFFFFF": (forge_header() + forge_record(0x0001, b"", 0xFFFFFFFF), LengthError),
    "record_length limit + 1": (forge_header() + forge_record(0x8005, b"", schema.MAX_RECORD_LENGTH + 1), LengthError),
    "seek index count 0xFFFFFFFF": (
        forge_header() + SCENE0 + KEY0 + forge_record(0x8002, (0xFFFFFFFF).to_bytes(4, "little") + bytes(12)),
        LengthError,
    ),
    "quality count 0xFFFFFFFF": (
        forge_header() + forge_record(0x8003, bytes(4) + (0xFFFFFFFF).to_bytes(4, "little") + bytes(8)),
        LengthError,
    ),
    "keyframe rank 65535": (
        forge_header() + SCENE0 + forge_record(0x0002, bytes(4) + b"\xff\xff\x01" + bytes(16) + bytes(40)),
        (LengthError, ForbiddenValueError),
    ),
    "thumbnail 65535x65535": (
        forge_header() + SCENE0 + KEY0 + forge_record(0x8005, bytes(4) + b"\xff\xff\xff\xff" + bytes(16)),
        LengthError,
    ),
    "tiny scene for a 4 Mi latent": (
        forge_header(latent_channels=4, latent_height=1024, latent_width=1024)
        + forge_record(0x0001, bytes(4) + b"\x01" + bytes(4) + bytes(64)),
        LengthError,
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_absurd_sizes_are_refused_before_allocation(tmp_path, name):
    data, expected = HOSTILE[name]
    assert len(data) < 1000
    path = tmp_path / "hostile.prx"
    path.write_bytes(data)

    def read_all():
        for strict in (True, False):
            with pytest.raises(expected):
                read_prx(io.BytesIO(data), strict=strict)
            with pytest.raises(expected):
                read_prx(path, strict=strict)  # a real file: read(n) there allocates n bytes up front

    assert peak_of(read_all) < MAX_PEAK


def test_hostile_header_still_needs_its_crc():
    data = bytearray(forge_header(prompt_tokens=65535, prompt_dim=65535))
    data[-1] ^= 0x01
    with pytest.raises(CrcMismatchError):
        read_prx(io.BytesIO(bytes(data)))


def test_limits_themselves_are_accepted():
    """The §8 maxima are legal: 1024 tokens, 8192 dims, 4 Mi latent values, 16384 pixels."""
    h = replace(small_header(1024, 8192, latent=(2, 1024, 1024)), coded_width=16384, coded_height=16384)
    data = codec.header_to_bytes(h)
    assert read_prx(io.BytesIO(data), strict=False).header == h


# ---------------------------------------------------------------------------
# Reader: values the spec forbids, behind a correct CRC
# ---------------------------------------------------------------------------


def with_records(*records: bytes, header: bytes | None = None) -> bytes:
    return (header or codec.header_to_bytes(small_header())) + b"".join(records)


def end_bytes(frames=1, scenes=1, keyframes=1, seek=0) -> bytes:
    return codec.record_to_bytes(EndRecord(frames, scenes, keyframes, seek), small_header())


FORBIDDEN_IN_FILE = {
    "frame rate not in lowest terms": (forge_header(frame_rate_num=60, frame_rate_den=2), ForbiddenValueError),
    "frame_rate_den 0": (forge_header(frame_rate_den=0), ForbiddenValueError),
    "frame_rate_num 0": (forge_header(frame_rate_num=0), ForbiddenValueError),
    "empty model name": (forge_header(model_name=""), (ForbiddenValueError, LengthError)),
    "model name not UTF-8": (forge_header(raw_name=b"\x04sd\xff\xfe"), FormatError),
    "model name longer than the body": (forge_header(raw_name=b"\x40abc"), FormatError),
    "unknown fit_mode": (forge_header(fit_mode=9), ForbiddenValueError),
    "unknown noise generator": (forge_header(noise_generator=0), ForbiddenValueError),
    "alpha_cumprod 1": (forge_header(alpha_cumprod=1.0), ForbiddenValueError),
    "latent_weight NaN": (forge_header(latent_weight=float("nan")), ForbiddenValueError),
    "major version 2": (forge_header(major=2), UnsupportedVersionError),
    "unknown critical record": (with_records(SCENE0, KEY0, forge_record(0x0042, b"x")), UnknownCriticalRecordError),
    "keyframe before scene": (with_records(KEY0), RecordOrderError),
    "scene without keyframe then End": (with_records(SCENE0, end_bytes(0, 1, 0)), RecordOrderError),
    "End totals wrong": (with_records(SCENE0, KEY0, end_bytes(2, 1, 1)), RecordOrderError),
    "End points at no SeekIndex": (with_records(SCENE0, KEY0, end_bytes(seek=191)), RecordOrderError),
    "SeekIndex lies": (
        with_records(SCENE0, KEY0, codec.record_to_bytes(SeekIndexRecord((SeekEntry(0, 5),)), small_header())),
        RecordOrderError,
    ),
    "rank above min(m, n)": (
        with_records(
            SCENE0,
            forge_record(0x0002, bytes(4) + b"\x04\x00\x01" + np.array([1, 0, 1, 0], "<f4").tobytes() + bytes(32)),
        ),
        ForbiddenValueError,
    ),
    "rank 0": (
        with_records(
            SCENE0, forge_record(0x0002, bytes(4) + b"\x00\x00\x01" + np.array([1, 0, 1, 0], "<f4").tobytes())
        ),
        ForbiddenValueError,
    ),
    "zero point 0.5": (
        with_records(
            SCENE0,
            forge_record(0x0002, bytes(4) + b"\x01\x00\x01" + np.array([1, 0.5, 1, 0], "<f4").tobytes() + bytes(8)),
        ),
        ForbiddenValueError,
    ),
    "u_scale -inf": (
        with_records(
            SCENE0,
            forge_record(0x0002, bytes(4) + b"\x01\x00\x01" + np.array([-np.inf, 0, 1, 0], "<f4").tobytes() + bytes(8)),
        ),
        ForbiddenValueError,
    ),
    "unknown quant scheme": (
        with_records(
            SCENE0,
            forge_record(0x0002, bytes(4) + b"\x01\x00\x07" + np.array([1, 0, 1, 0], "<f4").tobytes() + bytes(8)),
        ),
        ForbiddenValueError,
    ),
    "float latent NaN": (
        with_records(
            forge_record(0x0001, bytes(4) + b"\x01" + np.float32(1).tobytes() + np.full(18, np.nan, "<f4").tobytes())
        ),
        ForbiddenValueError,
    ),
    "float latent with scale 2": (
        with_records(
            forge_record(0x0001, bytes(4) + b"\x01" + np.float32(2).tobytes() + np.zeros(18, "<f4").tobytes())
        ),
        ForbiddenValueError,
    ),
    "int8 latent with scale 0": (
        with_records(forge_record(0x0001, bytes(4) + b"\x03" + np.float32(0).tobytes() + bytes(18))),
        ForbiddenValueError,
    ),
    "unknown latent format": (
        with_records(forge_record(0x0001, bytes(4) + b"\x09" + bytes(4) + bytes(18))),
        ForbiddenValueError,
    ),
    "End payload short": (with_records(SCENE0, KEY0, forge_record(0x0003, bytes(19))), LengthError),
    "settings not JSON": (with_records(forge_record(0x8001, b"\xff{")), ForbiddenValueError),
    "settings a JSON list": (with_records(forge_record(0x8001, b"[1, 2]")), ForbiddenValueError),
    "thumbnail 0x4": (
        with_records(SCENE0, KEY0, forge_record(0x8005, bytes(4) + b"\x00\x00\x04\x00")),
        ForbiddenValueError,
    ),
    "thumbnail wider than the frame": (
        with_records(
            SCENE0, KEY0, forge_record(0x8005, bytes(4) + (49).to_bytes(2, "little") + b"\x01\x00" + bytes(49))
        ),
        ForbiddenValueError,
    ),
    "thumbnail before its keyframe": (
        with_records(SCENE0, forge_record(0x8005, bytes(4) + b"\x01\x00\x01\x00\x80")),
        RecordOrderError,
    ),
}


@pytest.mark.parametrize("name", list(FORBIDDEN_IN_FILE))
def test_forbidden_values_in_a_file_are_refused(name):
    data, expected = FORBIDDEN_IN_FILE[name]
    for strict in (True, False):
        with pytest.raises(expected):
            read_prx(io.BytesIO(data), strict=strict)


def test_unknown_ancillary_record_is_kept(small_files):
    f = small_files[0]
    (unknown,) = [r for r in f.records if isinstance(r, UnknownAncillaryRecord)]
    assert unknown == UnknownAncillaryRecord(0xC0DE, b"future stuff")


def test_deeply_nested_settings_json_is_a_format_error():
    data = with_records(forge_record(0x8001, b"[" * 100_000 + b"]" * 100_000))
    with pytest.raises(FormatError):
        read_prx(io.BytesIO(data))


@pytest.mark.parametrize("text", [b'{"q": NaN}', b'{"q": Infinity}', b'{"q": -Infinity}'])
def test_settings_with_non_json_numbers_are_refused(text):
    data = with_records(forge_record(0x8001, text))
    with pytest.raises(FormatError):
        read_prx(io.BytesIO(data), strict=False)


# ---------------------------------------------------------------------------
# Writer refuses bad input, and write_prx leaves nothing half-written
# ---------------------------------------------------------------------------


H = small_header()  # m = 3, n = 5, latent (2, 3, 3)
RNG = np.random.default_rng(3)
GOOD_SCENE = scene(H, 0, LatentFormat.FLOAT32, RNG)
GOOD_KEY = keyframe(H, 0, 2, RNG)


def kf(**changes) -> KeyframeRecord:
    fields = dict(vars(keyframe(H, 0, 2, np.random.default_rng(4))))
    fields.update(changes)
    return KeyframeRecord(**fields)


def sc(**changes) -> SceneRecord:
    fields = dict(vars(scene(H, 0, LatentFormat.INT8, np.random.default_rng(5))))
    fields.update(changes)
    return SceneRecord(**fields)


with np.errstate(over="ignore"):  # 1e39 rounds to float32 inf on purpose
    OVERFLOWING_SCALE = kf(u_scale=1e39)

BAD_RECORDS = {
    # decode order (§5)
    "keyframe before any scene": ([GOOD_KEY], RecordOrderError),
    "scene not at frame 0": ([sc(first_frame=1)], RecordOrderError),
    "first keyframe not at the scene's frame": ([GOOD_SCENE, kf(frame_index=3)], RecordOrderError),
    "keyframes not increasing": ([GOOD_SCENE, GOOD_KEY, kf(frame_index=5), kf(frame_index=5)], RecordOrderError),
    "keyframe going back": ([GOOD_SCENE, GOOD_KEY, kf(frame_index=5), kf(frame_index=4)], RecordOrderError),
    "scene without keyframe": ([GOOD_SCENE, sc(first_frame=1)], RecordOrderError),
    "scene leaving a gap": ([GOOD_SCENE, GOOD_KEY, sc(first_frame=2)], RecordOrderError),
    "scene overlapping": ([GOOD_SCENE, GOOD_KEY, kf(frame_index=4), sc(first_frame=4)], RecordOrderError),
    "End with wrong totals": ([GOOD_SCENE, GOOD_KEY, EndRecord(5, 1, 1)], RecordOrderError),
    "record after End": (
        [GOOD_SCENE, GOOD_KEY, EndRecord(1, 1, 1), UnknownAncillaryRecord(0x9000, b"")],
        RecordOrderError,
    ),
    "SeekIndex not matching": ([GOOD_SCENE, GOOD_KEY, SeekIndexRecord((SeekEntry(0, 0),))], RecordOrderError),
    "no records at all": ([], RecordOrderError),
    "only a scene": ([GOOD_SCENE], RecordOrderError),
    # keyframe values (§7)
    "rank 0": ([GOOD_SCENE, kf(rank=0, u=np.zeros((3, 0), np.int8), v=np.zeros((0, 5), np.int8))], ForbiddenValueError),
    "rank above min(m, n)": (
        [GOOD_SCENE, kf(rank=4, u=np.zeros((3, 4), np.int8), v=np.zeros((4, 5), np.int8))],
        ForbiddenValueError,
    ),
    "rank disagrees with u": ([GOOD_SCENE, kf(rank=1)], ForbiddenValueError),
    "u transposed": ([GOOD_SCENE, kf(u=np.zeros((2, 3), np.int8))], ForbiddenValueError),
    "v of the wrong width": ([GOOD_SCENE, kf(v=np.zeros((2, 6), np.int8))], ForbiddenValueError),
    "u_scale 0": ([GOOD_SCENE, kf(u_scale=0.0)], ForbiddenValueError),
    "v_scale negative": ([GOOD_SCENE, kf(v_scale=-0.5)], ForbiddenValueError),
    "u_scale NaN": ([GOOD_SCENE, kf(u_scale=float("nan"))], ForbiddenValueError),
    "v_scale inf": ([GOOD_SCENE, kf(v_scale=float("inf"))], ForbiddenValueError),
    "u_scale overflowing float32": ([GOOD_SCENE, OVERFLOWING_SCALE], ForbiddenValueError),
    "zero point 0.5": ([GOOD_SCENE, kf(u_zero_point=0.5)], ForbiddenValueError),
    "zero point 128": ([GOOD_SCENE, kf(v_zero_point=128.0)], ForbiddenValueError),
    "zero point -129": ([GOOD_SCENE, kf(u_zero_point=-129.0)], ForbiddenValueError),
    "zero point NaN": ([GOOD_SCENE, kf(v_zero_point=float("nan"))], ForbiddenValueError),
    # scene values (§7)
    "latent of the wrong shape": ([sc(latent=np.zeros((2, 3, 4), np.int8))], ForbiddenValueError),
    "latent missing its channel axis": ([sc(latent=np.zeros((3, 3), np.int8))], ForbiddenValueError),
    "int8 latent scale 0": ([sc(latent_scale=0.0)], ForbiddenValueError),
    "int8 latent scale NaN": ([sc(latent_scale=float("nan"))], ForbiddenValueError),
    "float latent scale 0.5": (
        [SceneRecord(0, LatentFormat.FLOAT16, 0.5, np.zeros((2, 3, 3), np.float16))],
        ForbiddenValueError,
    ),
    "float latent holding NaN": (
        [SceneRecord(0, LatentFormat.FLOAT32, 1.0, np.full((2, 3, 3), np.nan, np.float32))],
        ForbiddenValueError,
    ),
    "float latent holding inf": (
        [SceneRecord(0, LatentFormat.FLOAT16, 1.0, np.full((2, 3, 3), np.inf, np.float16))],
        ForbiddenValueError,
    ),
    # ancillary records that cannot be framed
    "quality lists of unequal length": ([QualityRecord(0, (1.0,), ())], LengthError),
    "unknown record with a 17-bit type": ([UnknownAncillaryRecord(0x18000, b"")], FormatError),
    # ReconThumbnail (§6.8, §5.1 O12 O13)
    "thumbnail before any keyframe": (
        [GOOD_SCENE, ReconThumbnailRecord(0, np.zeros((16, 16), np.uint8))],
        RecordOrderError,
    ),
    "thumbnail of an older keyframe": (
        [GOOD_SCENE, GOOD_KEY, kf(frame_index=3), ReconThumbnailRecord(0, np.zeros((16, 16), np.uint8))],
        RecordOrderError,
    ),
    "second thumbnail of a keyframe": (
        [GOOD_SCENE, GOOD_KEY, *[ReconThumbnailRecord(0, np.zeros((4, 4), np.uint8))] * 2],
        RecordOrderError,
    ),
    "thumbnail empty": (
        [GOOD_SCENE, GOOD_KEY, ReconThumbnailRecord(0, np.zeros((0, 16), np.uint8))],
        ForbiddenValueError,
    ),
    "thumbnail wider than the frame": (
        [GOOD_SCENE, GOOD_KEY, ReconThumbnailRecord(0, np.zeros((16, 49), np.uint8))],
        ForbiddenValueError,
    ),
    "thumbnail of int8": (
        [GOOD_SCENE, GOOD_KEY, ReconThumbnailRecord(0, np.zeros((16, 16), np.int8))],
        ForbiddenValueError,
    ),
    "thumbnail flat": ([GOOD_SCENE, GOOD_KEY, ReconThumbnailRecord(0, np.zeros(256, np.uint8))], ForbiddenValueError),
    "unknown record over 16 MiB": ([UnknownAncillaryRecord(0x9000, bytes(schema.MAX_RECORD_LENGTH + 1))], LengthError),
}


def _header(**changes):
    return replace(H, **changes)


BAD_HEADERS = {
    "coded width 0": (_header(coded_width=0), ForbiddenValueError),
    "coded side above 16384": (
        _header(coded_width=16385, geometry=replace(H.geometry, coded_rect=Rect(0, 0, 16385, 30))),
        ForbiddenValueError,
    ),
    "coded_rect outside the frame": (
        _header(geometry=replace(H.geometry, coded_rect=Rect(1, 0, 48, 32))),
        ForbiddenValueError,
    ),
    "source_rect empty": (_header(geometry=replace(H.geometry, source_rect=Rect(0, 0, 0, 60))), ForbiddenValueError),
    "source size 0": (_header(geometry=SourceGeometry.identity(0, 0)), ForbiddenValueError),
    "frame rate 0": (_header(frame_rate=0), ForbiddenValueError),
    "frame rate negative": (_header(frame_rate=-30), ForbiddenValueError),
    "prompt_tokens 0": (_header(prompt_tokens=0), ForbiddenValueError),
    "prompt_tokens 1025": (_header(prompt_tokens=1025), ForbiddenValueError),
    "prompt_dim 8193": (_header(prompt_dim=8193), ForbiddenValueError),
    "latent channel 0": (_header(latent_channels=0), ForbiddenValueError),
    "latent too big": (_header(latent_channels=5, latent_height=1024, latent_width=1024), LengthError),
    "latent_weight 1.5": (_header(generation=GenerationConstants(latent_weight=1.5)), ForbiddenValueError),
    "noise_weight NaN": (_header(generation=GenerationConstants(noise_weight=float("nan"))), ForbiddenValueError),
    "alpha_cumprod 0": (_header(generation=GenerationConstants(alpha_cumprod=0.0)), ForbiddenValueError),
    "alpha_cumprod 1": (_header(generation=GenerationConstants(alpha_cumprod=1.0)), ForbiddenValueError),
    "empty model name": (_header(model=replace(H.model, name="")), ForbiddenValueError),
    "model name of 256 bytes": (_header(model=replace(H.model, name="é" * 128)), FormatError),
    "digest of 31 bytes": (_header(model=replace(H.model, decoder_sha256=bytes(31))), FormatError),
    "major version 2": (_header(major_version=2), UnsupportedVersionError),
    "frame count that the stream does not reach": (_header(frame_count=99), RecordOrderError),
}


def assert_folder_clean(folder: Path, target: Path) -> None:
    assert not target.exists()
    leftovers = [p.name for p in folder.iterdir()]
    assert leftovers == [], f"write_prx left {leftovers}"


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_writer_refuses_bad_records(tmp_path, name):
    records, expected = BAD_RECORDS[name]
    target = tmp_path / "clip.prx"
    with pytest.raises(expected):
        write_prx(target, H, records)
    assert_folder_clean(tmp_path, target)


@pytest.mark.parametrize("name", list(BAD_HEADERS))
def test_writer_refuses_bad_headers(tmp_path, name):
    header, expected = BAD_HEADERS[name]
    target = tmp_path / "clip.prx"
    with pytest.raises(expected):
        write_prx(target, header, [GOOD_SCENE, GOOD_KEY])
    assert_folder_clean(tmp_path, target)


def test_write_prx_keeps_an_existing_file_on_failure(tmp_path):
    target = tmp_path / "clip.prx"
    target.write_bytes(b"previous version")
    with pytest.raises(ForbiddenValueError):
        write_prx(target, H, [GOOD_SCENE, kf(rank=0)])
    assert target.read_bytes() == b"previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.prx"]


@pytest.mark.parametrize(
    "bad",
    [
        kf(rank=0),
        kf(u_scale=0.0),
        kf(frame_index=0),
        sc(first_frame=7),
        kf(u=np.zeros((5, 3), np.int8)),
        EndRecord(9, 9, 9),
    ],
    ids=["rank-0", "scale-0", "repeated-keyframe", "scene-gap", "bad-shape", "bad-end"],
)
def test_refused_record_appends_nothing_and_writer_goes_on(bad):
    buf = io.BytesIO()
    writer = PrxWriter(buf, H)
    writer.write(GOOD_SCENE)
    writer.write(GOOD_KEY)
    before = buf.getvalue()
    with pytest.raises(FormatError):
        writer.write(bad)
    assert buf.getvalue() == before
    writer.write(kf(frame_index=3))
    writer.finish()
    f = read_prx(io.BytesIO(buf.getvalue()))
    assert [type(r).__name__ for r in f.records] == [
        "SceneRecord",
        "KeyframeRecord",
        "KeyframeRecord",
        "SeekIndexRecord",
        "EndRecord",
    ]


# Writer bugs: each of these would make the writer produce a file that read_prx refuses, or
# one that reads back as something else. The writer must refuse them, and leave nothing.


def assert_writer_refuses(records, tmp_path, error=ForbiddenValueError) -> None:
    """write_prx raises ``error`` for ``records`` and leaves no file, not even a temporary one."""
    target = tmp_path / "clip.prx"
    with pytest.raises(error):
        write_prx(target, H, records)
    assert_folder_clean(tmp_path, target)


@pytest.mark.parametrize("record_type", [0x0001, 0x0003, 0x0042, 0x8001, 0x8002, 0x8003, 0x8004, 0x8005])
def test_writer_refuses_unknown_record_of_critical_or_known_type(tmp_path, record_type):
    assert_writer_refuses([GOOD_SCENE, GOOD_KEY, UnknownAncillaryRecord(record_type, b"junk")], tmp_path)


@pytest.mark.parametrize("settings", [[1, 2], "text", 3, None])
def test_writer_refuses_settings_that_are_not_an_object(tmp_path, settings):
    assert_writer_refuses([EncoderSettingsRecord(settings), GOOD_SCENE, GOOD_KEY], tmp_path)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize(
    "record",
    [
        SceneRecord(0, LatentFormat.FLOAT16, 1.0, np.full((2, 3, 3), 70000.0, np.float32)),
        SceneRecord(0, LatentFormat.FLOAT32, 1.0, np.full((2, 3, 3), 1e39, np.float64)),
    ],
    ids=["float16-overflow", "float32-overflow"],
)
def test_writer_refuses_latents_that_overflow_their_format(tmp_path, record):
    assert_writer_refuses([record, GOOD_KEY], tmp_path)


@pytest.mark.parametrize(
    "record",
    [
        kf(u=np.full((3, 2), 200, np.int16)),
        kf(v=np.full((2, 5), 0.75, np.float32)),
        sc(latent=np.full((2, 3, 3), 300.7)),
    ],
    ids=["u-int16-200", "v-float", "latent-float-as-int8"],
)
def test_writer_refuses_values_that_do_not_fit_int8(record):
    buf = io.BytesIO()
    writer = PrxWriter(buf, H)
    if isinstance(record, KeyframeRecord):
        writer.write(GOOD_SCENE)
    before = buf.getvalue()
    with pytest.raises(ForbiddenValueError):
        writer.write(record)
    assert buf.getvalue() == before  # nothing of the refused record was written


@pytest.mark.parametrize(
    "settings", [{"q": float("nan")}, {"q": {1, 2}}, {"q": object()}], ids=["nan", "set", "object"]
)
def test_writer_refuses_settings_that_are_not_json_with_a_prx_error(tmp_path, settings):
    target = tmp_path / "clip.prx"
    with pytest.raises(PrxError):
        write_prx(target, H, [EncoderSettingsRecord(settings), GOOD_SCENE, GOOD_KEY])
    assert_folder_clean(tmp_path, target)


def test_failed_write_prx_leaves_no_temporary_even_for_foreign_errors(tmp_path):
    target = tmp_path / "clip.prx"
    with pytest.raises(Exception):  # noqa: B017 - whatever the writer raises, nothing may stay behind
        write_prx(target, H, [EncoderSettingsRecord({"q": {1, 2}}), GOOD_SCENE, GOOD_KEY])
    assert_folder_clean(tmp_path, target)
    assert not any(name.endswith(".partial") for name in os.listdir(tmp_path))


def test_settings_json_is_canonical():
    """EncoderSettings are written as sorted, compact JSON, so equal settings give equal bytes."""
    a = codec.record_to_bytes(EncoderSettingsRecord({"b": 1, "a": [1.5, "é"]}), H)
    b = codec.record_to_bytes(EncoderSettingsRecord({"a": [1.5, "é"], "b": 1}), H)
    assert a == b
    assert json.loads(a[6:-4]) == {"a": [1.5, "é"], "b": 1}


def test_writer_resumes_a_truncated_file(small_files):
    """Cut anywhere, read leniently, drop the tail, resume writing: the original bytes come back."""
    f = small_files[0]
    for k in range(len(f.records)):
        for tail in (0, 5):
            cut = min(f.offsets[k] + tail, f.offsets[k + 1] - 1) if tail else f.offsets[k]
            stream = io.BytesIO(f.data[:cut])
            reader = PrxReader(stream, strict=False)
            list(reader)
            t = reader.truncation
            assert t.offset == f.offsets[k]
            stream.seek(t.offset)
            stream.truncate()
            writer = PrxWriter(stream, reader.header, resume_from=reader.order, offset=t.offset)
            for r in f.records[k:]:
                if not isinstance(r, (SeekIndexRecord, EndRecord)):
                    writer.write(r)
            writer.finish(seek_index=not any(isinstance(r, SeekIndexRecord) for r in f.records[:k]))
            assert stream.getvalue() == f.data, f"resumed after record {k}"
