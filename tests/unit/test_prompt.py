"""Prompt math (promptus_codec/prompt.py; format_spec.md §6.2.1, §9): numpy, and torch when present.

The reference for interpolation is the Promptus decoder as /work/shared/data/README.md
describes it: for keyframes k and k+K, frame k+s uses u = (1 - s/K) U_k + (s/K) U_{k+K},
v likewise, then c = u @ v / sqrt(r). This module imports no torch; the torch tests
import it themselves and skip when it is absent.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from promptus_codec.prompt import Factors, compose, dequantize, interpolate, interval_prompts, quant_params, quantize
from tolerances import dot_bound, gamma  # tests/ is on sys.path (rootdir conftest)

F32 = np.float32
REFERENCE_PROMPTS = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "reference-prompts" / "sky_rank8_interval10"
)

scales = st.floats(float(np.finfo(np.float32).smallest_subnormal), float(F32(1e30)), width=32)
zero_points = st.integers(-128, 127).map(float)


def factors(frame_index: int, m: int, n: int, rank: int, seed: int, scale: float = 0.02) -> Factors:
    """Dequantised factors like the encoder's: int8 codes, a small scale, an integer zero point."""
    rng = np.random.default_rng(seed)
    u = dequantize(rng.integers(-128, 128, (m, rank), dtype=np.int8), scale, float(rng.integers(-10, 10)))
    v = dequantize(rng.integers(-128, 128, (rank, n), dtype=np.int8), scale * 3, float(rng.integers(-10, 10)))
    return Factors(frame_index, u, v)


# ---------------------------------------------------------------------------
# dequantize
# ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(q=hnp.arrays(np.int8, hnp.array_shapes(max_dims=2, max_side=9)), scale=scales, zero_point=zero_points)
def test_dequantize_is_scale_times_q_minus_zero_point_in_float32(q, scale, zero_point):
    got = dequantize(q, scale, zero_point)
    assert got.dtype == np.float32 and got.shape == q.shape
    expected = F32(scale) * (q.astype(F32) - F32(zero_point))
    np.testing.assert_array_equal(got, expected)
    # q - zero_point is an exact small integer and its product with a float32 is exact in
    # float64, so one rounding to float32 gives the correctly rounded value.
    exact = (q.astype(np.float64) - zero_point) * np.float64(F32(scale))
    assert got.tobytes() == exact.astype(F32).tobytes()


def test_legacy_uint8_mapping_is_bit_identical():
    """Reference files store uint8 codes with zero points in 0..255 (data/README.md).

    Shifting both by 128 into int8 must give the very same float32 values, for every code
    and every integer zero point.
    """
    q_u8 = np.arange(256, dtype=np.uint8)
    q_i8 = (q_u8.astype(np.int16) - 128).astype(np.int8)
    for scale in (0.019066, 0.10622, 1.0, 3.0e-5, 7.5):
        for zp in range(256):
            legacy = dequantize(q_u8, scale, float(zp))
            shifted = dequantize(q_i8, scale, float(zp - 128))
            assert legacy.tobytes() == shifted.tobytes(), (scale, zp)
            expected = F32(scale) * (q_u8.astype(F32) - F32(zp))
            assert legacy.tobytes() == expected.tobytes()


# ---------------------------------------------------------------------------
# quant_params / quantize
# ---------------------------------------------------------------------------

values = st.one_of(st.just(0.0), st.floats(-1e4, 1e4, width=32).filter(lambda x: x == 0 or abs(x) > 1e-4))


@settings(max_examples=300, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, max_side=12), elements=values))
def test_quantize_round_trip_error_is_at_most_half_a_step(x):
    scale, zero_point = quant_params(x.min(), x.max())
    assert math.isfinite(scale) and scale > 0 and scale == float(F32(scale))
    assert zero_point == int(zero_point) and -128 <= zero_point <= 127
    q = quantize(x, scale, zero_point)
    assert q.dtype == np.int8 and q.shape == x.shape
    error = np.abs(dequantize(q, scale, zero_point).astype(np.float64) - x.astype(np.float64))
    # half a step, plus float32 rounding of the step itself over 255 steps
    slack = scale * 255 * 2.0**-23 + 2.0**-126
    assert error.max(initial=0.0) <= scale / 2 + slack


@settings(max_examples=100, deadline=None)
@given(lo=st.floats(-1e4, 0, width=32), hi=st.floats(0, 1e4, width=32))
def test_zero_is_exactly_representable(lo, hi):
    scale, zero_point = quant_params(lo, hi)
    zero = quantize(np.zeros(1, F32), scale, zero_point)
    assert dequantize(zero, scale, zero_point)[0] == 0.0


def test_quant_params_of_an_all_zero_factor():
    scale, zero_point = quant_params(0.0, 0.0)
    assert scale > 0 and math.isfinite(scale)
    q = quantize(np.zeros((3, 2), F32), scale, zero_point)
    assert not dequantize(q, scale, zero_point).any()


def test_quantize_rounds_half_to_even_and_clips():
    q = quantize(np.array([0.5, 1.5, 2.5, -0.5, 1000.0, -1000.0], F32), 1.0, 0.0)
    assert q.tolist() == [0, 2, 2, 0, 127, -128]


# ---------------------------------------------------------------------------
# compose
# ---------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(m=st.integers(1, 9), n=st.integers(1, 9), rank=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_compose_is_u_v_over_sqrt_rank(m, n, rank, seed):
    f = factors(0, m, n, rank, seed)
    c = compose(f.u, f.v)
    assert c.shape == (m, n) and c.dtype == np.float32
    ordered = f.u[:, 0:1] * f.v[0:1, :]  # spec §9.2: summed over the rank in order, float32
    for k in range(1, rank):
        ordered = (ordered + f.u[:, k : k + 1] * f.v[k : k + 1, :]).astype(np.float32)
    np.testing.assert_array_equal(c, ordered / F32(math.sqrt(rank)))
    exact = f.u.astype(np.float64) @ f.v.astype(np.float64) / math.sqrt(rank)
    # each term: its multiply, up to rank - 1 adds, sqrt(rank) rounded to float32, the divide
    assert (np.abs(c - exact) <= dot_bound(f.u, f.v, rank + 2) / math.sqrt(rank)).all()
    np.testing.assert_array_equal(f.prompt(), c)


def test_compose_batched():
    a, b = factors(0, 4, 6, 3, 1), factors(0, 4, 6, 3, 2)
    batch = compose(np.stack([a.u, b.u]), np.stack([a.v, b.v]))  # (2, 4, 6)
    assert batch.shape == (2, 4, 6)
    # elementwise float32 operations in a fixed order: batching changes no rounding
    np.testing.assert_array_equal(batch[0], a.prompt())
    np.testing.assert_array_equal(batch[1], b.prompt())


# ---------------------------------------------------------------------------
# interpolate / interval_prompts
# ---------------------------------------------------------------------------


def blended_factors(prev: Factors, nxt: Factors, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """data/README.md: u = (1 - s/K) U_k + (s/K) U_{k+K}, v likewise (float32)."""
    s, k = frame - prev.frame_index, nxt.frame_index - prev.frame_index
    return (1 - s / k) * prev.u + (s / k) * nxt.u, (1 - s / k) * prev.v + (s / k) * nxt.v


def reference_blend(prev: Factors, nxt: Factors, frame: int) -> np.ndarray:
    """data/README.md: c = u @ v / sqrt(r) of the blended factors, with a BLAS matmul."""
    u, v = blended_factors(prev, nxt, frame)
    return u @ v / np.sqrt(F32(prev.rank))


def blas_bound(prev: Factors, nxt: Factors, frame: int) -> np.ndarray:
    """How far interpolate() and reference_blend() may differ: the same float32 u and v, then
    two rank-r sums in different orders (r roundings each, FMA or not) and one divide each."""
    u, v = blended_factors(prev, nxt, frame)
    return 2 * dot_bound(u, v, prev.rank + 1) / math.sqrt(prev.rank)


def embedding_blend_bound(prev: Factors, nxt: Factors, a: float) -> np.ndarray:
    """Rounding of (1 - a) P + a Q in float32: the two weights, two multiplies, one add."""
    return gamma(3) * ((1 - a) * np.abs(prev.prompt().astype(np.float64)) + a * np.abs(nxt.prompt().astype(np.float64)))


@pytest.mark.parametrize("shape", [(3, 5), (77, 64)])
@pytest.mark.parametrize("span", [1, 4, 10, 7])
def test_interpolate_equal_ranks_blends_factors_separately(shape, span):
    m, n = shape
    prev, nxt = factors(20, m, n, 3, 10), factors(20 + span, m, n, 3, 11)
    for frame in range(prev.frame_index, nxt.frame_index + 1):
        got = interpolate(prev, nxt, frame)
        assert got.shape == (m, n) and got.dtype == np.float32
        assert (np.abs(got - reference_blend(prev, nxt, frame)) <= blas_bound(prev, nxt, frame)).all()
    if span > 1:  # strictly inside, the factors are blended, not the embeddings
        frame = prev.frame_index + span // 2
        a = (frame - prev.frame_index) / span
        embeddings = (1 - a) * prev.prompt() + a * nxt.prompt()
        # more than 100x what rounding of either formula could explain: another formula
        rounding = blas_bound(prev, nxt, frame) + embedding_blend_bound(prev, nxt, a)
        assert np.abs(interpolate(prev, nxt, frame) - embeddings).max() > 100 * rounding.max()


def test_interpolate_endpoints_are_the_keyframes_own_prompts_exactly():
    for rank_prev, rank_next in ((4, 4), (2, 5)):
        prev, nxt = factors(10, 6, 9, rank_prev, 1), factors(16, 6, 9, rank_next, 2)
        np.testing.assert_array_equal(interpolate(prev, nxt, prev.frame_index), prev.prompt())
        np.testing.assert_array_equal(interpolate(prev, nxt, nxt.frame_index), nxt.prompt())


def test_interpolate_unequal_ranks_blends_embeddings():
    prev, nxt = factors(0, 7, 11, 2, 3), factors(5, 7, 11, 6, 4)
    for frame in range(0, 6):
        a = frame / 5
        expected = (1 - a) * prev.prompt().astype(np.float64) + a * nxt.prompt().astype(np.float64)
        got = interpolate(prev, nxt, frame)
        assert got.shape == (7, 11) and got.dtype == np.float32
        assert (np.abs(got - expected) <= embedding_blend_bound(prev, nxt, a)).all()


def test_uneven_spacing_weights():
    """Keyframes 3 and 10: frame 5 has weight 2/7 on the later one, not 2/10 or 1/2."""
    prev, nxt = factors(3, 4, 4, 2, 5), factors(10, 4, 4, 2, 6)
    got = interpolate(prev, nxt, 5)
    assert (np.abs(got - reference_blend(prev, nxt, 5)) <= blas_bound(prev, nxt, 5)).all()
    for wrong in (0.2, 0.5):
        u = (1 - wrong) * prev.u + wrong * nxt.u
        v = (1 - wrong) * prev.v + wrong * nxt.v
        # more than 100x the rounding bound: the wrong weight, not the summation order
        assert np.abs(got - compose(u, v)).max() > 100 * blas_bound(prev, nxt, 5).max()


@pytest.mark.parametrize("ranks", [(3, 3), (3, 1)])
@pytest.mark.parametrize("span", [1, 3, 10])
def test_interval_prompts(ranks, span):
    prev, nxt = factors(40, 5, 8, ranks[0], 7), factors(40 + span, 5, 8, ranks[1], 8)
    prompts = interval_prompts(prev, nxt)
    assert prompts.shape == (span, 5, 8) and prompts.dtype == np.float32
    np.testing.assert_array_equal(prompts[-1], nxt.prompt())
    for i, frame in enumerate(range(prev.frame_index + 1, nxt.frame_index + 1)):
        np.testing.assert_array_equal(prompts[i], interpolate(prev, nxt, frame))


# ---------------------------------------------------------------------------
# torch (optional): same results as numpy
# ---------------------------------------------------------------------------


def assert_agree(got, expected) -> None:
    """Bit for bit: prompt math fixes its summation order (spec §9.2), so numpy and torch agree."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape and got.dtype == expected.dtype == np.float32
    assert got.tobytes() == expected.tobytes()


def assert_close_to_matmul(got, expected, us, vs) -> None:
    """A BLAS matmul of the same float32 factors sums in another order: both rank-r sums and
    their divide by sqrt(r) stay within dot_bound of the exact value (FMA or not)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape
    rank = us.shape[-1]
    assert (np.abs(got - expected) <= 2 * dot_bound(us, vs, rank + 1) / math.sqrt(rank)).all()


def to_torch(f: Factors):
    torch = pytest.importorskip("torch")
    return Factors(f.frame_index, torch.from_numpy(np.array(f.u)), torch.from_numpy(np.array(f.v)))


def test_torch_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (77, 8), dtype=np.int8)
    for scale, zp in ((0.0191, -14.0), (0.1062, -8.0), (1e-3, 127.0)):
        got = dequantize(torch.from_numpy(q), scale, zp)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        assert got.numpy().tobytes() == dequantize(q, scale, zp).tobytes()
    q_u8 = torch.arange(256, dtype=torch.uint8)
    for zp in range(0, 256, 17):
        legacy = dequantize(q_u8, 0.0191, float(zp)).numpy()
        assert legacy.tobytes() == dequantize(q_u8.numpy(), 0.0191, float(zp)).tobytes()
        assert (
            legacy.tobytes()
            == dequantize((q_u8.to(torch.int16) - 128).to(torch.int8), 0.0191, float(zp - 128)).numpy().tobytes()
        )

    for ranks in ((8, 8), (8, 4)):
        prev, nxt = factors(0, 77, 1024, ranks[0], 1), factors(10, 77, 1024, ranks[1], 2)
        tprev, tnxt = to_torch(prev), to_torch(nxt)
        assert_agree(compose(tprev.u, tprev.v).numpy(), prev.prompt())
        for frame in (0, 3, 10):
            got = interpolate(tprev, tnxt, frame)
            assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
            assert_agree(got.numpy(), interpolate(prev, nxt, frame))
        tall = interval_prompts(tprev, tnxt)
        assert isinstance(tall, torch.Tensor) and tuple(tall.shape) == (10, 77, 1024)
        assert_agree(tall.numpy(), interval_prompts(prev, nxt))


def test_reference_prompts_torch_and_numpy_agree():
    """The Promptus reference's own factors (uint8, zero points in 0..255), where present."""
    torch = pytest.importorskip("torch")
    paths = sorted(REFERENCE_PROMPTS.glob("frame_*.prompt"))[:3]
    if len(paths) < 2:
        pytest.skip("reference prompts not present (shared/data is not part of a clone)")
    keyframes = []
    for i, path in enumerate(paths):
        d = torch.load(path, weights_only=True, map_location="cpu")
        u = dequantize(d["U"], float(d["U_scale"]), float(d["U_zero_point"]))
        v = dequantize(d["V"], float(d["V_scale"]), float(d["V_zero_point"]))
        # the int8 mapping the format stores gives the same values
        u8 = (d["U"].to(torch.int16) - 128).to(torch.int8)
        assert (
            dequantize(u8, float(d["U_scale"]), float(d["U_zero_point"]) - 128).numpy().tobytes() == u.numpy().tobytes()
        )
        keyframes.append((Factors(10 * i, u, v), Factors(10 * i, u.numpy(), v.numpy())))
    (tprev, prev), (tnxt, nxt) = keyframes[:2]
    us = torch.stack([(1 - s / 10) * tprev.u + (s / 10) * tnxt.u for s in range(1, 11)])  # (10, 77, 8)
    vs = torch.stack([(1 - s / 10) * tprev.v + (s / 10) * tnxt.v for s in range(1, 11)])  # (10, 8, 1024)
    reference = us @ vs / math.sqrt(8)
    assert_close_to_matmul(interval_prompts(tprev, tnxt).numpy(), reference.numpy(), us.numpy(), vs.numpy())
    assert_agree(interval_prompts(tprev, tnxt).numpy(), interval_prompts(prev, nxt))
    np.testing.assert_array_equal(interval_prompts(tprev, tnxt)[-1].numpy(), tnxt.prompt().numpy())
