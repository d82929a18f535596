"""Prompt math: dequantise factors, compose ``c = u @ v / sqrt(r)``, interpolate (spec §6.2, §9).

Every function works on numpy arrays and on torch tensors alike, without importing
torch, so the torch-free ONNX Runtime decoder runs the very same code. All arithmetic is
float32, in the order the spec gives, so two decoders agree bit for bit on the prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

Array = Any  # np.ndarray or torch.Tensor

INT8_MIN, INT8_MAX = -128, 127


def _as_float32(q: Array) -> Array:
    if isinstance(q, np.ndarray):
        return q.astype(np.float32)
    return q.float()


def _stack(arrays: Sequence[Array]) -> Array:
    if isinstance(arrays[0], np.ndarray):
        return np.stack(arrays)
    import torch  # only reached when the caller already works in torch

    return torch.stack(list(arrays))


def dequantize(q: Array, scale: float, zero_point: float) -> Array:
    """``scale * (q - zero_point)`` in float32 (spec §6.2.1). q is int8 (or uint8)."""
    return (_as_float32(q) - np.float32(zero_point)) * np.float32(scale)


def quant_params(x_min: float, x_max: float) -> tuple[float, float]:
    """Affine int8 (scale, zero_point) covering [x_min, x_max], with 0 exactly representable.

    The zero point is an integer stored as float32, as the spec requires.
    """
    x_min, x_max = min(float(x_min), 0.0), max(float(x_max), 0.0)
    scale = float(np.float32((x_max - x_min) / (INT8_MAX - INT8_MIN)))
    if not scale > 0.0 or not math.isfinite(scale):
        scale = 1.0  # an all-zero factor: any positive scale represents it exactly
    zero_point = float(np.clip(round(INT8_MIN - x_min / scale), INT8_MIN, INT8_MAX))
    return scale, zero_point


def quantize(x: np.ndarray, scale: float, zero_point: float) -> np.ndarray:
    """Inverse of :func:`dequantize` for numpy float arrays: int8 codes, round half to even."""
    q = np.rint(x.astype(np.float32) / np.float32(scale) + np.float32(zero_point))
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def compose(u: Array, v: Array) -> Array:
    """The prompt embedding ``c = u @ v / sqrt(r)``: (..., m, r) @ (..., r, n) -> (..., m, n).

    The product is summed over the rank in order, one float32 rounding per multiply and per
    add (spec §9.2), instead of calling a BLAS matmul whose summation order varies. numpy,
    torch and any other decoder then agree on every prompt bit for bit.
    """
    rank = u.shape[-1]
    total = u[..., :, 0:1] * v[..., 0:1, :]  # (..., m, n)
    for k in range(1, rank):
        total = total + u[..., :, k : k + 1] * v[..., k : k + 1, :]
    return total / np.float32(math.sqrt(rank))


@dataclass
class Factors:
    """Dequantised factors of one keyframe. u: (m, r) float32, v: (r, n) float32."""

    frame_index: int
    u: Array
    v: Array

    @property
    def rank(self) -> int:
        return self.u.shape[-1]

    def prompt(self) -> Array:
        """(m, n) embedding of the keyframe itself."""
        return compose(self.u, self.v)


def interpolate(previous: Factors, following: Factors, frame_index: int) -> Array:
    """The (m, n) prompt of a frame between two keyframes of one scene (spec §9.2).

    With weight ``a = (frame_index - previous.frame_index) / (following.frame_index -
    previous.frame_index)``: equal ranks blend u and v separately, then compose (what the
    reference decoder does); unequal ranks blend the composed embeddings.
    """
    span = following.frame_index - previous.frame_index
    a = (frame_index - previous.frame_index) / span
    if previous.rank == following.rank:
        u = (1 - a) * previous.u + a * following.u
        v = (1 - a) * previous.v + a * following.v
        return compose(u, v)
    return (1 - a) * previous.prompt() + a * following.prompt()


def interval_prompts(previous: Factors, following: Factors) -> Array:
    """Prompts of every frame after ``previous`` up to and including ``following``.

    Returns (K, m, n) with K = following.frame_index - previous.frame_index; its last
    entry is ``following``'s own prompt.
    """
    frames = range(previous.frame_index + 1, following.frame_index + 1)
    return _stack([interpolate(previous, following, f) for f in frames])
