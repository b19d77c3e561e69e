"""longconv.LongConv: a plan that validates once and caches the filter spectrum."""

import numpy as np
import pytest

import longconv
from longconv import LongConv, _arrays, _cpu, convolve, fft_size, testing


def test_plan_matches_convolve_and_oracle(rng):
    k = testing.random_array(rng, (4, 1000))
    plan = LongConv(k, 1000)
    for _ in range(3):
        x = testing.random_array(rng, (2, 4, 1000))
        y = plan(x)
        testing.assert_close(y, testing.reference_convolve(x, k))
        np.testing.assert_array_equal(y, convolve(x, k))


def test_spectrum_computed_once(rng, monkeypatch):
    k = testing.random_array(rng, (3, 256))
    plan = LongConv(k, 256)
    calls = []
    real = _cpu.CPUConvPlan._spectrum

    def counting(self, kk, n):
        calls.append(n)
        return real(self, kk, n)

    monkeypatch.setattr(_cpu.CPUConvPlan, "_spectrum", counting)
    for _ in range(4):
        plan(testing.random_array(rng, (5, 3, 256)))
    assert calls == []
    plan.update(testing.random_array(rng, (3, 256)))
    assert len(calls) == 1


def test_update_changes_result(rng):
    k1 = testing.random_array(rng, (2, 100))
    k2 = testing.random_array(rng, (2, 100))
    x = testing.random_array(rng, (3, 2, 100))
    plan = LongConv(k1, 100, causal=False)
    testing.assert_close(plan(x), convolve(x, k1, causal=False))
    plan.update(k2)
    testing.assert_close(plan(x), convolve(x, k2, causal=False))
    testing.assert_close(plan(x), testing.reference_convolve(x, k2, False))


def test_properties_and_repr(rng):
    plan = LongConv(testing.random_array(rng, (8, 4096)), 4096, dtype=np.float32)
    assert plan.backend == "cpu"
    assert isinstance(plan.fft_size, int) and plan.fft_size >= 4096 + 4096 - 1
    r = repr(plan)
    assert r.startswith("LongConv(") and "length=4096" in r and "backend='cpu'" in r
    assert "mode='causal'" in r and "dtype=float32" in r and f"fft_size={plan.fft_size}" in r


def test_fft_size_with_freq_keep_is_shared_table_size(rng):
    for L, Lk in [(1000, 1000), (4096, 4096), (5000, 10)]:
        plan = LongConv(testing.random_array(rng, (Lk,)), L, freq_keep=0.5)
        assert plan.fft_size == fft_size(L + min(L, Lk) - 1)
        plan = LongConv(testing.random_array(rng, (Lk,)), L, causal=False, freq_keep=0.5)
        assert plan.fft_size == fft_size(L + Lk - 1)


def test_dtype_is_enforced_and_kept(rng):
    k = testing.random_array(rng, (2, 64))
    plan = LongConv(k, 64, dtype="float16")
    x = testing.random_array(rng, (3, 2, 64), "float16")
    y = plan(x)
    assert y.dtype == np.float16
    testing.assert_close(y, testing.reference_convolve(x, k))
    with pytest.raises(TypeError):
        plan(x.astype(np.float32))


def test_untyped_plan_serves_several_dtypes(rng):
    k = testing.random_array(rng, (2, 64))
    plan = LongConv(k, 64)
    for dt in ("float32", "float64", "complex64", "float16"):
        x = testing.random_array(rng, (2, 64), dt)
        y = plan(x)
        assert y.dtype == np.dtype(dt)
        testing.assert_close(y, testing.reference_convolve(x, k))


def test_gates_and_skip(rng):
    H, L = 3, 128
    k = testing.random_array(rng, (H, L))
    plan = LongConv(k, L)
    x, pre, post = (testing.random_array(rng, (2, H, L)) for _ in range(3))
    skip = testing.random_array(rng, (H,))
    testing.assert_close(plan(x, pre, post, skip),
                         testing.reference_convolve(x, k, pregate=pre, postgate=post, skip=skip))


def test_kernel_len(rng):
    k = testing.random_array(rng, (2, 300))
    x = testing.random_array(rng, (2, 200))
    plan = LongConv(k, 200, kernel_len=17)
    testing.assert_close(plan(x), testing.reference_convolve(x, k[:, :17]))


def test_device_cpu_explicit(rng):
    k = testing.random_array(rng, (50,))
    plan = LongConv(k, 50, device="cpu")
    assert plan.backend == "cpu"
    x = testing.random_array(rng, (50,))
    testing.assert_close(plan(x), testing.reference_convolve(x, k))


def test_bfloat16_bit_patterns_with_dtype(rng):
    L = 300
    x = testing.random_array(rng, (2, 4, L), "bfloat16")
    k = testing.random_array(rng, (4, L), "bfloat16")
    gate = testing.random_array(rng, (2, 4, L), "bfloat16")
    plan = LongConv(k, L, dtype="bfloat16")
    y = plan(x, pregate=gate)
    assert y.dtype == np.uint16 and y.shape == x.shape
    ref = testing.reference_convolve(x, k, pregate=gate, dtype="bfloat16")
    testing.assert_close(y, ref, "bfloat16")
    assert "bfloat16" in repr(plan)


def test_bfloat16_numpy_dtype_round_trip(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    L = 257
    x = testing.random_array(rng, (3, 2, L), "bfloat16")
    k = testing.random_array(rng, (2, L), "bfloat16")
    xb = x.view(ml_dtypes.bfloat16)
    y = LongConv(k.view(ml_dtypes.bfloat16), L)(xb)
    assert y.dtype == ml_dtypes.bfloat16 and y.shape == x.shape
    y_bits = LongConv(k, L, dtype="bfloat16")(x)
    assert y_bits.dtype == np.uint16
    np.testing.assert_array_equal(y.view(np.uint16), y_bits)
    testing.assert_close(y_bits, testing.reference_convolve(x, k, dtype="bfloat16"), "bfloat16")


def test_bfloat16_skip_given_as_bits():
    # a uint16 skip beside bfloat16 data holds bfloat16 bit patterns, like x and the gates
    rng = np.random.default_rng(7)
    x = testing.random_array(rng, (2, 3, 64), "bfloat16")
    k = rng.standard_normal((3, 64)).astype(np.float32)
    s = np.array([1.0, -2.0, 0.5])
    skip = _arrays.float32_to_bf16(s.astype(np.float32))
    y = longconv.LongConv(k, 64, dtype="bfloat16")(x, skip=skip)
    ref = testing.reference_convolve(testing.to_host(x, "bfloat16"), k.astype(np.float64), skip=s)
    testing.assert_close(y, ref, "bfloat16")
