"""Dask arrays: lazy results equal to the in-memory computation (needs ``dask[array]``)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

import longconv
from longconv import testing

da = pytest.importorskip("dask.array", reason="needs dask[array] (pip install 'longconv[dask]')")
dask = pytest.importorskip("dask")


@pytest.fixture(autouse=True, params=["synchronous", "threads"])
def scheduler(request):
    with dask.config.set(scheduler=request.param):
        yield request.param


def close(y, ref, dtype):
    testing.assert_close(np.asarray(y), ref, dtype)


@pytest.mark.parametrize("chunks_t", [(97,), (50, 47), (30, 31, 36), (13, 40, 12, 32)])
@pytest.mark.parametrize("causal", [True, False])
def test_convolve_time_chunks(rng, chunks_t, causal):
    x = rng.standard_normal((3, 4, 97))
    k = rng.standard_normal((4, 13))
    xd = da.from_array(x, chunks=(2, 3, chunks_t))
    y = longconv.convolve(xd, k, causal=causal)
    assert isinstance(y, da.Array) and y.chunks[:2] == xd.chunks[:2]
    assert y.shape == x.shape and y.dtype == np.float64
    ref = longconv.convolve(x, k, causal=causal)
    close(y.compute(), ref, np.float64)
    close(ref, testing.reference_convolve(x, k, causal), np.float64)


def test_convolve_gates_skip_kernel_len_float32(rng):
    x = rng.standard_normal((2, 5, 300)).astype(np.float32)
    k = rng.standard_normal((5, 80)).astype(np.float32)
    pre = rng.standard_normal((2, 5, 300)).astype(np.float32)
    post = rng.standard_normal((5, 300)).astype(np.float32)
    skip = rng.standard_normal(5).astype(np.float32)
    xd = da.from_array(x, chunks=(1, 2, (70, 100, 99, 31)))
    pred = da.from_array(pre, chunks=(1, 5, 150))
    y = longconv.convolve(xd, k, pregate=pred, postgate=post, skip=skip, kernel_len=60)
    assert y.dtype == np.float32
    ref = longconv.convolve(x, k, pregate=pre, postgate=post, skip=skip, kernel_len=60)
    close(y.compute(), ref, np.float32)


def test_convolve_shared_filter_and_1d(rng):
    x = rng.standard_normal(1000)
    k = rng.standard_normal(200)
    y = longconv.convolve(da.from_array(x, chunks=250), k)
    close(y.compute(), longconv.convolve(x, k), np.float64)
    x2 = rng.standard_normal((6, 1000))
    y2 = longconv.convolve(da.from_array(x2, chunks=(4, 333)), k)
    close(y2.compute(), longconv.convolve(x2, k), np.float64)


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("chunks_t", [(500,), (130, 170, 200), (41, 459)])
def test_fftconvolve_time_chunks(rng, mode, chunks_t):
    x = rng.standard_normal((4, 500))
    k = rng.standard_normal((4, 41))
    xd = da.from_array(x, chunks=(3, chunks_t))
    y = longconv.fftconvolve_long(xd, k, mode=mode, axes=-1)
    ref = scipy.signal.fftconvolve(x, k, mode=mode, axes=-1)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    close(y.compute(), ref, np.float64)


def test_fftconvolve_axis0_broadcast_filter_int_input(rng):
    x = rng.integers(-5, 5, size=(400, 3))
    k = rng.standard_normal((30, 1))
    xd = da.from_array(x, chunks=((100, 150, 150), 2))
    y = longconv.fftconvolve_long(xd, k, mode="same", axes=0)
    ref = scipy.signal.fftconvolve(x, k, mode="same", axes=0)
    assert y.dtype == ref.dtype == np.float64
    close(y.compute(), ref, np.float64)
    y32 = longconv.fftconvolve_long(xd, k.astype(np.float32), mode="full", axes=0)
    ref32 = longconv.fftconvolve_long(x, k.astype(np.float32), mode="full", axes=0)
    assert y32.dtype == ref32.dtype
    close(y32.compute(), ref32, np.float32)


def test_fftconvolve_single_time_chunk_circular_and_freq_keep(rng):
    x = rng.standard_normal((5, 256))
    k = rng.standard_normal((1, 300))
    xd = da.from_array(x, chunks=(2, 256))
    close(longconv.fftconvolve_long(xd, k, mode="circular", axes=-1).compute(),
          longconv.fftconvolve_long(x, k, mode="circular", axes=-1), np.float64)
    close(longconv.fftconvolve_long(xd, k, axes=-1, freq_keep=0.5).compute(),
          longconv.fftconvolve_long(x, k, axes=-1, freq_keep=0.5), np.float64)


def test_filter_longer_than_chunk_says_how_to_rechunk(rng):
    xd = da.from_array(rng.standard_normal((2, 1000)), chunks=(2, 100))
    k = rng.standard_normal((2, 300))
    with pytest.raises(ValueError, match=r"x\.rechunk\(\{-1: 299\}\)"):
        longconv.convolve(xd, k)
    with pytest.raises(ValueError, match="rechunk the time axis to chunks >= 299"):
        longconv.fftconvolve_long(xd, k, axes=-1)
    # the advice works
    y = longconv.convolve(xd.rechunk({-1: 299}), k)
    close(y.compute(), longconv.convolve(xd.compute(), k), np.float64)


def test_circular_split_time_is_not_implemented(rng):
    xd = da.from_array(rng.standard_normal((2, 100)), chunks=(2, 50))
    with pytest.raises(NotImplementedError, match="one chunk"):
        longconv.fftconvolve_long(xd, np.ones((1, 3)), mode="circular", axes=-1)


def test_lazy_until_computed(rng):
    calls = []
    x = da.from_array(rng.standard_normal((2, 64)), chunks=(1, 32))
    x = x.map_blocks(lambda b: calls.append(b.size) or b, meta=np.empty((0, 0)))
    y = longconv.convolve(x, np.ones(5))
    assert not any(calls) and isinstance(y, da.Array)
    y.compute()
    assert calls


@pytest.mark.gpu
def test_cupy_backed_dask(cp, rng):
    x = rng.standard_normal((4, 3, 2000)).astype(np.float32)
    k = rng.standard_normal((3, 400)).astype(np.float32)
    xd = da.from_array(cp.asarray(x), chunks=(2, 3, 700))
    y = longconv.convolve(xd, cp.asarray(k))
    out = y.compute()
    assert isinstance(out, cp.ndarray)
    close(cp.asnumpy(out), longconv.convolve(x, k), np.float32)


def test_fftconvolve_kernel_len_precision_with_time_chunks(rng):
    x = rng.standard_normal((3, 700))
    k = rng.standard_normal((1, 200))
    xd = da.from_array(x, chunks=(2, (150, 300, 250)))
    for mode in ("full", "same", "valid"):
        y = longconv.fftconvolve_long(xd, k, mode=mode, axes=-1, kernel_len=120,
                                      precision="single", workers=1)
        ref = longconv.fftconvolve_long(x, k, mode=mode, axes=-1, kernel_len=120,
                                        precision="single", workers=1)
        assert y.shape == ref.shape and y.dtype == ref.dtype
        close(y.compute(), ref, np.float32)


def test_convolve_freq_keep_needs_one_time_chunk(rng):
    x = rng.standard_normal((2, 3, 400))
    k = rng.standard_normal((3, 100))
    y = longconv.convolve(da.from_array(x, chunks=(1, 2, 400)), k, freq_keep=0.3)
    close(y.compute(), longconv.convolve(x, k, freq_keep=0.3), np.float64)
    with pytest.raises(NotImplementedError, match=r"x\.rechunk\(\{-1: -1\}\)"):
        longconv.convolve(da.from_array(x, chunks=(1, 2, 200)), k, freq_keep=0.3)


def test_dask_filter_and_numpy_signal(rng):
    x = rng.standard_normal((4, 300))
    k = rng.standard_normal((4, 50))
    y = longconv.convolve(x, da.from_array(k, chunks=(2, 25)))
    assert isinstance(y, da.Array)
    close(y.compute(), longconv.convolve(x, k), np.float64)
