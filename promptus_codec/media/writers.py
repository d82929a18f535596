"""Frame writers: y4m (file or stdout), a folder of PNGs, H.264 mp4. All through PyAV.

Every writer takes RGB uint8 (H, W, 3) frames through ``write(frame)`` and is finished by
``close()`` or by leaving its ``with`` block. Output goes to a hidden temporary name
beside the target (``.NAME.XXXXXXXX.partial``, :class:`promptus_codec.fileio.TemporaryTarget`) and is
renamed onto the target only when
the writer closes cleanly; :meth:`FrameWriter.abort`, which ``with`` calls on an
exception, removes it and leaves the target untouched. y4m on stdout ("-") has no
temporary file.

y4m and mp4 frames are converted to Y'CbCr by :func:`promptus_codec.media.color.rgb_to_yuv`
(BT.601, limited range) and tagged as such; PNG frames are stored as RGB, losslessly.
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction

import numpy as np

from promptus_codec.errors import MediaError, require
from promptus_codec.fileio import TemporaryTarget
from promptus_codec.media.color import pix_fmt, rgb_to_yuv

BT601_COLORSPACE = 6  # AVCOL_SPC_SMPTE170M: the BT.601 matrix
LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG
PNG_PATTERN = "frame_%05d.png"  # frame_00000.png, frame_00001.png, ...


class FrameWriter:
    """Encode frames with one PyAV codec into one PyAV muxer, atomically.

    ``width`` / ``height`` of None are taken from the first frame. With
    ``folder_pattern`` the target is a folder that the muxer fills with files named
    by that printf pattern.
    """

    def __init__(
        self,
        path: str,
        width: int | None,
        height: int | None,
        frame_rate: Fraction,
        *,
        muxer: str,
        codec: str,
        pix_fmt: str,
        codec_options: dict[str, str] | None = None,
        muxer_options: dict[str, str] | None = None,
        folder_pattern: str | None = None,
    ):
        self._av = require("av", "media")
        self.path = path
        self.width, self.height = width, height
        self.frame_rate = Fraction(frame_rate)
        self.frames_written = 0
        self._spec = (muxer, codec, pix_fmt, codec_options or {}, muxer_options or {})
        self._pattern = folder_pattern
        self._as_folder = folder_pattern is not None
        self._container = None
        self._stream = None
        self._closed = False
        if self.frame_rate <= 0:
            raise MediaError(f"frame rate {frame_rate} is not positive")
        self._target = None if path == "-" else self._check_target()
        self._temporary: TemporaryTarget | None = None  # made by _open(), at the first frame

    # -- atomic output -------------------------------------------------------------

    def _check_target(self) -> str:
        """Refuse a target that cannot be written, before any work is done."""
        target = os.path.abspath(self.path)  # also drops a trailing "/"
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            raise MediaError(f"cannot write {self.path}: folder {parent} does not exist")
        if not self._as_folder and os.path.isdir(target):
            raise MediaError(f"cannot write {self.path}: it is a folder")
        empty_folder = os.path.isdir(target) and not os.listdir(target)
        if self._as_folder and os.path.exists(target) and not empty_folder:
            raise MediaError(f"{self.path} already exists and is not an empty folder: remove it or pick another")
        return target

    def _make_temp(self) -> str:
        self._temporary = TemporaryTarget(self._target, folder=self._as_folder)
        return str(self._temporary.path)

    def _commit(self) -> None:
        self._temporary.commit()

    def _discard(self) -> None:
        if self._temporary is not None:
            self._temporary.discard()

    # -- encoding ------------------------------------------------------------------

    def _open(self) -> None:
        muxer, codec, pix_fmt, codec_options, muxer_options = self._spec
        if self._target is None:
            file = sys.stdout.buffer
        elif self._as_folder:
            file = os.path.join(self._make_temp().replace("%", "%%"), self._pattern)  # image2 pattern
        else:
            file = self._make_temp()
        try:
            self._container = self._av.open(file, "w", format=muxer, options=muxer_options)
            stream = self._container.add_stream(codec, rate=self.frame_rate, options=codec_options)
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, pix_fmt
            if pix_fmt.startswith("yuv"):
                stream.codec_context.colorspace = BT601_COLORSPACE
                stream.codec_context.color_range = LIMITED_RANGE
        except (self._av.FFmpegError, OSError) as exc:
            raise MediaError(f"cannot write {self.path}: {exc}") from None
        self._stream = stream

    def _video_frame(self, frame: np.ndarray):
        """RGB (H, W, 3) uint8 -> av.VideoFrame in the stream's pixel format."""
        return self._av.VideoFrame.from_ndarray(frame, format="rgb24")

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 (H, W, 3) frame."""
        if self._closed:
            raise MediaError(f"{self.path}: write after close")
        if self.width is None or self.height is None:
            self.height, self.width = frame.shape[:2]
        if frame.dtype != np.uint8 or frame.shape != (self.height, self.width, 3):
            raise MediaError(
                f"{self.path}: frame is {frame.shape} {frame.dtype}, expected ({self.height}, {self.width}, 3) uint8"
            )
        if self._container is None:
            self._open()
        video_frame = self._video_frame(np.ascontiguousarray(frame))
        video_frame.pts = self.frames_written
        self._mux(video_frame)
        self.frames_written += 1

    def _mux(self, video_frame) -> None:
        try:
            for packet in self._stream.encode(video_frame):
                self._container.mux(packet)
        except (self._av.FFmpegError, OSError) as exc:
            raise MediaError(f"cannot write {self.path}: {exc}") from None

    def close(self) -> None:
        """Flush the encoder, close the file and move it onto the target."""
        if self._closed:
            return
        try:
            if self._container is None:
                raise MediaError(f"{self.path}: no frames were written")
            self._mux(None)
            self._container.close()
            if self._target is None:
                sys.stdout.buffer.flush()
            else:
                self._commit()
        except (self._av.FFmpegError, OSError) as exc:
            self.abort()
            raise MediaError(f"cannot write {self.path}: {exc}") from None
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        """Stop writing and delete the partial output; the target is left as it was."""
        if self._closed:
            return
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except (self._av.FFmpegError, OSError):
                pass
        self._discard()

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _YuvWriter(FrameWriter):
    """A writer whose stream takes BT.601 limited-range Y'CbCr planes from rgb_to_yuv."""

    chroma = "420"

    def _video_frame(self, frame: np.ndarray):
        planes = rgb_to_yuv(frame, self.chroma)  # Y (H, W), Cb, Cr
        out = self._av.VideoFrame(self.width, self.height, pix_fmt(self.chroma))
        for plane, data in zip(out.planes, planes):
            padded = np.zeros((plane.height, plane.line_size), np.uint8)  # rows are padded
            padded[:, : plane.width] = data
            plane.update(padded)
        out.colorspace = BT601_COLORSPACE
        out.color_range = LIMITED_RANGE
        return out


class Y4MWriter(_YuvWriter):
    """Raw YUV4MPEG2 (.y4m), 4:2:0 or 4:4:4, BT.601 limited range (see media.color);
    ``path`` "-" writes to stdout."""

    def __init__(self, path: str, width: int, height: int, frame_rate: Fraction, chroma: str = "420"):
        self.chroma = chroma
        super().__init__(
            path,
            width,
            height,
            frame_rate,
            muxer="yuv4mpegpipe",
            codec="rawvideo",
            pix_fmt=pix_fmt(chroma),
        )


class Mp4Writer(_YuvWriter):
    """H.264 (libx264) in mp4, yuv420p; ``crf`` sets the quality (0 lossless .. 51)."""

    def __init__(self, path: str, width: int, height: int, frame_rate: Fraction, crf: int = 18):
        if width % 2 or height % 2:
            raise MediaError(
                f"H.264 needs an even width and height, got {width}x{height}: write .y4m or a PNG folder instead"
            )
        if not 0 <= crf <= 51:
            raise MediaError(f"crf {crf} is outside 0..51")
        super().__init__(
            path,
            width,
            height,
            frame_rate,
            muxer="mp4",
            codec="libx264",
            pix_fmt="yuv420p",
            codec_options={"crf": str(crf)},
        )


class PngDirWriter(FrameWriter):
    """A folder of RGB PNGs named frame_00000.png, frame_00001.png, ... (lossless)."""

    def __init__(
        self,
        folder: str,
        width: int | None = None,
        height: int | None = None,
        frame_rate: Fraction = Fraction(30),
    ):
        super().__init__(
            folder,
            width,
            height,
            frame_rate,
            muxer="image2",
            codec="png",
            pix_fmt="rgb24",
            muxer_options={"start_number": "0"},
            folder_pattern=PNG_PATTERN,
        )


def open_writer(
    path: str, width: int, height: int, frame_rate: Fraction, chroma: str = "420", crf: int = 18
) -> FrameWriter:
    """A writer chosen by ``path``: "-" or .y4m -> Y4MWriter, .mp4 -> Mp4Writer, a name
    without a suffix or ending in "/" -> PngDirWriter."""
    if path == "-":
        return Y4MWriter(path, width, height, frame_rate, chroma)
    suffix = "" if path.endswith(("/", os.sep)) else os.path.splitext(path)[1].lower()
    if suffix == ".y4m":
        return Y4MWriter(path, width, height, frame_rate, chroma)
    if suffix == ".mp4":
        return Mp4Writer(path, width, height, frame_rate, crf)
    if not suffix or os.path.isdir(path):
        return PngDirWriter(path, width, height, frame_rate)
    raise MediaError(
        f"cannot write {path}: unknown suffix {suffix!r}; use .y4m, .mp4, "
        "'-' (y4m on stdout) or a folder name for PNG frames"
    )
