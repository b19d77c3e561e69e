"""fftconvolve_long's extras: circular, kernel_len, freq_keep, precision, workers."""

import numpy as np
import pytest
import scipy.signal

from longconv import fft_size, fftconvolve_long, testing


@pytest.mark.parametrize("L, Lk", [(1, 1), (1, 5), (10, 3), (10, 10), (10, 13), (10, 35),
                                   (97, 4000), (4096, 4096), (4097, 12)])
@pytest.mark.parametrize("dtype", ["float64", "float32", "complex128", "int64"])
def test_circular(rng, L, Lk, dtype):
    x = testing.random_array(rng, (3, L), dtype)
    k = testing.random_array(rng, (1, Lk), dtype)
    y = fftconvolve_long(x, k, mode="circular", axes=-1)
    assert y.shape == (3, L)
    assert y.dtype == scipy.signal.fftconvolve(np.ones(2, dtype), np.ones(2, dtype)).dtype
    t = np.arange(L)
    expected = np.zeros((3, L), dtype=np.complex128 if dtype == "complex128" else np.float64)
    for s in range(Lk):
        expected += k[0, s] * x[:, (t - s) % L]
    tol = 1e-5 if dtype == "float32" else 1e-12
    testing.assert_close(y, expected, rtol=tol)
    testing.assert_close(y, testing.reference_fftconvolve(x, k, "circular", axes=-1), rtol=tol)


def test_circular_axis_and_broadcast(rng):
    x = testing.random_array(rng, (40, 1, 3))
    k = testing.random_array(rng, (7, 5, 1))
    y = fftconvolve_long(x, k, mode="circular", axes=0)
    assert y.shape == (40, 5, 3)
    testing.assert_close(y, testing.reference_fftconvolve(x, k, "circular", axes=0))
    # axes=None with one axis to convolve (the others have length 1 in in2)
    y2 = fftconvolve_long(x, k[:, :1], mode="circular")
    testing.assert_close(y2, testing.reference_fftconvolve(x, k[:, :1], "circular", axes=0))


@pytest.mark.parametrize("mode", ["full", "same", "valid", "circular"])
@pytest.mark.parametrize("kernel_len", [1, 3, 50, 200])
def test_kernel_len(rng, mode, kernel_len):
    x = testing.random_array(rng, (2, 120))
    k = testing.random_array(rng, (2, 100))
    y = fftconvolve_long(x, k, mode=mode, axes=-1, kernel_len=kernel_len)
    expected = fftconvolve_long(x, k[:, :kernel_len], mode=mode, axes=-1)
    assert y.shape == expected.shape
    testing.assert_close(y, expected)


@pytest.mark.parametrize("mode", ["full", "same", "valid", "circular"])
@pytest.mark.parametrize("freq_keep", [1.0, 0.7, 0.2, 0.01])
@pytest.mark.parametrize("L, Lk", [(128, 128), (300, 41), (41, 300), (1, 1), (4096, 4096)])
def test_freq_keep_reference(rng, mode, freq_keep, L, Lk):
    x = testing.random_array(rng, (2, L))
    k = testing.random_array(rng, (1, Lk))
    y = fftconvolve_long(x, k, mode=mode, axes=-1, freq_keep=freq_keep)
    ref = testing.reference_fftconvolve(x, k, mode, axes=-1, freq_keep=freq_keep)
    assert y.shape == ref.shape
    testing.assert_close(y, ref)
    if freq_keep == 1.0:
        testing.assert_close(y, fftconvolve_long(x, k, mode=mode, axes=-1))


def test_freq_keep_uses_shared_size(rng):
    # spelt out for full mode: n = fft_size(L + Lk - 1)
    L, Lk, f = 300, 41, 0.3
    x, k = testing.random_array(rng, (L,)), testing.random_array(rng, (Lk,))
    n = fft_size(L + Lk - 1)
    K = np.fft.rfft(k, n)
    K[int(np.ceil(f * (n // 2 + 1))):] = 0
    expected = np.fft.irfft(np.fft.rfft(x, n) * K, n)[:L + Lk - 1]
    testing.assert_close(fftconvolve_long(x, k, freq_keep=f), expected)


@pytest.mark.parametrize("precision, dtype, out_dtype, tol", [
    ("single", "float64", "float64", 1e-5), ("half", "float64", "float64", 1e-5),
    ("double", "float32", "float32", 1e-6), ("single", "complex128", "complex128", 1e-5),
    ("double", "float16", "float32", 1e-6), ("single", "int64", "float64", 1e-5),
])
def test_precision_keeps_scipy_dtype(rng, precision, dtype, out_dtype, tol):
    x = testing.random_array(rng, (2, 3000), dtype)
    k = testing.random_array(rng, (1, 3000), dtype)
    y = fftconvolve_long(x, k, axes=-1, precision=precision)
    assert y.dtype == np.dtype(out_dtype)
    testing.assert_close(y, testing.reference_fftconvolve(x, k, axes=-1), rtol=tol)


def test_precision_on_nd_fallback(rng):
    x = testing.random_array(rng, (30, 40))
    k = testing.random_array(rng, (5, 6))
    y = fftconvolve_long(x, k, precision="single")
    assert y.dtype == np.float64
    ref = scipy.signal.fftconvolve(x, k)
    testing.assert_close(y, ref, rtol=1e-5)
    assert testing.relative_error(y, ref) > 1e-10


@pytest.mark.parametrize("workers", [1, 2, -1, None])
def test_workers_same_result(rng, workers):
    x = testing.random_array(rng, (4, 8, 5000))
    k = testing.random_array(rng, (1, 8, 5000))
    y = fftconvolve_long(x, k, axes=-1, workers=workers)
    testing.assert_close(y, scipy.signal.fftconvolve(x, k, axes=-1))
    y2 = fftconvolve_long(x[:, :, :100], k[:, :, :100], workers=workers)
    testing.assert_close(y2, scipy.signal.fftconvolve(x[:, :, :100], k[:, :, :100]))
