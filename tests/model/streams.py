"""Streams and clips for the model tier, built without the encoder.

Streams come from the container writer with random quantised factors; clips are small
synthetic videos written with the media layer.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from promptus_codec.container.records import (
    FileHeader,
    FitMode,
    KeyframeRecord,
    LatentFormat,
    QuantScheme,
    Rect,
    SceneRecord,
    SourceGeometry,
)
from promptus_codec.container.writer import write_prx

# `promptus encode` options for a quick tiny-model encode: draft preset cut to 3 / 2 iterations, MSE only
FAST_ENCODE = [
    "--model", "tiny", "--perceptual", "none", "--preset", "draft",
    "--iterations", "2", "--first-iterations", "3", "-q",
]  # fmt: skip


def random_keyframe(
    rng: np.random.Generator, frame_index: int, rank: int, m: int = 77, n: int = 1024
) -> KeyframeRecord:
    """Factors whose composed prompt has entries of order 1, like a fitted one."""
    return KeyframeRecord(
        frame_index,
        rank,
        QuantScheme.AFFINE_INT8,
        u_scale=0.02,
        u_zero_point=float(rng.integers(-10, 10)),
        v_scale=0.02,
        v_zero_point=float(rng.integers(-10, 10)),
        u=rng.integers(-128, 128, (m, rank), dtype=np.int8),
        v=rng.integers(-128, 128, (rank, n), dtype=np.int8),
    )


def make_stream(
    path,
    model,
    scenes: list[list[tuple[int, int]]],
    size: tuple[int, int] = (64, 64),
    fps: Fraction = Fraction(30),
    seed: int = 0,
    geometry: SourceGeometry | None = None,
    frame_count: int | None = None,
) -> FileHeader:
    """A stream for ``model``: ``scenes`` lists each scene's (frame_index, rank) keyframes."""
    rng = np.random.default_rng(seed)
    width, height = size
    spec = model.spec
    f = spec.vae_scale_factor
    last = scenes[-1][-1][0]
    header = FileHeader(
        coded_width=width,
        coded_height=height,
        geometry=geometry or SourceGeometry.identity(width, height),
        frame_rate=fps,
        frame_count=last + 1 if frame_count is None else frame_count,
        prompt_tokens=spec.prompt_tokens,
        prompt_dim=spec.prompt_dim,
        latent_channels=spec.latent_channels,
        latent_height=height // f,
        latent_width=width // f,
        generation=spec.generation,
        model=model.identity(),
    )
    records = []
    for keyframes in scenes:
        latent = rng.standard_normal(header.latent_shape).astype(np.float16)
        records.append(SceneRecord(keyframes[0][0], LatentFormat.FLOAT16, 1.0, latent))
        records += [random_keyframe(rng, k, r) for k, r in keyframes]
    write_prx(path, header, records)
    return header


CROP_96x64 = SourceGeometry(96, 64, FitMode.CROP, Rect(16, 0, 64, 64), Rect(0, 0, 64, 64))


def write_clip(
    path, frames: int = 60, size: tuple[int, int] = (64, 64), fps: Fraction = Fraction(30), cut_at: int | None = None
):
    """A smooth synthetic clip (drifting gradients); after ``cut_at`` a different picture."""
    from promptus_codec.media import open_writer

    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    with open_writer(str(path), width, height, fps) as writer:
        for t in range(frames):
            if cut_at is not None and t >= cut_at:
                r = 128 + 100 * np.sin((xx + yy) / 9 + t / 20)
                frame = np.stack([r, 255 - r, np.full_like(r, 40)], -1)
            else:
                frame = np.stack([xx * 255 / width + t, yy * 255 / height, np.full_like(xx, 128 + t)], -1)
            writer.write(np.clip(frame, 0, 255).astype(np.uint8))
