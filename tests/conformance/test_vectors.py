"""The .prx conformance vectors (conformance/README.md) against this reader and writer.

- every valid and uncommon vector parses (strict) to its expected JSON exactly, and that
  JSON written back with PrxWriter gives the vector's bytes;
- every invalid vector raises exactly its expected PrxError subclass, at its offset;
- a vector listed in expected/ but absent from vectors/ fails; so does any file the
  generator would make differently (``make_vectors.check``, in-process and as a script);
- each structure both ways (STYLE.md item 4): for the header and every record of every
  accepted vector, JSON object -> bytes, bytes -> JSON object, and the size the spec
  gives; the bytes come from an independent packer written from the spec's field tables
  (``struct`` and ``zlib``, not construct).
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from promptus_codec import errors
from promptus_codec.container import codec, schema
from promptus_codec.container.jsonform import (
    file_to_json,
    header_to_json,
    json_to_bytes,
    json_to_header,
    json_to_record,
    record_to_json,
)
from promptus_codec.container.reader import PrxReader, read_prx

REPO = Path(__file__).resolve().parents[2]
CONFORMANCE = REPO / "conformance"
EXPECTED = CONFORMANCE / "expected"
VECTORS = CONFORMANCE / "vectors"
ACCEPTED_GROUPS = ("valid", "uncommon")


def _load_make_vectors():
    spec = importlib.util.spec_from_file_location("make_vectors", CONFORMANCE / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_vectors", module)
    spec.loader.exec_module(module)
    return module


make_vectors = _load_make_vectors()

# Known container bugs, reported to the container's owner; strict, so a fix is noticed and
# the mark goes with it.
XFAIL_ERROR: dict[str, str] = {}
XFAIL_REBUILD: dict[str, str] = {}
# Vectors a 1.0 writer cannot write back as they are: the reader keeps no header body
# bytes of a later minor version (§3.2, §10). Writing the JSON must then either refuse
# or give the same bytes, never a 1.1 header without its 1.1 fields; written as 1.0, the
# file becomes the vector named here.
NOT_WRITABLE = {"minor_version_extension": "minimal"}
# Vectors a conforming writer rewrites as another vector: the reader drops what differs.
REWRITTEN_AS = {"padding_nonzero": "padding"}  # §6.7: filler is ignored, and written as zeros


def _expected(name: str) -> dict:
    return json.loads((EXPECTED / f"{name}.json").read_text())


def _names(invalid: bool) -> list[str]:
    return sorted(p.stem for p in EXPECTED.glob("*.json") if ("error" in json.loads(p.read_text())) == invalid)


def _params(names: list[str], xfails: dict[str, str]) -> list:
    return [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=xfails[n])) if n in xfails else n for n in names
    ]


ACCEPTED = _names(invalid=False)
INVALID = _names(invalid=True)


def _vector(name: str, groups: tuple[str, ...]) -> bytes:
    """The vector's bytes; fails (never skips) when it is missing or in the wrong group."""
    found = sorted(VECTORS.glob(f"*/{name}.prx"))
    assert found, f"expected/{name}.json has no vector: vectors/*/{name}.prx is missing"
    assert len(found) == 1, f"{name}.prx is in more than one group: {found}"
    assert found[0].parent.name in groups, f"{name}.prx is in {found[0].parent.name}/, expected one of {groups}"
    return found[0].read_bytes()


# ---------------------------------------------------------------------------
# The suite's layout
# ---------------------------------------------------------------------------


def test_suite_has_every_group():
    assert len(ACCEPTED) >= 10 and len(INVALID) >= 20
    for group in ("valid", "uncommon", "invalid"):
        assert any((VECTORS / group).glob("*.prx")), f"no vectors in {group}/"


def test_every_vector_has_expected_json():
    on_disk = sorted(p.stem for p in VECTORS.glob("*/*.prx"))
    assert on_disk == sorted(ACCEPTED + INVALID)


def test_catalogue_has_one_line_per_vector():
    rows = [line for line in (CONFORMANCE / "README.md").read_text().splitlines() if line.startswith("| `")]
    catalogued = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 5, row
        name, group, tests, section, made = cells
        assert name.strip("`") not in catalogued, f"{name} catalogued twice"
        assert tests and made and re.search(r"§\d", section), row
        catalogued[name.strip("`")] = group
    assert sorted(catalogued) == sorted(ACCEPTED + INVALID)
    for name, group in catalogued.items():
        assert (VECTORS / group / f"{name}.prx").is_file(), f"{name} is catalogued in {group}"


def test_generator_reports_no_differences():
    assert make_vectors.check() == []


def test_generator_check_mode_exits_0():
    result = subprocess.run(
        [sys.executable, str(CONFORMANCE / "make_vectors.py")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generator_check_mode_finds_missing_changed_and_stray_files(tmp_path):
    shutil.copy(CONFORMANCE / "README.md", tmp_path / "README.md")
    assert "missing    vectors/valid/minimal.prx" in make_vectors.regenerate(tmp_path)
    assert make_vectors.check(tmp_path) == []
    (tmp_path / "vectors" / "valid" / "minimal.prx").unlink()
    typical = tmp_path / "expected" / "typical.json"
    typical.write_text(typical.read_text().replace('"frame_count": 13', '"frame_count": 14', 1))
    (tmp_path / "vectors" / "invalid" / "stray.prx").write_bytes(b"")
    assert make_vectors.check(tmp_path) == [
        "missing    vectors/valid/minimal.prx",
        "differs    expected/typical.json",
        "unexpected vectors/invalid/stray.prx",
    ]
    assert make_vectors.main(["--root", str(tmp_path)]) == 1
    make_vectors.regenerate(tmp_path)
    assert make_vectors.check(tmp_path) == []
    assert not (tmp_path / "vectors" / "invalid" / "stray.prx").exists()


# ---------------------------------------------------------------------------
# Valid and uncommon vectors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_vector_parses_to_expected_json(name):
    data = _vector(name, ACCEPTED_GROUPS)
    prx = read_prx(io.BytesIO(data), strict=True)
    assert file_to_json(prx) == _expected(name)
    assert prx.truncation is None and prx.end is not None and prx.size == len(data)
    lenient = read_prx(io.BytesIO(data), strict=False)
    assert file_to_json(lenient) == _expected(name)


@pytest.mark.parametrize("name", _params(ACCEPTED, XFAIL_REBUILD))
def test_accepted_vector_rebuilds_from_json(name):
    data = _vector(REWRITTEN_AS.get(name, name), ACCEPTED_GROUPS)
    doc = _expected(name)
    if name in NOT_WRITABLE:
        try:
            rebuilt = json_to_bytes(doc)
        except errors.ForbiddenValueError:
            rebuilt = None
        assert rebuilt in (None, data), "a minor_version 1 header was written without its 1.1 body bytes"
        doc["header"]["minor_version"] = 0
        data = _vector(NOT_WRITABLE[name], ACCEPTED_GROUPS)
    assert json_to_bytes(doc) == data
    assert json_to_bytes(json.loads(json.dumps(doc))) == data


def test_unknown_ancillary_record_is_skipped_and_kept():
    records = _expected("unknown_ancillary")["records"]
    unknown = [r for r in records if r["type"] == "Unknown"]
    assert unknown == [{"type": "Unknown", "record_type": 0x8ABC, "payload": b"future ancillary data".hex()}]
    assert [r["type"] for r in records] == ["Scene", "Keyframe", "Unknown", "Keyframe", "End"]


def test_minor_version_extension_is_read_by_a_1_0_reader():
    data = _vector("minor_version_extension", ACCEPTED_GROUPS)
    header_length = int.from_bytes(data[12:16], "little")
    assert data[8:10] == b"\x01\x01" and header_length == schema.HEADER_BODY_V1_SIZE + len("promptus-conformance") + 8
    prx = read_prx(io.BytesIO(data))
    assert prx.header.minor_version == 1
    assert file_to_json(prx)["header"] == {**_expected("minimal")["header"], "minor_version": 1}
    assert [record_to_json(r) for r in prx.records] == _expected("minimal")["records"]


# ---------------------------------------------------------------------------
# Invalid vectors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", _params(INVALID, XFAIL_ERROR))
def test_invalid_vector_raises_its_error(name):
    data = _vector(name, ("invalid",))
    doc = _expected(name)
    error = getattr(errors, doc["error"])
    assert issubclass(error, errors.PrxError)
    with pytest.raises(errors.PrxError) as info:
        read_prx(io.BytesIO(data), strict=True)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert info.value.offset == doc["offset"], str(info.value)


@pytest.mark.parametrize("name", _params(INVALID, XFAIL_ERROR))
def test_invalid_vector_in_non_strict_mode(name):
    """Only a truncated stream reads without error when not strict; it says where it stops."""
    data = _vector(name, ("invalid",))
    doc = _expected(name)
    if "non_strict" in doc:
        prx = read_prx(io.BytesIO(data), strict=False)
        assert file_to_json(prx)["truncation"] == doc["non_strict"]["truncation"]
        assert prx.end is None
    else:
        with pytest.raises(errors.PrxError) as info:
            read_prx(io.BytesIO(data), strict=False)
        assert type(info.value).__name__ == doc["error"]


@pytest.mark.parametrize("name", ["minimal", "typical", "multi_scene", "unknown_ancillary", "recon_thumbnails"])
def test_every_cut_of_a_vector_is_truncated(name):
    """A valid file cut at any byte raises TruncatedError (strict) and nothing else."""
    data = _vector(name, ACCEPTED_GROUPS)
    header_size = len(codec.header_to_bytes(json_to_header(_expected(name)["header"])))
    for cut in range(len(data)):
        with pytest.raises(errors.TruncatedError):
            read_prx(io.BytesIO(data[:cut]), strict=True)
        if cut >= header_size:
            lenient = read_prx(io.BytesIO(data[:cut]), strict=False)
            assert lenient.truncation is not None and lenient.truncation.offset <= cut


# ---------------------------------------------------------------------------
# Each structure both ways, against a packer written from the spec's tables
# ---------------------------------------------------------------------------


def _f32(text: str) -> bytes:
    value = float.fromhex(text)
    return struct.pack("<f", value) if not math.isnan(value) else b"\x00\x00\xc0\x7f"


def _u(fmt: str, *values) -> bytes:
    return struct.pack("<" + fmt, *values)


def spec_header(doc: dict) -> bytes:
    """§3: preamble u(8)x8 signature, u8 major, u8 minor, u16 flags, u32 header_length; body; u32 CRC."""
    name = doc["model_name"].encode("utf-8")
    rect = lambda r: _u("4H", r["x"], r["y"], r["width"], r["height"])  # noqa: E731
    body = (
        _u("4H", doc["coded_width"], doc["coded_height"], doc["source_width"], doc["source_height"])
        + _u("B", doc["fit_mode"])
        + rect(doc["source_rect"])
        + rect(doc["coded_rect"])
        + _u("3I", doc["frame_rate_num"], doc["frame_rate_den"], doc["frame_count"])
        + _u(
            "5H", *(doc[k] for k in ("prompt_tokens", "prompt_dim", "latent_channels", "latent_height", "latent_width"))
        )
        + _u("IBBH", doc["noise_seed"], doc["noise_generator"], doc["prediction_type"], doc["timestep"])
        + _f32(doc["latent_weight"])
        + _f32(doc["noise_weight"])
        + _f32(doc["alpha_cumprod"])
        + bytes.fromhex(doc["denoiser_sha256"] + doc["decoder_sha256"] + doc["encoder_sha256"])
        + _u("B", len(name))
        + name
    )
    preamble = b"\x8bPRX\r\n\x1a\n" + _u("BBHI", doc["major_version"], doc["minor_version"], doc["flags"], len(body))
    return preamble + body + _u("I", zlib.crc32(preamble + body))


def spec_payload(doc: dict) -> bytes:
    """§6: the payload of one record, field by field."""
    kind = doc["type"]
    if kind == "Scene":
        return (
            _u("IB", doc["first_frame"], doc["latent_format"])
            + _f32(doc["latent_scale"])
            + bytes.fromhex(doc["latent"]["hex"])
        )
    if kind == "Keyframe":
        fixed = _u("IHB", doc["frame_index"], doc["rank"], doc["quant_scheme"])
        scales = b"".join(_f32(doc[k]) for k in ("u_scale", "u_zero_point", "v_scale", "v_zero_point"))
        return fixed + scales + bytes.fromhex(doc["u"]["hex"]) + bytes.fromhex(doc["v"]["hex"])
    if kind == "End":
        return _u("IIIQ", doc["frame_count"], doc["scene_count"], doc["keyframe_count"], doc["seek_index_offset"])
    if kind == "EncoderSettings":
        return json.dumps(doc["settings_json"], sort_keys=True, separators=(",", ":")).encode("utf-8")
    if kind == "SeekIndex":
        return _u("I", doc["entry_count"]) + b"".join(
            _u("IQ", e["frame_index"], e["byte_offset"]) for e in doc["entries"]
        )
    if kind == "Quality":
        return _u("II", doc["first_frame"], doc["frame_count"]) + b"".join(
            _f32(x) for x in doc["psnr_db"] + doc["loss"]
        )
    if kind == "Padding":
        return bytes(doc["record_length"])  # §6.7: a writer fills it with 0x00 bytes
    if kind == "ReconThumbnail":
        assert doc["luma"]["dtype"] == "|u1" and doc["luma"]["shape"] == [
            doc["thumbnail_height"],
            doc["thumbnail_width"],
        ]
        return _u("IHH", doc["frame_index"], doc["thumbnail_width"], doc["thumbnail_height"]) + bytes.fromhex(
            doc["luma"]["hex"]
        )
    assert kind == "Unknown"
    return bytes.fromhex(doc["payload"])


def spec_record(doc: dict) -> bytes:
    """§4.1: u16 record_type, u32 record_length, payload, u32 CRC of all before it."""
    payload = spec_payload(doc)
    prefix = _u("HI", doc["record_type"], len(payload))
    return prefix + payload + _u("I", zlib.crc32(prefix + payload))


def spec_size(doc: dict, header: dict) -> int:
    """A record's framed size from the spec's formulas (§4.1, §6)."""
    m, n = header["prompt_tokens"], header["prompt_dim"]
    elements = header["latent_channels"] * header["latent_height"] * header["latent_width"]
    kind = doc["type"]
    payload = {
        "Scene": lambda: 9 + elements * {1: 4, 2: 2, 3: 1}[doc["latent_format"]],
        "Keyframe": lambda: 23 + doc["rank"] * (m + n),
        "End": lambda: 20,
        "EncoderSettings": lambda: len(spec_payload(doc)),
        "SeekIndex": lambda: 4 + 12 * doc["entry_count"],
        "Quality": lambda: 8 + 8 * doc["frame_count"],
        "Padding": lambda: doc["record_length"],
        "ReconThumbnail": lambda: 8 + doc["thumbnail_width"] * doc["thumbnail_height"],
        "Unknown": lambda: len(doc["payload"]) // 2,
    }[kind]()
    return 6 + payload + 4


def both_ways(build, parse, obj, data: bytes, size: int) -> None:
    """build(obj) == data, parse(data) == obj, len(data) == size (construct's ``common``)."""
    assert build(obj) == data
    assert parse(data) == obj
    assert len(data) == size


def _parse_record(data: bytes, header) -> dict:
    prefix = schema.record_prefix.parse(data[: schema.RECORD_PREFIX_SIZE])
    assert prefix.record_length == len(data) - schema.RECORD_PREFIX_SIZE - schema.RECORD_CRC_SIZE
    assert int.from_bytes(data[-4:], "little") == codec.crc32(data[:-4])
    return record_to_json(codec.record_from_payload(prefix.record_type, data[6:-4], header, 0))


@pytest.mark.parametrize("name", ACCEPTED)
def test_header_both_ways(name):
    doc = _expected(name)["header"]
    if name in NOT_WRITABLE:  # the file's header parses to doc; a 1.0 writer writes it as 1.0
        assert header_to_json(PrxReader(io.BytesIO(_vector(name, ACCEPTED_GROUPS))).header) == doc
        doc = {**doc, "minor_version": 0}
        name = NOT_WRITABLE[name]
    data = spec_header(doc)
    both_ways(
        lambda o: codec.header_to_bytes(json_to_header(o)),
        lambda d: header_to_json(PrxReader(io.BytesIO(d)).header),
        doc,
        data,
        16 + schema.HEADER_BODY_V1_SIZE + len(doc["model_name"].encode("utf-8")) + 4,
    )
    assert _vector(name, ACCEPTED_GROUPS).startswith(data)


@pytest.mark.parametrize("name", ACCEPTED)
def test_records_both_ways(name):
    expected = _expected(name)
    header = json_to_header(expected["header"])
    data = _vector(REWRITTEN_AS.get(name, name), ACCEPTED_GROUPS)
    position = len(data) - sum(spec_size(r, expected["header"]) for r in expected["records"])
    for obj in expected["records"]:
        framed = spec_record(obj)
        both_ways(
            lambda o: codec.record_to_bytes(json_to_record(o), header),
            lambda d: _parse_record(d, header),
            obj,
            framed,
            spec_size(obj, expected["header"]),
        )
        assert data[position : position + len(framed)] == framed, f"{obj['type']} at byte {position}"
        position += len(framed)
    assert position == len(data)


def test_both_ways_covers_every_record_type():
    seen = {r["type"] for name in ACCEPTED for r in _expected(name)["records"]}
    assert seen == {
        "Scene",
        "Keyframe",
        "End",
        "EncoderSettings",
        "SeekIndex",
        "Quality",
        "Padding",
        "ReconThumbnail",
        "Unknown",
    }
    formats = {r["latent_format"] for name in ACCEPTED for r in _expected(name)["records"] if r["type"] == "Scene"}
    assert formats == {1, 2, 3}


def test_json_keys_are_the_spec_field_names():
    """Header and payload keys are schema.py's construct field names (= format_spec.md's)."""

    def names(layout) -> set[str]:
        return {s.name for s in layout.subcons} - {"signature", "header_length"}

    doc = _expected("typical")
    assert set(doc["header"]) == names(schema.header_preamble) | names(schema.header_body)
    layouts = {
        "Scene": schema.scene_payload,
        "Keyframe": schema.keyframe_payload,
        "End": schema.end_payload,
        "EncoderSettings": schema.encoder_settings_payload,
        "SeekIndex": schema.seek_index_payload,
        "Quality": schema.quality_payload,
    }
    for record in doc["records"]:
        assert set(record) == {"type", "record_type"} | names(layouts[record["type"]])
    for record in _expected("recon_thumbnails")["records"]:
        if record["type"] == "ReconThumbnail":
            assert set(record) == {"type", "record_type"} | names(schema.recon_thumbnail_payload)
    for record in _expected("padding")["records"]:  # §6.7 names no field: the filler is record_length bytes
        if record["type"] == "Padding":
            assert set(record) == {"type", "record_type", "record_length"}


def _appendix_a_hexdump() -> bytes:
    text = (REPO / "format_spec.md").read_text()
    appendix = text[text.index("## Appendix A") :]
    dump = appendix[appendix.index("```") + 3 :]
    dump = dump[: dump.index("```")]
    data = b""
    for line in dump.strip().splitlines():
        offset, rest = line.split(": ", 1)
        assert int(offset, 16) == len(data), line
        data += bytes.fromhex(rest[:40].replace(" ", ""))
    return data


def test_spec_appendix_a_is_the_vector():
    """format_spec.md's annotated example is the spec_appendix_a vector, byte for byte."""
    assert _appendix_a_hexdump() == _vector("spec_appendix_a", ("valid",))


def test_jsonform_does_not_import_torch():
    code = "import sys, promptus_codec.container.jsonform; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0
