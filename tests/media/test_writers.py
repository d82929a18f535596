"""Writers: y4m (bit-exact planes), mp4, PNG folder; atomic output; writer choice."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from .media_helpers import av, decoded_planes, gradient_frames, noise_frames

from promptus_codec.errors import MediaError
from promptus_codec.media.color import rgb_to_yuv
from promptus_codec.media.readers import read_image
from promptus_codec.media.writers import (
    Mp4Writer,
    PngDirWriter,
    Y4MWriter,
    open_writer,
)


def test_rgb_to_yuv_known_colours():
    black, white, red, green, blue = [0, 0, 0], [255] * 3, [255, 0, 0], [0, 255, 0], [0, 0, 255]
    colours = np.array([[black, white, red, green, blue]], np.uint8)  # (1, 5, 3)
    y, cb, cr = rgb_to_yuv(colours, "444")  # each (1, 5)
    assert y.tolist() == [[16, 235, 81, 145, 41]]
    assert cb.tolist() == [[128, 128, 90, 54, 240]]
    assert cr.tolist() == [[128, 128, 240, 34, 110]]


def test_rgb_to_yuv_420_shapes_and_averaging():
    frame = np.zeros((5, 7, 3), np.uint8)
    frame[:, 0::2] = (255, 0, 0)  # red and black columns alternate
    y, cb, cr = rgb_to_yuv(frame, "420")
    assert y.shape == (5, 7) and cb.shape == (3, 4) and cr.shape == (3, 4)
    assert (cr[:, :3] == 184).all()  # mean of red's 240 and black's 128
    assert (cr[:, 3] == 240).all()  # odd last column: red repeated
    with pytest.raises(MediaError, match="unknown chroma '422'"):
        rgb_to_yuv(frame, "422")


@pytest.mark.parametrize("chroma, size", [("420", (64, 48)), ("444", (64, 48)), ("420", (65, 47))])
def test_y4m_reads_back_bit_exact(tmp_path, chroma, size):
    width, height = size
    frames = noise_frames(3, width, height)
    path = tmp_path / "out.y4m"
    with Y4MWriter(str(path), width, height, Fraction(25), chroma=chroma) as writer:
        for frame in frames:
            writer.write(frame)
    tag = {"420": b"C420jpeg", "444": b"C444"}[chroma]
    header = path.read_bytes().split(b"\n", 1)[0]
    assert header.startswith(b"YUV4MPEG2 W%d H%d F25:1 " % (width, height)) and tag in header
    planes = decoded_planes(path)
    assert len(planes) == 3
    for got, frame in zip(planes, frames):
        for got_plane, want_plane in zip(got, rgb_to_yuv(frame, chroma)):
            assert np.array_equal(got_plane, want_plane)
    assert os.listdir(tmp_path) == ["out.y4m"]  # no temporary file left


STDOUT_SCRIPT = """
import numpy as np
from fractions import Fraction
from promptus_codec.media.writers import open_writer
frames = (np.arange(2 * 48 * 64 * 3) % 251).astype(np.uint8).reshape(2, 48, 64, 3)
with open_writer("-", 64, 48, Fraction(24)) as writer:
    for frame in frames:
        writer.write(frame)
"""


def test_y4m_to_stdout_matches_file(tmp_path):
    frames = (np.arange(2 * 48 * 64 * 3) % 251).astype(np.uint8).reshape(2, 48, 64, 3)
    path = tmp_path / "file.y4m"
    with Y4MWriter(str(path), 64, 48, Fraction(24)) as writer:
        for frame in frames:
            writer.write(frame)
    out = subprocess.run([sys.executable, "-c", STDOUT_SCRIPT], capture_output=True, check=True)
    assert out.stdout == path.read_bytes()
    assert out.stdout.count(b"FRAME\n") == 2


def test_mp4(tmp_path):
    frames = gradient_frames(12)
    path = tmp_path / "out.mp4"
    with Mp4Writer(str(path), 64, 48, Fraction(24000, 1001), crf=18) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.frames_written == 12
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.format.name) == ("h264", "yuv420p")
        assert (stream.width, stream.height, stream.frames) == (64, 48, 12)
        assert stream.average_rate == Fraction(24000, 1001)
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == 12
    error = np.mean([np.abs(d.astype(int) - f).mean() for d, f in zip(decoded, frames)])
    assert error < 3.0


def test_mp4_crf_changes_size(tmp_path):
    sizes = {}
    for crf in (0, 40):
        path = tmp_path / f"crf{crf}.mp4"
        with Mp4Writer(str(path), 64, 48, Fraction(25), crf=crf) as writer:
            for frame in noise_frames(3):
                writer.write(frame)
        sizes[crf] = path.stat().st_size
    assert sizes[0] > 2 * sizes[40]


def test_mp4_rejects_odd_size_and_bad_crf(tmp_path):
    with pytest.raises(MediaError, match="even width and height, got 65x48"):
        Mp4Writer(str(tmp_path / "a.mp4"), 65, 48, Fraction(25))
    with pytest.raises(MediaError, match="crf 60"):
        Mp4Writer(str(tmp_path / "a.mp4"), 64, 48, Fraction(25), crf=60)


def test_png_folder_round_trip(tmp_path):
    frames = noise_frames(3)
    folder = tmp_path / "frames"
    with PngDirWriter(str(folder)) as writer:
        for frame in frames:
            writer.write(frame)
    assert sorted(os.listdir(folder)) == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    assert (folder / "frame_00000.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for i, frame in enumerate(frames):
        assert np.array_equal(read_image(str(folder / f"frame_{i:05d}.png")), frame)
    assert os.listdir(tmp_path) == ["frames"]


def test_png_folder_refuses_non_empty_folder(tmp_path):
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "keep.txt").write_text("mine")
    with pytest.raises(MediaError, match="already exists and is not an empty folder"):
        PngDirWriter(str(tmp_path / "frames"))
    assert os.listdir(tmp_path / "frames") == ["keep.txt"]


def test_png_folder_fills_an_empty_folder(tmp_path):
    (tmp_path / "frames").mkdir()
    with open_writer(str(tmp_path / "frames") + "/", 64, 48, Fraction(25)) as writer:
        writer.write(gradient_frames(1)[0])
    assert os.listdir(tmp_path / "frames") == ["frame_00000.png"]


class Boom(Exception):
    pass


@pytest.mark.parametrize(
    "make",
    [
        lambda p: Mp4Writer(str(p / "out.mp4"), 64, 48, Fraction(25)),
        lambda p: Y4MWriter(str(p / "out.mp4"), 64, 48, Fraction(25)),
        lambda p: PngDirWriter(str(p / "out.mp4")),
    ],
    ids=["mp4", "y4m", "png"],
)
def test_exception_leaves_target_untouched(tmp_path, make):
    with pytest.raises(Boom):
        with make(tmp_path) as writer:
            for frame in gradient_frames(3):
                writer.write(frame)
            raise Boom
    assert os.listdir(tmp_path) == []

    (tmp_path / "out.mp4").write_bytes(b"old")
    if isinstance(writer, PngDirWriter):
        return  # a folder writer refuses an existing file up front
    with pytest.raises(Boom):
        with make(tmp_path) as writer:
            writer.write(gradient_frames(1)[0])
            raise Boom
    assert os.listdir(tmp_path) == ["out.mp4"]
    assert (tmp_path / "out.mp4").read_bytes() == b"old"


def test_successful_write_replaces_target(tmp_path):
    (tmp_path / "out.y4m").write_bytes(b"old")
    with Y4MWriter(str(tmp_path / "out.y4m"), 64, 48, Fraction(25)) as writer:
        writer.write(gradient_frames(1)[0])
    assert (tmp_path / "out.y4m").read_bytes().startswith(b"YUV4MPEG2 W64 H48")


def test_writer_errors(tmp_path):
    with pytest.raises(MediaError, match="unknown chroma '422': choose one of 420, 444"):
        Y4MWriter(str(tmp_path / "a.y4m"), 64, 48, Fraction(25), chroma="422")
    with pytest.raises(MediaError, match="no frames were written"):
        with Mp4Writer(str(tmp_path / "a.mp4"), 64, 48, Fraction(25)):
            pass
    assert os.listdir(tmp_path) == []
    with pytest.raises(MediaError, match=r"expected \(48, 64, 3\) uint8"):
        with Y4MWriter(str(tmp_path / "a.y4m"), 64, 48, Fraction(25)) as writer:
            writer.write(np.zeros((48, 64, 3), np.float32))
    assert os.listdir(tmp_path) == []
    with pytest.raises(MediaError, match="does not exist"):
        Y4MWriter(str(tmp_path / "nope" / "a.y4m"), 64, 48, Fraction(25))
    with pytest.raises(MediaError, match="it is a folder"):
        Mp4Writer(str(tmp_path), 64, 48, Fraction(25))
    with pytest.raises(MediaError, match="not positive"):
        Y4MWriter(str(tmp_path / "a.y4m"), 64, 48, Fraction(0))


@pytest.mark.parametrize(
    "name, kind",
    [
        ("-", Y4MWriter),
        ("a.y4m", Y4MWriter),
        ("a.MP4", Mp4Writer),
        ("frames", PngDirWriter),
        ("frames.d/", PngDirWriter),
    ],
)
def test_open_writer_picks_by_name(tmp_path, name, kind):
    path = name if name == "-" else str(tmp_path / name) + ("/" if name.endswith("/") else "")
    writer = open_writer(path, 64, 48, Fraction(25))
    assert type(writer) is kind
    writer.abort()
    assert os.listdir(tmp_path) == []  # nothing is created before the first frame


def test_open_writer_unknown_suffix(tmp_path):
    with pytest.raises(MediaError, match=r"unknown suffix '\.avi'; use \.y4m, \.mp4"):
        open_writer(str(tmp_path / "a.avi"), 64, 48, Fraction(25))
