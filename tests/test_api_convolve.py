"""longconv.convolve against the float64 oracle: shapes, dtypes, gates, skip, extras."""

import numpy as np
import pytest
import scipy.signal

from longconv import convolve, testing

SIZES = [1, 2, 3, 97, 1000, 4095, 4097, 2**12, 2**13 - 1, 2**13 + 1]


def direct_causal(x, k):
    """Causal convolution by the definition (sum over taps), float64; x (..., L), k (Lk,)."""
    L = x.shape[-1]
    y = np.zeros(x.shape, dtype=np.result_type(x, k, np.float64))
    for s in range(min(len(k), L)):
        y[..., s:] += k[s] * x[..., : L - s]
    return y


@pytest.mark.parametrize("L", SIZES)
@pytest.mark.parametrize("Lk_rel", ["short", "equal", "longer"])
def test_causal_awkward_sizes(rng, L, Lk_rel):
    Lk = {"short": max(1, L // 7), "equal": L, "longer": L + 13}[Lk_rel]
    H = 3
    x = testing.random_array(rng, (2, H, L))
    k = testing.random_array(rng, (H, Lk))
    y = convolve(x, k)
    assert y.shape == x.shape and y.dtype == np.float64
    testing.assert_close(y, testing.reference_convolve(x, k))
    if L <= 1000:
        ref = np.stack([direct_causal(x[:, h], k[h]) for h in range(H)], axis=1)
        testing.assert_close(y, ref)


@pytest.mark.parametrize("L, Lk", [(1, 1), (5, 3), (97, 97), (1000, 33), (1000, 1000),
                                   (4097, 100), (3, 10)])
def test_non_causal_is_scipy_same(rng, L, Lk):
    x = testing.random_array(rng, (4, L))
    k = testing.random_array(rng, (4, Lk))
    y = convolve(x, k, causal=False)
    ref = scipy.signal.fftconvolve(x, k, mode="same", axes=-1)
    testing.assert_close(y, ref)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "complex64", "complex128"])
def test_dtype_kept(rng, dtype):
    x = testing.random_array(rng, (2, 3, 500), dtype)
    k = testing.random_array(rng, (3, 500), "float32")
    y = convolve(x, k)
    assert y.dtype == np.dtype(dtype)
    testing.assert_close(y, testing.reference_convolve(x, k))


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_integer_x_gives_float64(rng, dtype):
    x = testing.random_array(rng, (3, 40), dtype)
    k = testing.random_array(rng, (3, 7))
    y = convolve(x, k)
    assert y.dtype == np.float64
    testing.assert_close(y, testing.reference_convolve(x, k))


@pytest.mark.parametrize("xdt, kdt, out", [("float32", "complex64", "complex64"),
                                            ("float16", "complex128", "complex64"),
                                            ("float64", "complex64", "complex128")])
def test_complex_filter_makes_complex_output(rng, xdt, kdt, out):
    x = testing.random_array(rng, (2, 64), xdt)
    k = testing.random_array(rng, (2, 9), kdt)
    y = convolve(x, k)
    assert y.dtype == np.dtype(out)
    testing.assert_close(y, testing.reference_convolve(x, k))


@pytest.mark.parametrize("xshape, kshape", [((50,), (50,)), ((50,), (1, 7)), ((3, 50), (3, 7)),
                                            ((3, 50), (7,)), ((2, 5, 3, 50), (3, 70)),
                                            ((2, 5, 3, 50), (1, 70)), ((1, 50), (1, 3))])
def test_shapes_and_broadcasting(rng, xshape, kshape):
    x = testing.random_array(rng, xshape)
    k = testing.random_array(rng, kshape)
    y = convolve(x, k)
    assert y.shape == xshape
    testing.assert_close(y, testing.reference_convolve(x, k))
    kk = k.reshape(-1, k.shape[-1])
    x2 = x.reshape(-1, xshape[-2] if len(xshape) >= 2 else 1, xshape[-1])
    ref = np.stack([direct_causal(x2[:, h], kk[h if kk.shape[0] > 1 else 0])
                    for h in range(x2.shape[1])], axis=1)
    testing.assert_close(y, ref.reshape(xshape))


def test_gates_and_skip_definition(rng):
    B, H, L = 3, 4, 300
    x = testing.random_array(rng, (B, H, L))
    k = testing.random_array(rng, (H, L))
    pre = testing.random_array(rng, (B, H, L))
    post = testing.random_array(rng, (B, H, L))
    skip = testing.random_array(rng, (H,))
    y = convolve(x, k, pregate=pre, postgate=post, skip=skip)
    conv = np.stack([direct_causal((pre * x)[:, h], k[h]) for h in range(H)], axis=1)
    expected = post * conv + skip[None, :, None] * x
    testing.assert_close(y, expected)
    testing.assert_close(y, testing.reference_convolve(x, k, pregate=pre, postgate=post,
                                                       skip=skip))


@pytest.mark.parametrize("gshape", [(1, 1, 300), (4, 300), (300,), (1,), ()])
def test_gate_broadcasting(rng, gshape):
    x = testing.random_array(rng, (3, 4, 300))
    k = testing.random_array(rng, (4, 50))
    g = testing.random_array(rng, gshape)
    y = convolve(x, k, pregate=g, postgate=g)
    gb = np.broadcast_to(g, x.shape)
    testing.assert_close(y, testing.reference_convolve(x, k, pregate=gb, postgate=gb))


@pytest.mark.parametrize("skip_shape", [(), (1,)])
def test_scalar_skip(rng, skip_shape):
    x = testing.random_array(rng, (2, 3, 40))
    k = testing.random_array(rng, (3, 40))
    s = testing.random_array(rng, skip_shape)
    y = convolve(x, k, skip=s)
    testing.assert_close(y, convolve(x, k) + float(np.asarray(s).reshape(-1)[0]) * x)


def test_gates_from_lists_and_scalars(rng):
    x = testing.random_array(rng, (2, 20))
    k = testing.random_array(rng, (2, 5))
    y = convolve(x, k, pregate=2.0, postgate=[0.5] * 20, skip=[1.0, 0.0])
    testing.assert_close(y, convolve(x, k) + np.array([1.0, 0.0])[:, None] * x)


def test_skip_with_1d_input(rng):
    x = testing.random_array(rng, (64,))
    k = testing.random_array(rng, (10,))
    y = convolve(x, k, skip=3.0)
    testing.assert_close(y, direct_causal(x, k) + 3.0 * x)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kernel_len", [1, 5, 64, 500])
def test_kernel_len_is_truncation(rng, causal, kernel_len):
    x = testing.random_array(rng, (2, 3, 200))
    k = testing.random_array(rng, (3, 300))
    y = convolve(x, k, causal=causal, kernel_len=kernel_len)
    testing.assert_close(y, convolve(x, k[:, :kernel_len], causal=causal))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("freq_keep", [1.0, 0.5, 0.1, 1e-9])
@pytest.mark.parametrize("L, Lk", [(256, 256), (1000, 37), (1, 1), (97, 200)])
def test_freq_keep_matches_reference(rng, causal, freq_keep, L, Lk):
    x = testing.random_array(rng, (2, 3, L))
    k = testing.random_array(rng, (3, Lk))
    y = convolve(x, k, causal=causal, freq_keep=freq_keep)
    ref = testing.reference_convolve(x, k, causal, freq_keep=freq_keep)
    testing.assert_close(y, ref)
    if freq_keep == 1.0:
        testing.assert_close(y, convolve(x, k, causal=causal))


def test_freq_keep_is_low_pass(rng):
    L = 512
    x = testing.random_array(rng, (L,))
    k = testing.random_array(rng, (L,))
    y = convolve(x, k, freq_keep=0.25)
    # the same thing spelt out: n = 2L, keep ceil(0.25 * (L + 1)) bins
    n = 2 * L
    K = np.fft.rfft(k, n)
    K[int(np.ceil(0.25 * (n // 2 + 1))):] = 0
    expected = np.fft.irfft(np.fft.rfft(x, n) * K, n)[:L]
    testing.assert_close(y, expected)
    assert testing.relative_error(y, convolve(x, k)) > 0.1


@pytest.mark.parametrize("precision, dtype, tol", [("single", "float64", 1e-5),
                                                   ("double", "float32", 1e-5),
                                                   ("half", "float64", 1e-5),
                                                   ("double", "float64", 1e-12)])
def test_precision(rng, precision, dtype, tol):
    x = testing.random_array(rng, (2, 3, 1000), dtype)
    k = testing.random_array(rng, (3, 1000), dtype)
    y = convolve(x, k, precision=precision)
    assert y.dtype == np.dtype(dtype)
    ref = testing.reference_convolve(x, k)
    testing.assert_close(y, ref, rtol=tol)


def test_single_precision_really_is_single(rng):
    x = testing.random_array(rng, (2, 3, 4000))
    k = testing.random_array(rng, (3, 4000))
    ref = testing.reference_convolve(x, k)
    err_single = testing.relative_error(convolve(x, k, precision="single"), ref)
    err_double = testing.relative_error(convolve(x, k), ref)
    assert err_single > 1e-9 > err_double


def test_zero_length_leading_axes(rng):
    for shape in [(0, 3, 10), (2, 0, 10)]:
        x = np.ones(shape)
        k = testing.random_array(rng, (shape[1], 4)) if shape[1] else np.ones((0, 4))
        y = convolve(x, k)
        assert y.shape == shape and y.dtype == np.float64


def test_inputs_unmodified(rng):
    x = testing.random_array(rng, (2, 3, 100))
    k = testing.random_array(rng, (3, 100))
    g = testing.random_array(rng, (2, 3, 100))
    s = testing.random_array(rng, (3,))
    copies = [a.copy() for a in (x, k, g, s)]
    convolve(x, k, pregate=g, postgate=g, skip=s)
    for a, c in zip((x, k, g, s), copies, strict=True):
        np.testing.assert_array_equal(a, c)


def test_non_contiguous_inputs(rng):
    base = testing.random_array(rng, (3, 8, 400))
    x = base[:, ::2, ::-2]
    k = testing.random_array(rng, (8, 300))[::2, ::-1]
    g = base[::-1, 1::2, ::2]
    y = convolve(x, k, pregate=g)
    testing.assert_close(y, testing.reference_convolve(np.ascontiguousarray(x),
                                                      np.ascontiguousarray(k),
                                                      pregate=np.ascontiguousarray(g)))


def test_nan_propagates_without_crash(rng):
    x = testing.random_array(rng, (2, 2, 300))
    x[0, 1, 100] = np.nan
    k = testing.random_array(rng, (2, 50))
    y = convolve(x, k)
    assert np.isnan(y[0, 1, 100:150]).all()
    assert np.isfinite(y[1]).all() and np.isfinite(y[0, 0]).all()
    ref = testing.reference_convolve(x, k)
    ok = np.isfinite(ref)
    testing.assert_close(y[ok], ref[ok])
