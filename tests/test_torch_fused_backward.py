"""Autograd through the fused backward kernel: fp16 / bf16 CUDA tensors (needs a CUDA device).

The gradients of ``longconv.convolve`` against torch autograd on a float64 reference, with
broadcast gates (reduced by the adapter), a shared filter and a scalar skip.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("cupy")

import longconv  # noqa: E402
from longconv import testing  # noqa: E402

pytestmark = pytest.mark.gpu


def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")


def ref_conv(x, k, causal, pregate=None, postgate=None, skip=None):
    """Float64 torch definition of longconv.convolve (rfft of size >= L + Lk - 1)."""
    L, Lk = x.shape[-1], k.shape[-1]
    u = x if pregate is None else x * pregate
    n = 1 << (L + Lk - 2).bit_length()
    full = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    off = 0 if causal else (Lk - 1) // 2
    y = full[..., off: off + L]
    if postgate is not None:
        y = y * postgate
    if skip is not None:
        y = y + (skip.reshape(-1, 1) if x.ndim >= 2 else skip) * x
    return y


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal,L,Lk", [(True, 2048, 2048), (True, 1000, 333),
                                         (False, 999, 301)])
def test_fused_gradients_against_float64(dtype, causal, L, Lk):
    _cuda()
    g = torch.Generator().manual_seed(L)
    shapes = [(3, 4, L), (4, Lk), (3, 4, L), (1, 4, L), (4,)]
    leaves = [torch.randn(*s, generator=g).to("cuda", dtype).requires_grad_() for s in shapes]
    y = longconv.convolve(leaves[0], leaves[1], causal, pregate=leaves[2], postgate=leaves[3],
                          skip=leaves[4])
    dy = torch.randn(y.shape, generator=g).to("cuda", dtype)
    grads = torch.autograd.grad(y, leaves, dy)
    refs = [t.detach().double().requires_grad_() for t in leaves]
    yr = ref_conv(refs[0], refs[1], causal, *refs[2:])
    rgrads = torch.autograd.grad(yr, refs, dy.double())
    tol = testing.TOLERANCES["bfloat16" if dtype == torch.bfloat16 else "float16"]
    for name, got, want, leaf in zip("x k pregate postgate skip".split(), grads, rgrads, leaves,
                                     strict=True):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype and got.is_cuda, name
        # sums over broadcast axes and the skip's reduction add one rounding of the leaf dtype
        assert rel(got, want) < 2 * tol, (name, rel(got, want))


def test_fused_backward_is_used(spy):
    _cuda()
    from longconv import _fused

    calls = spy(_fused.FusedPlan, "backward_ptrs", lambda a, r: a[0].n)
    x = torch.randn(2, 3, 512, device="cuda", dtype=torch.float16, requires_grad=True)
    k = torch.randn(3, 512, device="cuda", requires_grad=True)
    longconv.convolve(x, k).float().square().sum().backward()
    assert calls == [1024]
    assert torch.isfinite(x.grad).all() and torch.isfinite(k.grad).all()
