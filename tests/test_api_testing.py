"""longconv.testing: the oracle and tolerance helpers are themselves checked."""

import numpy as np
import pytest
import scipy.signal

from longconv import testing


def test_tolerance_table():
    assert testing.tolerance("float16") == 1e-3
    assert testing.tolerance("bfloat16") == 4e-3
    assert testing.tolerance(np.float32) == 1e-5
    assert testing.tolerance("float64") == 1e-12
    assert testing.tolerance("complex128") == 1e-12
    with pytest.raises(ValueError, match="dtype must be one of"):
        testing.tolerance("int8")


def test_relative_error():
    ref = np.array([3.0, 4.0])
    assert testing.relative_error(ref, ref) == 0.0
    assert testing.relative_error(np.array([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert testing.relative_error(np.array([1.0, 0.0]), np.zeros(2)) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        testing.relative_error(np.ones(3), np.ones(2))


def test_assert_close_reports_max_abs():
    ref = np.linspace(1, 2, 100)
    y = ref.copy()
    y[37] += 0.5
    with pytest.raises(AssertionError) as e:
        testing.assert_close(y, ref)
    msg = str(e.value)
    assert "relative L2 error" in msg and "max abs error 5.000e-01" in msg and "(37,)" in msg
    testing.assert_close(ref.astype(np.float32), ref)
    with pytest.raises(AssertionError, match="non-finite"):
        testing.assert_close(np.full(3, np.nan), np.ones(3))


def test_random_array(rng):
    a = testing.random_array(rng, (1000,), "float32")
    assert a.dtype == np.float32 and 0.8 < a.std() < 1.2
    b = testing.random_array(rng, (10,), "bfloat16")
    assert b.dtype == np.uint16
    c = testing.random_array(rng, (1000,), "complex64")
    assert c.dtype == np.complex64 and 0.8 < np.mean(np.abs(c) ** 2) < 1.2
    d = testing.random_array(rng, (50,), "int16")
    assert d.dtype == np.int16 and d.min() >= -8 and d.max() <= 8
    assert testing.random_array(rng, (5,), "bool").dtype == bool
    assert not np.array_equal(testing.random_array(rng, (8,)), testing.random_array(rng, (8,)))


def test_poison_and_written():
    p = testing.nan_poison((3, 4), "float32")
    assert np.isnan(p).all()
    with pytest.raises(AssertionError, match="12 of 12 elements not written"):
        testing.assert_all_written(p)
    pb = testing.nan_poison((2,), "bfloat16")
    assert np.isnan(testing.to_host(pb, "bfloat16")).all()
    testing.assert_all_written(np.zeros(3))


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_reference_modes_against_numpy(rng, mode):
    x, k = rng.standard_normal(50), rng.standard_normal(7)
    np.testing.assert_allclose(testing.reference(x, k, mode), np.convolve(x, k, mode=mode),
                               atol=1e-12)


def test_reference_causal_and_circular_definitions(rng):
    x, k = rng.standard_normal(20), rng.standard_normal(45)
    t = np.arange(20)
    causal = np.array([sum(k[s] * x[i - s] for s in range(i + 1)) for i in t])
    np.testing.assert_allclose(testing.reference(x, k, "causal"), causal, atol=1e-12)
    circ = sum(k[s] * x[(t - s) % 20] for s in range(45))
    np.testing.assert_allclose(testing.reference(x, k, "circular"), circ, atol=1e-12)
    with pytest.raises(ValueError, match="mode must be one of"):
        testing.reference(x, k, "bogus")


def test_reference_fftconvolve_is_scipy(rng):
    a, b = rng.standard_normal((4, 9)), rng.standard_normal((3, 2))
    for mode in ("full", "same", "valid"):
        np.testing.assert_allclose(testing.reference_fftconvolve(a, b, mode),
                                   scipy.signal.fftconvolve(a, b, mode), atol=1e-12)


def test_reference_convolve_gating(rng):
    x, pre, post = (rng.standard_normal((2, 30)) for _ in range(3))
    k = rng.standard_normal((2, 30))
    skip = rng.standard_normal(2)
    y = testing.reference_convolve(x, k, pregate=pre, postgate=post, skip=skip)
    inner = np.stack([np.convolve((pre * x)[h], k[h])[:30] for h in range(2)])
    np.testing.assert_allclose(y, post * inner + skip[:, None] * x, atol=1e-12)
