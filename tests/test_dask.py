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


def test_filter_is_one_task_of_the_graph(rng):
    # a distributed scheduler ships every task on its own: the filter must not ride in each
    cloudpickle = pytest.importorskip("cloudpickle")
    k = rng.standard_normal((4, 5000))
    for chunks in ((1, 4, 12000), (2, 4, 6000)):
        # random chunks: their tasks hold a seed, not data
        xd = da.random.RandomState(int(rng.integers(1 << 30))).standard_normal(
            (8, 4, 12000), chunks=chunks)
        for y in (longconv.convolve(xd, k, causal=False),
                  longconv.fftconvolve_long(xd, k[None], mode="valid", axes=-1)):
            graph = dict(y.__dask_graph__())
            carriers = [name for name in graph if "longconv-filter" in str(name)]
            assert len(carriers) == 1
            assert len(cloudpickle.dumps(graph[carriers[0]])) > k.nbytes
            assert max(len(cloudpickle.dumps(t)) for name, t in graph.items()
                       if name not in carriers) < k.nbytes // 8
            x = xd.compute()
            ref = (longconv.convolve(x, k, causal=False) if y.shape == x.shape
                   else longconv.fftconvolve_long(x, k[None], mode="valid", axes=-1))
            close(y.compute(), ref, np.float64)


# --------------------------------------------------------------------------------------------
# CuPy-backed dask arrays (chunks on the GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("chunks", [((2, 2), 3, 2000), (4, (1, 2), (700, 700, 600)),
                                    ((1, 3), 3, (401, 1599))])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cupy_backed_convolve(cp, rng, chunks, causal, dtype):
    x = rng.standard_normal((4, 3, 2000)).astype(dtype)
    k = rng.standard_normal((3, 400)).astype(dtype)
    xd = da.from_array(cp.asarray(x), chunks=chunks)
    assert isinstance(xd._meta, cp.ndarray)
    y = longconv.convolve(xd, cp.asarray(k), causal=causal)
    assert isinstance(y, da.Array) and isinstance(y._meta, cp.ndarray)
    assert y.chunks[:-1] == xd.chunks[:-1] and y.dtype == dtype
    blocks = y.to_delayed().ravel()
    assert all(isinstance(b.compute(), cp.ndarray) for b in blocks[:2])
    out = y.compute()
    assert isinstance(out, cp.ndarray) and out.dtype == dtype and out.shape == x.shape
    testing.assert_close(out, testing.reference_convolve(x, k, causal), dtype)


@pytest.mark.gpu
def test_cupy_chunks_with_numpy_filter_gates_and_skip(cp, rng):
    # operands held as NumPy (or as a NumPy-backed dask array) move to the chunks' GPU
    x = rng.standard_normal((2, 5, 900)).astype(np.float32)
    k = rng.standard_normal((5, 300)).astype(np.float32)
    pre = rng.standard_normal((2, 5, 900)).astype(np.float32)
    post = rng.standard_normal((5, 900)).astype(np.float32)
    skip = rng.standard_normal(5).astype(np.float32)
    xd = da.from_array(cp.asarray(x), chunks=(1, 2, 300))
    for kw in (dict(pregate=da.from_array(pre, chunks=(1, 5, 450)), postgate=post,
                    skip=cp.asarray(skip)),
               dict(pregate=cp.asarray(pre), postgate=da.from_array(post), skip=skip)):
        y = longconv.convolve(xd, k, kernel_len=250, **kw)
        assert isinstance(y._meta, cp.ndarray) and y.dtype == np.float32
        out = y.compute()
        assert isinstance(out, cp.ndarray)
        ref = testing.reference_convolve(x, k, pregate=pre, postgate=post, skip=skip,
                                         kernel_len=250)
        testing.assert_close(out, ref, np.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_cupy_backed_fftconvolve_time_chunks_axis0(cp, rng, mode):
    # audio layout: (frames, channels), time chunked, one filter broadcast over channels
    x = rng.standard_normal((3000, 4))
    k = rng.standard_normal((500, 1))
    xd = da.from_array(cp.asarray(x), chunks=((1000, 1200, 800), 2))
    y = longconv.fftconvolve_long(xd, k, mode=mode, axes=0)
    ref = scipy.signal.fftconvolve(x, k, mode=mode, axes=0)
    assert isinstance(y._meta, cp.ndarray) and y.shape == ref.shape and y.dtype == ref.dtype
    out = y.compute()
    assert isinstance(out, cp.ndarray)
    testing.assert_close(out, ref, np.float64)


@pytest.mark.gpu
def test_cupy_backed_fftconvolve_one_time_chunk_circular(cp, rng):
    x = rng.standard_normal((6, 1024)).astype(np.float32)
    k = rng.standard_normal((1, 1500)).astype(np.float32)
    xd = da.from_array(cp.asarray(x), chunks=(4, 1024))
    y = longconv.fftconvolve_long(xd, cp.asarray(k), mode="circular", axes=-1)
    assert isinstance(y._meta, cp.ndarray) and y.dtype == np.float32
    out = y.compute()
    assert isinstance(out, cp.ndarray)
    testing.assert_close(out, testing.reference_fftconvolve(x, k, mode="circular", axes=-1),
                         np.float32)


@pytest.mark.gpu
def test_numpy_chunks_with_cupy_filter(cp, rng):
    # the other way round: NumPy chunks stay on the CPU, a CuPy filter comes to the host
    x = rng.standard_normal((2, 3, 1200))
    k = rng.standard_normal((3, 200))
    y = longconv.convolve(da.from_array(x, chunks=(1, 3, 600)), cp.asarray(k))
    assert isinstance(y._meta, np.ndarray)
    out = y.compute()
    assert isinstance(out, np.ndarray)
    testing.assert_close(out, testing.reference_convolve(x, k), np.float64)


@pytest.mark.gpu
@pytest.mark.slow
def test_local_cuda_cluster(cp, rng, scheduler):
    # one worker per GPU (dask-cuda); every chunk computed where it lives
    if scheduler != "synchronous":
        pytest.skip("the cluster brings its own scheduler: one run is enough")
    pytest.importorskip("distributed", reason="needs distributed")
    dask_cuda = pytest.importorskip("dask_cuda")  # the skip names the import error
    from distributed import Client, wait

    x = rng.standard_normal((8, 4, 4096)).astype(np.float32)
    k = rng.standard_normal((4, 1000)).astype(np.float32)
    with dask_cuda.LocalCUDACluster(n_workers=min(2, cp.cuda.runtime.getDeviceCount()),
                                    threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        xd = da.from_array(x, chunks=(2, 4, (2048, 2048))).map_blocks(cp.asarray)
        assert isinstance(xd._meta, cp.ndarray)
        y = longconv.convolve(xd, k).persist()
        wait(y)
        placed = client.who_has(y)
        assert len(placed) == y.npartitions and all(placed.values())
        out = client.compute(y.map_blocks(cp.asnumpy, meta=np.empty((0, 0, 0), np.float32)))
        testing.assert_close(out.result(), testing.reference_convolve(x, k), np.float32)
        if len(cluster.workers) > 1:
            assert len({w for ws in placed.values() for w in ws}) > 1


@pytest.mark.gpu
def test_cupy_chunks_never_import_cupy_inside_our_tasks(cp, rng, scheduler):
    """With CuPy chunks, the tasks that move the filter and a NumPy gate to the GPU are
    ``cupy.asarray`` itself (pickled by reference, so a distributed worker imports CuPy while
    unpickling them), not a function of ours that imports CuPy while it runs: a worker's first
    import of CuPy from two threads at once can fail and hang the computation."""
    from longconv import _dask

    x = da.from_array(rng.standard_normal((4, 3, 500)).astype(np.float32),
                      chunks=(2, 3, 500)).map_blocks(cp.asarray)
    k = rng.standard_normal((3, 40)).astype(np.float32)
    gate = rng.standard_normal((3, 500)).astype(np.float32)
    y = longconv.convolve(x, k, pregate=gate)
    graph = dict(y.__dask_graph__())
    filt = [t for key, t in graph.items()
            if isinstance(key, str) and key.startswith("longconv-filter-cupy-")]
    assert len(filt) == 1 and filt[0].func is cp.asarray
    assert _dask._as_kind not in [getattr(t, "func", None) for t in graph.values()]
    ref = testing.reference_convolve(cp.asnumpy(x.compute()) * gate, k)
    testing.assert_close(cp.asnumpy(y.compute()), ref, np.float32)


def test_numpy_chunks_compute_on_the_cpu_whatever_the_size_policy(monkeypatch, rng):
    # a machine with a GPU, where the policy would send NumPy calls of this size to it: dask's
    # NumPy chunks still compute where they live (the GPU lookups are faked; nothing may run)
    from longconv import _plan, _signaltools

    monkeypatch.setattr(_plan, "_gpu_available", lambda: True)
    monkeypatch.setattr(_plan, "_gpu_free_bytes", lambda: 80 << 30)
    monkeypatch.setattr(_plan, "_usable_cores", lambda: 1)
    seen = []
    real = _plan._select_backend

    def spy(k, L, *, device, data_device, **kw):
        seen.append(device or data_device)
        return real(k, L, device="cpu", data_device=data_device, **kw)

    monkeypatch.setattr(_plan, "_select_backend", spy)
    monkeypatch.setattr(_signaltools, "_select_backend", spy)
    token = _plan._HOST_DATA_ON_CPU.set(False)  # lift the test suite's own CPU pin
    try:
        assert _plan.host_problem_device(16, 2**16, 2**16, "causal", bytes_in=2**23,
                                         bytes_out=2**22, io_dtype="float32") == "gpu"
        x = testing.random_array(rng, (2, 16, 2**16), "float32")
        k = testing.random_array(rng, (16, 2**16), "float32")
        y = longconv.convolve(da.from_array(x, chunks=(1, 16, 2**16)), k).compute()
        f = longconv.fftconvolve_long(da.from_array(x, chunks=(1, 16, 2**16)), k[None], axes=-1)
        f = f.compute()
    finally:
        _plan._HOST_DATA_ON_CPU.reset(token)
    testing.assert_close(y, testing.reference_convolve(x, k))
    testing.assert_close(f[..., :2**16], testing.reference_convolve(x, k))
    assert seen and set(seen) == {"cpu"}
