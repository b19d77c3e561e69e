"""Properties that hold for any correct convolution: impulse, linearity, causality, shift."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longconv import LongConv, convolve, fftconvolve_long, testing

lengths = st.sampled_from([1, 2, 3, 5, 16, 97, 255, 256, 257, 1000])


@settings(max_examples=40, deadline=None)
@given(lengths, lengths, st.integers(0, 2**32 - 1))
def test_impulse_gives_filter(L, Lk, seed):
    rng = np.random.default_rng(seed)
    k = testing.random_array(rng, (2, Lk))
    x = np.zeros((2, L))
    x[:, 0] = 1.0
    y = convolve(x, k)
    m = min(L, Lk)
    np.testing.assert_allclose(y[:, :m], k[:, :m], atol=1e-12)
    np.testing.assert_allclose(y[:, m:], 0, atol=1e-12)
    full = fftconvolve_long(x, k, axes=-1)
    np.testing.assert_allclose(full[:, :Lk], k, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(lengths, lengths, st.integers(0, 2**32 - 1))
def test_delayed_impulse_shifts_filter(L, Lk, seed):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(0, L))
    k = testing.random_array(rng, (Lk,))
    x = np.zeros(L)
    x[d] = 1.0
    y = convolve(x, k)
    expected = np.zeros(L)
    m = min(Lk, L - d)
    expected[d:d + m] = k[:m]
    np.testing.assert_allclose(y, expected, atol=1e-12)
    yc = fftconvolve_long(x, k, mode="circular")
    expected_c = np.zeros(L)
    for s in range(Lk):
        expected_c[(d + s) % L] += k[s]
    np.testing.assert_allclose(yc, expected_c, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(lengths, lengths, st.booleans(), st.integers(0, 2**32 - 1))
def test_linearity(L, Lk, causal, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(2)
    x1, x2 = testing.random_array(rng, (3, L)), testing.random_array(rng, (3, L))
    k = testing.random_array(rng, (3, Lk))
    plan = LongConv(k, L, causal=causal)
    lhs = plan(a * x1 + b * x2)
    rhs = a * plan(x1) + b * plan(x2)
    testing.assert_close(lhs, rhs, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(lengths, lengths, st.integers(0, 2**32 - 1))
def test_causality(L, Lk, seed):
    rng = np.random.default_rng(seed)
    t = int(rng.integers(0, L))
    x = testing.random_array(rng, (2, L))
    k = testing.random_array(rng, (2, Lk))
    x2 = x.copy()
    x2[:, t:] = testing.random_array(rng, (2, L - t))
    y1, y2 = convolve(x, k), convolve(x2, k)
    if t:
        np.testing.assert_allclose(y1[:, :t], y2[:, :t], rtol=1e-10, atol=1e-10)
    if L - t and np.any(k[:, 0] != 0):
        assert not np.allclose(y1[:, t:], y2[:, t:])


@settings(max_examples=30, deadline=None)
@given(lengths, lengths, st.sampled_from(["full", "same", "valid", "circular"]),
       st.integers(0, 2**32 - 1))
def test_inputs_unmodified(L, Lk, mode, seed):
    rng = np.random.default_rng(seed)
    x = testing.random_array(rng, (2, L), "float32")
    k = testing.random_array(rng, (1, Lk), "float32")
    cx, ck = x.copy(), k.copy()
    fftconvolve_long(x, k, mode=mode, axes=-1)
    np.testing.assert_array_equal(x, cx)
    np.testing.assert_array_equal(k, ck)


@settings(max_examples=40, deadline=None)
@given(lengths, st.integers(1, 3000), st.integers(0, 2**32 - 1))
def test_circular_matches_definition(L, Lk, seed):
    rng = np.random.default_rng(seed)
    x = testing.random_array(rng, (2, L))
    k = testing.random_array(rng, (1, Lk))
    y = fftconvolve_long(x, k, mode="circular", axes=-1)
    t = np.arange(L)
    # The direct sum of up to 3000 folded taps loses more than the 1e-12 tolerance to rounding
    # in float64; extended precision keeps the definition the more accurate side.
    xl, kl = x.astype(np.longdouble), k.astype(np.longdouble)
    expected = np.zeros((2, L), dtype=np.longdouble)
    for s in range(Lk):
        expected += kl[0, s] * xl[:, (t - s) % L]
    testing.assert_close(y, expected.astype(np.float64))


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex128"])
def test_commutative_full(rng, dtype):
    a = testing.random_array(rng, (3, 500), dtype)
    b = testing.random_array(rng, (3, 77), dtype)
    testing.assert_close(fftconvolve_long(a, b, axes=-1), fftconvolve_long(b, a, axes=-1))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 3), max_size=2), st.integers(1, 4), lengths, lengths,
       st.booleans(), st.booleans(), st.sampled_from(["float32", "float64", "complex128"]),
       st.integers(0, 2**32 - 1))
def test_convolve_random_shapes_against_oracle(lead, H, L, Lk, causal, gated, dtype, seed):
    rng = np.random.default_rng(seed)
    x = testing.random_array(rng, (*lead, H, L), dtype)
    k = testing.random_array(rng, (H, Lk), "float32")
    kw = {}
    if gated:
        kw = {"pregate": testing.random_array(rng, (H, L)),
              "postgate": testing.random_array(rng, (*lead, H, L)),
              "skip": testing.random_array(rng, (H,))}
    y = convolve(x, k, causal, **kw)
    assert y.shape == x.shape
    assert y.dtype == np.dtype(dtype)
    testing.assert_close(y, testing.reference_convolve(x, k, causal, **kw), dtype)
