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
passes call the CPU backend through ``jax.pure_callback`` (``vmap_method="expand_dims"``, so
``jax.vmap`` over leading axes works). Under transforms it serves JAX's CPU backend only; with
a GPU as JAX's default backend it raises ``NotImplementedError`` (eager GPU arrays still work).
"""

from __future__ import annotations

import functools

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
    arr = cupy.from_dlpack(obj)
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
# The transform-safe convolve: custom_vjp over host callbacks into the CPU backend.
# --------------------------------------------------------------------------------------------


def _acc_dtype(dtype):
    """Accumulation dtype of gradients: float64 for float64 data, float32 otherwise."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _per_lead(fn, extra, arrays, fixed=None):
    """Apply ``fn`` to ``arrays`` carrying ``extra`` leading axes added by ``jax.vmap``.

    Every array has the same number of leading axes, each of size 1 (not batched) or of the
    batch size. ``fixed`` names positions whose arrays are parameters of the convolution (the
    filter, the skip weights): when none of those is batched the data is broadcast over the
    leading axes and ``fn`` runs once; otherwise (and always when ``fixed`` is ``None``) ``fn``
    runs once per leading index.
    Returns a tuple of outputs with the leading axes in front.
    """
    arrays = tuple(None if a is None else np.asarray(a) for a in arrays)
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
                args.append(np.broadcast_to(a, lead + a.shape[extra:]))
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
    return tuple(np.stack([r[j] for r in results]).reshape(lead + results[0][j].shape)
                 for j in range(len(results[0])))


def _host_forward(x, k, pregate, postgate, skip, *, causal, precision, kernel_len):
    import longconv

    y = longconv.convolve(x, k, causal, pregate=pregate, postgate=postgate, skip=skip,
                          precision=precision, kernel_len=kernel_len)
    return (np.asarray(y).astype(x.dtype, copy=False),)


def _host_backward(g, u, k, *, causal, kernel_len):
    """``du`` and ``dk`` of ``c = conv(u, k)`` for the cotangent ``g`` of ``c``.

    ``g`` and ``u``: ``(..., H, L)`` in the accumulation dtype; ``k``: ``(Hk, Lk)``. ``dk`` is
    summed over the leading axes through its spectrum (and over ``H`` for a shared filter).
    """
    import scipy.fft

    import longconv

    acc = g.dtype
    L = g.shape[-1]
    Hk, Lk = k.shape
    m = Lk if kernel_len is None else min(Lk, kernel_len)
    ke = np.asarray(k[:, :m]).astype(acc)
    precision = "double" if acc == np.float64 else "single"
    du = longconv.convolve(np.ascontiguousarray(g[..., ::-1]), ke, causal,
                           precision=precision)[..., ::-1]
    n = scipy.fft.next_fast_len(2 * L - 1, real=True)
    spec = scipy.fft.rfft(g, n) * np.conj(scipy.fft.rfft(u, n))
    spec = spec.reshape((-1,) + spec.shape[-2:]).sum(axis=0)
    if Hk == 1:
        spec = spec.sum(axis=0, keepdims=True)
    corr = scipy.fft.irfft(spec, n)
    off = 0 if causal else (m - 1) // 2
    lags = np.arange(m) - off
    valid = (lags > -L) & (lags < L)
    dk = np.zeros((Hk, Lk), dtype=acc)
    dk[:, np.flatnonzero(valid)] = corr[:, lags[valid] % n]
    return np.ascontiguousarray(du, dtype=acc), dk


def _unbroadcast(a, shape):
    """Sum ``a`` down to ``shape`` (the reverse of broadcasting ``shape`` to ``a.shape``)."""
    lead = a.ndim - len(shape)
    if lead:
        a = a.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and a.shape[i] != 1)
    if axes:
        a = a.sum(axis=axes, keepdims=True)
    return a


@functools.cache
def _core(causal, has_pre, has_post, has_skip, precision, kernel_len):
    """The custom_vjp function of ``(x, k, pregate, postgate, skip)`` for one configuration.

    Shapes are normalised by :func:`convolve`: ``x`` ``(..., H, L)``, ``k`` ``(Hk, Lk)``, gates
    with ``x``'s rank, ``skip`` ``(H,)`` or ``(1,)``; absent operands are ``None``.
    """
    jax = _jax()
    jnp = jax.numpy
    fixed = (1, 4)

    def host_forward(nd, x, k, pre, post, skip):
        fn = functools.partial(_host_forward, causal=causal, precision=precision,
                               kernel_len=kernel_len)
        return _per_lead(fn, x.ndim - nd, (x, k, pre, post, skip), fixed)

    def host_backward(nd, g, u, k):
        fn = functools.partial(_host_backward, causal=causal, kernel_len=kernel_len)
        return _per_lead(fn, g.ndim - nd, (g, u, k))

    def call_forward(x, k, pre, post, skip):
        out = jax.ShapeDtypeStruct(x.shape, x.dtype)
        cb = functools.partial(host_forward, x.ndim)
        return jax.pure_callback(cb, (out,), x, k, pre, post, skip,
                                 vmap_method="expand_dims")[0]

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
        outs = (jax.ShapeDtypeStruct(x.shape, acc), jax.ShapeDtypeStruct(k.shape, acc))
        cb = functools.partial(host_backward, x.ndim)
        du, dk = jax.pure_callback(cb, outs, g, u, k, vmap_method="expand_dims")
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
    (float16, bfloat16, float32, float64); the result has ``x``'s dtype. The work runs on the
    host through ``jax.pure_callback``, so JAX's default backend must be the CPU (on a GPU
    backend this raises ``NotImplementedError``), and ``freq_keep`` is not offered there.
    Gradients (``jax.custom_vjp``) exist for every operand. With ``u = pregate * x`` and
    ``g = postgate * dy``: ``du`` is the correlation of ``g`` with ``k`` (a convolution of the
    time-reversed ``g``), ``dk`` the correlation of ``g`` with ``u`` summed over the batch in
    float32 (float64 for float64 data), ``dpregate = du * x``, ``dx = du * pregate +
    skip * dy``, ``dpostgate = dy * conv(u, k)``, ``dskip = sum(dy * x)``; each reduced to its
    operand's shape.
    """
    from longconv import _validate

    jax = _jax()
    causal = _validate.check_causal(causal)
    named = {"x": x, "k": k, "pregate": pregate, "postgate": postgate, "skip": skip}
    if not any(_is_tracer(v) for v in named.values()):
        from longconv import LongConv

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
    if jax.default_backend() != "cpu":
        raise NotImplementedError(
            "longconv.convolve under jax.jit, jax.grad or jax.vmap runs only with JAX's CPU "
            f"backend (host callbacks); JAX's default backend is {jax.default_backend()!r}. "
            "Supported: concrete GPU arrays outside transforms (zero-copy through DLPack), "
            "and CPU arrays under transforms"
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
        args.append(None if g is None else g.reshape((1,) * (x2.ndim - g.ndim) + g.shape))
    s = ops["skip"]
    args.append(None if s is None else s.reshape(-1))
    f = _core(causal, ops["pregate"] is not None, ops["postgate"] is not None,
              s is not None, precision, kernel_len)
    y = f(*args)
    return y.reshape(shape)
