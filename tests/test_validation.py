"""Bad input: every message pinned, and a fuzz that only ever sees clean errors or right answers."""

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longconv import LongConv, convolve, fftconvolve_long, testing

X = np.ones((2, 3, 16))
K = np.ones((3, 5))
LIMITS = "('half', 'single', 'double')"
IO = "('float16', 'bfloat16', 'float32', 'float64', 'complex64', 'complex128')"

CASES = [
    # convolve: arrays
    (lambda: convolve("abc", K), TypeError,
     "x must hold numbers (bool, integer, floating or complex); got dtype <U3"),
    (lambda: convolve(None, K), TypeError,
     "x must hold numbers (bool, integer, floating or complex); got dtype object"),
    (lambda: convolve({}, K), TypeError,
     "x must hold numbers (bool, integer, floating or complex); got dtype object"),
    (lambda: convolve(np.ones(16, object), np.ones(3)), TypeError,
     "x must hold numbers (bool, integer, floating or complex); got dtype object"),
    (lambda: convolve(np.ones(16, "M8[s]"), np.ones(3)), TypeError,
     "x must hold numbers (bool, integer, floating or complex); got dtype datetime64[s]"),
    (lambda: convolve(np.ones(16), np.array(["a", "b"])), TypeError,
     "k must hold numbers (bool, integer, floating or complex); got dtype <U1"),
    (lambda: convolve(np.array(1.0), K), ValueError,
     "x must have shape (..., H, L) or (L,); got shape ()"),
    (lambda: convolve(np.ones((3, 0)), K), ValueError,
     "x must have length L >= 1 along its last axis; got shape (3, 0)"),
    (lambda: convolve(X, np.ones((3, 0))), ValueError,
     "k must have length Lk >= 1 along its last axis; got shape (3, 0)"),
    (lambda: convolve(X, np.ones((2, 3, 5))), ValueError,
     "k must have shape (H, Lk) or (Lk,); got shape (2, 3, 5)"),
    (lambda: convolve(X, np.array(2.0)), ValueError,
     "k must have shape (H, Lk) or (Lk,); got shape ()"),
    (lambda: convolve(X, np.ones((4, 5))), ValueError,
     "k holds H=4 filters, so x must have shape (..., 4, L); got x of shape (2, 3, 16) "
     "with H=3"),
    (lambda: convolve(np.ones(16), np.ones((4, 5))), ValueError,
     "k holds H=4 filters, so x must have shape (..., 4, L); got x of shape (16,) "
     "with no H axis"),
    (lambda: convolve(X, K, causal="yes"), TypeError, "causal must be a bool; got str"),
    (lambda: convolve(X, K, causal=None), TypeError, "causal must be a bool; got NoneType"),
    (lambda: convolve(X, K, causal=1), TypeError, "causal must be a bool; got int"),
    # gates and skip
    (lambda: convolve(X, K, pregate=np.ones(5)), ValueError,
     "pregate must have a shape that broadcasts to x's shape (2, 3, 16); got shape (5,)"),
    (lambda: convolve(X, K, postgate=np.ones((4, 2, 3, 16))), ValueError,
     "postgate must have a shape that broadcasts to x's shape (2, 3, 16); got shape "
     "(4, 2, 3, 16)"),
    (lambda: convolve(X, K, pregate=np.ones((2, 3, 15))), ValueError,
     "pregate must have a shape that broadcasts to x's shape (2, 3, 16); got shape (2, 3, 15)"),
    (lambda: convolve(X, K, pregate=np.array(["a"])), TypeError,
     "pregate must hold numbers (bool, integer, floating or complex); got dtype <U1"),
    (lambda: convolve(X, K, skip=np.ones(4)), ValueError,
     "skip must have shape (3,), (1,) or () (one weight per channel H=3); got shape (4,)"),
    (lambda: convolve(X, K, skip=np.ones((3, 1))), ValueError,
     "skip must have shape (3,), (1,) or () (one weight per channel H=3); got shape (3, 1)"),
    (lambda: convolve(X, K, skip="a"), TypeError,
     "skip must hold numbers (bool, integer, floating or complex); got dtype <U1"),
    # extras
    (lambda: convolve(X, K, precision="quad"), ValueError,
     f"precision must be None or one of {LIMITS}; got 'quad'"),
    (lambda: convolve(X, K, precision=1), TypeError,
     f"precision must be None or one of {LIMITS}; got int"),
    (lambda: convolve(X, K, kernel_len=0), ValueError,
     "kernel_len must be None or an int >= 1; got 0"),
    (lambda: convolve(X, K, kernel_len=-3), ValueError,
     "kernel_len must be None or an int >= 1; got -3"),
    (lambda: convolve(X, K, kernel_len=2.0), TypeError,
     "kernel_len must be None or an int >= 1; got float"),
    (lambda: convolve(X, K, kernel_len=True), TypeError,
     "kernel_len must be None or an int >= 1; got bool"),
    (lambda: convolve(X, K, freq_keep=0), ValueError,
     "freq_keep must be None or a real number in (0, 1]; got 0"),
    (lambda: convolve(X, K, freq_keep=1.5), ValueError,
     "freq_keep must be None or a real number in (0, 1]; got 1.5"),
    (lambda: convolve(X, K, freq_keep=float("nan")), ValueError,
     "freq_keep must be None or a real number in (0, 1]; got nan"),
    (lambda: convolve(X, K, freq_keep="a"), TypeError,
     "freq_keep must be None or a real number in (0, 1]; got str"),
    (lambda: convolve(X, K, freq_keep=1j), TypeError,
     "freq_keep must be None or a real number in (0, 1]; got complex"),
    # LongConv
    (lambda: LongConv(K, 0), ValueError, "length must be an int >= 1; got 0"),
    (lambda: LongConv(K, 2**45), ValueError,
     "length must be <= 2**39 (half the largest FFT size); got 35184372088832"),
    (lambda: LongConv(K, 16.0), TypeError, "length must be an int >= 1; got float"),
    (lambda: LongConv(K, "16"), TypeError, "length must be an int >= 1; got str"),
    (lambda: LongConv(K, 16, dtype="int32"), TypeError, f"dtype must be one of {IO}; got int32"),
    (lambda: LongConv(K, 16, dtype="float8"), TypeError,
     f"dtype must be one of {IO}; got 'float8'"),
    (lambda: LongConv(K, 16, device="tpu"), ValueError,
     "device must be None, 'cpu' or 'gpu'; got 'tpu'"),
    (lambda: LongConv(K, 16, device=0), TypeError, "device must be None, 'cpu' or 'gpu'; got int"),
    (lambda: LongConv(K, 16, causal="no"), TypeError, "causal must be a bool; got str"),
    (lambda: LongConv(np.ones((2, 2, 2)), 16), ValueError,
     "k must have shape (H, Lk) or (Lk,); got shape (2, 2, 2)"),
    (lambda: LongConv(K, 16)(np.ones((2, 3, 15))), ValueError,
     "x must have length 16 (the plan's length) along its last axis; got shape (2, 3, 15)"),
    (lambda: LongConv(K, 16, dtype=np.float32)(X), TypeError,
     "x must have dtype float32 (the plan's dtype); got float64"),
    (lambda: LongConv(K, 16).update(np.ones((3, 6))), ValueError,
     "k must keep the plan's filter shape (3, 5); got shape (3, 6)"),
    (lambda: LongConv(K, 16).update(np.array(["a"])), TypeError,
     "k must hold numbers (bool, integer, floating or complex); got dtype <U1"),
    # fftconvolve_long extras
    (lambda: fftconvolve_long(np.ones(3), np.ones(2), workers=0), ValueError,
     "workers must be None or a non-zero int; got 0"),
    (lambda: fftconvolve_long(np.ones(3), np.ones(2), workers=1.5), TypeError,
     "workers must be None or a non-zero int; got float"),
    (lambda: fftconvolve_long(np.ones(3), np.ones(2), precision="double-double"), ValueError,
     f"precision must be None or one of {LIMITS}; got 'double-double'"),
    (lambda: fftconvolve_long(np.ones((3, 3)), np.ones((2, 2)), kernel_len=1),
     NotImplementedError,
     "kernel_len / freq_keep is supported for a convolution along one axis; got 2 axes to "
     "convolve (pass axes=<one axis>)"),
    (lambda: fftconvolve_long(np.ones((3, 3)), np.ones((2, 2)), mode="circular"),
     NotImplementedError,
     "mode='circular' is supported for a convolution along one axis; got 2 axes to convolve "
     "(pass axes=<one axis>)"),
    (lambda: fftconvolve_long(np.ones(3) + 1j, np.ones(2), freq_keep=0.5), NotImplementedError,
     "freq_keep is supported for real inputs (it masks rfft bins); got complex input"),
    (lambda: fftconvolve_long(np.ones(3, object), np.ones(2), freq_keep=0.5),
     NotImplementedError,
     "precision, kernel_len, freq_keep and mode='circular' support bool, integer, "
     "float16/32/64 and complex64/128 inputs; got dtypes object and float64"),
    (lambda: fftconvolve_long(np.ones(3, np.longdouble), np.ones(2), precision="single"),
     NotImplementedError,
     "precision, kernel_len, freq_keep and mode='circular' support bool, integer, "
     "float16/32/64 and complex64/128 inputs; got dtypes float128 and float64"),
    (lambda: fftconvolve_long(np.ones(3), np.ones(2), mode="circular", axes=[]), ValueError,
     "when provided, axes cannot be empty"),
    (lambda: fftconvolve_long(np.ones(3), np.ones(2), mode="circular", axes=2), ValueError,
     "axes exceeds dimensionality of input"),
    (lambda: fftconvolve_long(np.ones((3, 4)), np.ones((2, 5)), mode="circular", axes=1),
     ValueError, "incompatible shapes for in1 and in2: (3, 4) and (2, 5)"),
]


@pytest.mark.parametrize("call, exc, msg", CASES, ids=[c[2][:50] for c in CASES])
def test_error_messages(call, exc, msg):
    with pytest.raises(exc) as e:
        call()
    assert type(e.value) is exc
    assert str(e.value) == msg


def test_workers_negative_counts_back():
    import os

    n = os.cpu_count()
    with pytest.raises(ValueError) as e:
        fftconvolve_long(np.ones(3), np.ones(2), workers=-(n + 1))
    assert str(e.value) == (f"workers must be None, >= 1, or >= -{n} (counting back from the "
                            f"number of CPUs); got {-(n + 1)}")
    np.testing.assert_allclose(fftconvolve_long(np.ones(3), np.ones(2), workers=-1),
                               [1, 2, 2, 1])


SIZE_MSG = re.compile(r"^the output of shape \(\d+(, \d+)*,?\) needs [\d.]+ [KMGTPE]?i?B, "
                      r"more than the [\d.]+ [KMGTPE]?i?B of memory on the host$")


@pytest.mark.parametrize("call", [
    lambda: fftconvolve_long(np.ones((10**6, 1)), np.ones((1, 10**6)), axes=1),
    lambda: fftconvolve_long(np.broadcast_to(np.ones((1, 1)), (10**7, 2)),
                             np.ones((1, 10**6)), axes=1),
    lambda: fftconvolve_long(np.broadcast_to(np.ones((1, 1)), (10**6, 10**6)), np.ones((1, 2))),
    lambda: fftconvolve_long(np.ones((10**6, 1)), np.ones((1, 10**6)), mode="circular", axes=0),
    lambda: LongConv(np.ones(5), 2**38)(np.broadcast_to(np.ones(1), (2**38,))),
    lambda: convolve(np.broadcast_to(np.ones(1), (2**37,)),
                     np.broadcast_to(np.ones(1), (2**30,))),
    lambda: convolve(np.broadcast_to(np.ones((1, 1, 1)), (2**20, 2**10, 2**10)), np.ones(3)),
])
def test_absurd_sizes_fail_before_allocating(call):
    with pytest.raises(ValueError) as e:
        call()
    assert SIZE_MSG.match(str(e.value)), str(e.value)


def test_absurd_filter_spectrum():
    with pytest.raises(ValueError, match=r"^the filter spectrum of shape \(1, \d+\) needs "):
        LongConv(np.broadcast_to(np.ones(1), (2**37,)), 2**37)


# ---------------------------------------------------------------------------------------------
# fuzz

garbage = st.one_of(
    st.none(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=3),
    st.lists(st.integers(-3, 3), max_size=4), st.just({}), st.just(object()),
    st.just(np.array(["a", "b"])), st.just(np.ones(3, object)), st.just(np.ones((0, 4))),
    st.just(np.ones((2, 0))), st.just(np.ones((2, 4)) * np.nan), st.just(np.ones((3, 4))[:, ::-1]),
    st.just(np.ones((2, 3, 4))), st.just(np.array(1.0)), st.just(np.ones(4, np.float16)),
    st.just(np.full(4, np.inf)), st.just(np.ones((1, 4), np.complex64)),
)
OK_ERRORS = (TypeError, ValueError, NotImplementedError)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage, garbage, garbage, garbage, st.sampled_from([True, False, "x", None]))
def test_fuzz_convolve(x, k, gate, skip, causal):
    try:
        y = convolve(x, k, causal=causal, pregate=gate, skip=skip)
    except OK_ERRORS:
        return
    xa = np.asarray(x)
    assert y.shape == xa.shape
    ref = testing.reference_convolve(x, k, causal, pregate=gate, skip=skip)
    if y.dtype.kind in "fc":
        # what the output dtype can hold: fp16 overflows, and so does complex64 (a skip of
        # 3.4028235677973366e38 plus the convolution rounds to inf in float32)
        with np.errstate(over="ignore", invalid="ignore"):
            ref = ref.astype(y.dtype).astype(ref.dtype)
    finite = np.isfinite(ref)
    assert np.all(np.isnan(y[~finite]) | ~np.isfinite(y[~finite]))
    if finite.any():
        np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-3, atol=1e-3)


@settings(max_examples=200, deadline=None)
@given(garbage, garbage, st.sampled_from(["full", "same", "valid", "circular", "x", None]),
       st.one_of(st.none(), st.integers(-3, 3), st.just([]), st.just([0, 0]), st.text(max_size=2)),
       st.one_of(st.none(), st.integers(-2, 5), st.floats(-1, 2)),
       st.one_of(st.none(), st.floats(-1, 2), st.text(max_size=1)))
def test_fuzz_fftconvolve_long(in1, in2, mode, axes, kernel_len, freq_keep):
    try:
        fftconvolve_long(in1, in2, mode=mode, axes=axes, kernel_len=kernel_len,
                         freq_keep=freq_keep)
    except OK_ERRORS:
        return


@settings(max_examples=150, deadline=None)
@given(garbage, st.one_of(st.integers(-2, 40), st.floats(), st.none(), st.text(max_size=2)),
       st.one_of(st.none(), st.sampled_from(["float32", "bfloat16", "int8", "x", 3])),
       garbage)
def test_fuzz_longconv(k, length, dtype, x):
    try:
        plan = LongConv(k, length, dtype=dtype)
    except OK_ERRORS:
        return
    try:
        plan(x)
    except OK_ERRORS:
        return
