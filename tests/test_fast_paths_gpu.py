"""The filter-spectrum kernels and the short call paths built on them (needs a CUDA device).

The spectrum kernels (``cuda_src/kspec.cuh``) against the float64 formula they replace; the
direct launches (CuPy ``convolve``, ``LongConv`` calls, torch's eager path) against the general
path, which they must match bit for bit (same kernels, same spectrum), and the oracle.
"""

import math

import numpy as np
import pytest

import longconv
from longconv import testing

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")
_fused = pytest.importorskip("longconv._fused")


def spectrum_reference(k, plan):
    """(spectrum in storage order, multiplier) in float64, as the kernels define them."""
    k = np.asarray(k, dtype=np.float64)
    N = plan.n
    taps = min(plan.Lk, plan.L) if plan.mode == "causal" else plan.Lk
    kk = k[:, :taps]
    if plan.mode == "circular":
        L = plan.L
        pad = np.zeros((kk.shape[0], -(-plan.Lk // L) * L))
        pad[:, : plan.Lk] = kk
        kk = pad.reshape(kk.shape[0], -1, L).sum(axis=1)
    spec = np.fft.fft(kk, N, axis=-1) / math.sqrt(N)
    if plan.freq_keep is not None:
        keep = math.ceil(plan.freq_keep * (N // 2 + 1))
        j = np.arange(N)
        spec = spec * (np.minimum(j, N - j) < keep)
    peak = np.abs(spec).max()
    scale = 2.0 ** math.ceil(math.log2(peak)) if 0 < peak < np.inf else 1.0
    return spec[:, _fused.storage_order(N)] / scale, scale


CASES = [  # (Hk, Lk, L, mode, freq_keep)
    (1, 256, 256, "causal", None),
    (3, 1000, 700, "causal", None),       # taps past L are cut
    (2, 100, 300, "circular", None),      # folded circular, N >= 2L - 1
    (2, 1500, 512, "circular", None),     # N = L, three turns of the circle
    (4, 77, 1000, "same", None),
    (1, 300, 200, "valid", None),
    (2, 5000, 3000, "full", None),        # two tap passes of the direct kernel
    (2, 1024, 1024, "causal", 0.3),
]


PATHS = ["single", "blocks", "gather"]


def spectrum_path(monkeypatch, path):
    """Force one of the spectrum kernels' three ways: one block that also scales, several
    blocks and the finalize launch, cuFFT and the gather launch."""
    monkeypatch.setattr(_fused, "KSPEC_DFT_MAX_WORK", 0 if path == "gather" else 1 << 40)
    monkeypatch.setattr(_fused, "KSPEC_SINGLE_BLOCK_WORK", 1 << 40 if path == "single" else 0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kdtype", ["float16", "float32", "float64"])
def test_spectrum_kernels_match_the_float64_formula(rng, monkeypatch, path, case, kdtype):
    Hk, Lk, L, mode, keep = case
    spectrum_path(monkeypatch, path)
    k = rng.standard_normal((Hk, Lk)).astype(kdtype)
    plan = _fused.FusedPlan(cp.asarray(k), L, mode=mode, io_dtype="float16", freq_keep=keep)
    assert plan.direct_spectrum == (path != "gather")
    assert plan._single == (path == "single")
    want, scale = spectrum_reference(k, plan)
    got = plan._kspec.get()
    assert float(plan._out_scale_dev.get()[0]) == scale
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 2e-6, err


def test_spectrum_of_a_non_contiguous_and_integer_filter(rng):
    k = rng.standard_normal((3, 600))
    kc = cp.asarray(k)[:, ::2]  # strided taps: copied before the direct kernel
    plan = _fused.FusedPlan(kc, 300, mode="causal", io_dtype="float16")
    want, _ = spectrum_reference(k[:, ::2], plan)
    assert np.abs(plan._kspec.get() - want).max() < 2e-6 * np.abs(want).max()
    ki = cp.asarray(rng.integers(-3, 4, (2, 50)))
    plan = _fused.FusedPlan(ki, 256, mode="causal", io_dtype="float16")
    want, _ = spectrum_reference(ki.get(), plan)
    assert np.abs(plan._kspec.get() - want).max() < 2e-6 * np.abs(want).max()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value", [0.0, np.inf, np.nan])
def test_spectrum_multiplier_of_degenerate_filters(monkeypatch, path, value):
    spectrum_path(monkeypatch, path)
    k = np.zeros((2, 64), dtype=np.float32)
    k[1, 3] = value
    plan = _fused.FusedPlan(cp.asarray(k), 256, mode="causal", io_dtype="float16")
    assert float(plan._out_scale_dev.get()[0]) == 1.0
    x = cp.ones((1, 2, 256), dtype=cp.float16)
    y = plan(x).get()
    assert np.all(y[0, 0] == 0)
    if value == 0:
        assert np.all(y == 0)
    else:
        assert not np.all(np.isfinite(y[0, 1]))


def test_update_keeps_the_plan_and_recomputes(rng):
    k1 = cp.asarray(rng.standard_normal((2, 300)).astype(np.float32))
    k2 = k1 * 100  # fp16 outputs stay below 65504 (x1000 reached it for some seeds)
    x = testing.random_array(rng, (3, 2, 500), "float16", xp=cp)
    plan = _fused.FusedPlan(k1, 500, mode="causal", io_dtype="float16")
    y1 = plan(x).astype(cp.float32)
    plan.update(k2)
    y2 = plan(x).astype(cp.float32)
    testing.assert_close(y2, testing.reference_convolve(x, k2), "float16")
    testing.assert_close(y2 / 100, y1, "float16")


@pytest.mark.parametrize("case", [  # (B, H, Hk, L, Lk, mode)
    (3, 2, 2, 256, 256, "causal"),
    (5, 3, 1, 700, 300, "same"),      # one filter for every channel: dk summed over them
    (2, 2, 2, 300, 900, "causal"),    # taps past L get no gradient
    (4, 1, 1, 1000, 257, "valid"),
    (2, 2, 2, 512, 1500, "circular"),  # three turns of the circle
    (64, 2, 2, 2048, 2048, "causal"),  # several tiles and slots per channel
    (3, 300, 300, 128, 128, "causal"),  # direct sum: two tap chunks per work item
    (4, 40, 1, 256, 256, "causal"),    # channels summed before either reduction
    (2, 1, 1, 4096, 4096, "causal"),   # direct sum at the bound, N = 8192
])
def test_backward_dk_kernel_matches_the_fft_reduction(rng, monkeypatch, case):
    B, H, Hk, L, Lk, mode = case
    k = cp.asarray(rng.standard_normal((Hk, Lk)).astype(np.float32))
    plan = _fused.FusedPlan(k, L, mode=mode, io_dtype="float16")
    x = testing.random_array(rng, (B, H, L), "float16", xp=cp)
    dy = testing.random_array(rng, (B, H, plan.Lout), "float16", xp=cp)
    got = plan.backward(x, dy, need_x=False)["k"]
    monkeypatch.setattr(_fused, "DK_DIRECT_MAX_WORK", -1)
    want = plan.backward(x, dy, need_x=False)["k"]
    assert got.shape == want.shape == (Hk, Lk) and got.dtype == cp.float32
    err = float(cp.abs(got - want).max() / cp.abs(want).max())
    assert err < 1e-5, err


# ------------------------------------------------------------------------- CuPy short paths


def _general(monkeypatch, fn):
    """``fn()`` with the CuPy short path switched off."""
    with monkeypatch.context() as m:
        m.setattr(_fused, "cupy_convolve", lambda *a, **kw: None)
        return fn()


@pytest.mark.parametrize("shape,kshape,causal", [
    ((2, 3, 256), (3, 256), True),
    ((1, 1, 256), (1, 256), True),
    ((5, 4, 1000), (4, 333), False),
    ((4, 777), (777,), True),         # 2-D x, shared filter
    ((300,), (40,), True),            # 1-D x
    ((2, 2, 3, 2048), (1, 4000), True),
])
@pytest.mark.parametrize("kdtype", ["float16", "float32", "float64"])
def test_cupy_convolve_short_path_matches_the_general_one(rng, monkeypatch, spy, shape, kshape,
                                                          causal, kdtype):
    from longconv import _direct

    # the fused short path even for the tiny shapes (the direct kernel has its own tests)
    monkeypatch.setitem(_direct.DIRECT_MAX_WORK, "float16", -1)
    x = testing.random_array(rng, shape, "float16", xp=cp)
    k = cp.asarray(rng.standard_normal(kshape).astype(kdtype))
    seen = spy(_fused, "cupy_convolve", lambda a, r: r is not None)
    y = longconv.convolve(x, k, causal)
    assert seen == [True]
    ref = _general(monkeypatch, lambda: longconv.convolve(x, k, causal))
    assert y.dtype == cp.float16 and y.shape == x.shape
    assert cp.array_equal(y, ref)
    testing.assert_close(y, testing.reference_convolve(x, k, causal=causal), "float16")


def test_cupy_convolve_short_path_declines_what_it_does_not_serve(rng):
    x = testing.random_array(rng, (2, 3, 512), "float16", xp=cp)
    k = cp.asarray(rng.standard_normal((3, 512)).astype(np.float32))
    assert _fused.cupy_convolve(x, k, True, None, None) is not None
    assert _fused.cupy_convolve(x[:, :, ::2], k, True, None, None) is None  # not contiguous
    assert _fused.cupy_convolve(x, k.astype(cp.int32), True, None, None) is None
    assert _fused.cupy_convolve(x, k, True, "single", None) is None
    assert _fused.cupy_convolve(x.astype(cp.float32), k, True, None, None) is None
    assert _fused.cupy_convolve(x, k[:2], True, None, None) is None  # general path raises
    with pytest.raises(ValueError):
        longconv.convolve(x, k[:2])
    big = cp.zeros((1, 1, 40000), dtype=cp.float16)  # beyond the fused sizes
    assert _fused.cupy_convolve(big, cp.ones((1, 40000), cp.float32), True, None, None) is None


def test_cupy_convolve_short_path_kernel_len(rng, monkeypatch):
    x = testing.random_array(rng, (2, 3, 700), "float16", xp=cp)
    k = cp.asarray(rng.standard_normal((3, 900)).astype(np.float32))
    y = longconv.convolve(x, k, kernel_len=100)
    ref = _general(monkeypatch, lambda: longconv.convolve(x, k, kernel_len=100))
    assert cp.array_equal(y, ref)
    testing.assert_close(y, testing.reference_convolve(x, k[:, :100]), "float16")


@pytest.mark.parametrize("kcase", ["rows apart", "1-D strided", "2-D strided taps"])
def test_cupy_convolve_first_dispatch_filter_layouts(rng, monkeypatch, spy, kcase):
    """The adapter's fast entry (tried before any other dispatch) serves filters whose rows
    are contiguous however far apart, declines strided taps, and both give the oracle."""
    from longconv import adapters

    x = testing.random_array(rng, (2, 3, 300), "float16", xp=cp)
    big = cp.asarray(rng.standard_normal((3, 1000)).astype(np.float32))
    k = {"rows apart": big[:, 100:400], "1-D strided": big[0, ::3][:300],
         "2-D strided taps": big[:, ::3][:, :300]}[kcase]
    calls = spy(_fused, "cupy_convolve", lambda a, r: r)
    longconv.convolve(x, k)  # the first CuPy call registers the adapter's fast entry
    assert adapters.FAST_CONVOLVE.get(cp.ndarray) is not None
    calls.clear()
    y = longconv.convolve(x, k)
    served = calls[0] is not None
    assert served == (kcase == "rows apart")
    assert y.shape == x.shape and y.dtype == cp.float16
    ref = _general(monkeypatch, lambda: longconv.convolve(x, k))
    assert cp.array_equal(y, ref)
    testing.assert_close(y, testing.reference_convolve(x, k), "float16")


def test_cupy_first_dispatch_leaves_errors_to_the_general_path(rng):
    x = testing.random_array(rng, (2, 3, 256), "float16", xp=cp)
    k = rng.standard_normal((3, 256)).astype(np.float32)
    with pytest.raises(TypeError, match="same kind"):
        longconv.convolve(x, k)  # NumPy filter beside a CuPy input
    with pytest.raises(ValueError):
        longconv.convolve(x, cp.asarray(k)[:2])
    with pytest.raises(TypeError):
        longconv.convolve(x, cp.asarray(k), causal="yes")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_longconv_direct_calls(rng, dtype):
    H, L = 4, 1000
    k = cp.asarray(rng.standard_normal((H, 500)).astype(np.float32))
    plan = longconv.LongConv(k, L, dtype=dtype)
    x = testing.random_array(rng, (3, H, L), dtype, xp=cp)
    y1 = plan(x)  # general path, sets up the direct one
    assert plan._fast is not None
    y2 = plan(x)
    assert cp.array_equal(y1, y2) and y2.dtype == y1.dtype
    testing.assert_close(y2, testing.reference_convolve(testing.to_host(x, dtype), k.get()),
                         dtype)
    # another batch size, a non-contiguous input: the general path again, still right
    x2 = testing.random_array(rng, (2, H, 2 * L), dtype, xp=cp)[:, :, ::2]
    y3 = plan(x2)
    testing.assert_close(y3, testing.reference_convolve(testing.to_host(x2, dtype), k.get()),
                         dtype)
    # update: the new filters are used
    plan.update(k * 2)
    y4 = plan(x)
    assert plan(x) is not None
    testing.assert_close(testing.to_host(y4, dtype) / 2, testing.to_host(y1, dtype),
                         rtol=testing.tolerance(dtype))


def test_longconv_built_on_one_stream_called_on_another(rng):
    H, L = 8, 4096
    k = cp.asarray(rng.standard_normal((H, L)).astype(np.float32))
    x = testing.random_array(rng, (16, H, L), "float16", xp=cp)
    s1, s2 = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    for it in range(3):
        with s1:
            busy = cp.ones((2048, 2048), cp.float32)
            for _ in range(4):
                busy = busy @ busy / 2048  # keeps s1 busy while the spectrum waits behind it
            plan = longconv.LongConv(k * (it + 1), L, dtype="float16")
        with s2:
            y1 = plan(x)  # general path on s2
            y2 = plan(x)  # direct launch on s2
            s2.synchronize()
        for y in (y1, y2):
            testing.assert_close(y, testing.reference_convolve(x, k * (it + 1)), "float16")


# ------------------------------------------------------------------------ torch short paths


@pytest.fixture
def torch(torch_cuda):
    return torch_cuda


@pytest.mark.parametrize("tdtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_torch_eager_path_matches_the_custom_operator(torch, rng, tdtype, gated, causal):
    from longconv.adapters import torch as lt

    dt = getattr(torch, tdtype)
    B, H, L = 3, 4, 600
    x = torch.randn(B, H, L, device="cuda", dtype=dt)
    k = torch.randn(H, 300, device="cuda")
    pre = torch.randn(B, H, L, device="cuda", dtype=dt) if gated else None
    post = torch.randn(1, H, L, device="cuda", dtype=dt) if gated else None  # broadcast
    skip = torch.randn(H, device="cuda") if gated else None
    y = longconv.convolve(x, k, causal, pregate=pre, postgate=post, skip=skip)
    real = lt._fast_convolve
    lt._fast_convolve = lambda *a: None  # the general path (DLPack, plan objects)
    try:
        ref = lt._CONVOLVE_OP(x, k, pre, post, skip, causal, None)
    finally:
        lt._fast_convolve = real
    assert y.dtype == dt and torch.equal(y, ref)
    # gradients: the eager autograd.Function against the custom operator's
    leaves = [t.detach().clone().requires_grad_() for t in (x, k)]
    y1 = longconv.convolve(*leaves, causal, pregate=pre, postgate=post, skip=skip)
    assert type(y1.grad_fn).__name__.startswith("ConvolveFunction")
    dy = torch.randn_like(y1)
    g1 = torch.autograd.grad(y1, leaves, dy)
    leaves2 = [t.detach().clone().requires_grad_() for t in (x, k)]
    y2 = lt._CONVOLVE_OP(*leaves2, pre, post, skip, causal, None)
    g2 = torch.autograd.grad(y2, leaves2, dy)
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kcase", ["transposed", "expanded", "leaf requiring grad", "1-D"])
def test_torch_first_dispatch_filter_layouts(torch, rng, kcase):
    """torch's fast entry reads the filter where it lies (rows of contiguous taps, any row
    stride, no detach) or makes it contiguous; each result is the general path's, bit for
    bit, and the oracle's."""
    from longconv.adapters import torch as lt

    B, H, L = 2, 4, 500
    x = torch.randn(B, H, L, device="cuda", dtype=torch.float16)
    base = torch.randn(H, 300, device="cuda")
    k = {"transposed": base.t().contiguous().t(),               # strides (1, H)
         "expanded": base[:1].expand(H, 300),                   # row stride 0
         "leaf requiring grad": base.clone().requires_grad_(),  # under no_grad below
         "1-D": base[0]}[kcase]
    with torch.no_grad():
        y = longconv.convolve(x, k)
        real = lt._fast_convolve
        lt._fast_convolve = lambda *a, **kw: None
        try:
            ref = lt._CONVOLVE_OP(x, k, None, None, None, True, None)
        finally:
            lt._fast_convolve = real
    assert y.dtype == torch.float16 and y.shape == x.shape and torch.equal(y, ref)
    kk = k.detach().cpu().numpy()
    testing.assert_close(y.cpu().numpy(), testing.reference_convolve(x.cpu().numpy(), kk),
                         "float16")


def test_torch_eager_backward_reuses_the_forward_spectrum(torch, spy):
    from longconv import _fused
    from longconv.adapters import torch as lt

    calls = spy(_fused.FusedPlan, "spectrum_into", lambda a, r: 1)
    x = torch.randn(2, 4, 200, device="cuda", dtype=torch.float16, requires_grad=True)
    k = torch.randn(4, 200, device="cuda", requires_grad=True)
    dy = torch.randn(2, 4, 200, device="cuda", dtype=torch.float16)
    y = longconv.convolve(x, k)
    assert type(y.grad_fn).__name__.startswith("ConvolveFunction")
    assert len(calls) == 1  # the forward's spectrum
    g_eager = torch.autograd.grad(y, (x, k), dy)
    assert len(calls) == 1  # the backward took the forward's spectrum
    y2 = lt._CONVOLVE_OP(x, k, None, None, None, True, None)
    assert len(calls) == 2
    g_op = torch.autograd.grad(y2, (x, k), dy)
    assert len(calls) == 3  # the custom operator's backward computes its own
    for a, b in zip(g_eager, g_op, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("causal", [True, False])
def test_torch_long_filters_take_the_gathered_spectrum(torch, monkeypatch, spy, causal):
    """Filters too long for the direct spectrum kernel: torch's float64 rfft and our gather in
    the forward, reused by the backward, whose dk comes from the gathered half spectrum and
    torch's inverse FFT; against the oracle and against the general route (CuPy's FFTs)."""
    from longconv import _fused
    from longconv.adapters import torch as lt

    B, H, L = 2, 8, 2048  # 2048 taps x 2049 bins x 8 filters: above KSPEC_DFT_MAX_WORK
    x = torch.randn(B, H, L, device="cuda", dtype=torch.float16)
    k = torch.randn(H, L, device="cuda")
    dy = torch.randn(B, H, L, device="cuda", dtype=torch.float16)
    calls = spy(_fused.FusedPlan, "gather_spectrum_into", lambda a, r: a[0].n)
    with torch.no_grad():
        y = longconv.convolve(x, k, causal)
    assert calls == [4096]
    ref = testing.reference_convolve(x.cpu().numpy(), k.cpu().numpy(), causal=causal)
    testing.assert_close(y.cpu().numpy(), ref, "float16")
    leaves = [t.clone().requires_grad_() for t in (x, k)]
    y = longconv.convolve(*leaves, causal)
    gx, gk = torch.autograd.grad(y, leaves, dy)
    assert calls == [4096, 4096]  # the backward reused the forward's spectrum
    # the general route: CuPy's float64 rfft in a plan, CuPy's inverse FFT for dk
    monkeypatch.setattr(lt, "_direct_backward", lambda *a, **kw: None)
    leaves2 = [t.clone().requires_grad_() for t in (x, k)]
    y2 = lt._CONVOLVE_OP(*leaves2, None, None, None, causal, None)
    gx2, gk2 = torch.autograd.grad(y2, leaves2, dy)
    testing.assert_close(gx.float().cpu().numpy(), gx2.float().cpu().numpy(), rtol=1e-3)
    testing.assert_close(gk.cpu().numpy(), gk2.cpu().numpy(), rtol=1e-5)
    assert gk.dtype == torch.float32 and gk.shape == k.shape


def test_short_paths_from_a_fresh_thread(torch, rng):
    """Launches from a thread that has made no CUDA call yet (as torch's autograd threads may
    be, their allocations served from torch's cache): the launcher binds the device's context."""
    import threading

    x = torch.randn(2, 3, 256, device="cuda", dtype=torch.float16, requires_grad=True)
    k = torch.randn(3, 256, device="cuda", requires_grad=True)
    xc = cp.asarray(testing.random_array(rng, (2, 3, 256), "float32"))
    kc = cp.asarray(testing.random_array(rng, (3, 256), "float32"))
    torch.cuda.synchronize()
    out, errors = {}, []

    def work():
        try:
            y = longconv.convolve(x, k)
            y.float().square().sum().backward()
            out["torch"] = y.detach()
            out["cupy"] = longconv.convolve(xc, kc)
            out["cupy16"] = longconv.convolve(xc.astype(cp.float16), kc)
            cp.cuda.get_current_stream().synchronize()
            torch.cuda.synchronize()
        except Exception as exc:  # reported below, with the thread's traceback lost
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert not errors, errors
    ref = testing.reference_convolve(x.detach().cpu().numpy(), k.detach().cpu().numpy())
    testing.assert_close(out["torch"].cpu().numpy(), ref, "float16")
    assert torch.isfinite(x.grad).all() and torch.isfinite(k.grad).all()
    testing.assert_close(out["cupy"], testing.reference_convolve(xc, kc), "float32")
    testing.assert_close(out["cupy16"], testing.reference_convolve(xc.astype(cp.float16), kc),
                         "float16")


def test_torch_direct_paths_run_on_the_current_stream(torch, rng):
    side = torch.cuda.Stream()
    k = torch.randn(8, 4096, device="cuda")
    plan = longconv.LongConv(k, 4096, dtype="float16")
    plan(torch.zeros(2, 8, 4096, device="cuda", dtype=torch.float16))  # sets up direct calls
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        a = torch.randn(4096, 4096, device="cuda")
        for _ in range(3):
            a = a @ a / 64  # keeps the stream busy
        x = (a[:16] * 0 + 1).reshape(2, 8, 4096).half()  # ready only once the products are
        y = longconv.convolve(x, k)
        p1 = plan(x)  # direct launches
        p2 = plan(x)
        z = torch.stack([y, p1, p2]) * 2
    side.synchronize()
    ref = testing.reference_convolve(np.ones((2, 8, 4096)), k.cpu().numpy())
    for t in z:
        testing.assert_close(t.float().cpu().numpy() / 2, ref, "float16")


def test_torch_longconv_direct_call_refuses_grad(torch):
    k = torch.randn(2, 256, device="cuda")
    plan = longconv.LongConv(k, 256)
    x = torch.randn(1, 2, 256, device="cuda", dtype=torch.float16)
    plan(x)
    plan(x)
    with pytest.raises(TypeError, match="record no gradients"):
        plan(x.requires_grad_())
