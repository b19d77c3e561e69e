"""The fused tensor-core kernels against the float64 oracle (needs a CUDA device).

Unit-scale random inputs, random full-length filters, O(1) gates, fresh data per test,
NaN-poisoned outputs; tolerances from ``longconv.testing`` (fp16 1e-3, bf16 4e-3).
"""

import numpy as np
import pytest

import longconv
from longconv import testing

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")
_fused = pytest.importorskip("longconv._fused")

DTYPES = ("float16", "bfloat16")
SIZES = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768]


def _xp_dtype(dtype):
    return cp.uint16 if dtype == "bfloat16" else cp.dtype(dtype)


def run_plan(rng, B, H, L, Lk, mode, dtype, *, gates=False, skip=False, freq_keep=None,
             shared_filter=False):
    x = testing.random_array(rng, (B, H, L), dtype, xp=cp)
    k = rng.standard_normal((1 if shared_filter else H, Lk)).astype(np.float32)
    plan = _fused.FusedPlan(cp.asarray(k), L, mode=mode, io_dtype=dtype, freq_keep=freq_keep)
    kw = {}
    if gates:
        kw["pregate"] = testing.random_array(rng, (B, H, L), dtype, xp=cp)
        kw["postgate"] = testing.random_array(rng, (B, H, plan.Lout), dtype, xp=cp)
    if skip:
        kw["skip"] = cp.asarray(rng.standard_normal(H).astype(np.float32))
    x_before = x.copy()
    out = testing.nan_poison((B, H, plan.Lout), dtype, xp=cp)
    y = plan(x, out=out, **kw)
    assert y is out
    assert cp.array_equal(x, x_before), "the kernel modified its input"
    testing.assert_all_written(y, dtype)
    return x, k, plan, kw, y


def oracle(x, k, mode, dtype, plan, pregate=None, postgate=None, skip=None, freq_keep=None):
    xh = testing.to_host(x, dtype)
    if pregate is not None:
        xh = xh * testing.to_host(pregate, dtype)
    kk = np.broadcast_to(k.astype(np.float64), (xh.shape[1], k.shape[1]))
    if freq_keep is not None:
        n = plan.n
        keep = int(np.ceil(freq_keep * (n // 2 + 1)))
        kf = np.fft.rfft(kk, n)
        kf[..., keep:] = 0
        y = np.fft.irfft(np.fft.rfft(xh, n) * kf, n)
        y = y[..., plan.out_offset: plan.out_offset + plan.Lout]
    else:
        y = testing.reference(xh, kk, mode)
    if postgate is not None:
        y = y * testing.to_host(postgate, dtype)
    if skip is not None:
        y = y + cp.asnumpy(skip)[None, :, None] * testing.to_host(x, dtype)
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_causal_every_fused_size(rng, dtype, n):
    L = n // 2
    B, H = 3, 5  # B odd: one sequence travels without a partner
    x, k, plan, _, y = run_plan(rng, B, H, L, L, "causal", dtype)
    assert plan.n == n
    testing.assert_close(y, oracle(x, k, "causal", dtype, plan), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_circular_every_fused_size(rng, dtype, n):
    x, k, plan, _, y = run_plan(rng, 2, 3, n, n, "circular", dtype)
    assert plan.n == n and plan.fold == 0
    testing.assert_close(y, oracle(x, k, "circular", dtype, plan), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [1, 2, 3, 97, 127, 129, 255, 257, 1000, 4095, 4097, 8191, 16383])
def test_causal_awkward_lengths(rng, dtype, L):
    Lk = max(1, L - 3) if L > 5 else L
    x, k, plan, _, y = run_plan(rng, 5, 7, L, Lk, "causal", dtype)
    testing.assert_close(y, oracle(x, k, "causal", dtype, plan), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L, Lk", [(1000, 1000), (97, 300), (3000, 5), (100, 100), (5000, 12000)])
def test_circular_folded_lengths(rng, dtype, L, Lk):
    x, k, plan, _, y = run_plan(rng, 3, 2, L, Lk, "circular", dtype)
    assert plan.fold == L
    testing.assert_close(y, oracle(x, k, "circular", dtype, plan), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, L, Lk", [("same", 1000, 301), ("same", 4096, 4096),
                                         ("full", 700, 300), ("valid", 3000, 1001),
                                         # N = 8192, the radix-2 stages in the load and store
                                         # phases: both (offset 1002, unaligned; offset 1499),
                                         # the load only (the window ends past N / 2)
                                         ("valid", 4096, 1003), ("same", 2500, 2999),
                                         ("same", 4000, 301),
                                         # N = 512, the same (offsets 50 and 105)
                                         ("valid", 256, 51), ("same", 150, 211),
                                         # N = 256: the causal entry (input and window
                                         # below 128, unaligned), and the general one
                                         ("causal", 100, 50), ("valid", 128, 9),
                                         ("same", 100, 41), ("full", 130, 101)])
def test_windows(rng, dtype, mode, L, Lk):
    x, k, plan, _, y = run_plan(rng, 2, 3, L, Lk, mode, dtype)
    testing.assert_close(y, oracle(x, k, mode, dtype, plan), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, L", [("causal", 2048), ("causal", 1000), ("circular", 4096),
                                     ("same", 999)])
def test_gates_and_skip(rng, dtype, mode, L):
    x, k, plan, kw, y = run_plan(rng, 4, 6, L, L, mode, dtype, gates=True, skip=True)
    testing.assert_close(y, oracle(x, k, mode, dtype, plan, **kw), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_shared_filter_and_freq_keep(rng, dtype):
    x, k, plan, _, y = run_plan(rng, 4, 6, 2048, 2048, "causal", dtype, shared_filter=True,
                                freq_keep=0.3)
    testing.assert_close(y, oracle(x, k, "causal", dtype, plan, freq_keep=0.3), dtype)


def test_fp32_io_with_half_precision(rng):
    x, k, plan, _, y = run_plan(rng, 2, 3, 4096, 4096, "causal", "float32")
    testing.assert_close(y, oracle(x, k, "causal", "float32", plan), "float16")


def test_runs_on_the_current_stream(rng):
    x = testing.random_array(rng, (4, 8, 4096), "float16", xp=cp)
    k = cp.asarray(rng.standard_normal((8, 4096)).astype(np.float32))
    plan = _fused.FusedPlan(k, 4096, mode="causal", io_dtype="float16")
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        y = plan(x)
        stream.synchronize()
    testing.assert_close(y, oracle(x, k.get(), "causal", "float16", plan), "float16")


def test_public_api_dispatches_to_the_fused_kernel(rng):
    L, H = 3000, 4
    x = testing.random_array(rng, (2, H, L), "float16", xp=cp)
    k = cp.asarray(rng.standard_normal((H, L)).astype(np.float32))
    plan = longconv.LongConv(k, L, dtype="float16")
    assert plan.backend == "fused"
    y = plan(x)
    assert isinstance(y, cp.ndarray) and y.dtype == cp.float16
    testing.assert_close(y, testing.reference_convolve(x, k), "float16")
    y2 = longconv.convolve(x, k)
    testing.assert_close(y2, testing.reference_convolve(x, k), "float16")


def test_beyond_the_fused_range_falls_back(rng):
    L = 40000  # N = 65536 > 32768: the exact path serves it
    x = testing.random_array(rng, (1, 2, L), "float16", xp=cp)
    k = cp.asarray(rng.standard_normal((2, L)).astype(np.float32))
    assert _fused.make_plan(k, L, mode="causal", io_dtype="float16") is None
    with pytest.raises(NotImplementedError, match="FFT sizes"):
        _fused.FusedPlan(k, L, mode="causal", io_dtype="float16")
    y = longconv.convolve(x, k)
    testing.assert_close(y, testing.reference_convolve(x, k), "float16")


@pytest.mark.slow
def test_64bit_offsets(rng):
    # B * H * L > 2**31 elements: offsets past 2**31 must not wrap.
    B, H, L = 4, 32769, 16384
    assert B * H * L > 2**31
    x = cp.asarray(rng.standard_normal((B, H, L), dtype=np.float32)).astype(cp.float16)
    k = cp.asarray(rng.standard_normal((1, L)).astype(np.float32))
    plan = _fused.FusedPlan(k, L, mode="causal", io_dtype="float16")
    y = cp.full((B, H, L), cp.nan, dtype=cp.float16)
    plan(x, out=y)
    for b, h in [(B - 1, H - 1), (B - 1, H - 2), (0, 0), (2, 12345)]:
        row = y[b, h]
        assert bool(cp.isfinite(row).all())
        ref = testing.reference(testing.to_host(x[b, h])[None], k.get().astype(np.float64),
                                "causal")[0]
        testing.assert_close(row, ref, "float16")


@pytest.mark.parametrize("dtype", DTYPES)
def test_unaligned_operands(rng, dtype):
    # Contiguous views that start 2 bytes into an allocation take the scalar load/store path.
    B, H, L = 3, 4, 4096
    xdt = _xp_dtype(dtype)

    def shifted(a):
        flat = cp.empty(a.size + 1, dtype=xdt)
        flat[1:] = a.ravel()
        return flat[1:].reshape(a.shape)

    x = shifted(testing.random_array(rng, (B, H, L), dtype, xp=cp))
    post = shifted(testing.random_array(rng, (B, H, L), dtype, xp=cp))
    k = rng.standard_normal((H, L)).astype(np.float32)
    plan = _fused.FusedPlan(cp.asarray(k), L, mode="circular", io_dtype=dtype)
    y = shifted(testing.nan_poison((B, H, L), dtype, xp=cp))
    plan(x, postgate=post, out=y)
    testing.assert_all_written(y, dtype)
    testing.assert_close(y, oracle(x, k, "circular", dtype, plan, postgate=post), dtype)


# --------------------------------------------------------------------------
# fused backward


def backward_oracle(x, k, dy, plan, dtype, pregate=None, postgate=None, skip=None):
    """Float64 gradients of y = postgate * conv(pregate * x, k) + skip * x in the plan's mode."""
    xh, dyh = testing.to_host(x, dtype), testing.to_host(dy, dtype)
    pre = None if pregate is None else testing.to_host(pregate, dtype)
    post = None if postgate is None else testing.to_host(postgate, dtype)
    B, H, L = xh.shape
    kk = np.broadcast_to(k.astype(np.float64), (H, k.shape[1]))
    Lk = kk.shape[1]
    u = xh if pre is None else xh * pre
    g = dyh if post is None else dyh * post
    if plan.mode == "circular":
        M = L
        reps = -(-Lk // L)
        kf = np.zeros((H, reps * L))
        kf[:, :Lk] = kk
        kf = kf.reshape(H, reps, L).sum(axis=1)
        G = g
        taps = np.arange(Lk) % L
    else:
        M = L + Lk - 1
        kf = kk
        G = np.zeros((B, H, M))
        G[..., plan.out_offset: plan.out_offset + plan.Lout] = g
        taps = np.arange(Lk)
    Gf = np.fft.fft(G, M)
    c_g = np.fft.ifft(Gf * np.conj(np.fft.fft(kf, M)), M).real[..., :L]
    dk_c = np.fft.ifft((Gf * np.conj(np.fft.fft(u, M))).sum(axis=0), M).real
    c_u = np.fft.ifft(np.fft.fft(u, M) * np.fft.fft(kf, M), M).real
    if plan.mode != "circular":
        c_u = c_u[..., plan.out_offset: plan.out_offset + plan.Lout]
    dk = dk_c[:, taps]
    if k.shape[0] == 1:
        dk = dk.sum(axis=0, keepdims=True)
    dx = c_g if pre is None else c_g * pre
    if skip is not None:
        dx = dx + cp.asnumpy(skip)[None, :, None] * dyh
    return {"x": dx, "k": dk, "pregate": xh * c_g, "postgate": dyh * c_u,
            "skip": None if skip is None else (dyh * xh).sum(axis=(0, 2))}


def run_backward(rng, B, H, L, Lk, mode, dtype, *, gates=False, skip=False, shared_filter=False,
                 need_k=True, need_x=True):
    x = testing.random_array(rng, (B, H, L), dtype, xp=cp)
    k = rng.standard_normal((1 if shared_filter else H, Lk)).astype(np.float32)
    plan = _fused.FusedPlan(cp.asarray(k), L, mode=mode, io_dtype=dtype)
    assert plan.backward_supported
    dy = testing.random_array(rng, (B, H, plan.Lout), dtype, xp=cp)
    kw = {}
    if gates:
        kw["pregate"] = testing.random_array(rng, (B, H, L), dtype, xp=cp)
        kw["postgate"] = testing.random_array(rng, (B, H, plan.Lout), dtype, xp=cp)
    if skip:
        kw["skip"] = cp.asarray(rng.standard_normal(H).astype(np.float32))
    out = {"x": testing.nan_poison((B, H, L), dtype, xp=cp),
           "pregate": testing.nan_poison((B, H, L), dtype, xp=cp),
           "postgate": testing.nan_poison((B, H, plan.Lout), dtype, xp=cp)}
    before = (x.copy(), dy.copy())
    res = plan.backward(x, dy, **kw, need_x=need_x, need_k=need_k, need_pregate=gates,
                        need_postgate=gates, need_skip=skip, out=out)
    assert cp.array_equal(x, before[0]) and cp.array_equal(dy, before[1])
    ref = backward_oracle(x, k, dy, plan, dtype, **kw)
    checked = 0
    for name, got in res.items():
        if got is None:
            continue
        if name in out:
            assert got is out[name]
            testing.assert_all_written(got, dtype)
            testing.assert_close(got, ref[name], dtype)
        else:  # dk, dskip: float32 sums of products of fp16 tensor-core operands
            assert got.dtype == cp.float32
            testing.assert_close(got, ref[name], rtol=testing.tolerance(dtype))
        checked += 1
    return checked


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [256, 512, 1024, 2048, 4096, 8192, 16384])
def test_backward_causal_every_size(rng, dtype, n):
    assert run_backward(rng, 5, 3, n // 2, n // 2, "causal", dtype) == 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [256, 1024, 4096, 16384])
def test_backward_gated_circular(rng, dtype, n):
    assert run_backward(rng, 4, 2, n, n, "circular", dtype, gates=True, skip=True) == 5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,L,Lk", [("causal", 1000, 77), ("causal", 333, 1200),
                                       ("same", 999, 301), ("full", 700, 300),
                                       ("valid", 1000, 257), ("circular", 512, 1500),
                                       ("valid", 4096, 1003), ("same", 2500, 2999),
                                       ("same", 4000, 301),  # N = 8192, see test_windows
                                       ("valid", 256, 51), ("same", 150, 211),  # N = 512
                                       ("causal", 100, 50), ("valid", 128, 9),
                                       ("same", 100, 41),
                                       ("full", 130, 101)])  # N = 256, see test_windows
def test_backward_windows_and_awkward_lengths(rng, dtype, mode, L, Lk):
    assert run_backward(rng, 3, 2, L, Lk, mode, dtype, gates=True) == 4


@pytest.mark.parametrize("need", [(True, False), (False, True)])
def test_backward_subsets_and_shared_filter(rng, need):
    need_x, need_k = need
    assert run_backward(rng, 7, 3, 2048, 2048, "causal", "float16", shared_filter=True,
                        need_x=need_x, need_k=need_k) == 1


def test_backward_many_tiles_per_channel(rng):
    # H = 1 and a long batch: the pairs of one channel split over many tiles, dk summed over them
    assert run_backward(rng, 301, 1, 4096, 4096, "causal", "bfloat16", skip=True) == 3


@pytest.mark.parametrize("L, mag, dtype", [(2048, 1e-6, "float16"), (128, 1e-5, "float16"),
                                           (4096, 1e-6, "float16"), (4096, 20.0, "float16"),
                                           (1000, 3e-3, "float16"), (128, 1e-2, "float16"),
                                           (4096, 1e-6, "bfloat16"), (128, 1e-9, "bfloat16"),
                                           (2048, 3e3, "bfloat16")])
def test_backward_small_gradients_keep_their_precision(rng, L, mag, dtype):
    # gradients far below fp16's normal range (2^-14), or far above 1: the g planes are scaled
    # per group (in shared memory for fp16 and bf16 dy; N = 8192 also applies the radix-2
    # stage's s1 there)
    from longconv._arrays import float32_to_bf16

    x = testing.random_array(rng, (4, 2, L), dtype, xp=cp)
    k = rng.standard_normal((2, L)).astype(np.float32)
    plan = _fused.FusedPlan(cp.asarray(k), L, mode="causal", io_dtype=dtype)
    dy = testing.random_array(rng, (4, 2, L), "float32", xp=cp) * mag
    dy = float32_to_bf16(dy, cp) if dtype == "bfloat16" else dy.astype(cp.float16)
    res = plan.backward(x, dy)
    ref = backward_oracle(x, k, dy, plan, dtype)
    testing.assert_close(res["x"], ref["x"], dtype)
    testing.assert_close(res["k"], ref["k"], rtol=testing.tolerance(dtype))


def test_backward_refuses_what_it_does_not_serve(rng):
    k = cp.asarray(rng.standard_normal((2, 100)).astype(np.float32))
    x = testing.random_array(rng, (2, 2, 300), "float16", xp=cp)
    plan = _fused.FusedPlan(k, 300, mode="circular", io_dtype="float16")  # folded circular
    assert not plan.backward_supported
    with pytest.raises(NotImplementedError, match="fused backward"):
        plan.backward(x, x)
    plan = _fused.FusedPlan(k, 300, mode="causal", io_dtype="float16")
    with pytest.raises(ValueError, match="dy must be"):
        plan.backward(x, x[:, :, :10])


def test_tile_just_under_the_dynamic_default(rng):
    # 5 pairs of N = 2048 take 40 KB of dynamic shared memory: with the kernel's static tables the
    # block needs more than the 48 KB default, so the launch must opt in
    x, k, plan, kw, y = run_plan(rng, 10, 300, 1024, 1024, "causal", "float16")
    grid, smem, _ = plan.launch_args(x, None, None, None, y)
    assert smem == 5 * 4 * 2048
    testing.assert_close(testing.to_host(y, "float16"), oracle(x, k, "causal", "float16", plan),
                         "float16")
