"""The CPU backend through the internal backend protocol (x (B, H, L), k (Hk, Lk))."""

import numpy as np
import pytest

from longconv import _cpu, _plan, testing
from longconv._arrays import bf16_to_float32, float32_to_bf16

MODES = ["causal", "circular", "full", "same", "valid"]


def run(rng, B, H, Hk, L, Lk, mode, dtype="float64", **kw):
    x = testing.random_array(rng, (B, H, L), dtype)
    k = testing.random_array(rng, (Hk, Lk), dtype)
    plan = _cpu.make_conv_plan(k, L, mode=mode, io_dtype=dtype, **kw)
    y = plan(x)
    ref = testing.reference(x, k, mode, freq_keep=kw.get("freq_keep"))
    return plan, y, ref


SIZES = [(1, 1), (7, 3), (100, 100), (1000, 37), (4097, 4095), (3000, 4), (20000, 129),
         (5, 9), (100, 1000)]


@pytest.mark.parametrize("mode, L, Lk", [(m, L, Lk) for m in MODES for L, Lk in SIZES
                                         if m != "valid" or L >= Lk])
def test_modes_against_reference(rng, mode, L, Lk):
    plan, y, ref = run(rng, 2, 3, 3, L, Lk, mode)
    assert plan.backend == "cpu" and isinstance(plan.fft_size, int)
    assert y.shape == ref.shape
    testing.assert_close(y, ref)


def test_output_window():
    assert _cpu.output_window("full", 10, 3) == (0, 12)
    assert _cpu.output_window("causal", 10, 3) == (0, 10)
    assert _cpu.output_window("circular", 10, 3) == (0, 10)
    assert _cpu.output_window("same", 10, 4) == (1, 10)
    assert _cpu.output_window("valid", 10, 4) == (3, 7)
    with pytest.raises(ValueError, match="mode 'valid' needs L >= Lk; got L=3, Lk=4"):
        _cpu.output_window("valid", 3, 4)


def test_fold(rng):
    k = testing.random_array(rng, (2, 23))
    f = _cpu.fold(k, 5)
    expected = np.zeros((2, 5))
    for s in range(23):
        expected[:, s % 5] += k[:, s]
    np.testing.assert_allclose(f, expected, atol=1e-14)
    assert _cpu.fold(k, 30) is k


def test_overlap_add_is_chosen_and_exact(rng):
    plan, y, ref = run(rng, 2, 2, 1, 200_000, 301, "full")
    assert plan._oa_block is not None and plan.fft_size < 200_000
    testing.assert_close(y, ref)
    plan, y, ref = run(rng, 2, 2, 2, 200_000, 301, "causal", dtype="float32")
    assert plan._oa_block is not None
    testing.assert_close(y, ref)


def test_overlap_add_not_used_for_long_filters(rng):
    k = testing.random_array(rng, (1, 50_000))
    plan = _cpu.make_conv_plan(k, 60_000, mode="full")
    assert plan._oa_block is None


@pytest.mark.parametrize("chunk_bytes", [1, 4096, 1 << 20])
@pytest.mark.parametrize("Hk", [1, 5])
def test_chunking_covers_every_row(rng, monkeypatch, chunk_bytes, Hk):
    monkeypatch.setattr(_cpu, "CHUNK_BYTES", chunk_bytes)
    for L, Lk in [(300, 300), (50_000, 65)]:
        plan, y, ref = run(rng, 3, 5, Hk, L, Lk, "causal")
        testing.assert_close(y, ref)


def test_gates_and_skip_protocol(rng):
    B, H, L = 2, 3, 500
    x = testing.random_array(rng, (B, H, L))
    k = testing.random_array(rng, (H, L))
    pre, post = testing.random_array(rng, (B, H, L)), testing.random_array(rng, (B, H, L))
    skip = testing.random_array(rng, (H,))
    y = _cpu.make_conv_plan(k, L, mode="causal", io_dtype="float64")(x, pre, post, skip)
    expected = post * testing.reference(pre * x, k, "causal") + skip[:, None] * x
    testing.assert_close(y, expected)


def test_freq_keep_uses_given_n(rng):
    from longconv._sizes import plan_fft_size

    L, Lk = 1000, 1000
    n = plan_fft_size("causal", L, Lk)
    plan, y, ref = run(rng, 2, 2, 2, L, Lk, "causal", n=n, freq_keep=0.3)
    assert plan.fft_size == n == 2048
    testing.assert_close(y, ref)


def test_bfloat16_io(rng):
    x = testing.random_array(rng, (2, 3, 700), "bfloat16")
    k = testing.random_array(rng, (3, 700), "bfloat16")
    plan = _cpu.make_conv_plan(k, 700, mode="causal", io_dtype="bfloat16")
    y = plan(x)
    assert y.dtype == np.uint16
    testing.assert_close(y, testing.reference(x, k, "causal", dtype="bfloat16"), "bfloat16")


def test_bf16_conversions_round_trip(rng):
    v = rng.standard_normal(10_000).astype(np.float32)
    bits = float32_to_bf16(v)
    back = bf16_to_float32(bits)
    np.testing.assert_array_equal(float32_to_bf16(back), bits)
    assert np.max(np.abs(back - v) / np.abs(v)) <= 2.0**-8
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    sb = bf16_to_float32(float32_to_bf16(special))
    assert np.isnan(sb[0]) and sb[1] == np.inf and sb[2] == -np.inf and sb[3] == 0
    # round to nearest even: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 -> 1
    assert bf16_to_float32(float32_to_bf16(np.array([1 + 2.0**-8], np.float32)))[0] == 1.0


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_bitwise_stable(rng, workers):
    x = testing.random_array(rng, (2, 4, 3000))
    k = testing.random_array(rng, (4, 3000))
    y1 = _cpu.make_conv_plan(k, 3000, mode="full", workers=1)(x)
    y2 = _cpu.make_conv_plan(k, 3000, mode="full", workers=workers)(x)
    testing.assert_close(y2, y1, rtol=1e-15)


def test_update(rng):
    k1, k2 = testing.random_array(rng, (2, 64)), testing.random_array(rng, (2, 64))
    x = testing.random_array(rng, (1, 2, 64))
    plan = _cpu.make_conv_plan(k1, 64, mode="same")
    plan.update(k2)
    testing.assert_close(plan(x), testing.reference(x, k2, "same"))


def test_bad_protocol_shapes(rng):
    plan = _cpu.make_conv_plan(np.ones((3, 4)), 10, mode="causal")
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, 10\); got \(2, 4, 10\)"):
        plan(np.ones((2, 4, 10)))
    with pytest.raises(ValueError, match=r"k must have shape \(H, Lk\); got shape \(4,\)"):
        _cpu.make_conv_plan(np.ones(4), 10, mode="causal")


def test_select_backend_host_data_goes_to_cpu(rng):
    k = testing.random_array(rng, (2, 16))
    plan = _plan._select_backend(k, 16, data_device="cpu", device=None, mode="causal",
                                 io_dtype="float32")
    assert plan.backend == "cpu"
    plan = _plan._select_backend(k, 16, data_device="cpu", device=None, mode="causal",
                                 io_dtype="float32", freq_keep=0.5)
    assert plan.fft_size == 32


def test_compute_dtypes():
    assert _cpu.compute_dtypes(None, "float16", False) == (np.float32, np.complex64)
    assert _cpu.compute_dtypes(None, "float64", False) == (np.float64, np.complex128)
    assert _cpu.compute_dtypes("double", "float32", False) == (np.float64, np.complex128)
    assert _cpu.compute_dtypes("half", "float64", False) == (np.float32, np.complex64)


def test_peak_memory_within_three_times_input_plus_output(rng):
    import tracemalloc

    import scipy.signal

    from longconv import fftconvolve_long

    x = testing.random_array(rng, (16, 16, 16384))
    k = testing.random_array(rng, (1, 16, 16384))
    fftconvolve_long(x[:1, :1, :64], k[:, :1, :64], axes=-1)
    peaks = []
    for f in (fftconvolve_long, scipy.signal.fftconvolve):
        tracemalloc.start()
        y = f(x, k, axes=-1)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    ours, theirs = peaks
    assert x.nbytes + ours <= 3 * (x.nbytes + y.nbytes)
    assert ours < 0.6 * theirs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "complex128"])
def test_public_scipy_fft_fallback(rng, monkeypatch, mode, dtype):
    monkeypatch.setattr(_cpu, "_pocketfft", None)
    for L, Lk in [(300, 41), (50_000, 65)]:
        plan, y, ref = run(rng, 2, 3, 3, L, Lk, mode, dtype=dtype)
        testing.assert_close(y, ref)
