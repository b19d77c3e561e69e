"""PyTorch adapter: tensors in and out, autograd through ``longconv::convolve``, FlashFFTConv."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import longconv  # noqa: E402
import longconv.adapters.torch as lt  # noqa: E402
from longconv.adapters.torch import FlashFFTConv  # noqa: E402

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# relative error (max |err| / max |ref|) allowed against the float64 reference
RTOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-5, torch.float64: 1e-12}


def ref_conv(x, k, causal=True, pregate=None, postgate=None, skip=None):
    """``postgate * conv(pregate * x, k) + skip * x`` in pure torch (torch.fft, float64)."""
    x64 = x.double()
    u = x64 * pregate.double() if pregate is not None else x64
    L, Lk = x.shape[-1], k.shape[-1]
    n = L + Lk - 1
    full = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k.double(), n=n), n=n)
    p = 0 if causal else (Lk - 1) // 2
    y = full[..., p:p + L]
    if postgate is not None:
        y = y * postgate.double()
    if skip is not None:
        y = y + (skip.double().reshape(-1, 1) if x.ndim >= 2 else skip.double()) * x64
    return y


def ref_flash(u, k, n, pregate=None, postgate=None):
    z = u.double() * pregate.double() if pregate is not None else u.double()
    y = torch.fft.irfft(torch.fft.rfft(z, n=n) * torch.fft.rfft(k.double(), n=n), n=n)
    y = y[..., :u.shape[-1]]
    return y * postgate.double() if postgate is not None else y


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def gen(*shape, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    return t.requires_grad_(grad)


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("causal", [True, False])
def test_convolve_round_trip(dtype, causal):
    x, k = gen(2, 3, 100, dtype=dtype), gen(3, 37, dtype=dtype, seed=1)
    pre, post, skip = gen(2, 3, 100, seed=2), gen(3, 1, seed=3), gen(3, seed=4)
    y = longconv.convolve(x, k, causal, pregate=pre.to(dtype), postgate=post.to(dtype),
                          skip=skip.to(dtype))
    assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == x.shape
    assert y.device.type == "cpu" and y.is_contiguous()
    ref = ref_conv(x, k, causal, pre.to(dtype), post.to(dtype), skip.to(dtype))
    assert rel_err(y, ref) < RTOL[dtype]


@pytest.mark.parametrize("dtype", FLOATS)
def test_convolve_matches_numpy_path(dtype):
    x, k = gen(4, 64, dtype=dtype), gen(4, 64, dtype=dtype, seed=1)
    y = longconv.convolve(x, k)
    if dtype == torch.bfloat16:
        xn = x.view(torch.int16).numpy().view(np.uint16)
        kn = k.float().numpy()
        yn = longconv.LongConv(kn, 64, dtype="bfloat16")(xn)
        assert np.array_equal(y.view(torch.int16).numpy().view(np.uint16), yn)
    else:
        yn = longconv.convolve(x.numpy(), k.numpy())
        assert np.array_equal(y.numpy(), yn)


def test_one_dimensional_and_shared_filter():
    x, k = gen(50, dtype=torch.float64), gen(7, dtype=torch.float64, seed=1)
    y = longconv.convolve(x, k)
    assert y.shape == (50,) and rel_err(y, ref_conv(x, k)) < 1e-12
    xb = gen(2, 3, 50, dtype=torch.float64)
    assert rel_err(longconv.convolve(xb, k), ref_conv(xb, k.expand(3, 7))) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_fftconvolve_long_dtype_rule(dtype):
    a, b = gen(3, 40, dtype=dtype), gen(3, 9, dtype=dtype, seed=1)
    y = longconv.fftconvolve_long(a, b, mode="full", axes=-1)
    assert isinstance(y, torch.Tensor)
    expect = np.result_type(a.numpy().dtype, np.float32) if dtype == torch.float16 else None
    assert y.dtype == (torch.float32 if expect is not None else dtype)
    import scipy.signal

    ref = scipy.signal.fftconvolve(a.double().numpy(), b.double().numpy(), axes=-1)
    assert rel_err(y, torch.from_numpy(ref)) < RTOL[torch.float32]
    circ = longconv.fftconvolve_long(a, b, mode="circular", axes=-1)
    assert circ.shape == a.shape


def test_fftconvolve_long_bfloat16_convolves_numbers():
    a, b = gen(3, 40).bfloat16(), gen(3, 9, seed=1).bfloat16()
    y = longconv.fftconvolve_long(a, b, axes=-1)
    assert y.dtype == torch.float32
    import scipy.signal

    ref = scipy.signal.fftconvolve(a.double().numpy(), b.double().numpy(), axes=-1)
    assert rel_err(y, torch.from_numpy(ref)) < RTOL[torch.float32]


def test_longconv_plan_with_tensors():
    k = gen(3, 20, seed=1)
    plan = longconv.LongConv(k, 64)
    x = gen(2, 3, 64)
    y = plan(x, skip=gen(3, seed=2))
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    assert rel_err(y, ref_conv(x, k, skip=gen(3, seed=2))) < RTOL[torch.float32]


def test_cpu_input_is_read_in_place():
    x = gen(2, 3, 64)
    arr, dt = lt.to_backend(x)
    assert arr.ctypes.data == x.data_ptr() and dt == np.float32
    xb = x.to(torch.bfloat16)
    arr, dt = lt.to_backend(xb)
    assert arr.ctypes.data == xb.data_ptr() and dt == "bfloat16" and arr.dtype == np.uint16
    y = np.arange(6, dtype=np.float32)
    t = lt.from_backend(y, np.dtype(np.float32), x)
    assert t.data_ptr() == y.ctypes.data


def test_convolve_reads_the_callers_memory(monkeypatch):
    seen = []
    real = lt._as_backend

    def spy(t):
        arr, dt = real(t)
        seen.append((t.data_ptr(), arr.ctypes.data))
        return arr, dt

    monkeypatch.setattr(lt, "_as_backend", spy)
    x, k = gen(2, 3, 64), gen(3, 16, seed=1)
    y = longconv.convolve(x, k)
    assert (x.data_ptr(), x.data_ptr()) in seen and (k.data_ptr(), k.data_ptr()) in seen
    assert rel_err(y, ref_conv(x, k)) < RTOL[torch.float32]


def test_autocast_keeps_the_api_dtype_rule():
    x, k = gen(2, 3, 64, grad=True), gen(3, 16, seed=1, grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = longconv.convolve(x, k)
    assert y.dtype == torch.float32 and rel_err(y, ref_conv(x, k)) < RTOL[torch.float32]
    y.sum().backward()
    assert k.grad.dtype == torch.float32


def test_no_grad_eval_mode_and_detached_inputs():
    x, k = gen(2, 3, 32, grad=True), gen(3, 8, seed=1, grad=True)
    with torch.no_grad():
        y = longconv.convolve(x, k)
        assert not y.requires_grad
        assert longconv.LongConv(k, 32)(x).shape == x.shape
    with pytest.raises(TypeError, match="record no gradients"):
        longconv.fftconvolve_long(x, k, axes=-1)


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Lk", [5, 12, 30])
def test_gradcheck_float64(causal, Lk):
    L = 12
    x = gen(2, 3, L, dtype=torch.float64, grad=True)
    k = gen(3, Lk, dtype=torch.float64, seed=1, grad=True)
    pre = gen(2, 3, L, dtype=torch.float64, seed=2, grad=True)
    post = gen(3, 1, dtype=torch.float64, seed=3, grad=True)
    skip = gen(3, dtype=torch.float64, seed=4, grad=True)

    def f(x, k, pre, post, skip):
        return longconv.convolve(x, k, causal, pregate=pre, postgate=post, skip=skip)

    assert torch.autograd.gradcheck(f, (x, k, pre, post, skip))


def test_gradcheck_shared_filter_and_scalar_skip():
    x = gen(3, 10, dtype=torch.float64, grad=True)
    k = gen(4, dtype=torch.float64, seed=1, grad=True)
    skip = gen(1, dtype=torch.float64, seed=2, grad=True)
    assert torch.autograd.gradcheck(lambda x, k, s: longconv.convolve(x, k, skip=s),
                                    (x, k, skip))
    x1 = gen(9, dtype=torch.float64, grad=True)
    assert torch.autograd.gradcheck(lambda x, k: longconv.convolve(x, k, False), (x1, k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_gradients_against_reference(dtype, causal):
    shapes = [(2, 4, 96), (4, 70), (2, 4, 96), (4, 1), (4,)]
    leaves = [gen(*s, seed=i).to(dtype).requires_grad_() for i, s in enumerate(shapes)]
    x, k, pre, post, skip = leaves
    y = longconv.convolve(x, k, causal, pregate=pre, postgate=post, skip=skip)
    dy = gen(2, 4, 96, seed=9).to(dtype)
    grads = torch.autograd.grad(y, leaves, dy)
    refs = [t.detach().double().requires_grad_() for t in leaves]
    yr = ref_conv(*refs[:1], refs[1], causal, *refs[2:])
    rgrads = torch.autograd.grad(yr, refs, dy.double())
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype]
    for name, g, r, leaf in zip("x k pregate postgate skip".split(), grads, rgrads, leaves,
                                   strict=True):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape, name
        assert rel_err(g, r) < tol, name


def test_filter_gradient_accumulates_wide():
    # 16-bit data, a sum over many rows: a 16-bit accumulator would lose the small terms
    x = torch.ones(512, 1, 4, dtype=torch.float16)
    k = torch.ones(1, 1, dtype=torch.float16, requires_grad=True)
    longconv.convolve(x, k).backward(torch.full_like(x, 1.0 / 1024))
    assert float(k.grad) == pytest.approx(2.0, rel=1e-3)


def test_opcheck():
    x, k = gen(2, 3, 40), gen(3, 10, seed=1)
    pre, post, skip = gen(2, 3, 40, seed=2), gen(2, 3, 40, seed=3), gen(3, seed=4)
    for args in [(x, k, pre, post, skip, True, None), (x, k, None, None, None, False, None)]:
        torch.library.opcheck(lt._CONVOLVE_OP, args)
        grad_args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a
                          for a in args)
        torch.library.opcheck(lt._CONVOLVE_OP, grad_args)
    torch.library.opcheck(lt._KGRAD_OP, (x, pre, 10, True))


def _compiled_matches(backend):
    x, k = gen(2, 3, 48, grad=True), gen(3, 16, seed=1, grad=True)
    pre = gen(2, 3, 48, seed=2)

    def f(x, k, pre):
        return torch.tanh(longconv.convolve(x, k, pregate=pre)) * 2

    cf = torch.compile(f, fullgraph=True, backend=backend)
    y = cf(x, k, pre)
    gx, gk = torch.autograd.grad(y.sum(), (x, k))
    y0 = f(x, k, pre)
    gx0, gk0 = torch.autograd.grad(y0.sum(), (x, k))
    assert rel_err(y, y0) < 1e-6
    assert rel_err(gx, gx0) < 1e-6 and rel_err(gk, gk0) < 1e-6


def test_compile_fullgraph():
    # dynamo traces longconv.convolve down to the custom operator, AOT autograd runs the fake
    # implementation and the backward formula
    _compiled_matches("aot_eager")


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    _compiled_matches("inductor")


class Hyenaish(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(gen(3, 16))

    def forward(self, x):
        return longconv.convolve(x, self.k, pregate=x)


def test_module_eval_mode_gradients():
    m = Hyenaish().eval()
    x = gen(2, 3, 32, seed=5, grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None and m.k.grad is not None


# ------------------------------------------------------------------ FlashFFTConv


@pytest.mark.parametrize("L,seqlen,Lk", [(64, 128, 64), (64, 80, 64), (63, 63, 63),
                                         (33, 100, 200), (50, 50, 7), (31, 62, 31)])
def test_flashfftconv_matches_fft_of_size_seqlen(L, seqlen, Lk):
    u, k = gen(2, 3, L), gen(3, Lk, seed=1)
    pre, post = gen(2, 3, L, seed=2), gen(2, 3, L, seed=3)
    conv = FlashFFTConv(seqlen, dtype=torch.float16)
    y = conv(u, k, pre, post)
    assert y.dtype == u.dtype and y.shape == u.shape
    assert rel_err(y, ref_flash(u, k, seqlen, pre, post)) < RTOL[torch.float32]
    assert rel_err(conv(u, k), ref_flash(u, k, seqlen)) < RTOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_flashfftconv_half_inputs(dtype):
    u, k = gen(2, 5, 100).to(dtype), gen(5, 100, seed=1).to(dtype)
    y = FlashFFTConv(200, dtype=dtype)(u, k)
    assert y.dtype == dtype and rel_err(y, ref_flash(u, k, 200)) < RTOL[dtype]


def test_flashfftconv_gradients_wrap():
    u = gen(1, 2, 10, dtype=torch.float64, grad=True)
    k = gen(2, 10, dtype=torch.float64, seed=1, grad=True)
    post = gen(1, 2, 10, dtype=torch.float64, seed=2, grad=True)
    conv = FlashFFTConv(14)
    assert torch.autograd.gradcheck(lambda u, k, p: conv(u, k, postgate=p), (u, k, post))
    y = conv(u, k, postgate=post)
    g = torch.autograd.grad(y.sum(), (u, k))
    ur, kr = u.detach().requires_grad_(), k.detach().requires_grad_()
    gr = torch.autograd.grad(ref_flash(ur, kr, 14, postgate=post.detach()).sum(), (ur, kr))
    assert all(rel_err(a, b) < 1e-12 for a, b in zip(g, gr, strict=True))


def test_flashfftconv_errors():
    with pytest.raises(ValueError, match="seqlen"):
        FlashFFTConv(0)
    with pytest.raises(TypeError, match="seqlen"):
        FlashFFTConv(12.5)
    conv = FlashFFTConv(32)
    with pytest.raises(ValueError, match="seqlen=32"):
        conv(gen(1, 2, 40), gen(2, 4))
    with pytest.raises(ValueError, match="u must have shape"):
        conv(gen(2, 8), gen(2, 4))
    with pytest.raises(ValueError, match="k must have shape"):
        conv(gen(1, 2, 8), gen(3, 4))
    with pytest.raises(TypeError, match="u must be a torch tensor"):
        conv(np.ones((1, 2, 8)), gen(2, 4))


# ------------------------------------------------------------------ errors


def test_error_messages():
    x = gen(2, 3, 16)
    with pytest.raises(TypeError, match="x and k must be the same kind"):
        longconv.convolve(x, np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="causal"):
        longconv.convolve(x, gen(3, 4), causal="yes")
    with pytest.raises(ValueError, match="k holds H=4 filters"):
        longconv.convolve(x, gen(4, 4))
    with pytest.raises(ValueError, match="pregate"):
        longconv.convolve(x, gen(3, 4), pregate=gen(5, 16))
    with pytest.raises(ValueError, match="skip"):
        longconv.convolve(x, gen(3, 4), skip=gen(5))
    with pytest.raises(ValueError, match="kernel_len"):
        longconv.convolve(x, gen(3, 4), kernel_len=0)
    with pytest.raises(TypeError, match="postgate"):
        longconv.convolve(x, gen(3, 4), postgate="gate")
    with pytest.raises(NotImplementedError, match="freq_keep"):
        longconv.convolve(x.requires_grad_(), gen(3, 4), freq_keep=0.5)


def test_kernel_len_and_freq_keep_forward():
    x, k = gen(2, 3, 64, dtype=torch.float64), gen(3, 40, dtype=torch.float64, seed=1)
    y = longconv.convolve(x, k, kernel_len=10)
    assert rel_err(y, ref_conv(x, k[:, :10])) < 1e-12
    yf = longconv.convolve(x, k, freq_keep=0.5)
    yn = longconv.convolve(x.numpy(), k.numpy(), freq_keep=0.5)
    assert np.array_equal(yf.numpy(), yn)


def test_integer_input_follows_api_dtype_rule():
    x = torch.arange(12, dtype=torch.int32).reshape(1, 12)
    y = longconv.convolve(x, torch.ones(1, 3, dtype=torch.int32))
    assert y.dtype == torch.float64
    assert rel_err(y, ref_conv(x, torch.ones(1, 3))) < 1e-12


# ------------------------------------------------------------------ CUDA (GPU only)


def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    import cupy

    return cupy


@pytest.mark.gpu
def test_cuda_zero_copy_and_round_trip():
    cupy = _cuda()
    x = gen(2, 4, 1024).cuda()
    k = gen(4, 1024, seed=1).cuda()
    arr, _ = lt.to_backend(x)
    assert arr.data.ptr == x.data_ptr()
    assert cupy.from_dlpack(x).data.ptr == x.data_ptr()
    y = longconv.convolve(x, k)
    assert y.is_cuda and y.dtype == x.dtype
    assert rel_err(y.cpu(), ref_conv(x.cpu(), k.cpu())) < RTOL[torch.float32]
    yb = longconv.convolve(x.bfloat16(), k.bfloat16())
    assert yb.dtype == torch.bfloat16 and yb.is_cuda


@pytest.mark.gpu
def test_cuda_runs_on_torch_current_stream():
    cupy = _cuda()
    seen = []
    real = lt._as_backend

    def spy(t):
        seen.append(cupy.cuda.get_current_stream().ptr)
        return real(t)

    side = torch.cuda.Stream()
    x, k = gen(2, 4, 4096).cuda(), gen(4, 4096, seed=1).cuda()
    with torch.cuda.stream(side):
        lt._as_backend = spy
        try:
            y = longconv.convolve(x, k)
        finally:
            lt._as_backend = real
        torch.cuda.current_stream().synchronize()
    assert seen and all(p == side.cuda_stream for p in seen)
    assert rel_err(y.cpu(), ref_conv(x.cpu(), k.cpu())) < RTOL[torch.float32]


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_gradients_against_reference(causal):
    _cuda()
    leaves = [gen(*s, seed=i).cuda().requires_grad_()
              for i, s in enumerate([(2, 4, 300), (4, 200), (2, 4, 300), (4, 1), (4,)])]
    y = longconv.convolve(leaves[0], leaves[1], causal, pregate=leaves[2],
                          postgate=leaves[3], skip=leaves[4])
    grads = torch.autograd.grad(y.square().sum(), leaves)
    refs = [t.detach().cpu().double().requires_grad_() for t in leaves]
    yr = ref_conv(refs[0], refs[1], causal, *refs[2:])
    rgrads = torch.autograd.grad(yr.square().sum(), refs)
    for g, r in zip(grads, rgrads, strict=True):
        assert g.is_cuda and rel_err(g.cpu(), r) < 1e-4


@pytest.mark.gpu
def test_cuda_flashfftconv():
    _cuda()
    u, k = gen(2, 8, 1000).cuda().half(), gen(8, 1000, seed=1).cuda().half()
    y = FlashFFTConv(2048)(u, k)
    assert y.is_cuda and y.dtype == torch.float16
    assert rel_err(y.cpu(), ref_flash(u.cpu(), k.cpu(), 2048)) < RTOL[torch.float16]


# ------------------------------------------------------------------ streams and CUDA graphs


class _FakeStream:
    """Stands for a torch CUDA stream: a handle and the CUDA stream protocol."""

    def __init__(self, ptr):
        self.cuda_stream = ptr

    def __cuda_stream__(self):
        return (0, self.cuda_stream)


def _fake_cupy(monkeypatch, with_protocol):
    import sys
    import types
    import warnings

    made = []

    class Stream:
        def __init__(self, ptr, how):
            self.ptr, self.how = ptr, how

    def from_external(obj):
        made.append("from_external")
        return Stream(obj.__cuda_stream__()[1], "protocol")

    def external(ptr, device_id=-1):
        warnings.warn("ExternalStream is deprecated", DeprecationWarning, stacklevel=2)
        made.append("ExternalStream")
        return Stream(ptr, f"external on {device_id}")

    if with_protocol:
        Stream.from_external = staticmethod(from_external)
    cuda = types.SimpleNamespace(Stream=Stream, ExternalStream=external)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(lt, "_CUPY_STREAMS", {})
    return made


def test_cupy_stream_uses_the_stream_protocol(monkeypatch):
    import warnings

    made = _fake_cupy(monkeypatch, with_protocol=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        s = lt._cupy_stream(_FakeStream(1234), 0)
        assert s.ptr == 1234 and s.how == "protocol"
        assert lt._cupy_stream(_FakeStream(1234), 0) is s  # cached per (device, handle)
        assert lt._cupy_stream(_FakeStream(1234), 1) is not s
    assert made == ["from_external", "from_external"]


def test_cupy_stream_falls_back_on_older_cupy(monkeypatch):
    made = _fake_cupy(monkeypatch, with_protocol=False)
    with pytest.warns(DeprecationWarning):
        s = lt._cupy_stream(_FakeStream(99), 2)
    assert s.ptr == 99 and s.how == "external on 2" and made == ["ExternalStream"]


def test_capture_of_a_call_never_made_eagerly_is_refused(monkeypatch):
    import contextlib

    class CUDARuntimeError(RuntimeError):
        pass

    CUDARuntimeError.__module__ = "cupy_backends.cuda.api.runtime"

    @contextlib.contextmanager
    def capturing(t):
        yield True

    touched = []

    def refuse(t):
        touched.append(t.shape)
        raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported")

    x, k = gen(1, 2, 16), gen(2, 4, seed=1)
    args = (x, k, True, None, None, None, None, None)
    monkeypatch.setattr(lt, "_EAGER_CALLS", set())
    monkeypatch.setattr(lt, "_on_torch_stream", capturing)
    monkeypatch.setattr(lt, "_as_backend", refuse)
    with pytest.raises(RuntimeError, match="before any call with these shapes"):
        lt._run_convolve(*args)
    assert touched == []  # refused before any work
    # an eager call of the same shapes registers them
    monkeypatch.undo()
    monkeypatch.setattr(lt, "_EAGER_CALLS", set())
    lt._run_convolve(*args)
    assert len(lt._EAGER_CALLS) == 1
    # then a CUDA error during the capture is explained, the original chained
    monkeypatch.setattr(lt, "_on_torch_stream", capturing)
    monkeypatch.setattr(lt, "_as_backend", refuse)
    with pytest.raises(RuntimeError, match="once before capturing") as info:
        lt._run_convolve(*args)
    assert isinstance(info.value.__cause__, CUDARuntimeError) and touched

    def bad_value(t):
        raise ValueError("not a CUDA error")

    monkeypatch.setattr(lt, "_as_backend", bad_value)
    with pytest.raises(ValueError, match="not a CUDA error"):  # passed through unchanged
        lt._run_convolve(*args)


@pytest.mark.gpu
def test_cuda_stream_wrapper_is_not_deprecated():
    import warnings

    cupy = _cuda()
    x, k = gen(2, 4, 512).cuda(), gen(4, 512, seed=1).cuda()
    side = torch.cuda.Stream()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with torch.cuda.stream(side):
            y = longconv.convolve(x, k)
            cs = lt._cupy_stream(side, x.device.index)
        side.synchronize()
    assert isinstance(cs, cupy.cuda.Stream) and cs.ptr == side.cuda_stream
    assert rel_err(y.cpu(), ref_conv(x.cpu(), k.cpu())) < RTOL[torch.float32]


@pytest.mark.gpu
def test_cuda_work_is_ordered_on_torch_stream():
    # no synchronisation between torch's and CuPy's view of the stream: a long torch kernel
    # queued first must finish before longconv reads its output
    _cuda()
    side = torch.cuda.Stream()
    k = gen(8, 4096, seed=1).cuda()
    with torch.cuda.stream(side):
        a = torch.randn(4096, 4096, device="cuda")
        for _ in range(3):
            a = a @ a / 64  # keeps the stream busy
        x = (a[:16] * 0 + 1).reshape(2, 8, 4096)  # ready only once the products are
        y = longconv.convolve(x, k)
        z = y * 2
    side.synchronize()
    ref = ref_conv(torch.ones(2, 8, 4096), k.cpu())
    assert rel_err(z.cpu() / 2, ref) < RTOL[torch.float32]


def _warm_up(fn, *args):
    """Eager calls on a side stream, as torch.cuda.graph asks before capturing."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


CAPTURE_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", CAPTURE_DTYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_graph_capture_forward(dtype, causal):
    _cuda()
    B, H, L, Lk = 3, 8, 1000, 700

    def inputs(seed):
        shapes = [(B, H, L), (H, Lk), (B, H, L), (H, 1), (H,)]
        return [gen(*s, seed=seed + i).cuda().to(dtype) for i, s in enumerate(shapes)]

    static = inputs(0)

    def f(x, k, pre, post, skip):
        return longconv.convolve(x, k, causal, pregate=pre, postgate=post, skip=skip)

    _warm_up(f, *static)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = f(*static)
    outs = []
    for seed in (10, 20):
        new = inputs(seed)
        if seed == 20:
            new[1] = static[1].clone()  # filter unchanged this time: only x and gates move
        for s, n in zip(static, new, strict=True):
            s.copy_(n)  # the filter too: the graph recomputes its spectrum on every replay
        graph.replay()
        torch.cuda.synchronize()
        y = y_static.clone()
        eager = f(*new)
        torch.cuda.synchronize()
        assert torch.equal(y, eager), f"replay differs from the eager call ({rel_err(y, eager)})"
        ref = ref_conv(*(t.cpu() for t in new[:2]), causal, *(t.cpu() for t in new[2:]))
        assert rel_err(y.cpu(), ref) < RTOL[dtype]
        outs.append(y)
    assert not torch.equal(outs[0], outs[1])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", CAPTURE_DTYPES)
def test_cuda_graph_capture_forward_and_backward(dtype):
    _cuda()
    B, H, L = 2, 4, 512
    x = gen(B, H, L).cuda().to(dtype).requires_grad_()
    k = gen(H, L, seed=1).cuda().to(dtype).requires_grad_()
    pre = gen(B, H, L, seed=2).cuda().to(dtype)
    dy = gen(B, H, L, seed=3).cuda().to(dtype)

    def step():
        y = longconv.convolve(x, k, pregate=pre)
        return (y, *torch.autograd.grad(y, (x, k), dy))

    _warm_up(step)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    for seed in (10, 20):
        with torch.no_grad():
            for t, s in ((x, 0), (k, 1), (pre, 2), (dy, 3)):
                t.copy_(gen(*t.shape, seed=seed + s).to(dtype))
        graph.replay()
        torch.cuda.synchronize()
        got = [t.clone() for t in static_out]
        eager = step()
        torch.cuda.synchronize()
        # replay and eager run the same kernels; a filter gradient summed with atomics may
        # round its last bit differently
        same = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
        for name, g, e in zip(("y", "dx", "dk"), got, eager, strict=True):
            assert g.dtype == e.dtype and g.shape == e.shape, name
            assert rel_err(g, e) < same, name
        xr = x.detach().cpu().double().requires_grad_()
        kr = k.detach().cpu().double().requires_grad_()
        yr = ref_conv(xr, kr, True, pre.cpu())
        rx, rk = torch.autograd.grad(yr, (xr, kr), dy.cpu().double())
        tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype]
        assert rel_err(got[0].cpu(), yr) < tol
        assert rel_err(got[1].cpu(), rx) < tol and rel_err(got[2].cpu(), rk) < tol


@pytest.mark.gpu
def test_cuda_graph_capture_without_warm_up_says_what_to_do():
    _cuda()
    # a shape no other test uses, so nothing is cached: a plan cannot be made during capture
    x = gen(1, 3, 7777).cuda().half()
    k = gen(3, 5555, seed=1).cuda().half()
    ref = ref_conv(x.cpu(), k.cpu())
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="before any call with these shapes"):
        with torch.cuda.graph(graph):
            longconv.convolve(x, k)
    torch.cuda.synchronize()
    y = longconv.convolve(x, k)  # an eager call works afterwards, and makes capture possible
    assert rel_err(y.cpu(), ref) < RTOL[torch.float16]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = longconv.convolve(x, k)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y_static, y)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("xshape, kshape", [
    ((2, 4, 300), (4, 200)),    # filters shorter than the signal
    ((3, 2, 100), (2, 257)),    # filters longer than the signal
    ((2, 3, 64), (64,)),        # one filter for every channel
    ((50,), (7,)),              # 1-D
])
def test_cuda_small_training_step_takes_the_direct_kernel(dtype, causal, xshape, kshape, spy):
    """A small float32/float64 forward and backward on CUDA: the forward, dx's correlation
    and dk's correlations each one launch of the direct kernel (no plan, no cuFFT); the
    gradients against torch autograd in float64; and the same against the general route."""
    _cuda()
    from longconv import _direct

    launches = spy(_direct, "launch", lambda a, r: a[1])
    plans = spy(lt, "_as_backend", lambda a, r: 1)
    x = gen(*xshape, dtype=dtype).cuda().requires_grad_()
    k = gen(*kshape, dtype=dtype, seed=1).cuda().requires_grad_()
    y = longconv.convolve(x, k, causal)
    dy = gen(*xshape, dtype=dtype, seed=2).cuda()
    gx, gk = torch.autograd.grad(y, (x, k), dy)
    name = "float32" if dtype == torch.float32 else "float64"
    assert launches == [name] * 3 and not plans
    xr, kr = (t.detach().cpu().double().requires_grad_() for t in (x, k))
    rx, rk = torch.autograd.grad(ref_conv(xr, kr, causal), (xr, kr), dy.cpu().double())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert gx.dtype == dtype and gk.dtype == dtype and gk.shape == k.shape
    assert rel_err(gx.cpu(), rx) < tol and rel_err(gk.cpu(), rk) < tol
    # the general route (plans, cuFFT) where the direct kernel's bound is exceeded
    with pytest.MonkeyPatch.context() as m:
        m.setitem(_direct.DIRECT_MAX_WORK, name, 0)
        fx, fk = torch.autograd.grad(longconv.convolve(x, k, causal), (x, k), dy)
    assert plans
    assert rel_err(fx, gx) < tol and rel_err(fk, gk) < tol
