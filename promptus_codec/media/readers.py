"""Frame readers: one :class:`VideoSource` per input, streaming RGB uint8 (H, W, 3) frames.

``open_video`` picks the reader from the path::

    "-"            y4m on stdin (PyAV's yuv4mpegpipe demuxer)
    a folder       PNG / JPEG frames, in natural name order (frame_2 before frame_10)
    any file       whatever FFmpeg can demux: mp4, mkv, mov, webm, y4m, ...

Frames are decoded one at a time; a reader never holds the whole video. Every problem
with the input is raised as one-line :class:`MediaError`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from fractions import Fraction

import numpy as np

from promptus_codec.errors import MediaError, require

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_FOLDER_FPS = Fraction(30)


def _reason(exc: BaseException) -> str:
    """An FFmpeg error as a short one-line reason."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


class VideoSource:
    """An input video: ``width``, ``height``, ``frame_rate`` (Fraction), ``frame_count``
    (int, or None when the container does not say) and iteration over RGB uint8
    (H, W, 3) frames. Use as a context manager, or call :meth:`close`.

    Iterating raises MediaError("<name> has no frames") when the video yields none.
    """

    def __init__(self, name: str, width: int, height: int, frame_rate: Fraction, frame_count: int | None):
        self.name = name
        self.width = width
        self.height = height
        self.frame_rate = frame_rate
        self.frame_count = frame_count

    def _frames(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[np.ndarray]:
        count = 0
        for frame in self._frames():
            count += 1
            yield frame  # (H, W, 3) uint8
        if count == 0:
            raise MediaError(f"{self.name} has no frames")

    def close(self) -> None:
        pass

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, {self.width}x{self.height}, "
            f"{self.frame_rate} fps, {self.frame_count} frames)"
        )


class PyAVSource(VideoSource):
    """A video file (or y4m stream) demuxed and decoded by FFmpeg through PyAV."""

    def __init__(self, name: str, file, fps: Fraction | None = None, format: str | None = None):
        av = require("av", "media")
        if isinstance(file, (str, os.PathLike)) and os.path.isfile(file) and os.path.getsize(file) == 0:
            raise MediaError(f"cannot read {name} as video: the file is empty (0 bytes)")
        try:
            self._container = av.open(file, "r", format=format)
        except av.InvalidDataError as exc:
            raise MediaError(
                f"cannot read {name} as video: {_reason(exc)} (not a video, or an incomplete one)"
            ) from None
        except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise MediaError(f"cannot read {name} as video: {_reason(exc)}") from None
        streams = self._container.streams.video
        if not streams:
            self._fail(f"{name} has no video stream")
        if streams[0].codec_context is None:  # unknown codec, or its parameters are lost
            self._fail(f"cannot read {name} as video: no decoder for its video stream")
        self._stream = stream = streams[0]
        stream.thread_type = "AUTO"
        rate = fps or stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or stream.width <= 0 or stream.height <= 0:
            self._fail(f"cannot read {name} as video: no frame size or frame rate")
        frame_count = stream.frames or None  # 0 = the container does not say
        super().__init__(name, stream.width, stream.height, Fraction(rate), frame_count)

    def _fail(self, message: str):
        self._container.close()
        raise MediaError(message)

    def _frames(self) -> Iterator[np.ndarray]:
        av = require("av", "media")
        try:
            for frame in self._container.decode(self._stream):
                yield frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8
        except av.FFmpegError as exc:
            raise MediaError(f"cannot read {self.name} as video: {_reason(exc)}") from None

    def close(self) -> None:
        self._container.close()


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_image(path: str) -> np.ndarray:
    """Decode one PNG or JPEG file -> RGB uint8 (H, W, 3)."""
    av = require("av", "media")
    try:
        with av.open(path, "r") as container:
            for frame in container.decode(video=0):
                return frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot read {path} as an image: {_reason(exc)}") from None
    raise MediaError(f"cannot read {path} as an image: no picture in it")


class ImageFolderSource(VideoSource):
    """A folder of PNG / JPEG frames of one size, in natural name order."""

    def __init__(self, folder: str, fps: Fraction | None = None):
        names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES)]
        if not names:
            raise MediaError(f"{folder} has no PNG or JPEG frames")
        self._paths = [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]
        first = read_image(self._paths[0])
        height, width = first.shape[:2]
        rate = Fraction(fps or DEFAULT_FOLDER_FPS)
        super().__init__(folder, width, height, rate, len(self._paths))

    def _frames(self) -> Iterator[np.ndarray]:
        for path in self._paths:
            frame = read_image(path)  # (H, W, 3) uint8
            if frame.shape[:2] != (self.height, self.width):
                raise MediaError(
                    f"{path} is {frame.shape[1]}x{frame.shape[0]} but the first frame is "
                    f"{self.width}x{self.height}: all frames in a folder must have one size"
                )
            yield frame


def open_video(path: str, fps: Fraction | None = None) -> VideoSource:
    """Open a video for reading (see the module docstring for what ``path`` may be).

    ``fps`` overrides the frame rate the source states (a folder's default is 30).
    """
    if fps is not None and fps <= 0:
        raise MediaError(f"frame rate {fps} is not positive")
    fps = Fraction(fps).limit_denominator(1_000_000) if fps is not None else None
    if path == "-":
        return PyAVSource("stdin", sys.stdin.buffer, fps, format="yuv4mpegpipe")
    if os.path.isdir(path):
        return ImageFolderSource(path, fps)
    if not os.path.exists(path):
        raise MediaError(f"no such file: {path}")
    return PyAVSource(path, path, fps)
