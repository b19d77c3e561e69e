"""JAX arrays: eager calls on either device, and a differentiable ``convolve`` for transforms.

Eager arrays (``jax.Array`` holding data) go through the ordinary public functions
(``longconv.convolve``, ``fftconvolve_long``, ``LongConv``):

* CPU arrays reach the CPU backend as NumPy arrays (``numpy.asarray``, which shares the
  buffer) and come back with ``jax.device_put`` onto the input's device;
* GPU arrays reach the GPU backends through DLPack (the caller's memory, no copy; bfloat16 is
  reinterpreted as ``uint16`` bit patterns first, which costs one copy) and come back through
  DLPack from freshly allocated CuPy buffers (CuPy's pool aligns them to at least 256 bytes,
  which JAX requires to take a buffer without copying).

Traced values (inside ``jax.jit``, ``jax.grad``, ``jax.vmap``) have no data to hand over, so
the public functions refuse them with a ``TypeError`` that points here: :func:`convolve` in
this module is the transform-safe form. It is a ``jax.custom_vjp`` whose forward and backward
passes are callbacks chosen by the platform the computation is compiled for
(``jax.lax.platform_dependent``):

* ``cuda``: ``jax.experimental.buffer_callback``. The callback receives XLA's device buffers
  and XLA's CUDA stream; the buffers become CuPy arrays over the same memory (their pointers,
  ``cupy.cuda.UnownedMemory``; bfloat16 as ``uint16`` bit patterns) and the GPU backends run
  on XLA's stream (``cupy.cuda.Stream.from_external``), writing the result into XLA's output
  buffer. No data crosses to the host and nothing synchronises with the GPU.
* every other platform (the CPU above all): ``jax.pure_callback`` into the CPU backend.

Both use ``vmap_method="expand_dims"``, so ``jax.vmap`` over leading axes works. A jax without
``jax.experimental.buffer_callback`` uses ``jax.pure_callback`` on every platform (on a GPU a
host round trip, with a ``RuntimeWarning`` when the trace happens with a GPU as JAX's default
backend).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings

import numpy as np

KIND = "jax"

_TRACED = (
    "a traced JAX value (inside jax.jit, jax.grad or jax.vmap) has no data for longconv's "
    "public functions; use longconv.adapters.jax.convolve, which works under jit, grad and vmap"
)


def _jax():
    import jax

    return jax


def _is_tracer(obj):
    return isinstance(obj, _jax().core.Tracer)


def _platform(obj):
    dev = next(iter(obj.devices()))
    return "cpu" if dev.platform == "cpu" else "gpu"


def is_array(obj):
    return isinstance(obj, _jax().Array)


def device(obj):
    if _is_tracer(obj):
        return "cpu" if _jax().default_backend() == "cpu" else "gpu"
    return _platform(obj)


def to_backend(obj):
    if _is_tracer(obj):
        raise TypeError(_TRACED)
    jax = _jax()
    bf16 = obj.dtype == jax.numpy.bfloat16
    if _platform(obj) == "cpu":
        arr = np.asarray(obj)
        if bf16:
            return arr.view(np.uint16), "bfloat16"
        return arr, arr.dtype
    import cupy

    if bf16:
        obj = jax.lax.bitcast_convert_type(obj, jax.numpy.uint16)
    dev = next(iter(obj.devices()))
    arr = _cupy_view(cupy, obj, dev.local_hardware_id)
    return arr, ("bfloat16" if bf16 else arr.dtype)


def from_backend(array, logical_dtype, like=None):
    jax = _jax()
    jnp = jax.numpy
    target = None
    if like is not None and is_array(like) and not _is_tracer(like):
        target = next(iter(like.devices()))
    if isinstance(array, np.ndarray):
        if logical_dtype == "bfloat16":
            array = array.view(jnp.bfloat16)
        out = jnp.asarray(array) if target is None else jax.device_put(array, target)
        return out
    import cupy

    if not array.flags.c_contiguous:
        array = cupy.ascontiguousarray(array)
    out = jax.dlpack.from_dlpack(array)
    if logical_dtype == "bfloat16":
        out = jax.lax.bitcast_convert_type(out, jnp.bfloat16)
    if target is not None and next(iter(out.devices())) != target:
        out = jax.device_put(out, target)
    return out


# --------------------------------------------------------------------------------------------
# The transform-safe convolve: custom_vjp over callbacks (buffer_callback on CUDA, pure_callback
# elsewhere). The math below is written once for NumPy and CuPy arrays (``xp``).
# --------------------------------------------------------------------------------------------

#: Bytes of spectra one chunk of the filter gradient may hold (rows of the batch per chunk).
_KGRAD_CHUNK_BYTES = 256 << 20

#: DLPack device types of the buffers a buffer callback receives.
_DL_CPU, _DL_CUDA = 1, 2

#: Which callbacks traced calls use: ``None`` (by platform: buffer_callback on CUDA,
#: pure_callback elsewhere), ``"buffer"`` (buffer_callback on every platform; it serves CPU
#: buffers too) or ``"host"`` (pure_callback everywhere).
_ROUTE = None

#: ``None``, or a function called inside every GPU buffer callback with a dict of what it saw
#: (``inputs``/``outputs``: device pointers of the non-absent buffers, ``stream``: XLA's stream
#: handle, ``current_stream``: CuPy's current stream handle while the work is enqueued,
#: ``device``: the CUDA device ordinal). For tests and diagnostics.
_probe = None


def _acc_dtype(dtype):
    """Accumulation dtype of gradients: float64 for float64 data, float32 otherwise."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _per_lead(fn, extra, arrays, fixed=None, xp=np):
    """Apply ``fn`` to ``arrays`` carrying ``extra`` leading axes added by ``jax.vmap``.

    ``arrays`` are NumPy or CuPy arrays (``xp`` their module) or ``None``. Every array has the
    same number of leading axes, each of size 1 (not batched) or of the batch size. ``fixed``
    names positions whose arrays are parameters of the convolution (the filter, the skip
    weights): when none of those is batched the data is broadcast over the leading axes and
    ``fn`` runs once; otherwise (and always when ``fixed`` is ``None``) ``fn`` runs once per
    leading index.
    Returns a tuple of outputs with the leading axes in front.
    """
    if extra == 0:
        return fn(*arrays)
    leads = [a.shape[:extra] for a in arrays if a is not None]
    lead = np.broadcast_shapes(*leads)
    if fixed is not None and all(
        arrays[i] is None or arrays[i].shape[:extra] == (1,) * extra for i in fixed
    ):
        args = []
        for i, a in enumerate(arrays):
            if a is None:
                args.append(None)
            elif i in fixed:
                args.append(a.reshape(a.shape[extra:]))
            elif i == 0:
                args.append(xp.broadcast_to(a, lead + a.shape[extra:]))
            else:
                args.append(a)
        return fn(*args)
    results = []
    for idx in np.ndindex(*lead):
        args = []
        for a in arrays:
            if a is None:
                args.append(None)
            else:
                sub = tuple(i if n > 1 else 0 for i, n in zip(idx, a.shape[:extra], strict=True))
                args.append(a[sub])
        results.append(fn(*args))
    return tuple(xp.stack([r[j] for r in results]).reshape(lead + results[0][j].shape)
                 for j in range(len(results[0])))


def _forward(x, k, pregate, postgate, skip, *, causal, precision, kernel_len, bf16,
             device=None):
    """``(y,)`` with ``y = postgate * conv(pregate * x, k) + skip * x`` on backend arrays.

    ``bf16``: ``x`` holds bfloat16 (NumPy's bfloat16 dtype on the host, ``uint16`` bit patterns
    on the GPU); the result is then bfloat16 in the same representation.
    """
    import longconv

    if bf16:
        plan = longconv.LongConv(k, x.shape[-1], causal=causal, dtype="bfloat16",
                                 precision=precision, kernel_len=kernel_len, device=device)
        y = plan(x, pregate=pregate, postgate=postgate, skip=skip)
    else:
        y = longconv.convolve(x, k, causal, pregate=pregate, postgate=postgate, skip=skip,
                              precision=precision, kernel_len=kernel_len, device=device)
    return (y,)


def _host_forward(x, k, pregate, postgate, skip, *, causal, precision, kernel_len):
    # CPU jax arrays stay on the CPU backend, whatever the NumPy size policy would choose
    (y,) = _forward(x, k, pregate, postgate, skip, causal=causal, precision=precision,
                    kernel_len=kernel_len, bf16=False, device="cpu")
    return (np.asarray(y).astype(x.dtype, copy=False),)


def _fused_backward(g, u, k, *, causal, kernel_len):
    """``(du, dk)`` of :func:`_backward` from one launch of the fused backward kernel (CuPy
    arrays, FFT sizes it serves), or None: ``u`` plays x (pregate already applied) and ``g``
    plays dy (postgate applied), in float32 with fp16 tensor-core arithmetic."""
    try:
        from longconv import _fused
    except ImportError:
        return None
    import cupy

    L = g.shape[-1]
    H = g.shape[-2]
    Hk, Lk = k.shape
    m = Lk if kernel_len is None else min(Lk, kernel_len)
    mode = "causal" if causal else "same"
    shell = _fused.shell_for(Hk, m, L, mode, "float32")
    kdt = np.dtype(k.dtype).name
    stride = _fused.row_stride(k)
    if shell is not None and shell.backward_supported and kdt in _KDT and stride is not None:
        # the spectrum from the direct kernel into a copy of a cached plan shell
        plan = shell.with_spectrum(k.data.ptr, kdt, stride, cupy.cuda.get_current_stream().ptr)
    else:
        plan = _fused.make_plan(cupy.ascontiguousarray(k[:, :m]), L, mode=mode,
                                io_dtype="float32", precision="half")
        if plan is None or not plan.backward_supported:
            return None
    res = plan.backward(cupy.ascontiguousarray(u.reshape(-1, H, L), dtype=cupy.float32),
                        cupy.ascontiguousarray(g.reshape(-1, H, L), dtype=cupy.float32),
                        need_x=True, need_k=True)
    dk = cupy.zeros((Hk, Lk), dtype=g.dtype)
    dk[:, :m] = res["k"]
    return res["x"].reshape(g.shape).astype(g.dtype, copy=False), dk


def _backward(g, u, k, *, causal, kernel_len, xp=np, fft=None, half=False):
    """``du`` and ``dk`` of ``c = conv(u, k)`` for the cotangent ``g`` of ``c``.

    ``g`` and ``u``: ``(..., H, L)`` in the accumulation dtype; ``k``: ``(Hk, Lk)``. ``dk`` is
    summed over the leading axes through its spectrum (and over ``H`` for a shared filter), in
    chunks of rows. ``xp``/``fft``: NumPy and ``scipy.fft``, or CuPy and ``cupyx.scipy.fft``.
    """
    import longconv

    if half and xp is not np and g.dtype == np.float32:
        fused = _fused_backward(g, u, k, causal=causal, kernel_len=kernel_len)
        if fused is not None:
            return fused
    if fft is None:
        import scipy.fft as fft

    acc = g.dtype
    L = g.shape[-1]
    H = g.shape[-2]
    Hk, Lk = k.shape
    m = Lk if kernel_len is None else min(Lk, kernel_len)
    ke = xp.ascontiguousarray(k[:, :m].astype(acc))
    precision = "double" if acc == np.float64 else "single"
    du = longconv.convolve(xp.ascontiguousarray(g[..., ::-1]), ke, causal, precision=precision,
                           device="cpu" if xp is np else None)[..., ::-1]
    n = fft.next_fast_len(2 * L - 1, real=True)
    g3 = g.reshape(-1, H, L)
    u3 = u.reshape(-1, H, L)
    rows = max(1, _KGRAD_CHUNK_BYTES // (3 * H * (n // 2 + 1) * 2 * np.dtype(acc).itemsize))
    spec = None
    for r in range(0, g3.shape[0], rows):
        part = (fft.rfft(g3[r:r + rows], n) * xp.conj(fft.rfft(u3[r:r + rows], n))).sum(axis=0)
        spec = part if spec is None else spec + part
    if Hk == 1:
        spec = spec.sum(axis=0, keepdims=True)
    corr = fft.irfft(spec, n)
    off = 0 if causal else (m - 1) // 2
    lags = np.arange(m) - off
    s = np.flatnonzero((lags > -L) & (lags < L))  # a contiguous run of taps, never empty
    dk = xp.zeros((Hk, Lk), dtype=acc)
    dk[:, s[0]:s[-1] + 1] = corr[:, xp.asarray(lags[s] % n)]
    return xp.ascontiguousarray(du, dtype=acc), dk


def _host_backward(g, u, k, *, causal, kernel_len):
    return _backward(g, u, k, causal=causal, kernel_len=kernel_len)


def _unbroadcast(a, shape):
    """Sum ``a`` down to ``shape`` (the reverse of broadcasting ``shape`` to ``a.shape``)."""
    lead = a.ndim - len(shape)
    if lead:
        a = a.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and a.shape[i] != 1)
    if axes:
        a = a.sum(axis=axes, keepdims=True)
    return a


# ---- buffer_callback: XLA's buffers as CuPy arrays, on XLA's stream ------------------------

def _buffer_callback():
    """``jax.experimental.buffer_callback.buffer_callback``, or ``None`` where jax lacks it."""
    try:
        from jax.experimental.buffer_callback import buffer_callback
    except ImportError:
        return None
    return buffer_callback


class _StreamHandle:
    """A raw ``cudaStream_t`` handle speaking the CUDA stream protocol (``__cuda_stream__``)."""

    __slots__ = ("handle",)

    def __init__(self, handle):
        self.handle = handle

    def __cuda_stream__(self):
        return (0, self.handle)


_streams = {}


def _xla_stream(cupy, handle, device_id):
    """A CuPy stream object for XLA's stream ``handle`` on ``device_id`` (cached; CuPy does not
    own or destroy it). Call with ``device_id`` current: ``cupy.cuda.Stream.from_external``
    (CuPy >= 14) takes the device from the current one; older CuPy gets
    ``cupy.cuda.ExternalStream`` (deprecated in CuPy 14)."""
    key = (device_id, handle)
    stream = _streams.get(key)
    if stream is None:
        from_external = getattr(cupy.cuda.Stream, "from_external", None)
        if from_external is not None:
            stream = from_external(_StreamHandle(handle))
        else:
            stream = cupy.cuda.ExternalStream(handle, device_id)
        if len(_streams) >= 64:
            _streams.clear()
        _streams[key] = stream
    return stream


def _buffer_pointer(buf):
    """Device address of a GPU ``Buffer`` (``__cuda_array_interface__``, else DLPack)."""
    try:
        return int(buf.__cuda_array_interface__["data"][0])
    except (AttributeError, RuntimeError, TypeError, KeyError):
        import cupy

        return int(cupy.from_dlpack(buf).data.ptr)


def _device_view(cupy, buf, device_id):
    """A C-contiguous CuPy array over a GPU ``Buffer``'s memory (no copy). bfloat16 buffers
    become ``uint16`` bit patterns. Valid only while the callback runs."""
    dt = np.dtype(buf.dtype)
    if dt.name == "bfloat16":
        dt = np.dtype(np.uint16)
    shape = tuple(int(s) for s in buf.shape)
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes == 0:
        return cupy.empty(shape, dt)
    mem = cupy.cuda.UnownedMemory(_buffer_pointer(buf), nbytes, buf, device_id)
    return cupy.ndarray(shape, dt, cupy.cuda.MemoryPointer(mem, 0))


def _store(dst, y, xp):
    """Write a result into an output view (converting float32 to bfloat16 bits if needed)."""
    if dst.dtype == np.uint16 and y.dtype != np.uint16:
        from longconv._arrays import float32_to_bf16

        y = float32_to_bf16(y, xp)
    if tuple(y.shape) != tuple(dst.shape):
        raise RuntimeError(f"longconv computed a result of shape {tuple(y.shape)} for an output "
                           f"of shape {tuple(dst.shape)}")
    dst[...] = y


_IO = ("float16", "bfloat16", "float32")
_KDT = ("float16", "float32", "float64")


def _dtype_names(*bufs):
    """NumPy names of the buffers' dtypes (``dtype.name`` is computed in Python at every
    access: cached per dtype)."""
    names = []
    for b in bufs:
        dt = b.dtype
        name = _NAMES.get(dt)
        if name is None:
            name = _NAMES[dt] = np.dtype(dt).name
        names.append(name)
    return names


_NAMES = {}


def _on_device(cupy, device_id):
    """A context making ``device_id`` current (nothing to do when it already is)."""
    if cupy.cuda.runtime.getDevice() == device_id:
        return contextlib.nullcontext()
    return cupy.cuda.Device(device_id)


def _direct_forward(cfg, device_id, handle, outs, x, k, pre, post, skip):
    """The fused forward straight on XLA's buffers (no CuPy views, no copy of the result):
    the filter spectrum and the convolution launched on XLA's stream, ``y`` written into the
    output buffer. ``cfg`` is ``(causal, precision, kernel_len, nd)``. Returns False, having
    done nothing, where it does not serve the call (vmapped axes, gates not of x's shape and
    dtype, skip not float32 of shape (H,), other dtypes or sizes); the general body then
    runs. (:func:`convolve` hands gates of x's dtype over broadcast to x's shape and skip
    widened to float32 per channel, so every gated call can take this path.)"""
    causal, precision, kernel_len, nd = cfg
    if len(x.shape) != nd or nd < 2:
        return False
    io, kdt = _dtype_names(x, k)
    if precision is None and kdt == io and io in ("float32", "float64"):
        return _direct_small(cfg, device_id, handle, outs, x, k, pre, post, skip)
    if io in ("float16", "bfloat16") and kdt in _KDT and precision not in ("single", "double") \
            and _direct_small(cfg, device_id, handle, outs, x, k, pre, post, skip):
        return True  # a tiny problem: the direct kernel, as the eager call takes it
    if io not in _IO or kdt not in _KDT or precision in ("single", "double") or (
            io == "float32" and precision != "half"):
        return False
    H, L = int(x.shape[-2]), int(x.shape[-1])
    for g in (pre, post):
        if g is not None and (tuple(g.shape) != tuple(x.shape) or _dtype_names(g)[0] != io):
            return False
    if skip is not None and (tuple(skip.shape) != (H,) or _dtype_names(skip)[0] != "float32"):
        return False
    B = math.prod(int(v) for v in x.shape[:-2])
    Hk, Lk = (int(v) for v in k.shape)
    if B * H * L == 0:
        return False
    import cupy

    from longconv import _fused

    m = Lk if kernel_len is None else min(Lk, kernel_len)
    with _on_device(cupy, device_id):
        shell = _fused.shell_for(Hk, m, L, "causal" if causal else "same", io, direct=False)
        if shell is None:
            return False
        ins = [0 if a is None else _buffer_pointer(a) for a in (x, k, pre, post, skip)]
        out = _buffer_pointer(outs[0])
        if _probe is not None:
            _probe({"inputs": [p for p in ins if p], "outputs": [out], "stream": handle,
                    "current_stream": handle, "device": device_id})
        with _xla_stream(cupy, handle, device_id):  # the scratch belongs to this stream
            buf = cupy.cuda.alloc(shell.spectrum_bytes)
            kspec, scale = _filter_spectrum(cupy, shell, k, kdt, device_id, buf.ptr, handle)
        shell.forward_ptrs(ins[0], ins[2], ins[3], ins[4], out, B, H, handle, kspec=kspec,
                           scale=scale)
    return True


def _filter_spectrum(cupy, shell, k, kdt, device_id, buf, handle):
    """``(spectrum, multiplier)`` of the filters in XLA's buffer ``k`` (``(Hk, Lk)`` of dtype
    ``kdt``) for ``shell``, into the scratch at ``buf``, on XLA's stream ``handle`` (CuPy's
    current one: the caller's ``_xla_stream`` block): the direct kernel on the buffer's address,
    or, for filters too long for it, CuPy's float64 rfft of their taps gathered by our kernels
    (what a plan's own update computes)."""
    if shell.direct_spectrum:
        return shell.spectrum_into(_buffer_pointer(k), kdt, int(k.shape[-1]), buf, handle)
    taps = _device_view(cupy, k, device_id)[:, :shell.spectrum_taps]
    rspec = cupy.fft.rfft(taps.astype(cupy.float64), n=shell.n, axis=-1)
    return shell.gather_spectrum_into(rspec.data.ptr, buf, handle)


def _direct_small(cfg, device_id, handle, outs, x, k, pre, post, skip):
    """:func:`_direct_forward` for small problems: one launch of the direct kernel
    (``longconv._direct``) on XLA's buffers, gates of x's shape and dtype and skip of shape (H,)
    (x's dtype; float32 beside 16-bit data) read where they lie; False where it does not serve
    the call."""
    causal, _, kernel_len, _ = cfg
    io, kdt = _dtype_names(x, k)
    half = io in ("float16", "bfloat16")
    H, L = int(x.shape[-2]), int(x.shape[-1])
    for g in (pre, post):
        if g is not None and (tuple(g.shape) != tuple(x.shape) or _dtype_names(g)[0] != io):
            return False
    if skip is not None and (tuple(skip.shape) != (H,) or
                             _dtype_names(skip)[0] != ("float32" if half else io)):
        return False
    B = math.prod(int(v) for v in x.shape[:-2])
    Hk, Lk = (int(v) for v in k.shape)
    m = Lk if kernel_len is None else min(Lk, kernel_len)
    from longconv import _direct

    geometry = _direct.convolve_geometry(io, kdt, B * H, L, m, causal) if B * H * L else None
    if geometry is None:
        return False
    import cupy

    ptr = [0 if a is None else _buffer_pointer(a) for a in (x, k, pre, post, skip, outs[0])]
    if _probe is not None:
        _probe({"inputs": [p for p in ptr[:5] if p], "outputs": [ptr[5]], "stream": handle,
                "current_stream": handle, "device": device_id})
    with _on_device(cupy, device_id):
        _direct.launch_convolve(cupy, geometry, ptr[0], ptr[1], Lk if Hk > 1 else 0, *ptr[2:],
                                B * H, H, L, handle)
    return True


def _direct_backward(cfg, device_id, handle, outs, g, u, k):
    """``(du, dk)`` of the fused backward straight on XLA's buffers: the filter spectrum, the
    backward and dk's direct inverse sum launched on XLA's stream, du and dk written into the
    output buffers (float32 data, fp16 tensor-core arithmetic). ``cfg`` is ``(causal,
    kernel_len, nd, half)``. Returns False, having done nothing, where it does not serve the
    call (vmapped axes, other dtypes, a cut filter, sizes the fused backward does not take);
    the general body then runs. Filters too long for the direct spectrum kernel get CuPy's
    float64 rfft gathered by our kernels, and dk an inverse cuFFT of its gathered half
    spectrum when the direct inverse sum does not serve."""
    causal, kernel_len, nd, half = cfg
    if len(g.shape) != nd or nd < 2:
        return False
    if not half:
        return _direct_small_backward(cfg, device_id, handle, outs, g, u, k)
    if _dtype_names(g, u, k) != ["float32"] * 3:
        return False
    H, L = int(g.shape[-2]), int(g.shape[-1])
    B = math.prod(int(v) for v in g.shape[:-2])
    Hk, Lk = (int(v) for v in k.shape)
    if B * H * L == 0 or (kernel_len is not None and kernel_len < Lk):
        return False
    import cupy

    from longconv import _fused

    with _on_device(cupy, device_id):
        shell = _fused.shell_for(Hk, Lk, L, "causal" if causal else "same", "float32",
                                 direct=False)
        if shell is None or not shell.backward_supported:
            return False
        ptr = [_buffer_pointer(a) for a in (g, u, k, *outs)]
        if _probe is not None:
            _probe({"inputs": ptr[:3], "outputs": ptr[3:], "stream": handle,
                    "current_stream": handle, "device": device_id})
        with _xla_stream(cupy, handle, device_id):  # the scratch belongs to this stream
            buf = cupy.cuda.alloc(shell.spectrum_bytes)
            kspec, scale = _filter_spectrum(cupy, shell, k, "float32", device_id, buf.ptr,
                                            handle)
            dks = cupy.empty(shell.backward_scratch_bytes(B, H, "g") // 8,
                             dtype=cupy.complex64)
            S = shell.backward_ptrs(ptr[1], 0, ptr[0], 0, 0, ptr[3], 0, 0, dks.data.ptr, B, H,
                                    "g", handle, kspec=kspec, scale=scale)
            # dk into the output buffer, reduced as FusedPlan.backward reduces it (the direct
            # inverse sum, or many long filters' half spectrum and an inverse real cuFFT)
            shell.reduce_dk(dks, H, S, handle, out=_device_view(cupy, outs[1], device_id))
    return True


def _direct_small_backward(cfg, device_id, handle, outs, g, u, k):
    """``(du, dk)`` of a small float32/float64 problem straight on XLA's buffers with the direct
    kernel (``longconv._direct``), on XLA's stream: ``du``, the correlation of ``g`` with the
    filters, as the convolution of the time-reversed ``g`` reversed back; ``dk`` in one launch
    whose B * H rows are each their own channel, filtered by their reversed ``u`` row (output
    ``s`` at full-convolution index ``L - 1 - off + s`` is ``sum_t g[t] u[t + off - s]``), then
    summed over the batch (and the channels for one shared filter). False where the direct
    kernel does not serve both (other dtypes, too much work): the general body then runs."""
    causal, kernel_len, _, _ = cfg
    io, *rest = _dtype_names(g, u, k)
    if io not in ("float32", "float64") or rest != [io, io]:
        return False
    H, L = int(g.shape[-2]), int(g.shape[-1])
    B = math.prod(int(v) for v in g.shape[:-2])
    Hk, Lk = (int(v) for v in k.shape)
    m = Lk if kernel_len is None else min(Lk, kernel_len)
    rows = B * H
    from longconv import _direct

    geometry = _direct.convolve_geometry(io, io, rows, L, m, causal) if rows * L else None
    if geometry is None or not _direct.serves(io, rows, m, L):
        return False
    import cupy

    ptr = [_buffer_pointer(a) for a in (g, u, k, *outs)]
    if _probe is not None:
        _probe({"inputs": ptr[:3], "outputs": ptr[3:], "stream": handle,
                "current_stream": handle, "device": device_id})
    with _on_device(cupy, device_id), _xla_stream(cupy, handle, device_id):
        gv, uv, du, dk = (_device_view(cupy, a, device_id) for a in (g, u, *outs))
        flipped = cupy.ascontiguousarray(gv.reshape(rows, L)[:, ::-1])
        conv = cupy.empty_like(flipped)
        _direct.launch_convolve(cupy, geometry, flipped.data.ptr, ptr[2], Lk if Hk > 1 else 0,
                                0, 0, 0, conv.data.ptr, rows, H, L, handle)
        du.reshape(rows, L)[...] = conv[:, ::-1]
        ur = cupy.ascontiguousarray(uv.reshape(rows, L)[:, ::-1])
        part = cupy.empty((B, H, m), dtype=gv.dtype)
        off = 0 if causal else (m - 1) // 2
        _direct.launch(cupy, io, gv.data.ptr, ur.data.ptr, L, 0, 0, 0, part.data.ptr, 1, rows,
                       L, m, L - 1 - off, L, 0, handle)
        if m < Lk:
            dk.fill(0)  # taps past kernel_len are not used
        dk[:, :m] = part.sum(axis=(0, 1) if Hk == 1 else 0).reshape(Hk, m)
    return True


def fast_convolve(x, k, causal):
    """``longconv.convolve(x, k, causal)`` with default options on concrete GPU arrays:
    :func:`_eager_direct`, else None (the general path)."""
    if _is_tracer(x) or _is_tracer(k):
        return None
    return _eager_direct(x, k, causal, None, None)


def _cupy_view(cupy, a, device_id):
    """A CuPy array over a concrete single-device GPU JAX array's memory through DLPack, safe
    to read on CuPy's current stream (JAX makes that stream wait for the array's producer).

    ``cupy.from_dlpack(a)`` costs about 15 us of an H100 host against 11 here: it asks the
    array for its DLPack device first, which JAX answers slowly. Here the device is known,
    the capsule is asked for directly (with the consumer's stream, as CuPy itself would pass
    it: 1 for the legacy default stream) and CuPy consumes the capsule."""
    with _on_device(cupy, device_id):
        stream = cupy.cuda.get_current_stream().ptr or 1
        return cupy.from_dlpack(a.__dlpack__(stream=stream))


def _eager_direct(x, k, causal, precision, kernel_len):
    """An eager call on concrete GPU arrays through a shortest path on DLPack views: the fused
    kernels' (``longconv._fused.cupy_convolve``: float16, float32 with ``precision="half"``)
    or the direct kernel's (``longconv._direct.cupy_convolve``: small float32/float64
    problems); None where neither serves it."""
    jax = _jax()
    if not (isinstance(x, jax.Array) and isinstance(k, jax.Array)):
        return None
    if x.dtype not in (np.float16, np.float32, np.float64) or k.dtype not in (
            np.float16, np.float32, np.float64):
        return None
    devs = x.devices()
    if len(devs) != 1 or devs != k.devices():
        return None
    dev = next(iter(devs))
    if dev.platform == "cpu":
        return None
    try:
        from longconv import _fused
    except ImportError:
        return None
    import cupy

    device_id = dev.local_hardware_id
    xa, ka = _cupy_view(cupy, x, device_id), _cupy_view(cupy, k, device_id)
    with _on_device(cupy, device_id):
        y = _fused.cupy_convolve(xa, ka, causal, precision, kernel_len)
        if y is None and precision is None and kernel_len is None:
            from longconv import _direct

            y = _direct.cupy_convolve(xa, ka, causal)
    return None if y is None else from_backend(y, None, x)


def _run_buffers(kernel, ctx, outs, *bufs, direct=None):
    """Body of every buffer callback: views of the buffers, ``kernel(xp, *arrays)``, results
    written into the outputs. GPU buffers: CuPy on XLA's stream; CPU buffers: NumPy.
    ``direct``: ``(function, cfg)`` tried first on GPU buffers (:func:`_direct_forward`)."""
    dev_type, device_id = (int(v) for v in outs[0].__dlpack_device__())
    if direct is not None and dev_type == _DL_CUDA and direct[0](
            direct[1], device_id, int(ctx.stream), outs, *bufs):
        return
    if dev_type == _DL_CPU:
        arrays = [None if b is None else np.asarray(b) for b in bufs]
        results = kernel(np, *arrays)
        for o, r in zip(outs, results, strict=True):
            _store(np.asarray(o), r, np)
        return
    if dev_type != _DL_CUDA:
        raise NotImplementedError(
            f"longconv's buffer callback runs on CPU and CUDA buffers; got DLPack device type "
            f"{dev_type}"
        )
    import cupy

    handle = int(ctx.stream)
    # the device is current before the stream object is looked up (and made current)
    with cupy.cuda.Device(device_id), _xla_stream(cupy, handle, device_id):
        arrays = [None if b is None else _device_view(cupy, b, device_id) for b in bufs]
        views = [_device_view(cupy, o, device_id) for o in outs]
        if _probe is not None:
            _probe({
                "inputs": [a.data.ptr for a in arrays if a is not None],
                "outputs": [v.data.ptr for v in views],
                "stream": handle,
                "current_stream": cupy.cuda.get_current_stream().ptr,
                "device": device_id,
            })
        results = kernel(cupy, *arrays)
        for v, r in zip(views, results, strict=True):
            _store(v, r, cupy)


def _warn_host_round_trip():
    jax = _jax()
    if jax.default_backend() != "cpu":
        warnings.warn(
            "this jax has no jax.experimental.buffer_callback: longconv.convolve under "
            "jax.jit, jax.grad or jax.vmap copies GPU data to the host and runs on the CPU "
            "(correct but slow); upgrade jax for the GPU path on JAX's stream",
            RuntimeWarning, stacklevel=3,
        )


@functools.cache
def _core(causal, has_pre, has_post, has_skip, precision, kernel_len, bf16, route, half=False):
    """The custom_vjp function of ``(x, k, pregate, postgate, skip)`` for one configuration.

    Shapes are normalised by :func:`convolve`: ``x`` ``(..., H, L)``, ``k`` ``(Hk, Lk)``, gates
    with ``x``'s rank, ``skip`` ``(H,)`` or ``(1,)``; absent operands are ``None``. ``bf16``:
    ``x`` is bfloat16 (then other operands may be too; otherwise none is). ``route``: ``"auto"``
    (by platform), ``"buffer"`` or ``"host"`` (see ``_ROUTE``).
    """
    jax = _jax()
    jnp = jax.numpy
    fixed = (1, 4)

    # -- the kernels, for NumPy (host) and CuPy (device) arrays
    def fwd_kernel(nd, xp, x, k, pre, post, skip):
        fn = functools.partial(_forward, causal=causal, precision=precision,
                               kernel_len=kernel_len, bf16=bf16)
        return _per_lead(fn, x.ndim - nd, (x, k, pre, post, skip), fixed, xp)

    def bwd_kernel(nd, xp, g, u, k):
        if xp is np:
            fft = None
        else:
            import cupyx.scipy.fft as fft
        fn = functools.partial(_backward, causal=causal, kernel_len=kernel_len, xp=xp, fft=fft,
                               half=half)
        return _per_lead(fn, g.ndim - nd, (g, u, k), None, xp)

    # -- the host route: jax.pure_callback
    def host_forward(nd, x, k, pre, post, skip):
        arrays = tuple(None if a is None else np.asarray(a) for a in (x, k, pre, post, skip))
        fn = functools.partial(_host_forward, causal=causal, precision=precision,
                               kernel_len=kernel_len)
        return _per_lead(fn, arrays[0].ndim - nd, arrays, fixed)

    def host_backward(nd, g, u, k):
        g, u, k = (np.asarray(a) for a in (g, u, k))
        fn = functools.partial(_host_backward, causal=causal, kernel_len=kernel_len)
        return _per_lead(fn, g.ndim - nd, (g, u, k))

    def pure(cb, outs, *args):
        return jax.pure_callback(cb, outs, *args, vmap_method="expand_dims")

    def buffered(kernel, outs, *args, direct=None):
        call = _buffer_callback()(functools.partial(_run_buffers, kernel, direct=direct), outs,
                                  vmap_method="expand_dims")
        return call(*args)

    def by_platform(host, device, *args):
        if route == "host":
            return host(*args)
        if route == "buffer":
            return device(*args)
        return jax.lax.platform_dependent(*args, cuda=device, default=host)

    def call_forward(x, k, pre, post, skip):
        outs = (jax.ShapeDtypeStruct(x.shape, x.dtype),)
        nd = x.ndim
        return by_platform(
            lambda *a: pure(functools.partial(host_forward, nd), outs, *a),
            lambda *a: buffered(functools.partial(fwd_kernel, nd), outs, *a,
                                direct=(_direct_forward, (causal, precision, kernel_len, nd))),
            x, k, pre, post, skip)[0]

    def call_backward(g, u, k):
        outs = (jax.ShapeDtypeStruct(g.shape, g.dtype), jax.ShapeDtypeStruct(k.shape, g.dtype))
        nd = g.ndim
        return by_platform(
            lambda *a: pure(functools.partial(host_backward, nd), outs, *a),
            lambda *a: buffered(functools.partial(bwd_kernel, nd), outs, *a,
                                direct=(_direct_backward, (causal, kernel_len, nd, half))),
            g, u, k)

    def primal(x, k, pre, post, skip):
        return call_forward(x, k, pre, post, skip)

    def fwd(x, k, pre, post, skip):
        c = call_forward(x, k, pre, None, None)
        acc = _acc_dtype(x.dtype)
        y = c.astype(acc)
        if has_post:
            y = y * post.astype(acc)
        if has_skip:
            y = y + skip.astype(acc)[:, None] * x.astype(acc)
        return y.astype(x.dtype), (x, k, pre, post, skip, c if has_post else None)

    def bwd(res, dy):
        x, k, pre, post, skip, c = res
        acc = _acc_dtype(x.dtype)
        dy = dy.astype(acc)
        xa = x.astype(acc)
        g = dy * post.astype(acc) if has_post else dy
        u = xa * pre.astype(acc) if has_pre else xa
        g = jnp.broadcast_to(g, x.shape)
        u = jnp.broadcast_to(u, x.shape)
        du, dk = call_backward(g, u, k.astype(acc))
        dx = du * pre.astype(acc) if has_pre else du
        if has_skip:
            dx = dx + skip.astype(acc)[:, None] * dy
        grads = [dx.astype(x.dtype), dk.astype(k.dtype)]
        grads.append(_unbroadcast(du * xa, pre.shape).astype(pre.dtype) if has_pre else None)
        grads.append(_unbroadcast(dy * c.astype(acc), post.shape).astype(post.dtype)
                     if has_post else None)
        if has_skip:
            per_h = (dy * xa).sum(axis=-1)
            grads.append(_unbroadcast(per_h, skip.shape).astype(skip.dtype))
        else:
            grads.append(None)
        return tuple(grads)

    f = jax.custom_vjp(primal)
    f.defvjp(fwd, bwd)
    return f


def _as_operand(v, name):
    jax = _jax()
    jnp = jax.numpy
    if isinstance(v, (bool, np.bool_)) or not isinstance(
        v, (jax.Array, np.ndarray, int, float, np.floating, np.integer)
    ):
        kind = type(v).__module__.split(".", 1)[0] + "." + type(v).__name__
        raise TypeError(f"{name} must be a JAX array (or a NumPy array or a Python number); "
                        f"got {kind}")
    a = jnp.asarray(v)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(f"{name} must have a real floating dtype (float16, bfloat16, float32 "
                        f"or float64); got dtype {a.dtype}")
    return a


def convolve(x, k, causal=True, *, pregate=None, postgate=None, skip=None, precision=None,
             kernel_len=None, freq_keep=None):
    """:func:`longconv.convolve` for JAX arrays, usable under ``jit``, ``grad`` and ``vmap``.

    :func:`longconv.convolve` hands calls with JAX arrays to this function, so both names
    behave the same. Same definition and shapes: ``y = postgate * conv(pregate * x, k) +
    skip[h] * x`` with ``x`` ``(..., H, L)`` or ``(L,)``, ``k`` ``(H, Lk)`` or ``(Lk,)``, gates
    broadcastable to ``x``'s shape and ``skip`` of shape ``(H,)``, ``(1,)`` or ``()``.

    Concrete arrays outside any transform take the eager path (CPU backend, or for GPU arrays
    the GPU backends through DLPack) and accept every dtype :func:`longconv.convolve` accepts.

    Traced values (under ``jax.jit``, ``jax.grad``, ``jax.vmap``) must be real floating arrays
    (float16, bfloat16, float32, float64); the result has ``x``'s dtype. Compiled for a CUDA
    GPU, the work runs on the GPU backends on XLA's stream, in XLA's buffers
    (``jax.experimental.buffer_callback``); compiled for the CPU (or another platform), on the
    CPU backend through ``jax.pure_callback``. ``freq_keep`` is not offered there.
    Gradients (``jax.custom_vjp``) exist for every operand. With ``u = pregate * x`` and
    ``g = postgate * dy``: ``du`` is the correlation of ``g`` with ``k`` (a convolution of the
    time-reversed ``g``), ``dk`` the correlation of ``g`` with ``u`` summed over the batch in
    float32 (float64 for float64 data), ``dpregate = du * x``, ``dx = du * pregate +
    skip * dy``, ``dpostgate = dy * conv(u, k)``, ``dskip = sum(dy * x)``; each reduced to its
    operand's shape.
    """
    from longconv import _validate

    jax = _jax()
    jnp = jax.numpy
    causal = _validate.check_causal(causal)
    named = {"x": x, "k": k, "pregate": pregate, "postgate": postgate, "skip": skip}
    if not any(_is_tracer(v) for v in named.values()):
        from longconv import LongConv

        if pregate is None and postgate is None and skip is None and freq_keep is None:
            y = _eager_direct(x, k, causal, _validate.check_precision(precision),
                              _validate.check_kernel_len(kernel_len))
            if y is not None:
                return y

        _validate.check_signal(np.shape(x))
        plan = LongConv._unbuilt(k, np.shape(x)[-1], causal=causal, precision=precision,
                                 kernel_len=kernel_len, freq_keep=freq_keep)
        return plan(x, pregate=pregate, postgate=postgate, skip=skip)

    precision = _validate.check_precision(precision)
    kernel_len = _validate.check_kernel_len(kernel_len)
    if freq_keep is not None:
        raise NotImplementedError(
            "freq_keep is not supported under jax.jit, jax.grad or jax.vmap; supported there: "
            "freq_keep=None (call longconv.convolve on concrete arrays for freq_keep)"
        )
    ops = {n: (None if v is None else _as_operand(v, n)) for n, v in named.items()}
    x, k = ops["x"], ops["k"]
    _validate.check_signal(x.shape)
    _validate.check_filter(k.shape)
    _validate.check_filter_matches(x.shape, k.shape)
    H = x.shape[-2] if x.ndim >= 2 else 1
    for name in ("pregate", "postgate"):
        if ops[name] is not None:
            _validate.check_gate(ops[name].shape, x.shape, name)
    if ops["skip"] is not None:
        _validate.check_skip(ops["skip"].shape, H)

    shape = x.shape
    x2 = x.reshape((1,) * (2 - x.ndim) + shape)
    k2 = k.reshape((1,) * (2 - k.ndim) + k.shape)
    args = [x2, k2]
    for name in ("pregate", "postgate"):
        g = ops[name]
        if g is not None:
            g = g.reshape((1,) * (x2.ndim - g.ndim) + g.shape)
            if g.dtype == x2.dtype and g.shape != x2.shape:
                # a gate of x's dtype goes over at x's shape (XLA writes the broadcast, as the
                # general route's contiguous copy would), so the fused kernels take it directly
                g = jnp.broadcast_to(g, x2.shape)
        args.append(g)
    s = ops["skip"]
    if s is not None:
        s = s.reshape(-1)
        if s.dtype in (jnp.float16, jnp.bfloat16, jnp.float32):
            # the fused kernels read skip as float32 per channel (widening is exact)
            s = jnp.broadcast_to(s.astype(np.float32), (H,))
        elif s.dtype == jnp.float64:
            s = jnp.broadcast_to(s, (H,))  # the direct kernel's, per channel
    args.append(s)
    bf16 = x.dtype == jax.numpy.bfloat16
    if not bf16:
        # bfloat16 reaches the GPU as uint16 bit patterns, which mean bfloat16 only beside a
        # bfloat16 x: widen other bfloat16 operands (exactly) first
        args = [a.astype(np.float32) if a is not None and a.dtype == jax.numpy.bfloat16 else a
                for a in args]
    route = _ROUTE
    if route is None:
        route = "auto" if _buffer_callback() is not None else "host"
        if route == "host":
            _warn_host_round_trip()
    # fp16/bf16 data (or precision="half"): the GPU backward may use the fused kernel, whose
    # tensor-core arithmetic is fp16 (the forward's accuracy)
    half = (x.dtype in (jax.numpy.float16, jax.numpy.bfloat16) or precision == "half") and \
        precision not in ("single", "double")
    f = _core(causal, ops["pregate"] is not None, ops["postgate"] is not None,
              s is not None, precision, kernel_len, bool(bf16), route, half)
    y = f(*args)
    return y.reshape(shape)
