"""The decode driver: records in, frames out, one interval at a time (format_spec.md §9).

    .prx --PrxReader--> Scene ─────────────┐ z_prev = scene latent
                        Keyframe k0 ───────┤ frame k0 from c(k0), noisy(z_prev); z_prev = x0(k0)
                        Keyframe k1 ───────┤ frames k0+1..k1 from interpolated prompts,
                        ...                │ all from one noisy(z_prev); z_prev = x0(k1)
                                           └─> runtime.generate(...) -> frames, written as they come

This module is torch-free: prompt math and noise are numpy, and a *runtime* (PyTorch,
ONNX Runtime or TensorRT) does the generation step. The encoder's closed loop runs
:class:`ClosedLoop` too, so the encoder's own reconstruction and every decoder run the
same code.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np

from promptus_codec.container.reader import PrxReader
from promptus_codec.container.records import (
    FileHeader,
    KeyframeRecord,
    ModelIdentity,
    QuantScheme,
    Record,
    SceneRecord,
)
from promptus_codec.errors import ForbiddenValueError, ModelMismatchError, RecordOrderError
from promptus_codec.noise import initial_noise
from promptus_codec.prompt import Factors, dequantize, interval_prompts

DEFAULT_MAX_BATCH = 16  # frames per runtime call; every chunk shares the interval's noisy input


class Runtime(Protocol):
    """One generation step, on any backend (see promptus_codec.generate for the math)."""

    name: str

    def identity(self) -> ModelIdentity:
        """The loaded model's name and fingerprints."""

    def generate(self, z_prev: np.ndarray, noise: np.ndarray, prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, C, h, w), (1, C, h, w), (B, m, n) float32 -> latents (B, C, h, w), images (B, 3, H, W) in [0, 1]."""


def check_model(header: FileHeader, model: ModelIdentity, warn=None) -> None:
    """Refuse a stream made for other weights, naming both models.

    A stream whose digests are all zero (imported from the reference, spec §3.5) is matched
    by model name alone, with a warning.
    """
    stream = header.model
    if stream.unknown:
        if stream.name != model.name:
            raise ModelMismatchError(f"stream was made for model {stream.name!r}, but {model.name!r} is loaded")
        if warn:
            warn(f"stream carries no weight fingerprints; trusting its model name {stream.name!r}")
        return
    if (stream.denoiser_sha256, stream.decoder_sha256) != (model.denoiser_sha256, model.decoder_sha256):
        raise ModelMismatchError(
            f"stream was made for {stream.short()}, but the loaded model is {model.short()}: "
            f"decode with --model {stream.name} and the same weights"
        )


def stream_noise(header: FileHeader) -> np.ndarray:
    """The stream's one noise tensor N0 (1, C, h, w) float32 (spec §9)."""
    return initial_noise(header.generation.noise_seed, header.latent_shape, header.generation.noise_generator)


def dequantized_factors(record: KeyframeRecord) -> Factors:
    """u (m, r) and v (r, n) as float32 (spec §6.2.1)."""
    if record.quant_scheme != QuantScheme.AFFINE_INT8:
        raise ForbiddenValueError(f"keyframe {record.frame_index}: quant_scheme {record.quant_scheme!r} has no decoder")
    return Factors(
        record.frame_index,
        dequantize(record.u, record.u_scale, record.u_zero_point),
        dequantize(record.v, record.v_scale, record.v_zero_point),
    )


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8, rounding half to even.

    The reference truncates ((255 * img).astype(uint8)); rounding is deliberate (format_spec.md
    §9.3): about half the samples come out 1 level higher than the reference's, none lower.
    """
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


@dataclass
class Interval:
    """Frames ``first_frame .. first_frame + len(images) - 1`` and the next z_prev."""

    first_frame: int
    images: np.ndarray  # (B, H, W, 3) uint8
    next_latent: np.ndarray  # (1, C, h, w) float32: x0 of the interval's last frame (a keyframe)


def decode_interval(
    runtime: Runtime,
    z_prev: np.ndarray,
    noise: np.ndarray,
    previous: Factors | None,
    following: Factors,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Interval:
    """Generate the frames after ``previous`` up to keyframe ``following`` (spec §9).

    ``previous`` None means ``following`` opens a scene: one frame, from the scene latent.
    """
    if previous is None:
        prompts = following.prompt()[None]  # (1, m, n)
        first = following.frame_index
    else:
        prompts = interval_prompts(previous, following)  # (K, m, n)
        first = previous.frame_index + 1
    images, last_latent = [], None
    for start in range(0, len(prompts), max_batch):
        latents, chunk = runtime.generate(z_prev, noise, np.ascontiguousarray(prompts[start : start + max_batch]))
        images.append(to_uint8(chunk))
        last_latent = latents[-1:]
    return Interval(first, np.concatenate(images), last_latent.astype(np.float32))


class ClosedLoop:
    """The decoder's state from record to record (spec §9), written once for every caller.

    A Scene record resets z_prev to its latent; a Keyframe record decodes its interval from
    z_prev and then advances z_prev to the interval's last x0. The decode driver, the
    encoder's reconstruction and the encoder's --resume all feed records through one of
    these, so encoder and decoder stay in closed loop by construction.
    """

    def __init__(self, runtime: Runtime, noise: np.ndarray, max_batch: int = DEFAULT_MAX_BATCH):
        self.runtime = runtime
        self.noise = noise  # (1, C, h, w) float32, the stream's N0
        self.max_batch = max_batch
        self.z_prev: np.ndarray | None = None  # (1, C, h, w) float32: the scene latent, then the latest x0
        self.previous: Factors | None = None  # the latest keyframe's stored factors; None right after a Scene
        self.keyframes = 0  # keyframes decoded so far
        self.last_keyframe = -1  # frame index of the latest one

    def accept(self, record: Record) -> Interval | None:
        """Advance past ``record``; the frames it completes (a Keyframe's interval), else None."""
        if isinstance(record, SceneRecord):
            self.z_prev, self.previous = record.latent_float32()[None], None  # (1, C, h, w)
            return None
        if not isinstance(record, KeyframeRecord):
            return None
        if self.z_prev is None:
            raise RecordOrderError(f"keyframe {record.frame_index} comes before any Scene record", None)
        following = dequantized_factors(record)
        interval = decode_interval(self.runtime, self.z_prev, self.noise, self.previous, following, self.max_batch)
        self.z_prev, self.previous = interval.next_latent, following
        self.keyframes += 1
        self.last_keyframe = record.frame_index
        return interval


@dataclass
class DecodeReport:
    frames: int = 0
    frames_expected: int | None = None  # from the header or End record; None = unknown
    truncation: str | None = None

    @property
    def frames_lost(self) -> int | None:
        return None if self.frames_expected is None else self.frames_expected - self.frames


def decode_frames(
    reader: PrxReader,
    runtime: Runtime,
    report: DecodeReport | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    warn=None,
    on_record: Callable[[Record], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame_index, (H, W, 3) uint8) in display order as records arrive.

    A truncated stream yields every complete interval and records the loss in ``report``.
    ``on_record`` sees every record as it arrives, before the frames it completes are yielded
    (decode --verify reads the ReconThumbnail records this way).
    """
    header = reader.header
    check_model(header, runtime.identity(), warn)
    report = report if report is not None else DecodeReport()
    report.frames_expected = header.frame_count or None
    loop = ClosedLoop(runtime, stream_noise(header), max_batch)
    for record in reader:
        if on_record is not None:
            on_record(record)
        interval = loop.accept(record)
        for offset, image in enumerate(interval.images if interval is not None else ()):
            report.frames += 1
            yield interval.first_frame + offset, image
    if reader.end is not None:
        report.frames_expected = reader.end.frame_count
    if reader.truncation is not None:
        report.truncation = reader.truncation.describe()


def warn_stderr(message: str) -> None:
    print(f"promptus: warning: {message}", file=sys.stderr)
