"""PyTorch tensors: CPU tensors on the CPU backend, CUDA tensors on the GPU backends.

CPU tensors reach the CPU backend as NumPy views of their memory (``tensor.numpy()``, no copy)
and results come back as tensors sharing the result's memory (``torch.from_numpy``). CUDA
tensors travel through DLPack (``cupy.from_dlpack``, no copy; made contiguous first) and the
work runs on torch's current stream. bfloat16 travels as ``uint16`` bit patterns.

``longconv.convolve`` on tensors runs the custom operator ``longconv::convolve``
(``torch.library.custom_op``), so autograd, ``torch.compile`` and ``torch.library.opcheck``
see one operator with a fake (meta) implementation and a backward formula. ``fftconvolve_long``
and ``LongConv`` take and return tensors too but record no gradients: calling them with a
tensor that requires grad while grad mode is on is a ``TypeError`` rather than a silently
missing gradient.

:class:`FlashFFTConv` is a ``torch.nn.Module`` with FlashFFTConv's constructor and call
signature, computing what an FFT of size ``seqlen`` computes.
"""

from __future__ import annotations

import contextlib

import numpy as np

from longconv import _validate

KIND = "torch"

_FLOATS = ("float16", "bfloat16", "float32", "float64")


def _torch():
    import torch

    return torch


def is_array(obj):
    return isinstance(obj, _torch().Tensor)


def device(obj):
    return "gpu" if obj.device.type == "cuda" else "cpu"


def _check_no_grad(obj):
    torch = _torch()
    if obj.requires_grad and torch.is_grad_enabled():
        raise TypeError(
            "fftconvolve_long and LongConv record no gradients; got a tensor that requires "
            "grad. Use longconv.convolve (differentiable), or call under torch.no_grad() or "
            "on tensor.detach()"
        )


def _dtype_name(t):
    return str(t.dtype).rsplit(".", 1)[-1]


def _as_backend(t):
    """``t``'s data as a NumPy (CPU) or CuPy (CUDA) array without copying where possible,
    and its logical dtype."""
    torch = _torch()
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    bf16 = t.dtype == torch.bfloat16
    if t.device.type == "cuda":
        import cupy

        t = t.contiguous()
        arr = cupy.from_dlpack(t.view(torch.int16) if bf16 else t)
        if bf16:
            return arr.view(cupy.uint16), "bfloat16"
        return arr, arr.dtype
    if t.device.type != "cpu":
        raise TypeError(f"longconv runs on CPU and CUDA tensors; got a tensor on {t.device}")
    if bf16:
        return t.view(torch.int16).numpy().view(np.uint16), "bfloat16"
    arr = t.numpy()
    return arr, arr.dtype


def _to_tensor(array, logical_dtype, like=None):
    """A backend array as a tensor (CPU for NumPy, CUDA for CuPy) sharing its memory."""
    torch = _torch()
    bf16 = logical_dtype == "bfloat16"
    if isinstance(array, np.ndarray):
        if bf16 and array.dtype == np.float32:
            return torch.from_numpy(np.ascontiguousarray(array)).to(torch.bfloat16)
        array = np.ascontiguousarray(array)
        if bf16:
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)
    import cupy

    array = cupy.ascontiguousarray(array)
    if bf16:
        if array.dtype == cupy.float32:
            return torch.from_dlpack(array).to(torch.bfloat16)
        return torch.from_dlpack(array.view(cupy.int16)).view(torch.bfloat16)
    return torch.from_dlpack(array)


def to_backend(obj):
    _check_no_grad(obj)
    return _as_backend(obj)


def from_backend(array, logical_dtype, like=None):
    if not isinstance(array, np.ndarray) and type(array).__module__.split(".", 1)[0] != "cupy":
        array = np.asarray(array)
    out = _to_tensor(array, logical_dtype, like)
    if out.device.type == "cuda":
        _stream_barrier_after()
    return out


_RAW_STREAM = []


def _raw_stream():
    """``device -> handle`` of torch's current CUDA stream on that device (an int)."""
    if not _RAW_STREAM:
        torch = _torch()
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        if raw is None:
            def raw(dev):
                return torch.cuda.current_stream(dev).cuda_stream
        _RAW_STREAM.append(raw)
    return _RAW_STREAM[0]


def fast_call(plan, x):
    """A direct launch of the fused ``plan`` for later calls on tensors like ``x`` (same
    shape, dtype and CUDA device, contiguous, no gradient recorded), on torch's current stream
    with the output from torch's allocator; or None. The callable returns None for other
    tensors (the general path then serves them, or raises)."""
    torch = _torch()
    if type(x) is not torch.Tensor or not x.is_cuda or x.numel() == 0 \
            or not hasattr(plan, "serves_ptrs") or x.get_device() != plan.device:
        return None
    shape, dtype, dev = x.shape, x.dtype, plan.device
    H = shape[-2] if len(shape) >= 2 else 1
    B = x.numel() // (H * shape[-1])
    if not plan.serves_ptrs(B, H):
        return None
    get_device = _modules()[1].cuda.runtime.getDevice
    stream = _raw_stream()
    grad_enabled = torch.is_grad_enabled

    def call(x):
        if (x.shape != shape or x.dtype != dtype or x.get_device() != dev
                or not x.is_contiguous() or (x.requires_grad and grad_enabled())
                or get_device() != dev):
            return None
        y = torch.empty_like(x)
        plan.forward_ptrs(x.data_ptr(), 0, 0, 0, y.data_ptr(), B, H, stream(dev))
        return y

    return call


def _stream_barrier_after():
    """``fftconvolve_long`` / ``LongConv`` on CUDA tensors run on CuPy's current stream: make
    their result visible to torch's current stream when the two differ."""
    import cupy

    torch = _torch()
    if cupy.cuda.get_current_stream().ptr != torch.cuda.current_stream().cuda_stream:
        cupy.cuda.get_current_stream().synchronize()


# (device index, stream handle) -> CuPy stream object for that torch stream
_CUPY_STREAMS = {}


def _cupy_stream(stream, index):
    """CuPy's object for the torch CUDA stream ``stream`` of device ``index`` (cached; call with
    that device current).

    CuPy >= 14 wraps foreign streams through the CUDA stream protocol
    (``cupy.cuda.Stream.from_external``, which reads the device from the current one and keeps a
    reference to the torch stream, never destroying it); older CuPy through
    ``cupy.cuda.ExternalStream`` (deprecated in CuPy 14).
    """
    import cupy

    key = (index, stream.cuda_stream)
    cs = _CUPY_STREAMS.get(key)
    if cs is None:
        from_external = getattr(cupy.cuda.Stream, "from_external", None)
        if from_external is not None and hasattr(stream, "__cuda_stream__"):
            cs = from_external(stream)
        else:
            cs = cupy.cuda.ExternalStream(stream.cuda_stream, index)
        if len(_CUPY_STREAMS) >= 1024:  # torch's pools hold 64 streams per device
            _CUPY_STREAMS.clear()
        _CUPY_STREAMS[key] = cs
    return cs


_TORCH_ALLOCATOR = []


def _torch_allocator():
    """A CuPy allocator drawing on torch's caching allocator, on CuPy's current stream.

    Used while torch's stream is captured into a CUDA graph: the blocks then come from the
    graph's private memory pool, which torch keeps reserved for the graph's replays. (CuPy's own
    pool would hand the temporaries freed after the capture to later work, which replays would
    overwrite, and would call ``cudaMalloc`` on the capturing stream.)
    """
    if not _TORCH_ALLOCATOR:
        import cupy

        torch = _torch()

        def malloc(size, device_id):
            return torch.cuda.caching_allocator_alloc(size, device_id,
                                                      cupy.cuda.get_current_stream().ptr)

        def free(ptr, device_id):
            torch.cuda.caching_allocator_delete(ptr)

        _TORCH_ALLOCATOR.append(cupy.cuda.memory.PythonFunctionAllocator(malloc, free).malloc)
    return _TORCH_ALLOCATOR[0]


@contextlib.contextmanager
def _on_torch_stream(t):
    """CuPy work inside the block runs on torch's current stream of ``t``'s device.

    Every launch longconv makes (its kernels, CuPy's element-wise kernels and cuFFT, whose plans
    CuPy binds to the current stream at each execution) goes to that stream, and CuPy's memory
    pool serves allocations from that stream's arena, so reuse is ordered with the work. While
    the stream is being captured into a CUDA graph, allocations come from torch's caching
    allocator instead (:func:`_torch_allocator`). For CPU tensors, the block keeps NumPy data on
    the CPU (no automatic GPU offload). Yields whether the stream is being captured.
    """
    if t.device.type != "cuda":
        from longconv import _plan

        with _plan.host_data_on_cpu():
            yield False
        return
    import cupy

    torch = _torch()
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    with cupy.cuda.Device(index):
        cs = _cupy_stream(torch.cuda.current_stream(index), index)
        with cs:
            if cs.is_capturing():
                with cupy.cuda.using_allocator(_torch_allocator()):
                    yield True
            else:
                yield False


# Calls made outside a CUDA-graph capture, by device, shapes, dtypes and options. Capturing a
# call never made before would compile kernels, create cuFFT plans or upload tables on the
# capturing stream, which CUDA refuses or, worse, records instead of running (a table uploaded
# inside the graph stays empty outside it, and the cache keeps it): such a capture is refused
# before any CUDA work.
_EAGER_CALLS = set()


def _call_key(x, k, pregate, postgate, skip, causal, precision, freq_keep):
    # x.get_device(): an int (-1 on the CPU), cheaper than a torch.device; shapes are
    # torch.Size, tuples already
    return (x.get_device(), x.is_cuda, causal, precision, freq_keep, x.shape, x.dtype, k.shape,
            k.dtype, None if pregate is None else (pregate.shape, pregate.dtype),
            None if postgate is None else (postgate.shape, postgate.dtype),
            None if skip is None else (skip.shape, skip.dtype))


def _refuse_cold_capture(key, what, x, k):
    """Raise (before any CUDA work) when ``key`` is captured without an eager call before."""
    if key not in _EAGER_CALLS:
        raise RuntimeError(
            f"{what} is being captured into a CUDA graph before any call with these shapes, "
            f"dtypes and options (x {tuple(x.shape)} {x.dtype}, k {tuple(k.shape)} {k.dtype}) "
            "ran outside the capture. Run the same call once before capturing (the warm-up "
            "torch.cuda.graph asks for): it compiles the kernels and creates the cuFFT plans "
            "and tables, which a capture cannot make"
        )


def _remember_eager_call(key):
    if key not in _EAGER_CALLS:
        if len(_EAGER_CALLS) >= 4096:
            _EAGER_CALLS.clear()
        _EAGER_CALLS.add(key)


def _capture_error(exc):
    """A CUDA error raised while torch's stream was being captured, with what to do about it."""
    return RuntimeError(
        "longconv.convolve failed while a CUDA graph was being captured "
        f"({type(exc).__name__}: {exc}). Run the same call (same shapes, dtypes and device) "
        "once before capturing, as torch.cuda.graph asks for every operation: that compiles the "
        "kernels and creates the cuFFT plans and tables, which a capture cannot make"
    )


def _run_convolve(x, k, causal, pregate, postgate, skip, precision, freq_keep, keep=None):
    """``longconv.convolve`` on backend arrays viewing the tensors' memory; a tensor back.
    ``keep``: a dict that receives the filter spectrum of the fused path (see _fast_convolve)."""
    from longconv import _plan

    torch = _torch()
    bf16 = x.dtype == torch.bfloat16

    def arr(t):
        if t is None:
            return None
        if t.dtype == torch.bfloat16 and not bf16:
            t = t.float()  # exact; a uint16 array only means bfloat16 beside a bfloat16 x
        return _as_backend(t)[0]

    key = _call_key(x, k, pregate, postgate, skip, causal, precision, freq_keep)
    if freq_keep is None and x.is_cuda:
        # Under capture the fused path runs as it ran in the warm-up call: its shell, tables and
        # torch's cuFFT plans (filters too long for the direct spectrum kernel) exist, and its
        # scratch comes from torch's allocator (the graph's pool).
        capturing = torch.cuda.is_current_stream_capturing()
        if capturing:
            _refuse_cold_capture(key, "longconv.convolve", x, k)
        y = _fast_convolve(x, k, pregate, postgate, skip, causal, precision, keep)
        if y is None and precision is None and pregate is None and postgate is None \
                and skip is None:
            # small float32/float64 problems (a backward's correlations among them): one
            # launch of the direct kernel instead of a plan and cuFFT's launches
            y = _direct_convolve(x, k, causal)
        if y is not None:
            if not capturing:
                _remember_eager_call(key)
            return y
    with _on_torch_stream(x) as capturing:
        if capturing:
            _refuse_cold_capture(key, "longconv.convolve", x, k)
        try:
            xa, _ = _as_backend(x)
            args = dict(pregate=arr(pregate), postgate=arr(postgate), skip=arr(skip))
            if bf16:
                plan = _plan.LongConv(arr(k), x.shape[-1], causal=causal, dtype="bfloat16",
                                      precision=precision, freq_keep=freq_keep)
            else:
                # what longconv.convolve builds, without repeating the checks done above
                plan = _plan.LongConv._unbuilt(arr(k), x.shape[-1], causal=causal,
                                               precision=precision, kernel_len=None,
                                               freq_keep=freq_keep)
            y = plan(xa, **args)
            out = _to_tensor(y, "bfloat16" if bf16 else None, x)
        except Exception as exc:
            if capturing and _is_cuda_error(exc):
                raise _capture_error(exc) from exc
            raise
    if not capturing:
        _remember_eager_call(key)
    return out


_IO_NAMES = {}
_KDT = {}
_MODULES = []


def _io_names():
    """(I/O dtype names of the fused kernels, filter dtype names of the spectrum kernel) by
    torch dtype."""
    if not _IO_NAMES:
        torch = _torch()
        _IO_NAMES.update({torch.float16: "float16", torch.bfloat16: "bfloat16",
                          torch.float32: "float32"})
        _KDT.update({torch.float16: "float16", torch.float32: "float32",
                     torch.float64: "float64"})
    return _IO_NAMES, _KDT


def _modules():
    """(longconv._fused, cupy, longconv._direct), imported once."""
    if not _MODULES:
        import cupy

        from longconv import _direct, _fused

        _MODULES.extend((_fused, cupy, _direct))
    return _MODULES


def fast_convolve(x, k, causal):
    """``longconv.convolve(x, k, causal)`` with default options: :func:`_fast_lane` for CUDA
    tensors, else None (the general path)."""
    if not x.is_cuda:
        return None
    return _fast_lane(x, k, causal, None, None, None)


def _fast_lane(x, k, causal, pregate, postgate, skip):
    """``convolve`` of CUDA tensors that record no gradient, in plain eager mode and outside a
    graph capture, straight to :func:`_fast_convolve` (before the general validation: it
    returns None for anything but a well-formed call it serves). Returns None otherwise."""
    torch = _torch()
    if pregate is None and postgate is None and skip is None:
        ops = (x, k)
    else:
        ops = tuple(t for t in (x, k, pregate, postgate, skip) if t is not None)
    if not _plain_eager(ops):  # also: every operand a plain tensor
        return None
    if torch.is_grad_enabled():
        for t in ops:
            if t.requires_grad:
                return None
    if torch.cuda.is_current_stream_capturing():
        return None
    y = _fast_convolve(x, k, pregate, postgate, skip, causal, None)
    if y is None and pregate is None and postgate is None and skip is None:
        y = _direct_convolve(x, k, causal)
    if y is not None:
        _remember_eager_call(_call_key(x, k, pregate, postgate, skip, causal, None, None))
    return y


def _direct_convolve(x, k, causal):
    """Small float32/float64 problems of CUDA tensors on the direct kernel
    (``longconv._direct``): one launch on torch's current stream into torch-allocated memory,
    or None where it does not serve the call."""
    torch = _torch()
    name = {torch.float32: "float32", torch.float64: "float64"}.get(x.dtype)
    if name is None or type(x) is not torch.Tensor or type(k) is not torch.Tensor \
            or k.dtype != x.dtype or x.ndim < 1 or x.numel() == 0 or k.ndim not in (1, 2):
        return None
    L = x.shape[-1]
    H = x.shape[-2] if x.ndim >= 2 else 1
    Hk, Lk = (1, k.shape[0]) if k.ndim == 1 else k.shape
    dev = x.get_device()
    if (Hk != 1 and Hk != H) or Lk < 1 or k.get_device() != dev:
        return None
    cupy, _direct = _modules()[1:3]
    geometry = _direct.convolve_geometry(name, name, x.numel() // L, L, Lk, causal)
    if geometry is None or cupy.cuda.runtime.getDevice() != dev:
        return None
    return _launch_direct(x, k, Hk, geometry, None, None, None, dev)


def _launch_direct(x, k, Hk, geometry, pre, post, skip, dev):
    """One launch of the direct kernel (``geometry``: ``longconv._direct.convolve_geometry``)
    on torch's current stream into a new tensor like ``x``: gates contiguous of x's shape and
    dtype, skip (H,) as the entry point reads it, or None; the filters' taps made contiguous
    (and x) where they are not."""
    cupy, _direct = _modules()[1:3]
    L = x.shape[-1]
    if k.stride(-1) != 1 and k.shape[-1] > 1:
        k = k.detach().contiguous()
    if not x.is_contiguous():
        x = x.detach().contiguous()
    y = _torch().empty_like(x)
    _direct.launch_convolve(cupy, geometry, x.data_ptr(), k.data_ptr(),
                            k.stride(0) if Hk > 1 else 0, 0 if pre is None else pre.data_ptr(),
                            0 if post is None else post.data_ptr(),
                            0 if skip is None else skip.data_ptr(), y.data_ptr(),
                            x.numel() // L, x.shape[-2] if x.ndim >= 2 else 1, L,
                            _raw_stream()(dev))
    return y


def _fast_convolve(x, k, pregate, postgate, skip, causal, precision, keep=None):
    """The fused forward on CUDA tensors without CuPy arrays, plan objects or DLPack: the
    filter spectrum and the convolution launched on torch's current stream into
    torch-allocated memory (tiny 16-bit problems: one launch of the direct kernel). Returns
    None where it does not serve the call (other dtypes, FFT sizes or devices, gates that need
    broadcasting checks): the general path then runs.

    ``keep``: a dict that receives ``"spectrum"``, what the fused backward needs to reuse the
    spectrum instead of computing it again (the shell, the buffer tensor, the addresses and the
    stream), when the backward serves the problem."""
    torch = _torch()
    _fused = _modules()[0]
    io_names, k_names = _io_names()
    dt = x.dtype
    io = io_names.get(dt)
    if io is None or precision in ("single", "double") or (io == "float32"
                                                         and precision != "half"):
        return None
    if type(x) is not torch.Tensor or x.ndim < 1 or x.numel() == 0:
        return None
    shape = x.shape
    L = shape[-1]
    H = shape[-2] if len(shape) >= 2 else 1
    dev = x.get_device()
    if k.ndim not in (1, 2) or k.get_device() != dev or k.is_complex():
        return None
    Hk = 1 if k.ndim == 1 else k.shape[0]
    if Hk not in (1, H) or k.shape[-1] < 1:
        return None
    if _modules()[1].cuda.runtime.getDevice() != dev:
        return None
    ptrs = [None, None]  # the pregate and postgate read by the kernel
    for i, g in enumerate((pregate, postgate)):
        if g is None:
            continue
        if type(g) is not torch.Tensor or g.dtype != dt or g.get_device() != dev:
            return None
        if g.shape != shape:
            try:
                if torch.broadcast_shapes(g.shape, shape) != shape:
                    return None
            except RuntimeError:
                return None
            g = g.expand(shape)
        ptrs[i] = g.detach().contiguous()
    if skip is not None:
        if (type(skip) is not torch.Tensor or skip.ndim > 1 or skip.numel() not in (1, H)
                or skip.get_device() != dev or skip.is_complex()):
            return None
        skip = skip.detach().float().reshape(-1).expand(H).contiguous()
    Lk = k.shape[-1]
    kdt = k_names.get(k.dtype)
    if io != "float32" and kdt is not None:
        geometry = _modules()[2].convolve_geometry(io, kdt, x.numel() // L, L, Lk, causal)
        if geometry is not None:
            # a tiny problem: one launch of the direct kernel (sums in float32), no spectrum
            # (the backward computes its own)
            return _launch_direct(x, k, Hk, geometry, *ptrs, skip, dev)
    shell = _fused.shell_for(Hk, Lk, L, "causal" if causal else "same", io, direct=False)
    if shell is None:
        return None
    if not x.is_contiguous():
        x = x.detach().contiguous()
    stream = _raw_stream()(dev)
    buf = torch.empty(shell.spectrum_bytes, dtype=torch.uint8, device=x.device)
    y = torch.empty_like(x)
    kspec, scale = _spectrum(shell, k, Hk, buf, stream)
    pre, post = ptrs
    shell.forward_ptrs(x.data_ptr(), 0 if pre is None else pre.data_ptr(),
                       0 if post is None else post.data_ptr(),
                       0 if skip is None else skip.data_ptr(), y.data_ptr(),
                       x.numel() // (H * L), H, stream, kspec=kspec, scale=scale)
    if keep is not None and shell.backward_supported:
        keep["spectrum"] = (shell, buf, kspec, scale, stream)
    return y


def _spectrum(shell, k, Hk, buf, stream):
    """The filters' spectrum for ``shell`` into the torch buffer ``buf`` on the stream handle
    ``stream`` (torch's current): the direct kernel reads the tensor where it lies (rows of
    contiguous taps); filters too long for it are transformed by torch's float64 rfft (cuFFT,
    as the plans' own update does through CuPy) and gathered by our kernels. Returns
    ``(spectrum, multiplier)`` addresses."""
    torch = _torch()
    if shell.direct_spectrum:
        kdt = _io_names()[1].get(k.dtype)
        if kdt is None:
            k, kdt = k.detach().float(), "float32"
        # data_ptr needs no detach: nothing here records gradients
        if k.stride(-1) != 1 and k.shape[-1] > 1:
            k = k.detach().contiguous()
        return shell.spectrum_into(k.data_ptr(), kdt, k.stride(0) if Hk > 1 else 0,
                                   buf.data_ptr(), stream)
    taps = k.detach().reshape(Hk, k.shape[-1])[:, :shell.spectrum_taps]
    # the transform's output lives until the gather launch is queued: torch's allocator
    # orders its reuse after it on this stream
    rspec = torch.fft.rfft(taps.double(), n=shell.n)
    return shell.gather_spectrum_into(rspec.data_ptr(), buf.data_ptr(), stream)


def _is_cuda_error(exc):
    root = type(exc).__module__.split(".", 1)[0]
    return root in ("cupy", "cupy_backends") or (
        isinstance(exc, RuntimeError) and "captur" in str(exc).lower())


def _kgrad(g, u, k_len, causal):
    """``dk[h, s] = sum_{batch, t} g[t] u[t + p - s]`` (``p = 0`` causal, ``(Lk - 1) // 2``
    centred), accumulated in float32 (float64 for float64 data): shape ``(H, k_len)``."""
    import longconv

    torch = _torch()
    L = g.shape[-1]
    H = g.shape[-2] if g.ndim >= 2 else 1
    wide = torch.float64 if torch.float64 in (g.dtype, u.dtype) else torch.float32
    g3 = g.reshape(-1, H, L).to(wide)
    u3 = u.reshape(-1, H, L).to(wide).flip(-1)
    p = 0 if causal else (k_len - 1) // 2
    lo = L - 1 - p
    direct = _kgrad_direct(g3, u3, k_len, lo)
    if direct is not None:
        return direct
    with _on_torch_stream(g):
        ga, _ = _as_backend(g3)
        ua, _ = _as_backend(u3)
        full = longconv.fftconvolve_long(ga, ua, mode="full", axes=-1).sum(axis=0)
        full = _to_tensor(full, None, g)
    out = full.new_zeros((H, k_len))
    s0, s1 = max(0, -lo), min(k_len, 2 * L - 1 - lo)
    if s1 > s0:
        out[:, s0:s1] = full[:, lo + s0:lo + s1]
    return out


def _kgrad_direct(g3, ur, k_len, lo):
    """:func:`_kgrad` of a small problem on CUDA tensors in one launch of the direct kernel,
    or None where it does not serve (CPU tensors, too much work): ``g3`` ``(B, H, L)`` and the
    time-reversed ``u``, ``ur``, both float32 or both float64.

    Each of the B * H rows is its own channel whose filter is its reversed ``u`` row: output
    ``s`` at full-convolution index ``lo + s`` is ``sum_t g[t] u[t + p - s]``, the full
    correlation's entry that :func:`_kgrad` keeps; the batch is summed after."""
    torch = _torch()
    name = {torch.float32: "float32", torch.float64: "float64"}.get(g3.dtype)
    if name is None or not g3.is_cuda or ur.dtype != g3.dtype:
        return None
    B, H, L = g3.shape
    rows = B * H
    cupy, _direct = _modules()[1:3]
    dev = g3.get_device()
    if not rows or not _direct.serves(name, rows, k_len, L) or ur.get_device() != dev \
            or cupy.cuda.runtime.getDevice() != dev:
        return None
    g3, ur = g3.contiguous(), ur.contiguous()
    y = torch.empty((B, H, k_len), dtype=g3.dtype, device=g3.device)
    _direct.launch(cupy, name, g3.data_ptr(), ur.data_ptr(), L, 0, 0, 0, y.data_ptr(), 1, rows,
                   L, k_len, lo, L, 0, _raw_stream()(dev))
    return y.sum(0)


def _skip_grad(per_h, skip):
    """The gradient of ``skip`` from its per-channel sums of dy * x."""
    if skip.numel() == 1 and per_h.numel() > 1:
        per_h = per_h.sum()
    return per_h.reshape(skip.shape).to(skip.dtype)


_CUPY_DTYPES = {}


def _cupy_view(t):
    """A CuPy array over a contiguous CUDA tensor's memory: no copy and, unlike DLPack, no
    stream handshake (several microseconds of torch stream objects per tensor), so only for
    work on torch's current stream (inside :func:`_on_torch_stream`). bfloat16 becomes uint16
    bit patterns; the tensor is kept alive by the array."""
    torch = _torch()
    cupy = _modules()[1]
    if not _CUPY_DTYPES:
        _CUPY_DTYPES.update({torch.float16: np.float16, torch.bfloat16: np.uint16,
                             torch.float32: np.float32, torch.float64: np.float64})
    if not t.is_contiguous():
        t = t.contiguous()
    dt = _CUPY_DTYPES[t.dtype]
    shape = tuple(t.shape)
    n = t.numel()
    if n == 0:
        return cupy.empty(shape, dt)
    mem = cupy.cuda.UnownedMemory(t.data_ptr(), n * t.element_size(), t, t.get_device())
    return cupy.ndarray(shape, dt, cupy.cuda.MemoryPointer(mem, 0))


def _fused_backward(x, k, dy, pregate, postgate, skip, causal, precision, need, spectrum=None):
    """Every requested gradient from one launch of the fused backward kernel, or None when it
    does not serve the problem (CPU tensors, other dtypes, FFT sizes above its range, gates of
    another dtype): the caller then uses the exact formulas.

    The filter spectrum comes from the direct kernel into a copy of a cached plan shell where
    it serves (else a plan is built); inputs reach the kernel as views of the tensors' memory
    and dx, dpregate, dpostgate are written straight into tensors from torch's allocator.
    ``spectrum``: what the forward kept (see _fast_convolve), reused when it belongs to the same
    plan shell (the filter cannot have changed since: autograd checks the saved tensors'
    versions).

    Returns (dx, dk, dpregate, dpostgate, dskip)."""
    torch = _torch()
    half = x.dtype in (torch.float16, torch.bfloat16) or (
        x.dtype == torch.float32 and precision == "half")
    if (not x.is_cuda or x.ndim < 2 or not half or precision in ("single", "double")
            or k.is_complex() or not dy.is_cuda):
        return None
    if any(g is not None and g.dtype != x.dtype for g in (pregate, postgate)):
        return None
    try:
        _fused = _modules()[0]
    except ImportError:
        return None
    H, L = x.shape[-2], x.shape[-1]
    Hk = 1 if k.ndim == 1 else k.shape[-2]
    if Hk not in (1, H) or dy.shape != x.shape:
        return None
    B = x.numel() // max(1, H * L)
    io = _io_names()[0][x.dtype]
    mode = "causal" if causal else "same"
    if B and H and L:
        direct = _direct_backward(x, k, dy, pregate, postgate, skip, need, spectrum, B, H, L,
                                  io, mode)
        if direct is not None:
            return direct
    k2 = k.detach().float().reshape(Hk, k.shape[-1]).contiguous()

    def rows(t):
        return None if t is None else _cupy_view(t.detach().expand(x.shape).reshape(B, H, L))

    with _on_torch_stream(x):
        cupy = _modules()[1]
        shell = _fused.shell_for(k2.shape[0], k2.shape[1], L, mode, io)
        if spectrum is not None and shell is not None and spectrum[0] is shell:
            plan = shell.with_buffer(*spectrum[1:])
        elif shell is not None and shell.backward_supported:
            plan = shell.with_spectrum(k2.data_ptr(), "float32", k2.stride(0) if H > 1 else 0,
                                       cupy.cuda.get_current_stream().ptr)
        else:
            plan = _fused.make_plan(_cupy_view(k2), L, mode=mode, io_dtype=io,
                                    precision=precision)
            if plan is None or not plan.backward_supported:
                return None
        sk = None
        if skip is not None:
            sk = _cupy_view(skip.detach().float().reshape(-1).expand(H).contiguous())
        outs, views = {}, {}
        for name, wanted, given in (("x", need[0], True), ("pregate", need[2], pregate),
                                    ("postgate", need[3], postgate)):
            if wanted and given is not None:
                outs[name] = torch.empty((B, H, L), dtype=x.dtype, device=x.device)
                views[name] = _cupy_view(outs[name])
        res = plan.backward(rows(x), rows(dy), rows(pregate), rows(postgate), sk,
                            need_x=need[0], need_k=need[1], need_pregate=need[2],
                            need_postgate=need[3], need_skip=need[4], out=views)

        def tensor(name):
            a = res[name]
            if a is None:
                return None
            if a is not views[name]:  # (empty problems return new arrays)
                views[name][...] = a
            return outs[name].reshape(x.shape)

        def copied(a):
            t = torch.empty(a.shape, dtype=torch.float32, device=x.device)
            _cupy_view(t)[...] = a
            return t

        dx = tensor("x")
        dk = None if res["k"] is None else copied(res["k"]).reshape(k.shape).to(k.dtype)
        dpre = None if res["pregate"] is None else _reduce_to(tensor("pregate"), pregate)
        dpost = None if res["postgate"] is None else _reduce_to(tensor("postgate"), postgate)
        dskip = None if res["skip"] is None else _skip_grad(copied(res["skip"]), skip)
    return dx, dk, dpre, dpost, dskip


def _direct_backward(x, k, dy, pregate, postgate, skip, need, spectrum, B, H, L, io, mode):
    """:func:`_fused_backward` without CuPy arrays, stream contexts or copies: the launches on
    torch's current stream on the tensors' addresses, every result written into memory from
    torch's allocator (dk included), the forward's spectrum reused when it was made on this
    stream. Serves every size of the fused backward with gates of x's full shape; returns None
    for the rest (broadcast gates: the general route then runs)."""
    torch = _torch()
    _fused, cupy = _modules()[:2]
    for g in (pregate, postgate):
        if g is not None and g.shape != x.shape:
            return None  # broadcast gates: their gradients need reductions (general route)
    dev = x.get_device()
    if cupy.cuda.runtime.getDevice() != dev or dy.dtype != x.dtype:
        return None
    Hk, Lk = (1, k.shape[-1]) if k.ndim == 1 else (k.shape[-2], k.shape[-1])
    stream = _raw_stream()(dev)
    if spectrum is not None and spectrum[4] == stream:
        shell, _, kspec, scale, _ = spectrum
    else:
        shell = _fused.shell_for(Hk, Lk, L, mode, io, direct=False)
        kspec = None
    if shell is None or not shell.backward_supported:
        return None
    need_x, need_k, need_pre, need_post, need_skip = need[:5]
    need_pre = need_pre and pregate is not None
    need_post = need_post and postgate is not None
    want_g = need_x or need_pre
    if not (want_g or need_k or need_post):
        return None
    want = ("u" if need_post else "") + ("g" if want_g else "") or "k"
    spec_buf = None
    if kspec is None:
        spec_buf = torch.empty(shell.spectrum_bytes, dtype=torch.uint8, device=x.device)
        kspec, scale = _spectrum(shell, k, Hk, spec_buf, stream)

    def contiguous(t):
        return None if t is None else (t if t.is_contiguous() else t.contiguous())

    x, dy, pregate, postgate = (contiguous(t) for t in (x, dy, pregate, postgate))
    sk = None
    if skip is not None:
        sk = skip.detach().float().reshape(-1).expand(H).contiguous()
    dx = torch.empty_like(x) if need_x else None
    dpre = torch.empty_like(x) if need_pre else None
    dpost = torch.empty_like(dy) if need_post else None
    dks = None
    if need_k:
        dks = torch.empty(shell.backward_scratch_bytes(B, H, want) // 4, dtype=torch.float32,
                          device=x.device)

    def ptr(t):
        return 0 if t is None else t.data_ptr()

    S = shell.backward_ptrs(ptr(x), ptr(pregate), ptr(dy), ptr(postgate), ptr(sk), ptr(dx),
                            ptr(dpre), ptr(dpost), ptr(dks), B, H, want, stream, kspec=kspec,
                            scale=scale)
    dk = dskip = None
    if need_k:
        rows = H
        if Hk == 1 and H > 1:
            # one filter for every channel: its gradient is linear in the partial spectra
            dks, rows = dks.view(H, -1).sum(0), 1
        if shell.dk_direct(H):
            dk = torch.empty((Hk, Lk), dtype=torch.float32, device=x.device)
            shell.dk_into(dks.data_ptr(), rows, S, dk.data_ptr(), stream)
        else:
            # many long filters: the Hermitian half spectrum, then torch's inverse real FFT
            # unnormalised (cuFFT, as FusedPlan.backward does through CuPy)
            N = shell.n
            half = torch.empty((rows, N // 2 + 1), dtype=torch.complex64, device=x.device)
            shell.dk_gather_into(dks.data_ptr(), rows, S, half.data_ptr(), stream)
            corr = torch.fft.irfft(half, n=N, norm="forward")
            m = shell.dk_taps()
            if m == Lk:
                dk = corr[:, :Lk]
            else:
                # taps past the output window never meet the input
                dk = corr.new_zeros((rows, Lk))
                dk[:, :m] = corr[:, :m]
        dk = dk.reshape(k.shape).to(k.dtype)
    if need_skip and skip is not None:
        per_h = (dy.float() * x.float()).reshape(B, H, L).sum(dim=(0, 2))
        dskip = _skip_grad(per_h, skip)
    return dx, dk, dpre, dpost, dskip


def _register_ops():
    """Register the custom operators (once, when this module is first imported)."""
    torch = _torch()

    @torch.library.custom_op(
        "longconv::convolve", mutates_args=(),
        schema="(Tensor x, Tensor k, Tensor? pregate, Tensor? postgate, Tensor? skip, "
               "bool causal, str? precision) -> Tensor",
    )
    def convolve_op(x, k, pregate, postgate, skip, causal, precision):
        return _run_convolve(x, k, causal, pregate, postgate, skip, precision, None)

    @convolve_op.register_fake
    def _(x, k, pregate, postgate, skip, causal, precision):
        return x.new_empty(x.shape)

    @torch.library.custom_op(
        "longconv::convolve_kgrad", mutates_args=(),
        schema="(Tensor g, Tensor u, int k_len, bool causal) -> Tensor",
    )
    def kgrad_op(g, u, k_len, causal):
        return _kgrad(g, u, k_len, causal)

    @kgrad_op.register_fake
    def _(g, u, k_len, causal):
        wide = torch.float64 if torch.float64 in (g.dtype, u.dtype) else torch.float32
        H = g.shape[-2] if g.ndim >= 2 else 1
        return g.new_empty((H, k_len), dtype=wide)

    def setup_context(ctx, inputs, output):
        x, k, pregate, postgate, skip, causal, precision = inputs
        ctx.causal, ctx.precision = causal, precision
        ctx.save_for_backward(x, k, pregate, postgate, skip)

    def backward(ctx, dy):
        x, k, pregate, postgate, skip = ctx.saved_tensors
        need = ctx.needs_input_grad
        causal, precision = ctx.causal, ctx.precision
        fused = _fused_backward(x, k, dy, pregate, postgate, skip, causal, precision, need,
                                getattr(ctx, "spectrum", None))
        if fused is not None:
            return (*fused, None, None)
        g = dy * postgate if postgate is not None else dy
        u = x * pregate if pregate is not None else x
        dx = dk = dpre = dpost = dskip = None
        if need[0] or need[2]:
            # the adjoint of convolving with k is correlating with k: flip, convolve, flip
            du = convolve_op(g.flip(-1), k, None, None, None, causal, precision).flip(-1)
            if need[0]:
                dx = du * pregate if pregate is not None else du
                if skip is not None:
                    dx = dx + _per_channel(skip, x) * dy
                dx = dx.to(x.dtype)
            if need[2]:
                dpre = _reduce_to(du * x, pregate)
        elif need[0]:
            dx = (_per_channel(skip, x) * dy).to(x.dtype)
        if need[1]:
            full = kgrad_op(g, u, k.shape[-1], causal)
            dk = (full.sum(0) if k.ndim == 1 else full).to(k.dtype)
        if need[3]:
            c = convolve_op(u, k, None, None, None, causal, precision)
            dpost = _reduce_to(dy * c, postgate)
        if need[4]:
            wide = _wide(dy.dtype)
            prod = dy.to(wide) * x.to(wide)
            per_h = prod.reshape(-1, *prod.shape[-2:]).sum(dim=(0, 2)) if x.ndim >= 2 \
                else prod.sum().reshape(1)
            dskip = _skip_grad(per_h, skip)
        return dx, dk, dpre, dpost, dskip, None, None

    convolve_op.register_autograd(backward, setup_context=setup_context)

    class ConvolveFunction(torch.autograd.Function):
        """The same forward and backward as ``longconv::convolve`` for eager calls: autograd
        records it for about a quarter of the custom operator's dispatch cost."""

        @staticmethod
        def forward(ctx, x, k, pregate, postgate, skip, causal, precision):
            ctx.causal, ctx.precision = causal, precision
            ctx.save_for_backward(x, k, pregate, postgate, skip)
            # the filter spectrum of the fused forward, for the backward to reuse (one
            # spectrum launch per training step instead of two)
            keep = {}
            y = _run_convolve(x, k, causal, pregate, postgate, skip, precision, None, keep)
            ctx.spectrum = keep.get("spectrum")
            return y

        @staticmethod
        def backward(ctx, dy):
            return backward(ctx, dy)

    return convolve_op, kgrad_op, ConvolveFunction


# Registered at import, not on first call: torch.compile cannot trace a registration. This
# module is imported only once a tensor reaches longconv, so importing longconv alone still
# does not import torch.
_CONVOLVE_OP, _KGRAD_OP, _CONVOLVE_FN = _register_ops()


def _plain_eager(tensors):
    """Whether the call runs in plain eager mode: no torch.compile tracing, no torch function
    or dispatch modes (fake tensors, functionalization), no functorch transforms, plain
    tensors. There the differentiable call goes through :class:`ConvolveFunction` instead of
    the custom operator (which the other modes need: it has a fake implementation and a
    schema)."""
    torch = _torch()
    C = torch._C
    if (torch.compiler.is_compiling() or C._len_torch_dispatch_stack()
            or C._is_torch_function_mode_enabled() or C._are_functorch_transforms_active()):
        return False
    return all(type(t) is torch.Tensor for t in tensors)


def _wide(dtype):
    torch = _torch()
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_channel(skip, x):
    """``skip`` of shape ``(H,)``, ``(1,)`` or ``()`` shaped to multiply ``x`` per channel."""
    if x.ndim >= 2:
        return skip.reshape(-1, 1)
    return skip.reshape(-1)


def _reduce_to(grad, like):
    """``grad`` summed over the axes ``like`` was broadcast along, in float32 or wider."""
    wide = grad.to(_wide(grad.dtype))
    extra = wide.ndim - like.ndim
    if extra:
        wide = wide.sum(dim=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(like.shape) if n == 1 and wide.shape[i] != 1)
    if axes:
        wide = wide.sum(dim=axes, keepdim=True)
    return wide.reshape(like.shape).to(like.dtype)


def _as_operand(v, x, name):
    torch = _torch()
    if v is None or isinstance(v, torch.Tensor):
        return v
    if isinstance(v, (bool, int, float, complex, list, tuple, np.number)):
        return torch.as_tensor(v, dtype=x.dtype if not isinstance(v, complex) else None,
                               device=x.device)
    raise TypeError(f"{name} must be a torch tensor or a number; got {type(v).__name__}")


def convolve(x, k, causal=True, *, pregate=None, postgate=None, skip=None, precision=None,
             kernel_len=None, freq_keep=None):
    """``longconv.convolve`` for tensors (the public function hands tensors to this one).

    Real floating tensors go through the differentiable operator ``longconv::convolve``;
    ``freq_keep`` and other dtypes run without recording gradients.
    """
    torch = _torch()
    if (precision is None and kernel_len is None and freq_keep is None
            and (causal is True or causal is False) and type(x) is torch.Tensor and x.is_cuda):
        y = _fast_lane(x, k, causal, pregate, postgate, skip)
        if y is not None:
            return y
    causal = _validate.check_causal(causal)
    precision = _validate.check_precision(precision)
    kernel_len = _validate.check_kernel_len(kernel_len)
    freq_keep = _validate.check_freq_keep(freq_keep)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch tensor; got {type(x).__name__}")
    k = _as_operand(k, x, "k")
    pregate = _as_operand(pregate, x, "pregate")
    postgate = _as_operand(postgate, x, "postgate")
    skip = _as_operand(skip, x, "skip")
    named = {"x": x, "k": k, "pregate": pregate, "postgate": postgate, "skip": skip}
    for name, v in named.items():
        if v is not None and v.device != x.device:
            raise TypeError(f"{name} must be on x's device {x.device}; got {v.device}")
    _validate.check_filter(tuple(k.shape))
    if kernel_len is not None and kernel_len < k.shape[-1]:
        k = k[..., :kernel_len]
    present = [v for v in named.values() if v is not None]
    floating = all(_dtype_name(v) in _FLOATS for v in present)
    if floating and freq_keep is None:
        if _plain_eager(present):
            if torch.is_grad_enabled() and any(v.requires_grad for v in present):
                return _CONVOLVE_FN.apply(x, k, pregate, postgate, skip, causal, precision)
            return _run_convolve(x, k, causal, pregate, postgate, skip, precision, None)
        return _CONVOLVE_OP(x, k, pregate, postgate, skip, causal, precision)
    if torch.is_grad_enabled() and any(v.requires_grad for v in present):
        what = "freq_keep" if freq_keep is not None else "complex or integer dtypes"
        raise NotImplementedError(
            f"gradients of longconv.convolve support real float16/bfloat16/float32/float64 "
            f"tensors without freq_keep; got {what}. Call under torch.no_grad() for the "
            f"forward value"
        )
    return _run_convolve(x, k, causal, pregate, postgate, skip, precision, freq_keep)


def _flash_module():
    torch = _torch()

    class FlashFFTConv(torch.nn.Module):
        """Drop-in for FlashFFTConv's module: ``FlashFFTConv(seqlen, dtype=torch.float16)``.

        ``forward(u, k, pregate=None, postgate=None)`` with ``u`` of shape ``(B, H, L)``,
        ``L <= seqlen``, and ``k`` of shape ``(H, Lk)`` returns what an FFT of size ``seqlen``
        gives::

            irfft(rfft(u * pregate, n=seqlen) * rfft(k, n=seqlen), n=seqlen)[..., :L] * postgate

        in ``u``'s dtype: the causal convolution when ``seqlen >= L + Lk - 1`` (``seqlen = 2L``
        for ``Lk <= L + 1``), circularly wrapped otherwise. Any ``L``, ``seqlen >= L``, ``H``,
        CPU or CUDA tensors, float16, bfloat16, float32 and float64; differentiable. ``dtype``
        is accepted for compatibility (the computation follows ``u``'s dtype).
        """

        def __init__(self, seqlen, dtype=torch.float16, use_32_butterfly=True):
            super().__init__()
            if isinstance(seqlen, bool) or not isinstance(seqlen, (int, np.integer)):
                raise TypeError(f"seqlen must be an int >= 1; got {type(seqlen).__name__}")
            if seqlen < 1:
                raise ValueError(f"seqlen must be an int >= 1; got {seqlen}")
            if not isinstance(dtype, torch.dtype):
                raise TypeError(f"dtype must be a torch.dtype; got {type(dtype).__name__}")
            self.seqlen = int(seqlen)
            self.dtype = dtype

        def extra_repr(self):
            return f"seqlen={self.seqlen}, dtype={self.dtype}"

        def forward(self, u, k, pregate=None, postgate=None):
            if not isinstance(u, torch.Tensor):
                raise TypeError(f"u must be a torch tensor; got {type(u).__name__}")
            if not isinstance(k, torch.Tensor):
                raise TypeError(f"k must be a torch tensor; got {type(k).__name__}")
            if u.ndim != 3:
                raise ValueError(f"u must have shape (B, H, L); got shape {tuple(u.shape)}")
            B, H, L = u.shape
            if L > self.seqlen:
                raise ValueError(f"u's length L={L} must be at most seqlen={self.seqlen}")
            if k.ndim != 2 or k.shape[0] != H or k.shape[1] < 1:
                raise ValueError(f"k must have shape (H, Lk) = ({H}, Lk) with Lk >= 1; got "
                                 f"shape {tuple(k.shape)}")
            n = self.seqlen
            k = k[:, :n]
            if n >= L + k.shape[1] - 1:
                return convolve(u, k, True, pregate=pregate, postgate=postgate)
            z = u * pregate if pregate is not None else u
            z = torch.nn.functional.pad(z, (0, n - L))
            # circular convolution of size n = causal convolution over two periods, second one
            y = convolve(torch.cat([z, z], dim=-1), k, True)[..., n:n + L]
            return (y * postgate).to(u.dtype) if postgate is not None else y

    return FlashFFTConv


def __getattr__(name):
    if name == "FlashFFTConv":
        cls = _flash_module()
        globals()["FlashFFTConv"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

