"""The direct (time-domain) kernel of small problems (needs a CUDA device).

``cuda_src/direct_conv.cu`` against the float64 oracle in every mode, at awkward sizes, with
several tap chunks, shared and per-channel filters, gates and skip; the routes that reach it
(the cuFFT backend's small calls, CuPy/torch one-shot calls, ``LongConv`` direct calls, JAX
eager and jitted) against the oracle and against the cuFFT route it replaces.
"""

import numpy as np
import pytest

import longconv
from longconv import testing

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")
_direct = pytest.importorskip("longconv._direct")
_gpu_exact = pytest.importorskip("longconv._gpu_exact")

DTYPES = ["float32", "float64"]


@pytest.fixture
def launches(monkeypatch):
    """The direct kernel's launches of the test (their ``rows * Lout * taps``)."""
    seen = []
    real = _direct.launch

    def spy(cupy, name, x, k, k_stride, pre, post, skip, y, B, H, L, Lout, start, taps, wrap,
            stream):
        seen.append(B * H * Lout * taps)
        return real(cupy, name, x, k, k_stride, pre, post, skip, y, B, H, L, Lout, start, taps,
                    wrap, stream)

    monkeypatch.setattr(_direct, "launch", spy)
    return seen


def _cufft_only(monkeypatch):
    monkeypatch.setattr(_direct, "DIRECT_MAX_WORK", {"float32": -1, "float64": -1})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["full", "same", "valid", "circular"])
@pytest.mark.parametrize("L,Lk", [(1, 1), (7, 3), (300, 1500), (1000, 77), (2049, 1500)])
def test_modes_against_the_oracle(rng, launches, dtype, mode, L, Lk):
    if mode == "valid" and Lk > L:
        L, Lk = Lk, L
    x = testing.random_array(rng, (2, 3, L), dtype, xp=cp)
    k = testing.random_array(rng, (3, Lk), dtype, xp=cp)
    plan = _gpu_exact.CupyConvPlan(k, L, mode=mode, io_dtype=dtype)
    y = plan(x)
    assert launches, "the direct kernel did not run"
    assert y.dtype == np.dtype(dtype)
    testing.assert_close(y, testing.reference(x, k, mode), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kshape", [(4, 700), (1, 700), (700,), (4, 1300)])
def test_convolve_one_shot(rng, launches, dtype, causal, kshape):
    x = testing.random_array(rng, (2, 4, 900), dtype, xp=cp)
    k = testing.random_array(rng, kshape, dtype, xp=cp)
    y = longconv.convolve(x, k, causal)
    assert launches
    assert y.dtype == np.dtype(dtype) and y.shape == x.shape
    testing.assert_close(y, testing.reference_convolve(x, k, causal=causal), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gates_and_skip_through_the_plan(rng, launches, dtype, monkeypatch):
    B, H, L = 3, 4, 500
    x = testing.random_array(rng, (B, H, L), dtype, xp=cp)
    k = testing.random_array(rng, (H, 300), dtype, xp=cp)
    pre = testing.random_array(rng, (B, H, L), dtype, xp=cp)
    post = testing.random_array(rng, (1, H, L), dtype, xp=cp)  # broadcast
    skip = testing.random_array(rng, (H,), dtype, xp=cp)
    for causal in (True, False):
        y = longconv.convolve(x, k, causal, pregate=pre, postgate=post, skip=skip)
        ref = testing.reference_convolve(x, k, causal=causal, pregate=pre, postgate=post,
                                         skip=skip)
        testing.assert_close(y, ref, dtype)
        with monkeypatch.context() as m:
            _cufft_only(m)
            ycu = longconv.convolve(x, k, causal, pregate=pre, postgate=post, skip=skip)
        testing.assert_close(y, ycu, dtype)
    assert launches


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_output_is_written(rng, dtype):
    B, H, L, Lk = 3, 2, 300, 2100  # three tap chunks, ten output tiles, a partial one
    x = testing.random_array(rng, (B, H, L), dtype, xp=cp)
    k = testing.random_array(rng, (H, Lk), dtype, xp=cp)
    plan = _gpu_exact.CupyConvPlan(k, L, mode="full", io_dtype=dtype)
    y = testing.nan_poison((B, H, L + Lk - 1), dtype, xp=cp)
    assert plan.serves_ptrs(B, H)
    plan.forward_ptrs(x.data.ptr, 0, 0, 0, y.data.ptr, B, H, cp.cuda.get_current_stream().ptr)
    testing.assert_all_written(y, dtype)
    testing.assert_close(y, testing.reference(x, k, "full"), dtype)


def test_the_work_bound_hands_large_problems_to_cufft(rng, launches, monkeypatch):
    x = testing.random_array(rng, (4, 2, 256), "float32", xp=cp)
    k = testing.random_array(rng, (2, 256), "float32", xp=cp)
    work = 4 * 2 * 256 * 256
    monkeypatch.setattr(_direct, "DIRECT_MAX_WORK", {"float32": work, "float64": work})
    y1 = longconv.convolve(x, k)
    assert launches == [work]
    monkeypatch.setattr(_direct, "DIRECT_MAX_WORK", {"float32": work - 1, "float64": work})
    y2 = longconv.convolve(x, k)
    assert launches == [work]  # cuFFT this time
    testing.assert_close(y1, y2, "float32")
    testing.assert_close(y2, testing.reference_convolve(x, k), "float32")


@pytest.mark.parametrize("dtype", DTYPES)
def test_longconv_direct_calls(rng, launches, dtype):
    H, L = 3, 1000
    k = testing.random_array(rng, (H, 400), dtype, xp=cp)
    plan = longconv.LongConv(k, L)
    x = testing.random_array(rng, (2, H, L), dtype, xp=cp)
    y1 = plan(x)
    assert plan._fast is not None
    y2 = plan(x)
    assert cp.array_equal(y1, y2) and len(launches) == 2
    testing.assert_close(y2, testing.reference_convolve(x, k), dtype)
    plan.update(k * 3)
    testing.assert_close(plan(x), testing.reference_convolve(x, k * 3), dtype)


def test_strided_filters(rng, launches):
    x = testing.random_array(rng, (2, 3, 400), "float32", xp=cp)
    big = testing.random_array(rng, (3, 1200), "float32", xp=cp)
    for k in (big[:, 100:500], big[:, ::3][:, :400], big[0, ::2][:400]):
        y = longconv.convolve(x, k)
        testing.assert_close(y, testing.reference_convolve(x, k), "float32")
    assert launches


@pytest.fixture
def torch(torch_cuda):
    return torch_cuda


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_one_shot_and_plan(torch, rng, launches, dtype):
    dt = getattr(torch, dtype)
    x = torch.randn(2, 4, 600, device="cuda", dtype=dt)
    base = torch.randn(4, 900, device="cuda", dtype=dt)
    for k, causal in ((base[:, :300], True), (base[:1, ::2][:, :300], False),
                      (base[0, :200], True)):
        y = longconv.convolve(x, k, causal)
        assert y.dtype == dt and y.shape == x.shape
        testing.assert_close(y.cpu().numpy(), testing.reference_convolve(
            x.cpu().numpy(), k.cpu().numpy(), causal=causal), dtype)
    n = len(launches)
    assert n >= 3
    plan = longconv.LongConv(base[:, :300], 600)
    y1, y2 = plan(x), plan(x)
    assert torch.equal(y1, y2) and len(launches) == n + 2


def test_jax_eager_and_jit(rng, launches):
    jax = pytest.importorskip("jax")
    if jax.default_backend() != "gpu":
        pytest.skip("jax without a GPU")
    jnp = jax.numpy
    dtype = "float32"
    x = jnp.asarray(testing.random_array(rng, (2, 3, 500), dtype))
    k = jnp.asarray(testing.random_array(rng, (3, 250), dtype))
    skip = jnp.asarray(testing.random_array(rng, (3,), dtype))
    ref = testing.reference_convolve(np.asarray(x), np.asarray(k))
    testing.assert_close(np.asarray(longconv.convolve(x, k)), ref, dtype)
    y = jax.jit(lambda a, b: longconv.convolve(a, b))(x, k)
    assert y.dtype == np.dtype(dtype)
    testing.assert_close(np.asarray(y), ref, dtype)
    y = jax.jit(lambda a, b, s: longconv.convolve(a, b, False, skip=s))(x, k, skip)
    testing.assert_close(np.asarray(y), testing.reference_convolve(
        np.asarray(x), np.asarray(k), causal=False, skip=np.asarray(skip)), dtype)
    assert len(launches) >= 3


# ------------------------------------------------------------- tiny float16/bfloat16 calls


@pytest.mark.parametrize("kdtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("causal", [True, False])
def test_tiny_16bit_one_shot_cupy(rng, launches, kdtype, causal):
    x = testing.random_array(rng, (2, 2, 256), "float16", xp=cp)
    k = cp.asarray(testing.random_array(rng, (2, 200), kdtype))
    y = longconv.convolve(x, k, causal)
    assert launches == [4 * 256 * 200]
    assert y.dtype == cp.float16 and y.shape == x.shape
    testing.assert_close(y, testing.reference_convolve(x, k, causal=causal), "float16")


@pytest.mark.parametrize("tdtype", ["float16", "bfloat16"])
def test_tiny_16bit_torch_forward_and_backward(torch, rng, launches, tdtype):
    dt = getattr(torch, tdtype)
    B, H, L = 1, 2, 256
    x = torch.randn(B, H, L, device="cuda", dtype=dt)
    k = torch.randn(H, 200, device="cuda")
    pre = torch.randn(B, H, L, device="cuda", dtype=dt)
    post = torch.randn(B, H, L, device="cuda", dtype=dt)
    skip = torch.randn(H, device="cuda")
    with torch.no_grad():
        y = longconv.convolve(x, k, pregate=pre, postgate=post, skip=skip)
    assert launches == [B * H * L * 200]
    to64 = [t.double().cpu().numpy() for t in (x, k, pre, post, skip)]
    ref = testing.reference_convolve(to64[0], to64[1], pregate=to64[2], postgate=to64[3],
                                     skip=to64[4])
    testing.assert_close(y.float().cpu().numpy(), ref, rtol=testing.tolerance(tdtype))
    # gradients: the forward's direct launch, then the fused backward (its own spectrum)
    leaves = [t.clone().requires_grad_() for t in (x, k)]
    y = longconv.convolve(*leaves)
    dy = torch.randn_like(y)
    gx, gk = torch.autograd.grad(y, leaves, dy)
    xr, kr = (t.double().cpu().requires_grad_() for t in (x, k))
    yr = torch.fft.irfft(torch.fft.rfft(xr, n=2 * L) * torch.fft.rfft(kr, n=2 * L), n=2 * L)
    rx, rk = torch.autograd.grad(yr[..., :L], (xr, kr), dy.double().cpu())
    testing.assert_close(gx.float().cpu().numpy(), rx.numpy(), rtol=4 * testing.tolerance(tdtype))
    testing.assert_close(gk.cpu().numpy(), rk.numpy(), rtol=8 * testing.tolerance(tdtype))


def test_tiny_16bit_jax_eager_and_jit_agree(rng, launches):
    jax = pytest.importorskip("jax")
    if jax.default_backend() != "gpu":
        pytest.skip("jax without a GPU")
    jnp = jax.numpy
    x = jnp.asarray(testing.random_array(rng, (1, 2, 256), "float16"))
    k = jnp.asarray(testing.random_array(rng, (2, 256), "float32"))
    ye = longconv.convolve(x, k)
    yj = jax.jit(lambda a, b: longconv.convolve(a, b))(x, k)
    assert len(launches) == 2
    assert np.array_equal(np.asarray(ye), np.asarray(yj))
    testing.assert_close(np.asarray(yj), testing.reference_convolve(np.asarray(x), np.asarray(k)),
                         "float16")


def test_plans_beyond_the_bound_keep_only_the_spectrum(rng):
    """A plan whose single row is beyond the direct kernel's bound never uses it: after its
    first cuFFT call it holds the spectrum only (a bank of long filters is not held twice);
    update() gives it new filters."""
    L = 8192
    x = testing.random_array(rng, (2, 1, L), "float64", xp=cp)
    k = testing.random_array(rng, (1, L), "float64", xp=cp)
    plan = _gpu_exact.CupyConvPlan(k, L, mode="causal", io_dtype="float64")
    assert not plan.serves_ptrs(1, 1)
    testing.assert_close(plan(x), testing.reference(x, k, "causal"), "float64")
    assert plan._kt is None and plan._K is not None
    plan.update(k * 2)
    testing.assert_close(plan(x), testing.reference(x, k * 2, "causal"), "float64")
