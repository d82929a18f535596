"""BD-rate on synthetic rate-distortion curves whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy")

from promptus_codec.metrics.bdrate import bd_rate  # noqa: E402

# BD-rate is float64 throughout (log10, PCHIP, integration over a few points, 10**d): rounding
# moves a percentage near 50 by ~1e-13; abs=1e-9 leaves room for scipy's order of operations and
# still tells any real difference. pytest.approx's default (rel 1e-6) is used where that is enough.
RATES = [100.0, 200.0, 400.0, 800.0]
PSNR = [30.0, 33.0, 35.5, 37.0]  # a concave curve, as real codecs give


@pytest.mark.parametrize("factor, expected", [(0.5, -50.0), (1.0, 0.0), (2.0, 100.0), (0.8, -20.0)])
def test_a_constant_rate_factor_is_the_bd_rate(factor, expected):
    result = bd_rate(RATES, PSNR, [r * factor for r in RATES], PSNR)
    assert result.percent == pytest.approx(expected, abs=1e-9)
    assert result.reason is None


def test_two_points_per_codec_and_shifted_quality():
    """Same straight line in (PSNR, log rate), test sampled elsewhere on it: BD-rate 0."""
    line = lambda q: 10 ** (1 + q / 20)  # noqa: E731
    anchor_q, test_q = [30.0, 36.0], [32.0, 40.0]
    result = bd_rate([line(q) for q in anchor_q], anchor_q, [line(q) * 0.5 for q in test_q], test_q)
    assert result.percent == pytest.approx(-50.0, abs=1e-9)


def test_lower_is_better_metrics_such_as_lpips():
    lpips = [0.40, 0.30, 0.22, 0.18]
    result = bd_rate(RATES, lpips, [r / 2 for r in RATES], lpips, higher_is_better=False)
    assert result.percent == pytest.approx(-50.0, abs=1e-9)


def test_point_order_does_not_matter():
    order = [2, 0, 3, 1]
    shuffled = bd_rate([RATES[i] for i in order], [PSNR[i] for i in order], [r * 0.5 for r in RATES], PSNR)
    assert shuffled.percent == pytest.approx(-50.0)


def test_partial_overlap_uses_the_common_range():
    """Test curve = anchor curve at half the rate, but only over its upper half of PSNR."""
    q = np.linspace(30, 37, 8)
    rates = list(10 ** (q / 10))
    result = bd_rate(rates, list(q), [r / 2 for r in rates[4:]], list(q[4:]))
    assert result.percent == pytest.approx(-50.0, abs=1e-9)


@pytest.mark.parametrize(
    "anchor, test, reason",
    [
        (([100.0], [30.0]), ([50.0, 100.0], [30.0, 33.0]), "anchor has 1 usable point(s)"),
        (([100.0, 200.0], [None, 33.0]), ([50.0, 100.0], [30.0, 33.0]), "anchor has 1 usable point(s)"),
        (([100.0, 200.0], [30.0, 33.0]), ([50.0, 100.0], [40.0, 43.0]), "quality ranges do not overlap"),
        (([100.0, 200.0], [30.0, 30.0]), ([50.0, 100.0], [30.0, 33.0]), "two points of equal quality"),
    ],
)
def test_no_number_without_enough_points_or_overlap(anchor, test, reason):
    result = bd_rate(*anchor, *test)
    assert result.percent is None
    assert reason in result.reason
    assert str(result).startswith("n/a (")


def test_compare_rows_give_bd_rate_per_metric():
    """The comparison's helper: Promptus at half x265's rate for the same PSNR and MS-SSIM."""
    from promptus_codec.metrics.compare import bd_rates

    def row(codec, kbps, q):
        return {
            "codec": codec,
            "achieved_kbps": kbps,
            "psnr_y": q,
            "ms_ssim": q / 50,
            "lpips_alex": None,
            "lpips_vgg": None,
        }

    rows = [row("x265", r, q) for r, q in zip(RATES, PSNR)] + [row("promptus", r / 2, q) for r, q in zip(RATES, PSNR)]
    result = bd_rates(rows, ("x265",))["x265"]
    assert result["psnr_y"].percent == pytest.approx(-50.0)
    assert result["ms_ssim"].percent == pytest.approx(-50.0)
    assert result["lpips_alex"].percent is None and "0 usable point(s)" in result["lpips_alex"].reason
