"""Classic codecs at a target bitrate: the baselines `promptus compare` measures Promptus against.

Every baseline reads the same y4m of coded frames (yuv420p, BT.601 limited range, as
media.Y4MWriter writes them) and writes a raw elementary stream, with no container, so
every byte counted is the codec's own. The achieved bitrate is counted from that file:
bytes * 8 / (frames / frame rate).

    x265    H.265, libx265 through PyAV, two passes (x265-params pass=1|2:stats=FILE)
    vvenc   H.266, libvvenc in imageio-ffmpeg's ffmpeg binary, two passes (-pass 1|2);
            libvvenc codes 10-bit, so its output is decoded by the same binary to 8-bit y4m
    svtav1  AV1, libsvtav1 through PyAV, one pass (FFmpeg's wrapper has no two-pass mode),
            so it may land further from the target
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from promptus_codec.errors import MediaError, require

X265_PRESET = "medium"  # x265's own default
VVENC_PRESET = "medium"  # libvvenc's own default
# libvvenc's worker threads spin-wait; on this project's 2-core VMs a threaded encode was seen
# to livelock (main thread stuck in munmap, workers spinning) and hang CI for 90 minutes.
# One thread cannot race, and its output does not depend on scheduling.
VVENC_THREADS = 1
SVTAV1_PRESET = 8  # SVT-AV1's own default


def achieved_kbps(size_bytes: int, frames: int, frame_rate: Fraction) -> float:
    """The bitrate a file of ``size_bytes`` holding ``frames`` frames really has, in kb/s."""
    return size_bytes * 8 * float(frame_rate) / frames / 1000


@dataclass
class BaselineRun:
    """One baseline encode: its stream, its real size, and where its frames can be read."""

    codec: str  # a key of BASELINES
    target_kbps: float
    stream: Path  # the raw elementary stream
    frames: int
    frame_rate: Fraction
    decoded: Path  # a file open_video reads (the stream itself, or a y4m decoded from it)

    @property
    def bytes(self) -> int:
        return self.stream.stat().st_size

    @property
    def achieved_kbps(self) -> float:
        return achieved_kbps(self.bytes, self.frames, self.frame_rate)


def _y4m_info(y4m: Path) -> tuple[int, int, Fraction, int]:
    """(width, height, frame rate, frame count) of a y4m file."""
    av = require("av", "media")
    with av.open(str(y4m)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.demux(stream) if _.size)
        return stream.width, stream.height, Fraction(stream.average_rate), count


def _pyav_encode(y4m: Path, output: str, muxer: str, codec: str, kbps: float, options: dict[str, str]) -> None:
    """Encode the y4m's yuv420p frames, unconverted, with a PyAV encoder into ``output``."""
    av = require("av", "media")
    if codec not in av.codecs_available:
        raise MediaError(f"this PyAV build has no {codec} encoder")
    try:
        with av.open(str(y4m)) as source, av.open(output, "w", format=muxer) as target:
            video = source.streams.video[0]
            stream = target.add_stream(codec, rate=video.average_rate, options=options)
            stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
            stream.bit_rate = round(kbps * 1000)
            for index, frame in enumerate(source.decode(video)):  # yuv420p, as written
                frame.pts, frame.pict_type = index, av.video.frame.PictureType.NONE
                for packet in stream.encode(frame):
                    target.mux(packet)
            for packet in stream.encode(None):
                target.mux(packet)
    except av.FFmpegError as exc:
        raise MediaError(f"{codec} failed on {y4m}: {exc}") from None


def encode_x265(y4m: Path, output: Path, kbps: float, preset: str = X265_PRESET) -> BaselineRun:
    """H.265 in two passes; ``output`` is a raw .hevc stream."""
    stats = f"{output}.stats"
    for number, target in ((1, os.devnull), (2, str(output))):
        params = f"pass={number}:stats={stats}:log-level=error"
        _pyav_encode(
            y4m, target, "hevc" if number == 2 else "null", "libx265", kbps, {"preset": preset, "x265-params": params}
        )
    for leftover in (stats, f"{stats}.cutree"):
        Path(leftover).unlink(missing_ok=True)
    _, _, rate, count = _y4m_info(y4m)
    return BaselineRun("x265", kbps, output, count, rate, output)


def encode_svtav1(y4m: Path, output: Path, kbps: float, preset: int = SVTAV1_PRESET) -> BaselineRun:
    """AV1 in one pass (VBR at ``kbps``); ``output`` is a raw OBU stream."""
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr unless told otherwise
    _pyav_encode(y4m, str(output), "obu", "libsvtav1", kbps, {"preset": str(preset)})
    _, _, rate, count = _y4m_info(y4m)
    return BaselineRun("svtav1", kbps, output, count, rate, output)


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """imageio-ffmpeg's static ffmpeg, checked for libvvenc."""
    imageio_ffmpeg = require("imageio_ffmpeg", "metrics")
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    encoders = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    if " libvvenc " not in encoders:
        raise MediaError(f"{exe} has no libvvenc encoder: leave vvenc out of --baselines")
    return exe


def _ffmpeg(args: list[str], what: str) -> None:
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise MediaError(f"{what} failed (ffmpeg exit {done.returncode}): {last}")


def encode_vvenc(y4m: Path, output: Path, kbps: float, preset: str = VVENC_PRESET) -> BaselineRun:
    """H.266 in two passes; ``output`` is a raw .266 stream, decoded to ``output``.y4m."""
    _, _, rate, count = _y4m_info(y4m)
    log = f"{output}.pass"
    common = [
        "-i",
        str(y4m),
        "-c:v",
        "libvvenc",
        "-threads",
        str(VVENC_THREADS),
        "-preset",
        preset,
        "-b:v",
        str(round(kbps * 1000)),
        "-passlogfile",
        log,
    ]
    _ffmpeg([*common, "-pass", "1", "-f", "null", os.devnull], "libvvenc pass 1")
    _ffmpeg([*common, "-pass", "2", "-f", "vvc", str(output)], "libvvenc pass 2")
    Path(f"{log}-0.log").unlink(missing_ok=True)
    decoded = Path(f"{output}.y4m")
    rate_arg = f"{rate.numerator}/{rate.denominator}"  # a raw stream has no frame rate of its own
    _ffmpeg(
        ["-r", rate_arg, "-f", "vvc", "-i", str(output), "-pix_fmt", "yuv420p", "-f", "yuv4mpegpipe", str(decoded)],
        "VVC decoding",
    )
    return BaselineRun("vvenc", kbps, output, count, rate, decoded)


# name -> (what it is, encoder, stream suffix)
BASELINES = {
    "x265": ("H.265 (libx265, 2-pass)", encode_x265, ".hevc"),
    "vvenc": ("H.266 (libvvenc, 2-pass)", encode_vvenc, ".266"),
    "svtav1": ("AV1 (libsvtav1, 1-pass)", encode_svtav1, ".obu"),
}


def encode_baseline(codec: str, y4m: Path, folder: Path, kbps: float) -> BaselineRun:
    """Run baseline ``codec`` at ``kbps`` on ``y4m``, writing into ``folder``."""
    if codec not in BASELINES:
        raise MediaError(f"unknown baseline {codec!r}: choose from {', '.join(BASELINES)}")
    _, encode, suffix = BASELINES[codec]
    return encode(y4m, folder / f"{codec}-{kbps:.1f}k{suffix}", kbps)
