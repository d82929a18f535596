"""Bjøntegaard delta rate (BD-rate): the average bitrate difference at equal quality.

The standard recipe (VCEG-M33, with the piecewise cubic interpolation of JVET's common
test conditions): for each codec, interpolate log10(rate) as a function of quality through
its rate-distortion points with a monotone piecewise cubic (PCHIP); integrate both
curves over the quality range where they overlap; the difference of the mean log-rates d
gives BD-rate = 10**d - 1. Negative: the test codec needs fewer bits than the anchor for
the same quality.

With two points per codec PCHIP is a straight line in (quality, log rate). A codec with
fewer than two points, or curves whose quality ranges do not overlap, get no number but
the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BdRate:
    """``percent`` of the test codec against the anchor, or None with ``reason``."""

    percent: float | None
    reason: str | None = None

    def __str__(self) -> str:
        return f"{self.percent:+.1f}%" if self.percent is not None else f"n/a ({self.reason})"


def _curve(rates: Sequence[float], quality: Sequence[float], name: str):
    """Points sorted by quality, as (quality, log10 rate); or a reason string."""
    points = [(q, r) for r, q in zip(rates, quality) if q is not None and np.isfinite(q) and r and r > 0]
    if len(points) < 2:
        return f"{name} has {len(points)} usable point(s), BD-rate needs at least 2 per codec"
    points.sort()
    q = np.array([p[0] for p in points], np.float64)
    if np.any(np.diff(q) <= 0):
        return f"{name} has two points of equal quality"
    return q, np.log10([p[1] for p in points])


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float | None],
    test_rates: Sequence[float],
    test_quality: Sequence[float | None],
    higher_is_better: bool = True,
    names: tuple[str, str] = ("anchor", "test"),
) -> BdRate:
    """BD-rate (%) of the test points against the anchor points.

    ``higher_is_better=False`` for distortions such as LPIPS (quality = -LPIPS).
    """
    from scipy.interpolate import PchipInterpolator

    sign = 1.0 if higher_is_better else -1.0
    curves = []
    for rates, quality, name in ((anchor_rates, anchor_quality, names[0]), (test_rates, test_quality, names[1])):
        curve = _curve(rates, [None if q is None else sign * q for q in quality], name)
        if isinstance(curve, str):
            return BdRate(None, curve)
        curves.append(curve)
    (qa, la), (qt, lt) = curves
    low, high = max(qa[0], qt[0]), min(qa[-1], qt[-1])
    if low >= high:
        ranges = ", ".join(f"{n} {sign * q[0]:.4g}..{sign * q[-1]:.4g}" for n, (q, _) in zip(names, curves))
        return BdRate(None, f"quality ranges do not overlap ({ranges})")
    mean_a = PchipInterpolator(qa, la).integrate(low, high) / (high - low)
    mean_t = PchipInterpolator(qt, lt).integrate(low, high) / (high - low)
    return BdRate(float((10 ** (mean_t - mean_a) - 1) * 100))
