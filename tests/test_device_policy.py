"""Where NumPy problems run: the CPU, or a GPU when the problem pays for the copies.

The CPU tests replace the "is a GPU usable" and "how much GPU memory is free" probes, so the
decision logic runs (and is checked) on machines without a GPU; the GPU test runs the real
thing.
"""

import numpy as np
import pytest

import longconv
from longconv import _arrays, _cpu, _plan, _signaltools, testing


class Chose(Exception):
    """Raised by the backend spy: the device a plan was asked for, without running it."""


@pytest.fixture
def gpu_present(monkeypatch):
    """A usable GPU with 80 GB free, as far as the policy can tell."""
    monkeypatch.setattr(_plan, "_gpu_available", lambda: True)
    monkeypatch.setattr(_plan, "_gpu_free_bytes", lambda: 80 << 30)
    monkeypatch.setattr(_arrays, "gpu_memory", lambda: 80 << 30)


@pytest.fixture
def no_gpu_lookup(monkeypatch):
    """Fail the test if the policy looks for a GPU."""
    def fail():
        raise AssertionError("looked for a GPU for a problem the CPU should take")

    monkeypatch.setattr(_plan, "_gpu_available", fail)
    monkeypatch.setattr(_plan, "_gpu_free_bytes", fail)


@pytest.fixture
def spy_backend(monkeypatch):
    """Record the device of every backend plan requested; stop GPU requests before they run."""
    seen = []
    real = _plan._select_backend

    def spy(k, L, *, device, data_device, **kw):
        where = device or data_device
        seen.append(where)
        if where == "gpu":
            raise Chose("gpu")
        return real(k, L, device=device, data_device=data_device, **kw)

    monkeypatch.setattr(_plan, "_select_backend", spy)
    monkeypatch.setattr(_signaltools, "_select_backend", spy)
    # the plan's array module is looked up before the backend: NumPy stands in for CuPy
    # (which may not be installed) until the spy stops the call
    monkeypatch.setattr(_arrays, "xp_for", lambda device: np)
    return seen


def decide(rows, L, Lk=None, mode="causal", itemsize=4, workers=16):
    Lk = L if Lk is None else Lk
    return _plan.host_problem_device(rows, L, Lk, mode, bytes_in=(rows * L + Lk) * itemsize,
                                     bytes_out=rows * L * itemsize,
                                     io_dtype="float64" if itemsize == 8 else "float32",
                                     workers=workers)


# ------------------------------------------------------------------ the decision


def test_small_problems_never_look_for_a_gpu(no_gpu_lookup, rng):
    # below GPU_WIN_MARGIN * GPU_CALL_SECONDS of estimated CPU time the answer is the CPU
    # without asking CUDA anything (no CUDA start-up for small calls)
    for rows, L in [(1, 256), (1, 4096), (1, 32768), (256, 1024)]:
        assert decide(rows, L) == "cpu"
    x = testing.random_array(rng, (2, 3, 500), "float32")
    k = testing.random_array(rng, (3, 500), "float32")
    testing.assert_close(longconv.convolve(x, k), testing.reference_convolve(x, k))


def test_threshold_follows_the_estimates(gpu_present):
    # on a 16-core host (measured beside an H100: CPU 27.6 ms, GPU 1.3 ms) one sequence of
    # 256K samples already goes to the GPU, one of 64K (about 1 ms either way) stays
    assert decide(1, 2**16) == "cpu"
    assert decide(1, 2**18) == "gpu"
    assert decide(16, 2**16) == "gpu"  # 16 rows keep one CPU thread busy: 18.7 ms / 2.5 ms
    # 256 rows use all 16 threads: the CPU is within the 2x margin (63.9 ms / 42.3 ms)
    assert decide(256, 2**16) == "cpu"
    # fewer CPU threads: the GPU wins sooner
    assert decide(256, 2**16, workers=1) == "gpu"
    # the decision is monotone in the batch
    picks = [decide(rows, 2**16) for rows in (1, 2, 4, 8, 16, 32, 64, 128)]
    assert picks == sorted(picks)  # "cpu" < "gpu": never back to the CPU once on the GPU
    assert picks[0] == "cpu" and picks[-1] == "gpu"


def test_estimates_match_the_recorded_cpu_benchmark():
    # docs/benchmarks.md: x (16, 64, 65536) * k (64, 65536) float32 causal took 0.204 s on 16
    # cores, 1.278 s on one; the model is calibrated on it
    t16 = _plan.cpu_seconds_estimate(1024, 65536, 65536, "causal", workers=16)
    t1 = _plan.cpu_seconds_estimate(1024, 65536, 65536, "causal", workers=1)
    assert t16 == pytest.approx(0.204, rel=0.1) and t1 == pytest.approx(1.278, rel=0.1)
    # float64 costs more, a short filter (overlap-add) less than one long FFT per row
    assert _plan.cpu_seconds_estimate(8, 2**20, 2**20, "full", double=True, workers=1) > \
        _plan.cpu_seconds_estimate(8, 2**20, 2**20, "full", workers=1)
    assert _plan.cpu_seconds_estimate(8, 2**20, 100, "full", workers=1) < \
        _plan.cpu_seconds_estimate(8, 2**20, 2**20, "full", workers=1) / 3
    # single long rows run on one thread, out of cache (16-core Xeon: 1 x 2**20 took 92.6 ms,
    # 1 x 2**22 448 ms)
    assert _plan.cpu_seconds_estimate(1, 2**20, 2**20, "causal", workers=16) == \
        pytest.approx(0.0926, rel=0.25)
    assert _plan.cpu_seconds_estimate(1, 2**22, 2**22, "causal", workers=16) == \
        pytest.approx(0.448, rel=0.25)
    # the GPU side is dominated by the copies: 1 GB each way takes ~0.5 s at 4 GB/s
    assert _plan.gpu_seconds_estimate(1, 2**20, 2**20, "causal", bytes_moved=2e9) == \
        pytest.approx(2e9 / _plan.HOST_LINK_BYTES_PER_SECOND, rel=0.05)


def test_no_gpu_or_no_room_means_cpu(monkeypatch):
    monkeypatch.setattr(_plan, "_gpu_available", lambda: False)
    monkeypatch.setattr(_plan, "_gpu_free_bytes", lambda: 80 << 30)
    assert decide(64, 2**16) == "cpu"
    monkeypatch.setattr(_plan, "_gpu_available", lambda: True)
    monkeypatch.setattr(_plan, "_gpu_free_bytes", lambda: 64 << 20)
    assert decide(64, 2**16) == "cpu"  # 32 MB of data + headroom do not fit in 64 MB
    monkeypatch.setattr(_plan, "_gpu_free_bytes", lambda: 80 << 30)
    assert decide(64, 2**16) == "gpu"


def test_adapters_can_keep_host_data_on_the_cpu(gpu_present):
    with _plan.host_data_on_cpu():
        assert decide(64, 2**16) == "cpu"
    assert decide(64, 2**16) == "gpu"


# ------------------------------------------------------------------ the entry points


def test_large_numpy_calls_ask_for_the_gpu(gpu_present, spy_backend, monkeypatch, rng):
    monkeypatch.setattr(_plan, "_usable_cores", lambda: 1)
    x = testing.random_array(rng, (2, 8, 2**16), "float32")
    k = testing.random_array(rng, (8, 2**16), "float32")
    with pytest.raises(Chose):
        longconv.convolve(x, k)
    with pytest.raises(Chose):
        longconv.fftconvolve_long(x, k[None], axes=-1)
    with pytest.raises(Chose):
        longconv.LongConv(k, 2**16)(x)  # built on the CPU (k's device), called on the GPU
    assert spy_backend == ["gpu", "gpu", "cpu", "gpu"]


def test_device_cpu_overrides_the_policy(gpu_present, spy_backend, monkeypatch, rng):
    monkeypatch.setattr(_plan, "_usable_cores", lambda: 1)
    x = testing.random_array(rng, (1, 4, 2**16), "float32")
    k = testing.random_array(rng, (4, 2**16), "float32")
    ref = testing.reference_convolve(x, k)
    testing.assert_close(longconv.convolve(x, k, device="cpu"), ref)
    testing.assert_close(longconv.LongConv(k, 2**16, device="cpu")(x), ref)
    y = longconv.fftconvolve_long(x, k[None], axes=-1, device="cpu")
    testing.assert_close(y[..., :2**16], ref)
    assert set(spy_backend) == {"cpu"}
    with pytest.raises(Chose):
        longconv.convolve(x[..., :64], k[:, :64], device="gpu")  # explicit, however small


def test_other_array_kinds_keep_their_device(gpu_present, spy_backend, monkeypatch, rng):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(_plan, "_usable_cores", lambda: 1)
    x = torch.from_numpy(testing.random_array(rng, (2, 8, 2**16), "float32"))
    k = torch.from_numpy(testing.random_array(rng, (8, 2**16), "float32"))
    assert decide(16, 2**16, workers=1) == "gpu"  # what NumPy data this large would get
    y = longconv.convolve(x, k)  # CPU tensors: the CPU backend (also for the gradient's FFTs)
    assert isinstance(y, torch.Tensor) and y.device.type == "cpu"
    longconv.fftconvolve_long(x[:1, :2], k[None, :2], axes=-1)
    longconv.LongConv(k, 2**16)(x[:1])
    assert set(spy_backend) == {"cpu"}
    testing.assert_close(y.numpy(), testing.reference_convolve(x.numpy(), k.numpy()))
    xg = x[:1, :2, :4096].clone().requires_grad_()
    kg = k[:2, :4096].clone().requires_grad_()
    longconv.convolve(xg, kg).square().sum().backward()
    assert set(spy_backend) == {"cpu"} and kg.grad is not None


def test_device_argument_errors(rng):
    x = testing.random_array(rng, (2, 64))
    with pytest.raises(ValueError, match="device must be None, 'cpu' or 'gpu'; got 'tpu'"):
        longconv.convolve(x, x, device="tpu")
    with pytest.raises(TypeError, match="device must be None, 'cpu' or 'gpu'; got int"):
        longconv.fftconvolve_long(x, x, device=0)
    with pytest.raises(NotImplementedError, match="several axes"):
        longconv.fftconvolve_long(x, x, device="gpu")
    assert longconv.fftconvolve_long(x, x, device="cpu").shape == (3, 127)


def test_device_for_tensors_must_be_theirs(rng):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(testing.random_array(rng, (2, 64)))
    assert longconv.convolve(x, x, device="cpu").shape == (2, 64)
    with pytest.raises(NotImplementedError, match="torch arrays compute where they live"):
        longconv.convolve(x, x, device="gpu")


def test_device_for_dask_is_not_implemented(rng):
    da = pytest.importorskip("dask.array")
    x = da.from_array(testing.random_array(rng, (2, 64)), chunks=(1, 64))
    with pytest.raises(NotImplementedError, match="dask arrays compute where they live"):
        longconv.convolve(x, np.ones(4), device="cpu")
    with pytest.raises(NotImplementedError, match="dask arrays"):
        longconv.fftconvolve_long(x, np.ones((1, 4)), axes=-1, device="gpu")


# ------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
def test_numpy_in_numpy_out_on_the_gpu(monkeypatch, rng):
    from longconv import _gpu_exact

    used = []
    for mod, name in ((_gpu_exact, "gpu"), (_cpu, "cpu")):
        real = mod.make_conv_plan

        def spy(*a, _real=real, _name=name, **kw):
            used.append(_name)
            return _real(*a, **kw)

        monkeypatch.setattr(mod, "make_conv_plan", spy)
    # one CPU thread in the estimate: the GPU's side wins whatever the host's core count
    monkeypatch.setattr(_plan, "_usable_cores", lambda: 1)
    x = testing.random_array(rng, (2, 32, 2**16), "float32")
    k = testing.random_array(rng, (32, 2**16), "float32")
    ref = testing.reference_convolve(x, k)
    y = longconv.convolve(x, k)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and used == ["gpu"]
    testing.assert_close(y, ref)
    yf = longconv.fftconvolve_long(x, k[None], axes=-1)
    assert isinstance(yf, np.ndarray) and used == ["gpu", "gpu"]
    testing.assert_close(yf[..., :2**16], ref)
    plan = longconv.LongConv(k, 2**16)
    assert plan.backend == "cpu" and used == ["gpu", "gpu", "cpu"]
    testing.assert_close(plan(x), ref)
    assert used == ["gpu", "gpu", "cpu", "gpu"]
    used.clear()
    testing.assert_close(longconv.convolve(x, k, device="cpu"), ref)
    small = longconv.convolve(x[:, :2, :512], k[:2, :512])
    testing.assert_close(small, testing.reference_convolve(x[:, :2, :512], k[:2, :512]))
    assert used == ["cpu", "cpu"]
