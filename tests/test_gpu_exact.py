"""The exact GPU path (CuPy cuFFT) against the float64 oracle. Runs only with a CUDA device."""

import numpy as np
import pytest

from longconv import LongConv, _gpu_exact, _plan, convolve, fftconvolve_long, testing

pytestmark = pytest.mark.gpu

MODES = ["causal", "circular", "full", "same", "valid"]
SIZES = [(1, 1), (2, 3), (97, 97), (1000, 37), (4095, 4097), (4097, 12), (2**13 + 1, 2**13 - 1)]


def on_gpu(cp, a):
    return cp.asarray(a)


@pytest.mark.parametrize("mode, L, Lk", [(m, L, Lk) for m in MODES for L, Lk in SIZES
                                         if m != "valid" or L >= Lk])
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex128"])
def test_protocol_modes(cp, rng, mode, L, Lk, dtype):
    x = testing.random_array(rng, (2, 3, L), dtype)
    k = testing.random_array(rng, (3, Lk), dtype)
    plan = _gpu_exact.make_conv_plan(cp.asarray(k), L, mode=mode, io_dtype=dtype)
    assert plan.backend == "cupy"
    y = plan(cp.asarray(x))
    assert isinstance(y, cp.ndarray) and y.dtype == np.dtype(dtype)
    testing.assert_close(y, testing.reference(x, k, mode), dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_exact_path_half_dtypes(cp, rng, mode, dtype):
    L, Lk = 3000, 1001
    x = testing.random_array(rng, (2, 3, L), dtype)
    k = testing.random_array(rng, (3, Lk), dtype)
    pre = testing.random_array(rng, (2, 3, L), dtype)
    skip = testing.random_array(rng, (3,), dtype)
    plan = _gpu_exact.make_conv_plan(cp.asarray(k), L, mode=mode, io_dtype=dtype)
    gated = mode in ("causal", "circular", "same")  # the modes whose output lines up with x
    y = plan(cp.asarray(x), pregate=cp.asarray(pre) if gated else None,
             skip=cp.asarray(skip) if gated else None)
    assert y.dtype == (cp.uint16 if dtype == "bfloat16" else cp.float16)
    if not gated:
        ref = testing.reference(x, k, mode, dtype=dtype)
    else:
        xh, ph = testing.to_host(x, dtype), testing.to_host(pre, dtype)
        ref = testing.reference(xh * ph, testing.to_host(k, dtype), mode)
        ref = ref + testing.to_host(skip, dtype)[:, None] * xh
    testing.assert_close(y, ref, dtype)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "complex64", "complex128"])
@pytest.mark.parametrize("causal", [True, False])
def test_convolve_cupy_in_cupy_out(cp, rng, dtype, causal):
    x = testing.random_array(rng, (2, 4, 1000), dtype)
    k = testing.random_array(rng, (4, 1000), "float32")
    y = convolve(cp.asarray(x), cp.asarray(k), causal=causal)
    assert isinstance(y, cp.ndarray)
    assert y.dtype == np.dtype(dtype) and y.shape == x.shape
    testing.assert_close(y, testing.reference_convolve(x, k, causal), dtype)


def test_convolve_gates_skip(cp, rng):
    B, H, L = 2, 3, 777
    x, pre, post = (testing.random_array(rng, (B, H, L), "float32") for _ in range(3))
    k = testing.random_array(rng, (H, L), "float32")
    skip = testing.random_array(rng, (H,), "float32")
    y = convolve(*(cp.asarray(a) for a in (x, k)), pregate=cp.asarray(pre),
                 postgate=cp.asarray(post), skip=cp.asarray(skip))
    ref = testing.reference_convolve(x, k, pregate=pre, postgate=post, skip=skip)
    testing.assert_close(y, ref, "float32")


def test_bfloat16_uint16_views_public_api(cp, rng):
    L = 2048
    x = testing.random_array(rng, (2, 4, L), "bfloat16")
    k = testing.random_array(rng, (4, L), "bfloat16")
    xg, kg = cp.asarray(x), cp.asarray(k)
    assert xg.dtype == cp.uint16
    plan = LongConv(kg, L, dtype="bfloat16")
    y = plan(xg)
    assert isinstance(y, cp.ndarray) and y.dtype == cp.uint16 and y.shape == x.shape
    testing.assert_close(y, testing.reference_convolve(x, k, dtype="bfloat16"), "bfloat16")
    cp.testing.assert_array_equal(xg, cp.asarray(x))


def test_exact_path_never_feeds_bf16_to_cufft(cp, rng, monkeypatch):
    seen = []
    for name in ("rfft", "irfft", "fft", "ifft"):
        real = getattr(cp.fft, name)

        def spy(a, *args, _real=real, **kw):
            seen.append(a.dtype)
            return _real(a, *args, **kw)

        monkeypatch.setattr(cp.fft, name, spy)
    k = cp.asarray(testing.random_array(rng, (2, 64), "bfloat16"))
    x = cp.asarray(testing.random_array(rng, (3, 2, 64), "bfloat16"))
    plan = _gpu_exact.make_conv_plan(k, 64, mode="causal", io_dtype="bfloat16")
    plan(x)
    assert seen and all(d in (np.float32, np.complex64) for d in seen)


def test_longconv_reuse_and_update(cp, rng):
    k1 = testing.random_array(rng, (3, 4096), "float32")
    k2 = testing.random_array(rng, (3, 4096), "float32")
    plan = LongConv(cp.asarray(k1), 4096, dtype="float32", precision="single")
    for _ in range(3):
        x = testing.random_array(rng, (2, 3, 4096), "float32")
        testing.assert_close(plan(cp.asarray(x)), testing.reference_convolve(x, k1))
    plan.update(cp.asarray(k2))
    x = testing.random_array(rng, (2, 3, 4096), "float32")
    testing.assert_close(plan(cp.asarray(x)), testing.reference_convolve(x, k2))


def test_float64_exact_path_is_exact(cp, rng):
    x = testing.random_array(rng, (2, 3, 5000))
    k = testing.random_array(rng, (3, 5000))
    plan = LongConv(cp.asarray(k), 5000)
    assert plan.backend == "cupy"
    testing.assert_close(plan(cp.asarray(x)), testing.reference_convolve(x, k), rtol=1e-12)


@pytest.mark.parametrize("mode", ["full", "same", "valid", "circular"])
@pytest.mark.parametrize("dtype", ["float64", "complex128", "float32", "float16", "int64"])
def test_fftconvolve_long_cupy(cp, rng, mode, dtype):
    import scipy.signal

    x = testing.random_array(rng, (3, 1, 600), dtype)
    k = testing.random_array(rng, (1, 4, 90), dtype)
    y = fftconvolve_long(cp.asarray(x), cp.asarray(k), mode=mode, axes=-1)
    assert isinstance(y, cp.ndarray)
    ref = testing.reference_fftconvolve(x, k, mode, axes=-1)
    assert y.shape == ref.shape
    if mode != "circular":
        assert y.dtype == scipy.signal.fftconvolve(x, k, mode=mode, axes=-1).dtype
    tol = 1e-5 if dtype in ("float32", "float16") else 1e-12
    testing.assert_close(y, ref, rtol=tol)


def test_fftconvolve_long_cupy_nd(cp, rng):
    import scipy.signal

    x = testing.random_array(rng, (20, 30))
    k = testing.random_array(rng, (5, 7))
    for mode in ("full", "same", "valid"):
        y = fftconvolve_long(cp.asarray(x), cp.asarray(k), mode=mode)
        testing.assert_close(y, scipy.signal.fftconvolve(x, k, mode=mode), rtol=1e-12)


def test_freq_keep_agrees_with_cpu(cp, rng):
    x = testing.random_array(rng, (2, 3, 1000), "float32")
    k = testing.random_array(rng, (3, 1000), "float32")
    y_gpu = convolve(cp.asarray(x), cp.asarray(k), freq_keep=0.3)
    y_cpu = convolve(x, k, freq_keep=0.3)
    testing.assert_close(y_gpu, y_cpu, "float32")
    testing.assert_close(y_gpu, testing.reference_convolve(x, k, freq_keep=0.3), "float32")


def test_mixed_kinds_rejected(cp, rng):
    with pytest.raises(TypeError) as e:
        convolve(cp.ones((2, 8)), np.ones((2, 3)))
    assert str(e.value) == "x and k must be the same kind of array; got cupy (x) and numpy (k)"


def test_device_override_numpy_on_gpu(cp, rng):
    x = testing.random_array(rng, (2, 2, 300))
    k = testing.random_array(rng, (2, 300))
    plan = LongConv(k, 300, device="gpu")
    assert plan.backend == "cupy"
    y = plan(x)
    assert isinstance(y, np.ndarray)
    testing.assert_close(y, testing.reference_convolve(x, k))


def test_select_backend_cupy_data(cp, rng):
    k = cp.asarray(testing.random_array(rng, (2, 64)))
    plan = _plan._select_backend(k, 64, data_device="gpu", device=None, mode="causal",
                                 io_dtype="float64")
    assert plan.backend == "cupy"


def test_poisoned_output_fully_written(cp, rng):
    x = testing.random_array(rng, (3, 5, 4097), "float32")
    k = testing.random_array(rng, (5, 4097), "float32")
    plan = _gpu_exact.make_conv_plan(cp.asarray(k), 4097, mode="causal", io_dtype="float32")
    cp.get_default_memory_pool().free_all_blocks()
    poison = testing.nan_poison((3, 5, 4097), "float32", cp)
    del poison
    y = plan(cp.asarray(x))
    testing.assert_all_written(y)
    testing.assert_close(y, testing.reference(x, k, "causal"))


def test_numpy_scalars_mix_with_cupy_arrays(cp, rng):
    x = testing.random_array(rng, (2, 3, 200), "float32")
    k = testing.random_array(rng, (3, 50), "float32")
    y = convolve(cp.asarray(x), cp.asarray(k), pregate=np.float32(2.0), skip=np.float64(0.5))
    assert isinstance(y, cp.ndarray)
    testing.assert_close(y, testing.reference_convolve(x, k, pregate=2.0, skip=0.5), "float32")
