"""Readers: containers written here with PyAV, y4m on stdin, image folders, errors."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from .media_helpers import (
    SHARED_DATA,
    av,
    gradient_frames,
    noise_frames,
    write_image,
    write_video,
)

from promptus_codec.errors import MediaError
from promptus_codec.media.geometry import plan_geometry
from promptus_codec.media.readers import open_video
from promptus_codec.media.writers import Y4MWriter

# suffix, codec, pixel format, encoder options, worst mean abs error allowed (0 = lossless).
# Not float tolerances: the losses of the lossy codecs at these settings, in 8-bit levels.
CONTAINERS = [
    ("mp4", "libx264", "yuv420p", {"crf": "12"}, 3.0),
    ("mkv", "ffv1", "bgr0", {}, 0.0),  # lossless RGB: frames come back exactly
    ("webm", "libvpx-vp9", "yuv420p", {"crf": "10", "b": "0"}, 3.0),
    ("mov", "prores", "yuv422p10le", {}, 3.0),
]


@pytest.mark.parametrize("suffix, codec, pix_fmt, options, tolerance", CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_read_containers(tmp_path, suffix, codec, pix_fmt, options, tolerance):
    frames = gradient_frames(10)
    path = tmp_path / f"clip.{suffix}"
    write_video(path, frames, codec, pix_fmt, rate=Fraction(25), options=options)
    with open_video(str(path)) as video:
        assert (video.width, video.height, video.frame_rate) == (64, 48, Fraction(25))
        assert video.frame_count in (10, None)  # mkv and webm do not store a count
        decoded = list(video)
    assert len(decoded) == 10
    assert all(d.shape == (48, 64, 3) and d.dtype == np.uint8 for d in decoded)
    error = max(np.abs(d.astype(int) - f).mean() for d, f in zip(decoded, frames))
    assert error <= tolerance


def test_fps_overrides_the_source(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, gradient_frames(2), "libx264", "yuv420p", rate=Fraction(25))
    with open_video(str(path), fps=Fraction(30000, 1001)) as video:
        assert video.frame_rate == Fraction(30000, 1001)
    with pytest.raises(MediaError, match="frame rate 0 is not positive"):
        open_video(str(path), fps=0)


def test_iteration_streams(tmp_path):
    path = tmp_path / "clip.mkv"
    frames = noise_frames(4)
    write_video(path, frames, "ffv1", "bgr0")
    with open_video(str(path)) as video:
        it = iter(video)
        assert np.array_equal(next(it), frames[0])  # decoded on demand, one at a time
        assert np.array_equal(next(it), frames[1])


def write_y4m(path, frames, rate=Fraction(25)) -> None:
    height, width = frames[0].shape[:2]
    with Y4MWriter(str(path), width, height, rate, chroma="444") as writer:
        for frame in frames:
            writer.write(frame)


def test_read_y4m_file(tmp_path):
    frames = gradient_frames(5)
    write_y4m(tmp_path / "a.y4m", frames, Fraction(24000, 1001))
    with open_video(str(tmp_path / "a.y4m")) as video:
        assert (video.width, video.height, video.frame_rate) == (64, 48, Fraction(24000, 1001))
        decoded = list(video)
    assert len(decoded) == 5
    assert max(np.abs(d.astype(int) - f).max() for d, f in zip(decoded, frames)) <= 2  # 4:4:4


def test_read_y4m_from_stdin(tmp_path):
    write_y4m(tmp_path / "a.y4m", gradient_frames(7), Fraction(30))
    script = (
        "from promptus_codec.media.readers import open_video\n"
        "with open_video('-') as v:\n"
        "    print(v.width, v.height, v.frame_rate, sum(1 for _ in v))\n"
    )
    data = (tmp_path / "a.y4m").read_bytes()
    out = subprocess.run([sys.executable, "-c", script], input=data, capture_output=True, check=True)
    assert out.stdout.decode().split() == ["64", "48", "30", "7"]


def test_png_folder_in_natural_order(tmp_path):
    frames = noise_frames(3)
    for name, frame in zip(["f1.png", "f2.png", "f10.png"], frames):
        write_image(tmp_path / name, frame)
    (tmp_path / "notes.txt").write_text("not a frame")
    with open_video(str(tmp_path), fps=Fraction(12)) as video:
        assert (video.width, video.height, video.frame_rate, video.frame_count) == (64, 48, 12, 3)
        decoded = list(video)
    assert len(decoded) == 3
    for d, f in zip(decoded, frames):
        assert np.array_equal(d, f)


def test_jpeg_folder(tmp_path):
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
    for i, colour in enumerate(colours):
        frame = np.full((48, 64, 3), colour, np.uint8)
        write_image(tmp_path / f"frame_{i:03d}.jpg", frame, "mjpeg")
    with open_video(str(tmp_path)) as video:
        assert (video.frame_rate, video.frame_count) == (30, 3)  # a folder's default rate
        decoded = list(video)
    for d, colour in zip(decoded, colours):
        assert np.abs(d.astype(int) - colour).max() <= 3  # JPEG's loss on a flat colour, not float rounding


def test_mixed_size_folder(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((48, 64, 3), np.uint8))
    write_image(tmp_path / "b.png", np.zeros((32, 32, 3), np.uint8))
    with open_video(str(tmp_path)) as video:
        it = iter(video)
        assert next(it).shape == (48, 64, 3)
        with pytest.raises(MediaError, match=r"b\.png is 32x32 but the first frame is 64x48"):
            next(it)


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(MediaError, match="has no PNG or JPEG frames"):
        open_video(str(tmp_path))


def test_missing_file(tmp_path):
    path = str(tmp_path / "nothing.mp4")
    with pytest.raises(MediaError) as info:
        open_video(path)
    assert str(info.value) == f"no such file: {path}"


def test_corrupt_file(tmp_path):
    path = tmp_path / "junk.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(MediaError) as info:
        open_video(str(path))
    assert str(info.value).startswith(f"cannot read {path} as video: ")
    assert "\n" not in str(info.value)


def test_truncated_mp4(tmp_path):
    path = tmp_path / "cut.mp4"
    write_video(path, gradient_frames(5), "libx264", "yuv420p")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(MediaError, match="cut.mp4"):
        with open_video(str(path)) as video:
            list(video)


@pytest.mark.parametrize(
    "suffix, codec, pix_fmt",
    [("mp4", "libx264", "yuv420p"), ("mkv", "ffv1", "bgr0"), ("y4m", "rawvideo", "yuv420p")],
)
def test_cut_files_raise_only_media_error(tmp_path, suffix, codec, pix_fmt):
    whole = tmp_path / f"whole.{suffix}"
    write_video(whole, gradient_frames(3), codec, pix_fmt)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    for end in range(0, len(data), max(1, len(data) // 40)):
        cut.write_bytes(data[:end])
        try:
            with open_video(str(cut)) as video:
                frames = list(video)
        except MediaError:
            continue
        assert 1 <= len(frames) <= 3 and all(f.shape == (48, 64, 3) for f in frames)


def test_zero_frames(tmp_path):
    path = tmp_path / "empty.y4m"
    path.write_bytes(b"YUV4MPEG2 W64 H48 F25:1 C420jpeg\n")
    with open_video(str(path)) as video:
        assert (video.width, video.height) == (64, 48)
        with pytest.raises(MediaError) as info:
            list(video)
    assert str(info.value) == f"{path} has no frames"


def test_zero_frame_mkv(tmp_path):
    path = tmp_path / "empty.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "bgr0"
        container.start_encoding()
    with pytest.raises(MediaError, match="empty.mkv"):
        with open_video(str(path)) as video:
            list(video)


def test_no_video_stream(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        silence = np.zeros((1, 800), np.int16)  # (channels, samples)
        frame = av.AudioFrame.from_ndarray(silence, format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(MediaError) as info:
        open_video(str(path))
    assert str(info.value) == f"{path} has no video stream"


SKY = SHARED_DATA / "sky_512.mp4"


@pytest.mark.skipif(not SKY.exists(), reason="shared test clip sky_512.mp4 is absent")
def test_real_clip():
    with open_video(str(SKY)) as video:
        assert (video.width, video.height) == (512, 512)
        assert (video.frame_rate, video.frame_count) == (30, 141)
        count = 0
        for frame in video:
            assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8
            count += 1
    assert count == 141
    assert plan_geometry(video.width, video.height)[2].fit_mode == 0  # SCALE: coded as it is
