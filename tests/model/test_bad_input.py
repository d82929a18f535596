"""Bad input on real material: the README's "Bad input" table, row by row.

Each case runs one `promptus` command and checks its exit status, its one-line message, that
no traceback escaped, and what is left on disk: nothing for a refusal (no output, no
``.partial``, no temporary, no folder made), and only complete files where the command
succeeds with a warning. The mp4 cases use ../shared/data/sky_512.mp4 when it is present
(its index, the ``moov`` box, sits at the end), else a synthetic mp4 of the same layout.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

torch = pytest.importorskip("torch")
av = pytest.importorskip("av")

from click.testing import CliRunner  # noqa: E402

from promptus_codec.cli import main  # noqa: E402
from promptus_codec.container.reader import read_prx  # noqa: E402

from .streams import FAST_ENCODE as FAST  # noqa: E402
from .streams import make_stream, write_clip  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
SKY = ROOT.parent / "shared" / "data" / "sky_512.mp4"
SIZE = ["--size", "64x64"]
LAYOUT = [[(0, 4), (4, 4), (8, 4), (12, 4)], [(13, 4), (16, 4)]]  # the decode cases' stream: 17 frames, 2 scenes


def remux_faststart(source: pathlib.Path, target: pathlib.Path) -> None:
    """The same packets with the index (moov) first, as streaming-friendly mp4s have it."""
    with av.open(str(source)) as src, av.open(str(target), "w", options={"movflags": "faststart"}) as dst:
        video = src.streams.video[0]
        out = dst.add_stream_from_template(video)
        for packet in src.demux(video):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)


def frames_in(path: pathlib.Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture(scope="module")
def material(tmp_path_factory, tiny_model):
    """Every input file of the table, made once; the tests never write into this folder."""
    folder = tmp_path_factory.mktemp("material")
    files = {}
    mp4 = SKY
    if not SKY.is_file():
        mp4 = folder / "synthetic.mp4"
        write_clip(mp4, frames=141, size=(128, 128))
    data = mp4.read_bytes()
    assert data.find(b"moov") > data.find(b"mdat"), "the source mp4 should keep its index at the end"
    files["mp4 cut at 30%"] = folder / "cut30.mp4"
    files["mp4 cut at 30%"].write_bytes(data[: int(len(data) * 0.3)])
    remux_faststart(mp4, folder / "faststart.mp4")
    fast = (folder / "faststart.mp4").read_bytes()
    files["mp4 cut at 30%, index first"] = folder / "cut30-faststart.mp4"
    files["mp4 cut at 30%, index first"].write_bytes(fast[: int(len(fast) * 0.3)])
    files["empty .mp4"] = folder / "empty.mp4"
    files["empty .mp4"].write_bytes(b"")
    files["text .mp4"] = folder / "notes.mp4"
    files["text .mp4"].write_text("these are my notes, not a video\n" * 20)
    files["random bytes .mp4"] = folder / "random.mp4"
    files["random bytes .mp4"].write_bytes(np.random.default_rng(0).bytes(4000))
    files["y4m header, no frames"] = folder / "header-only.y4m"
    files["y4m header, no frames"].write_bytes(b"YUV4MPEG2 W64 H64 F30:1 Ip A1:1 C420jpeg\n")
    files["1-frame video"] = folder / "one.mp4"
    write_clip(files["1-frame video"], frames=1)
    files["16x16 video"] = folder / "16x16.mp4"
    write_clip(files["16x16 video"], frames=10, size=(16, 16))
    files["clip"] = folder / "clip.y4m"
    write_clip(files["clip"], frames=30)
    prx = folder / "s.prx"
    make_stream(prx, tiny_model, LAYOUT)
    stream = prx.read_bytes()
    files[".prx cut at half"] = folder / "half.prx"
    files[".prx cut at half"].write_bytes(stream[: len(stream) // 2])
    flipped = bytearray(stream)
    for i in range(len(stream) // 3, len(stream) // 3 + 8):
        flipped[i] ^= 0xFF
    files[".prx with flipped bytes"] = folder / "flipped.prx"
    files[".prx with flipped bytes"].write_bytes(bytes(flipped))
    files["random bytes .prx"] = folder / "random.prx"
    files["random bytes .prx"].write_bytes(np.random.default_rng(1).bytes(1000))
    for path in files.values():
        os.chmod(path, 0o444)  # an input that a command overwrote would fail loudly
    return files


@dataclass(frozen=True)
class Case:
    """One row: the command (INPUT and OUT are filled in), what it must print and leave behind."""

    args: tuple[str, ...]
    input: str | None  # a key of ``material``
    exit_code: int
    message: str  # must appear in the one line (the Error line, or the warning of a success)
    leaves: tuple[str, ...] = ()  # files the command leaves in the output folder (complete ones)
    extra: dict = field(default_factory=dict)


CASES = {
    "nonexistent input": Case(("encode", "INPUT", "-o", "OUT/o.prx", *SIZE), None, 1, "Error: no such file: "),
    "empty .mp4": Case(
        ("encode", "INPUT", "-o", "OUT/o.prx", *SIZE), "empty .mp4", 1, "as video: the file is empty (0 bytes)"
    ),
    "text .mp4": Case(
        ("encode", "INPUT", "-o", "OUT/o.prx", *SIZE),
        "text .mp4",
        1,
        "as video: Invalid data found when processing input (not a video, or an incomplete one)",
    ),
    "random bytes .mp4": Case(("encode", "INPUT", "-o", "OUT/o.prx", *SIZE), "random bytes .mp4", 1, "as video: "),
    "mp4 cut at 30%": Case(
        ("encode", "INPUT", "-o", "OUT/o.prx", *SIZE, "--rank", "1", "--interval", "60"),
        "mp4 cut at 30%",
        1,
        "(not a video, or an incomplete one)",
    ),
    "mp4 cut at 30%, index first": Case(
        ("encode", "INPUT", "-o", "OUT/o.prx", *SIZE, "--rank", "1", "--interval", "60"),
        "mp4 cut at 30%, index first",
        0,
        "promptus: warning: the input ended after",
        leaves=("o.prx",),
    ),
    "y4m header, no frames": Case(
        ("encode", "INPUT", "-o", "OUT/o.prx", *SIZE), "y4m header, no frames", 1, "has no frames"
    ),
    "1-frame video at 100k": Case(
        ("encode", "INPUT", "-o", "OUT/o.prx", *SIZE, "--bitrate", "100k"),
        "1-frame video",
        1,
        "100 kb/s cannot be reached for this clip: the reachable range is",
    ),
    "1-frame video at 1000k": Case(
        ("encode", "INPUT", "-o", "OUT/o.prx", *SIZE, "--bitrate", "1000k"),
        "1-frame video",
        0,
        "encoded 1 frame (64x64) into 1 keyframes",
        leaves=("o.prx",),
    ),
    "16x16 video": Case(
        ("encode", "INPUT", "-o", "OUT/o.prx", *SIZE, "--rank", "1", "--interval", "10"),
        "16x16 video",
        1,
        "the source video is 16x16, below the minimum of 64x64 pixels",
    ),
    "1k target": Case(
        ("encode", "INPUT", "-o", "OUT/o.prx", *SIZE, "--bitrate", "1k"),
        "clip",
        1,
        "1 kb/s cannot be reached for this clip: the reachable range is",
    ),
    "100000k target": Case(
        ("encode", "INPUT", "-o", "OUT/o.prx", *SIZE, "--bitrate", "100000k"),
        "clip",
        1,
        "100000 kb/s cannot be reached for this clip: the reachable range is",
    ),
    "output into a missing folder": Case(
        ("encode", "INPUT", "-o", "OUT/missing/o.prx", *SIZE, "--bitrate", "200k"), "clip", 1, "/missing does not exist"
    ),
    "output path equal to the input": Case(
        ("encode", "INPUT", "-o", "INPUT", *SIZE, "--bitrate", "200k"), "clip", 1, "it is the input"
    ),
    "decode of a .prx cut at half": Case(
        ("decode", "INPUT", "-o", "OUT/o.y4m", "-q"),
        ".prx cut at half",
        0,
        "warning: stream is truncated at byte",
        leaves=("o.y4m",),
    ),
    "decode of a .prx with flipped bytes": Case(
        ("decode", "INPUT", "-o", "OUT/o.y4m", "-q"), ".prx with flipped bytes", 1, "Error: record CRC-32 mismatch"
    ),
    "inspect of random bytes": Case(
        ("inspect", "INPUT"), "random bytes .prx", 1, "Error: not a .prx file: the signature is wrong (at byte 0)"
    ),
}


def command(case: Case, material, out: pathlib.Path) -> list[str]:
    source = str(material[case.input]) if case.input else str(out.parent / "nothing.mp4")
    args = [a.replace("INPUT", source).replace("OUT", str(out)) for a in case.args]
    return args + (FAST if args[0] == "encode" else [])


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(material, tmp_path, name):
    case = CASES[name]
    out = tmp_path / "out"
    out.mkdir()
    before = {p: p.read_bytes() for p in material.values()}
    result = CliRunner().invoke(main, command(case, material, out))
    assert result.exit_code == case.exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    if case.exit_code:
        assert lines == [lines[0]] and case.message in lines[0], result.output  # exactly one line
    else:
        assert [line for line in lines if case.message in line], result.output
        assert len(lines) <= 2, result.output  # the summary line and at most one warning
    assert sorted(p.name for p in out.iterdir()) == sorted(case.leaves)  # no .partial, no temporary, no folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert {p: p.read_bytes() for p in material.values()} == before  # no input was touched
    for leaf in case.leaves:  # what a success leaves is complete
        path = out / leaf
        if path.suffix == ".prx":
            assert read_prx(path).end is not None
        else:
            complete = read_prx(material[case.input], strict=False).truncation.frames_complete
            assert complete > 0 and frames_in(path) == complete  # every complete interval, nothing more


def test_truncated_mp4_encodes_the_frames_that_are_there(material, tmp_path):
    result = CliRunner().invoke(main, command(CASES["mp4 cut at 30%, index first"], material, tmp_path))
    assert result.exit_code == 0, result.output
    stated = frames_in(material["mp4 cut at 30%"].with_name("faststart.mp4"))
    got = read_prx(tmp_path / "o.prx").end.frame_count
    assert 0 < got < stated
    assert f"the input ended after {got} of the {stated} frames its container lists" in result.output


@pytest.mark.parametrize("name", ["output into a missing folder", "output path equal to the input"])
def test_bad_output_in_a_real_process(material, tmp_path, name):
    """The two cases that once ended in a traceback (missing folder) or a destroyed input (same path)."""
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *command(CASES[name], material, out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and CASES[name].message in done.stderr
    assert list(out.iterdir()) == []
