"""Valid .prx streams survive write -> read -> write unchanged (format_spec.md §3-§6).

Each schema structure is checked both ways (parse -> object, build -> bytes, size), in the
manner of construct's ``tests/declarativeunittest.py::common``; then hypothesis draws whole
streams and checks that the reader gives back exactly what the writer was given, and that
writing the parsed records again reproduces the file byte for byte.
"""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from construct import Container
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptus_codec.container import codec, schema
from promptus_codec.container.reader import PrxReader, read_prx
from promptus_codec.container.records import (
    EndRecord,
    KeyframeRecord,
    LatentFormat,
    RecordType,
    SceneRecord,
    SeekIndexRecord,
    is_ancillary,
)
from promptus_codec.container.writer import PrxWriter, write_prx

from .strategies import (
    UNKNOWN_ANCILLARY_TYPES,
    canonical,
    expected_seek_index,
    record_offsets,
    sd_turbo_stream,
    small_stream,
    streams,
    write_bytes,
)

# ---------------------------------------------------------------------------
# Each structure both ways
# ---------------------------------------------------------------------------


def common(struct, data: bytes, obj: dict, size: int | None = None, **params) -> None:
    """parse(data) == obj, build(obj) == data, and sizeof == size (construct's `common`)."""
    parsed = struct.parse(data, **params)
    assert {k: v for k, v in parsed.items() if not k.startswith("_")} == obj
    assert struct.build(obj, **params) == data
    assert len(data) == (size if size is not None else len(data))
    if size is not None and not params:
        assert struct.sizeof() == size


def test_header_preamble_both_ways():
    data = schema.SIGNATURE + bytes([1, 0]) + (0x0102).to_bytes(2, "little") + (200).to_bytes(4, "little")
    common(
        schema.header_preamble,
        data,
        dict(signature=schema.SIGNATURE, major_version=1, minor_version=0, flags=0x0102, header_length=200),
        16,
    )


def test_record_prefix_and_crc_both_ways():
    common(
        schema.record_prefix,
        b"\x02\x80\x10\x00\x00\x00",
        dict(record_type=0x8002, record_length=16),
        schema.RECORD_PREFIX_SIZE,
    )
    common(schema.crc32_field, b"\x78\x56\x34\x12", dict(crc32=0x12345678), schema.RECORD_CRC_SIZE)


def test_end_payload_both_ways():
    data = (
        (9).to_bytes(4, "little") + (2).to_bytes(4, "little") + (5).to_bytes(4, "little") + (1234).to_bytes(8, "little")
    )
    common(
        schema.end_payload,
        data,
        dict(frame_count=9, scene_count=2, keyframe_count=5, seek_index_offset=1234),
        20,
    )
    assert schema.payload_size(RecordType.END) == 20


def test_scene_payload_both_ways():
    latent = np.arange(6, dtype="<f2").tobytes()
    data = (6).to_bytes(4, "little") + b"\x02" + np.float32(1.0).tobytes() + latent
    common(schema.scene_payload, data, dict(first_frame=6, latent_format=2, latent_scale=1.0, latent=latent))
    assert len(data) == schema.payload_size(RecordType.SCENE, latent_format=LatentFormat.FLOAT16, latent_elements=6)
    assert schema.fixed_size(RecordType.SCENE) == 9


def test_keyframe_payload_both_ways():
    m, n, r = 3, 5, 2
    u, v = bytes(range(m * r)), bytes(range(100, 100 + r * n))
    fixed = (
        (4).to_bytes(4, "little")
        + (r).to_bytes(2, "little")
        + b"\x01"
        + np.array([0.5, -3.0, 0.25, 7.0], "<f4").tobytes()
    )
    obj = dict(
        frame_index=4, rank=r, quant_scheme=1, u_scale=0.5, u_zero_point=-3.0, v_scale=0.25, v_zero_point=7.0, u=u, v=v
    )
    common(schema.keyframe_payload, fixed + u + v, obj, prompt_tokens=m, prompt_dim=n)
    assert len(fixed) == schema.fixed_size(RecordType.KEYFRAME) == 23
    assert len(fixed + u + v) == schema.payload_size(RecordType.KEYFRAME, rank=r, prompt_tokens=m, prompt_dim=n)


def test_seek_index_payload_both_ways():
    data = (2).to_bytes(4, "little") + (0).to_bytes(4, "little") + (181).to_bytes(8, "little")
    data += (41).to_bytes(4, "little") + (90000).to_bytes(8, "little")
    entries = [Container(frame_index=0, byte_offset=181), Container(frame_index=41, byte_offset=90000)]
    common(schema.seek_index_payload, data, dict(entry_count=2, entries=entries))
    assert len(data) == schema.payload_size(RecordType.SEEK_INDEX, entry_count=2) == 4 + 2 * 12


def test_quality_payload_both_ways():
    data = (3).to_bytes(4, "little") + (2).to_bytes(4, "little") + np.array([30.5, 31.0, 0.25, 0.5], "<f4").tobytes()
    common(schema.quality_payload, data, dict(first_frame=3, frame_count=2, psnr_db=[30.5, 31.0], loss=[0.25, 0.5]))
    assert len(data) == schema.payload_size(RecordType.QUALITY, frame_count=2) == 8 + 2 * 8


def test_header_body_v1_size():
    """schema.HEADER_BODY_V1_SIZE is the body with an empty model_name (spec §3.2), 164 bytes."""
    h = small_stream().header
    full = codec.header_to_bytes(h)
    name = h.model.name.encode("utf-8")
    body = full[16:-4]
    assert len(body) == schema.HEADER_BODY_V1_SIZE + len(name) == 164 + len(name)
    assert len(full) == schema.header_size(h.model.name)
    assert body[-len(name) - 1] == len(name) and body.endswith(name)
    assert int.from_bytes(full[12:16], "little") == len(body)
    assert int.from_bytes(full[-4:], "little") == codec.crc32(full[:-4])


# ---------------------------------------------------------------------------
# Whole streams
# ---------------------------------------------------------------------------


def check_round_trip(stream, data: bytes, seek_index: bool, end: EndRecord) -> None:
    parsed = read_prx(io.BytesIO(data))
    assert parsed.header == stream.header
    assert canonical(parsed.header) == canonical(stream.header)
    assert parsed.truncation is None and parsed.size == len(data)

    # the records given, then the SeekIndex and End that finish() appends
    scenes = [r for r in stream.records if isinstance(r, SceneRecord)]
    keyframes = [r for r in stream.records if isinstance(r, KeyframeRecord)]
    seek = expected_seek_index(stream.header, stream.records) if seek_index else None
    offsets = record_offsets(stream.header, stream.records)
    expected_end = EndRecord(stream.frames, len(scenes), len(keyframes), offsets[-1] if seek_index else 0)
    expected = list(stream.records) + ([seek] if seek else []) + [expected_end]
    assert end == expected_end and parsed.end == expected_end
    assert len(parsed.records) == len(expected)
    for got, want in zip(parsed.records, expected):
        assert type(got) is type(want)
        assert canonical(got) == canonical(want), f"{type(want).__name__} differs"
    for got in parsed.records:  # arrays keep dtype and shape, values compare equal too
        if isinstance(got, KeyframeRecord):
            assert got.u.dtype == np.int8 and got.u.shape == (stream.header.prompt_tokens, got.rank)
            assert got.v.dtype == np.int8 and got.v.shape == (got.rank, stream.header.prompt_dim)
        if isinstance(got, SceneRecord):
            assert got.latent.shape == stream.header.latent_shape

    # the seek index points at the Scene records in the bytes, End at the SeekIndex
    if seek:
        for entry in parsed.records[-2].entries:
            o = entry.byte_offset
            assert data[o : o + 2] == b"\x01\x00"
            assert int.from_bytes(data[o + 6 : o + 10], "little") == entry.frame_index
        assert data[expected_end.seek_index_offset : expected_end.seek_index_offset + 2] == b"\x02\x80"

    # non-strict gives the same; writing the parsed records again gives the same bytes
    lenient = read_prx(io.BytesIO(data), strict=False)
    assert [canonical(r) for r in lenient.records] == [canonical(r) for r in parsed.records]
    assert lenient.truncation is None
    again = io.BytesIO()
    writer = PrxWriter(again, parsed.header)
    for r in parsed.records:
        if not isinstance(r, (SeekIndexRecord, EndRecord)):
            writer.write(r)
    assert writer.finish(seek_index) == expected_end
    assert again.getvalue() == data
    assert (
        codec.header_to_bytes(parsed.header) + b"".join(codec.record_to_bytes(r, parsed.header) for r in parsed.records)
        == data
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stream=streams(), seek_index=st.booleans(), via_path=st.booleans())
def test_round_trip(stream, seek_index, via_path):
    if via_path:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "clip.prx"
            end = write_prx(path, stream.header, stream.records, seek_index=seek_index)
            data = path.read_bytes()
            assert [canonical(r) for r in read_prx(path).records] == [
                canonical(r) for r in read_prx(io.BytesIO(data)).records
            ]
            assert sorted(p.name for p in Path(folder).iterdir()) == ["clip.prx"]
    else:
        buf = io.BytesIO()
        writer = PrxWriter(buf, stream.header)
        for r in stream.records:
            writer.write(r)
        end = writer.finish(seek_index)
        data = buf.getvalue()
    check_round_trip(stream, data, seek_index, end)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stream=streams(prompt_shape=(77, 1024), max_scenes=2, max_keyframes=3), seek_index=st.booleans())
def test_round_trip_sd_turbo_shape(stream, seek_index):
    buf = io.BytesIO()
    writer = PrxWriter(buf, stream.header)
    for r in stream.records:
        writer.write(r)
    end = writer.finish(seek_index)
    check_round_trip(stream, buf.getvalue(), seek_index, end)


def _spec_record_type_registry() -> dict[int, str]:
    """format_spec.md §12.1: each single id that names a record type -> its name."""
    text = (Path(__file__).resolve().parents[2] / "format_spec.md").read_text()
    table = text[text.index("### 12.1 Record types") : text.index("### 12.2")]
    rows = re.findall(r"^\| (0x[0-9A-F]{4}) \| ([A-Za-z]+) \|", table, re.MULTILINE)
    return {int(ident, 16): name for ident, name in rows}


def test_container_registry_is_the_spec_registry():
    """RecordType (what strategies.UNKNOWN_ANCILLARY_TYPES is derived from) is §12.1's table."""
    spec = {ident: name.lower() for ident, name in _spec_record_type_registry().items()}
    assert {int(t): t.name.replace("_", "").lower() for t in RecordType} == spec
    assert codec.KNOWN_TYPES == set(spec)


@settings(max_examples=300, deadline=None)
@given(record_type=UNKNOWN_ANCILLARY_TYPES)
def test_unknown_record_types_are_unassigned_ancillary_ids(record_type):
    assert is_ancillary(record_type) and record_type not in _spec_record_type_registry()


@pytest.mark.parametrize("make", [small_stream, sd_turbo_stream], ids=["small", "sd-turbo"])
@pytest.mark.parametrize("seek_index", [True, False])
def test_round_trip_fixed_streams(make, seek_index):
    stream = make()
    data = write_bytes(stream, seek_index)
    end = read_prx(io.BytesIO(data)).end
    check_round_trip(stream, data, seek_index, end)


def test_reader_yields_records_as_they_arrive():
    """The streaming reader hands out each record before it reads the next one (spec §5)."""
    stream = small_stream()
    data = write_bytes(stream)
    offsets = record_offsets(stream.header, stream.records)

    class Tracking(io.BytesIO):
        pass

    src = Tracking(data)
    reader = PrxReader(src)
    for i, record in enumerate(reader):
        if i < len(stream.records):
            assert src.tell() == offsets[i + 1], "the reader read past the record it yielded"
            assert canonical(record) == canonical(stream.records[i])
    assert reader.end is not None and reader.truncation is None
