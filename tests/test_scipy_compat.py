"""fftconvolve_long against scipy.signal.fftconvolve: values, shapes, dtypes and errors."""

import numpy as np
import pytest
import scipy.signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longconv import fftconvolve_long

DTYPES = ["float64", "float32", "float16", "complex128", "complex64", "int64", "int32",
          "uint8", "bool"]


def _draw(rng, shape, dtype):
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dt.kind in "iu":
        return rng.integers(0, 9, shape).astype(dt)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return rng.standard_normal(shape).astype(dt)


_SINGLE = ("float16", "float32", "complex64")


def _tol(*dtypes):
    """1e-10 where SciPy computes in double precision. SciPy transforms a float32 operand in
    float32 even when the other is float64; longconv computes such pairs in float64, so there
    the two agree to single precision only (and longconv is the more accurate)."""
    names = [np.asarray(d).dtype.name if not isinstance(d, np.dtype) else d.name for d in dtypes]
    return 2e-5 if any(n in _SINGLE for n in names) else 1e-10


def compare(in1, in2, *args, **kwargs):
    """Same result (shape, dtype, values) or the same exception (type and message) as SciPy."""
    try:
        ref = scipy.signal.fftconvolve(in1, in2, *args, **kwargs)
    except Exception as e:
        with pytest.raises(type(e)) as got:
            fftconvolve_long(in1, in2, *args, **kwargs)
        assert type(got.value) is type(e)
        assert str(got.value) == str(e)
        return None
    out = fftconvolve_long(in1, in2, *args, **kwargs)
    assert type(out) is type(ref)
    assert np.shape(out) == np.shape(ref)
    assert np.asarray(out).dtype == np.asarray(ref).dtype
    ref_a = np.asarray(ref)
    if ref_a.size:
        # FFT rounding errors scale with ||in1|| ||in2||, not with the output: where the
        # exact result is ~0 (cancellation) both sides are rounding noise of that size
        scale = float(np.abs(ref_a.astype(np.complex128)).max())
        with np.errstate(all="ignore"):
            norms = float(np.linalg.norm(np.asarray(in1, dtype=np.complex128).ravel())
                          * np.linalg.norm(np.asarray(in2, dtype=np.complex128).ravel()))
        if np.isfinite(norms):
            scale = max(scale, norms)
        tol = _tol(ref_a.dtype, np.asarray(in1).dtype, np.asarray(in2).dtype)
        np.testing.assert_allclose(np.asarray(out).astype(np.complex128),
                                   ref_a.astype(np.complex128), rtol=tol,
                                   atol=tol * max(scale, 1e-300))
    return out


@st.composite
def conv_problems(draw):
    ndim = draw(st.sampled_from([0, 1, 1, 2, 2, 3]))
    s1 = [draw(st.sampled_from([0, 1, 1, 2, 3, 5, 8, 13, 31])) for _ in range(ndim)]
    s2 = []
    for s in s1:
        s2.append(draw(st.sampled_from([s, 1, 2, 4, 9, 17, 40])))
    if draw(st.integers(0, 9)) == 0:
        s2 = s2 + [2]
    axes = draw(st.one_of(
        st.none(),
        st.integers(-max(ndim, 1), max(ndim, 1) - 1),
        st.lists(st.integers(-max(ndim, 1), max(ndim, 1) - 1), min_size=0, max_size=ndim,
                 unique=True),
    ))
    mode = draw(st.sampled_from(["full", "same", "valid"]))
    d1 = draw(st.sampled_from(DTYPES))
    d2 = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    return tuple(s1), tuple(s2), axes, mode, d1, d2, seed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_problems())
def test_matches_scipy_random(problem):
    s1, s2, axes, mode, d1, d2, seed = problem
    rng = np.random.default_rng(seed)
    in1, in2 = _draw(rng, s1, d1), _draw(rng, s2, d2)
    c1, c2 = in1.copy(), in2.copy()
    compare(in1, in2, mode=mode, axes=axes)
    np.testing.assert_array_equal(in1, c1)
    np.testing.assert_array_equal(in2, c2)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.sampled_from(["full", "same", "valid"]),
       st.sampled_from(["float64", "float32", "complex128"]), st.integers(0, 2**32 - 1))
def test_matches_scipy_1d_lengths(L, Lk, mode, dtype, seed):
    rng = np.random.default_rng(seed)
    compare(_draw(rng, (L,), dtype), _draw(rng, (Lk,), dtype), mode=mode)


@pytest.mark.parametrize("L", [1, 2, 3, 97, 1000, 4095, 4096, 4097, 2**13 - 1, 2**13 + 1])
@pytest.mark.parametrize("Lk", [1, 2, 97, 4097])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_awkward_lengths(rng, L, Lk, mode):
    compare(rng.standard_normal((2, L)), rng.standard_normal((1, Lk)), mode=mode, axes=-1)


def test_long_signal_short_filter_overlap_add(rng):
    # long rows, short filter: the CPU backend takes the overlap-add route
    x = rng.standard_normal((3, 200_003))
    for Lk in (5, 129, 1000):
        for mode in ("full", "same", "valid"):
            compare(x, rng.standard_normal((1, Lk)), mode=mode, axes=-1)


@pytest.mark.parametrize("a, b", [
    (np.array(3.0), np.array(4.0)),
    (np.array(3), np.array(4)),
    (np.array(2 + 1j), np.array(1.5)),
    (np.float16(2.0), np.float16(3.0)),
    (3, 4),
    (2.5, 4),
])
def test_zero_dim_is_product(a, b):
    out = compare(a, b)
    assert np.ndim(out) == 0


@pytest.mark.parametrize("s1, s2", [((0,), (3,)), ((3,), (0,)), ((0, 3), (2, 3)),
                                    ((2, 0), (2, 0))])
def test_empty_is_float64_shape_0(s1, s2):
    out = compare(np.ones(s1, np.float32), np.ones(s2, np.float32), mode="bogus")
    assert out.shape == (0,) and out.dtype == np.float64


@pytest.mark.parametrize("d1, d2", [
    ("float16", "float16"), ("float16", "float32"), ("float32", "float32"),
    ("float32", "float64"), ("int8", "float32"), ("int64", "int64"), ("bool", "bool"),
    ("uint16", "uint64"), ("float32", "complex64"), ("complex64", "complex128"),
    ("bool", "complex64"), ("float16", "complex64"), ("int32", "complex64"),
])
def test_output_dtype(rng, d1, d2):
    compare(_draw(rng, (17,), d1), _draw(rng, (5,), d2))
    compare(_draw(rng, (1,), d1), _draw(rng, (1,), d2))


@pytest.mark.parametrize("d", ["longdouble", "object", "m8[s]", "M8[s]", "clongdouble"])
def test_other_dtypes_behave_as_scipy(rng, d):
    a = rng.integers(0, 5, 9).astype(d)
    b = rng.integers(0, 5, 4).astype(d)
    compare(a, b)
    compare(a, rng.standard_normal(4))


@pytest.mark.parametrize("a, b", [
    (np.array(["a", "b"]), np.ones(2)),
    (np.array("a"), np.array(2)),
    (np.array([b"x"]), np.ones(1)),
])
def test_string_inputs_raise_as_scipy(a, b):
    compare(a, b)


def test_lists_and_scalars(rng):
    compare([1, 2, 3], [0.5, 0.25])
    compare([[1.0, 2.0], [3.0, 4.0]], [[1.0], [2.0]])
    compare((1j, 2), [3])


@pytest.mark.parametrize("axes", [None, 0, 1, 2, -1, -2, -3, [0], [2, 0], (1, 2), [-1, 0],
                                  np.int64(1), np.array([0, 2]), [0, 1, 2]])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_axes_forms(rng, axes, mode):
    in1 = rng.standard_normal((4, 6, 9))
    compare(in1, rng.standard_normal((4, 6, 3)), mode=mode, axes=axes)
    compare(in1, rng.standard_normal((1, 6, 3)), mode=mode, axes=axes)
    compare(in1, rng.standard_normal((4, 1, 12)), mode=mode, axes=axes)


@pytest.mark.parametrize("s1, s2, axes", [
    ((1, 40), (6, 9), -1), ((6, 40), (1, 9), -1), ((3, 1, 40), (1, 4, 9), -1),
    ((3, 1, 40), (1, 4, 9), 2), ((40, 3), (9, 1), 0), ((1, 1, 40), (5, 4, 70), -1),
    ((2, 3, 40), (2, 3, 70), [2]), ((7, 40), (7, 40), 1), ((5, 1), (5, 8), 1),
])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_broadcasting_non_conv_axes(rng, s1, s2, axes, mode):
    compare(rng.standard_normal(s1), rng.standard_normal(s2), mode=mode, axes=axes)


def test_output_is_c_contiguous(rng):
    out = fftconvolve_long(rng.standard_normal((30, 4)), rng.standard_normal((7, 4)), axes=0)
    assert out.flags.c_contiguous


@pytest.mark.parametrize("args, kwargs", [
    ((np.ones(3), np.ones(2)), {"mode": "bogus"}),
    ((np.ones(3), np.ones(2)), {"mode": None}),
    ((np.ones(3), np.ones(2)), {"mode": 1}),
    ((np.ones((3, 2)), np.ones(2)), {}),
    ((None, np.ones(2)), {}),
    ((np.ones(3), np.ones(2)), {"axes": []}),
    ((np.ones(3), np.ones(2)), {"axes": 1}),
    ((np.ones(3), np.ones(2)), {"axes": -2}),
    ((np.ones(3), np.ones(2)), {"axes": 0.5}),
    ((np.ones(3), np.ones(2)), {"axes": "a"}),
    ((np.ones(3), np.ones(2)), {"axes": [None]}),
    ((np.ones((2, 3)), np.ones((2, 3))), {"axes": [0, 0]}),
    ((np.ones((2, 3)), np.ones((2, 3))), {"axes": [1, -1]}),
    ((np.ones((3, 2)), np.ones((2, 3))), {"axes": 0}),
    ((np.ones((3, 2)), np.ones((2, 3))), {"mode": "valid"}),
    ((np.ones((3, 4, 5)), np.ones((2, 3, 5))), {"axes": -1}),
    ((np.ones((3, 2)), np.ones((2, 3))), {"mode": "bogus", "axes": 0}),
    ((np.ones(3), np.ones(5)), {"mode": "bogus"}),
    ((np.ones(1), np.ones(1)), {"mode": "bogus"}),
])
def test_errors_match_scipy(args, kwargs):
    compare(*args, **kwargs)


def test_scalar_with_bogus_mode_is_product():
    assert compare(3, 4, mode="bogus") == 12


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_nan_and_inf_propagate_as_scipy(rng, mode):
    for bad in (np.nan, np.inf, -np.inf):
        x = rng.standard_normal((3, 5000))
        x[1, 2000] = bad
        k = rng.standard_normal((1, 33))
        ref = scipy.signal.fftconvolve(x, k, mode=mode, axes=-1)
        out = fftconvolve_long(x, k, mode=mode, axes=-1)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))
        ok = np.isfinite(ref)
        np.testing.assert_allclose(out[ok], ref[ok], rtol=1e-10, atol=1e-10 * np.abs(ref[ok]).max())


@pytest.mark.parametrize("make", [
    lambda a: a[:, ::2],
    lambda a: a[:, ::-1],
    lambda a: a.T.copy().T,
    lambda a: np.asfortranarray(a),
    lambda a: a[::-1, ::-3],
])
def test_non_contiguous_views(rng, make):
    base1 = rng.standard_normal((6, 300))
    base2 = rng.standard_normal((6, 40))
    compare(make(base1), make(base2), axes=-1)
    compare(make(base1), make(base2), axes=0, mode="same")


def test_broadcast_to_views(rng):
    x = np.broadcast_to(rng.standard_normal(200), (5, 200))
    compare(x, rng.standard_normal((5, 30)), axes=-1)
