"""The public functions: ``fftconvolve_long`` (SciPy drop-in) and ``convolve`` (sequence models).

Both normalise their inputs to the backend protocol's sequence batch ``x`` (B, H, L) and filter
bank ``k`` (Hk, Lk) and let :func:`longconv._plan._select_backend` pick the backend.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
import scipy.fft as sp_fft

from . import _arrays, _dask, _validate
from ._plan import LongConv, _select_backend, host_problem_device
from .adapters import FAST_CONVOLVE as _FAST_CONVOLVE

# dtypes the one-axis fast path serves; anything else NumPy can hold (long double, object,
# datetime, strings, ...) goes to scipy.signal.fftconvolve itself, so it behaves exactly as SciPy.
_FAST_KINDS = {"b": None, "i": None, "u": None, "f": (2, 4, 8), "c": (8, 16)}


def _fast_dtype(dt):
    dt = np.dtype(dt)
    sizes = _FAST_KINDS.get(dt.kind, ())
    return sizes is None or dt.itemsize in sizes


@functools.lru_cache(maxsize=256)
def _scipy_result_dtype(dt1, dt2):
    """dtype scipy.signal.fftconvolve returns for inputs of these dtypes (with an FFT axis).

    Found by running SciPy's own sequence of operations on two-element arrays, so every
    promotion rule (float16 -> float32, integers -> float64, float32 stays float32, ...) is
    SciPy's by construction.
    """
    a, b = np.ones(2, dt1), np.ones(2, dt2)
    if a.dtype.kind in "iu":
        a = a.astype(np.float64)
    if b.dtype.kind in "iu":
        b = b.astype(np.float64)
    if a.dtype.kind == "c" or b.dtype.kind == "c":
        return np.dtype(sp_fft.ifft(sp_fft.fft(a) * sp_fft.fft(b)).dtype).name
    return np.dtype(sp_fft.irfft(sp_fft.rfft(a) * sp_fft.rfft(b), 2).dtype).name


def _centered(arr, newshape):
    start = [(c - n) // 2 for c, n in zip(arr.shape, newshape, strict=True)]
    return arr[tuple(slice(s, s + n) for s, n in zip(start, newshape, strict=True))]


def _product_mode(ret, s1, mode, xp):
    """SciPy's result when no axis needs an FFT (every convolved axis has length 1)."""
    if mode == "same":
        ret = _centered(ret, s1)
    return xp.asarray(ret).copy()


@contextlib.contextmanager
def _workers(workers):
    """scipy.fft's threads for the calls inside (default: every CPU, as the CPU backend)."""
    from ._cpu import default_workers

    with sp_fft.set_workers(default_workers() if workers is None else workers):
        yield


def _precision_dtype(dtype, precision):
    """dtype the N-D fallback computes in for an input of ``dtype``."""
    dt = np.dtype(dtype)
    if precision is None or dt.kind not in "biufc":
        return dt
    single = precision in ("half", "single")
    if dt.kind == "c":
        return np.dtype(np.complex64 if single else np.complex128)
    return np.dtype(np.float32 if single else np.float64)


def fftconvolve_long(in1, in2, mode="full", axes=None, *, precision=None, kernel_len=None,
                     freq_keep=None, workers=None, device=None):
    """Convolve two N-dimensional arrays using FFTs; a drop-in for ``scipy.signal.fftconvolve``.

    For every input ``scipy.signal.fftconvolve`` accepts this returns the same values, shape and
    dtype, and raises the same exception types with the same messages. The fast path serves a
    convolution along one axis (the others broadcast); several axes run through exact
    fallbacks.

    Parameters
    ----------
    in1 : array_like, shape (..., L, ...)
        First input (NumPy or CuPy array, or anything ``numpy.asarray`` accepts).
    in2 : array_like, shape (..., Lk, ...)
        Second input ("the filter"), same number of dimensions as ``in1``.
    mode : {"full", "valid", "same", "circular"}, default "full"
        Output window along the convolved axis (index diagram, ``t`` = output index)::

            full      y[t] = sum_s in2[s] in1[t-s]       t = 0 .. L+Lk-2   (L+Lk-1 points)
                      in1           |----L----|
                      in2 slides  |-Lk-|  ...  |-Lk-|
            same      full[(Lk-1)//2 : (Lk-1)//2 + L]    centred, in1's length
            valid     full[Lk-1 : L]                     no zero padding (L-Lk+1 points)
            circular  y[t] = sum_s in2[s] in1[(t-s) mod L]   t = 0 .. L-1
                      (an in2 longer than L wraps: its taps are summed modulo L)

        With ``"same"`` every axis takes ``in1``'s shape, as in SciPy. ``"valid"`` swaps the
        inputs when ``in2`` is the larger, as in SciPy.
    axes : int or sequence of int, optional
        Axes to convolve over (default: all). Other axes broadcast.
    precision : {None, "half", "single", "double"}, optional
        Arithmetic precision; ``None`` follows the inputs' dtypes. On the CPU ``"half"`` and
        ``"single"`` compute in float32 and ``"double"`` in float64; the output dtype is always
        SciPy's for the inputs.
    kernel_len : int, optional
        Use only ``in2[..., :kernel_len]`` along the convolved axis (the output shape follows
        the shortened ``in2``). Needs a convolution along one axis.
    freq_keep : float in (0, 1], optional
        Frequency-sparse convolution: with ``n`` the plan's FFT size
        (:func:`longconv._sizes.plan_fft_size`), ``y = irfft(rfft(in1, n) * Kf, n)`` cut to the
        mode's window, where ``Kf = rfft(in2, n)`` keeps bins ``j < ceil(freq_keep*(n//2+1))``
        and zeroes the rest. Real inputs, one axis.
    workers : int, optional
        CPU threads for ``scipy.fft`` (negative counts back from the number of CPUs). Default:
        every CPU available to the process.
    device : {None, "cpu", "gpu"}, optional
        Where a convolution along one axis runs; the result comes back where the inputs live.
        ``None``: where the inputs live, except that NumPy inputs go to a GPU when one is
        usable and the problem is large enough to pay for the copies (see
        :func:`convolve`). Convolutions over several axes and dtypes beyond the fast path's
        run where the inputs live (another device there is ``NotImplementedError``).

    Returns
    -------
    out : array
        Same kind of array as the inputs. dtype as SciPy's: float16 -> float32, integers and
        bool -> float64, float32 stays float32, complex stays complex (and, as in SciPy, when
        every convolved axis has length 1 the result is the plain product ``in1 * in2``).
        ``mode="circular"`` always returns the dtype of an FFT convolution of the inputs.

    See Also
    --------
    convolve : the sequence-model form (causal, gated, ``(..., H, L)``).

    Examples
    --------
    >>> import numpy as np
    >>> from longconv import fftconvolve_long
    >>> y = fftconvolve_long([1.0, 2.0, 3.0], [0.0, 1.0, 0.5])
    >>> y.shape, bool(np.allclose(y, [0.0, 1.0, 2.5, 4.0, 1.5]))
    ((5,), True)
    >>> x = np.random.default_rng(0).standard_normal((8, 10_000))
    >>> fftconvolve_long(x, np.ones((1, 5)) / 5, mode="same", axes=-1).shape
    (8, 10000)
    """
    device = _validate.check_device(device)
    if _dask.is_dask(in1) or _dask.is_dask(in2):
        _check_no_device(device, "dask arrays")
        return _dask.fftconvolve_long(in1, in2, mode, axes, precision=precision,
                                      kernel_len=kernel_len, freq_keep=freq_keep,
                                      workers=workers)
    precision = _validate.check_precision(precision)
    kernel_len = _validate.check_kernel_len(kernel_len)
    freq_keep = _validate.check_freq_keep(freq_keep)
    workers = _validate.check_workers(workers)
    ad = _arrays.common_adapter({"in1": in1, "in2": in2})
    a1, d1 = _arrays.to_backend(in1, ad)
    a2, d2 = _arrays.to_backend(in2, ad)
    xp = _arrays.xp_of(a1)
    # bfloat16 arrives as uint16 bit patterns: convolve the numbers (exactly float32), never
    # the bit patterns; like float16, the result is float32
    if _arrays.dtype_name(d1) == "bfloat16":
        a1 = _arrays.bf16_to_float32(a1, xp)
    if _arrays.dtype_name(d2) == "bfloat16":
        a2 = _arrays.bf16_to_float32(a2, xp)
    if a1.ndim == a2.ndim == 0:
        return a1 * a2
    if a1.ndim != a2.ndim:
        raise ValueError(_validate.MSG_NDIM)
    if a1.size == 0 or a2.size == 0:
        return xp.asarray([])
    extras = kernel_len is not None or freq_keep is not None
    if not (_fast_dtype(a1.dtype) and _fast_dtype(a2.dtype)):
        _check_one_axis_device(device, a1, "dtypes beyond bool, integer, float16/32/64 and "
                                           "complex64/128")
        if extras or precision is not None or mode == "circular" or xp is not np:
            raise NotImplementedError(
                "precision, kernel_len, freq_keep and mode='circular' support bool, integer, "
                f"float16/32/64 and complex64/128 inputs; got dtypes {a1.dtype} and {a2.dtype}"
            )
        import scipy.signal

        with _workers(workers):
            return scipy.signal.fftconvolve(a1, a2, mode=mode, axes=axes)

    if extras:
        return _extras_path(a1, a2, mode, axes, ad, precision, kernel_len, freq_keep, workers,
                            device)
    if isinstance(mode, str) and mode == "circular":
        axes_list = _validate.circular_axes(a1.shape, a2.shape, axes)
        if not axes_list:
            # in2 has length 1 along every axis: a product, in the dtype of an FFT convolution
            io = _scipy_result_dtype(a1.dtype, a2.dtype)
            _check_result_fits(np.broadcast_shapes(a1.shape, a2.shape), io,
                               _arrays.device_of(a1))
            return (a1 * a2).astype(io, copy=False)
        _validate.check_one_axis(len(axes_list), "mode='circular'")
        return _one_axis(a1, a2, axes_list[0], mode, ad, precision, None, workers, device)
    axes_list, swap = _validate.freq_conv_axes(a1.shape, a2.shape, mode, axes)
    _validate.check_mode(mode)
    if swap:
        a1, a2 = a2, a1
    if not axes_list:
        _check_result_fits(np.broadcast_shapes(a1.shape, a2.shape),
                           np.result_type(a1.dtype, a2.dtype), _arrays.device_of(a1))
        return _product_mode(a1 * a2, a1.shape, mode, xp)
    if len(axes_list) == 1:
        return _one_axis(a1, a2, axes_list[0], mode, ad, precision, None, workers, device)
    _check_one_axis_device(device, a1, "a convolution over several axes")
    return _n_dim(a1, a2, axes_list, mode, precision, workers)


def _check_no_device(device, what):
    if device is not None:
        raise NotImplementedError(
            f"device={device!r} is supported for NumPy and CuPy arrays; {what} compute where "
            f"they live (move them first)"
        )


def _check_one_axis_device(device, a1, what):
    if device is not None and device != _arrays.device_of(a1):
        raise NotImplementedError(
            f"device={device!r} is supported for a convolution along one axis with bool, "
            f"integer, float16/32/64 or complex64/128 inputs; {what} runs where the inputs "
            f"live ({_arrays.device_of(a1)})"
        )


def _extras_path(a1, a2, mode, axes, ad, precision, kernel_len, freq_keep, workers, device):
    """``kernel_len`` / ``freq_keep``: always one FFT axis, so the definition holds even for
    length-1 axes."""
    s1, s2 = a1.shape, a2.shape
    axes_all = _validate.scipy_axes(a1.ndim, axes)
    cand = [a for a in axes_all if not (s1[a] == 1 and s2[a] == 1)] or axes_all[:1]
    _validate.check_one_axis(len(cand), "kernel_len / freq_keep")
    axis = cand[0]
    if kernel_len is not None and kernel_len < s2[axis]:
        idx = [slice(None)] * a2.ndim
        idx[axis] = slice(0, kernel_len)
        a2 = a2[tuple(idx)]
        s2 = a2.shape
    if freq_keep is not None:
        _validate.check_real_for_freq_keep(a1.dtype.kind == "c" or a2.dtype.kind == "c")
    if isinstance(mode, str) and mode == "circular":
        _validate.check_broadcast_shapes(s1, s2, [axis])
    else:
        _, swap = _validate.freq_conv_axes(s1, s2, mode, [axis])
        _validate.check_broadcast_shapes(s1, s2, [axis])
        _validate.check_mode(mode)
        if swap:
            a1, a2 = a2, a1
    return _one_axis(a1, a2, axis, mode, ad, precision, freq_keep, workers, device)


def _one_axis(a1, a2, axis, mode, ad, precision, freq_keep, workers, device=None):
    """Convolution along ``axis``: reshape to the backend protocol's (B, H, L) and (Hk, Lk)."""
    xp = _arrays.xp_of(a1)
    io = _scipy_result_dtype(a1.dtype, a2.dtype)
    s1 = a1.shape
    if mode == "same":
        # SciPy centres every axis on in1's shape: where in1 broadcasts (length 1) against a
        # longer in2, only in2's middle entry reaches the output, so keep only that one.
        idx = [slice(None)] * a2.ndim
        for i in range(a2.ndim):
            if i != axis and s1[i] == 1 and a2.shape[i] > 1:
                m = (a2.shape[i] - 1) // 2
                idx[i] = slice(m, m + 1)
        a2 = a2[tuple(idx)]
    x = xp.moveaxis(a1, axis, -1)
    k = xp.moveaxis(a2, axis, -1)
    L, Lk = x.shape[-1], k.shape[-1]
    S = tuple(np.broadcast_shapes(x.shape[:-1], k.shape[:-1]))
    i0 = next((i for i, s in enumerate(k.shape[:-1]) if s != 1), len(S))
    Hdims, Bdims = S[i0:], S[:i0]
    H, B = math.prod(Hdims), math.prod(Bdims)
    data_device = _arrays.device_of(a1)
    L_out = {"full": L + Lk - 1, "same": L, "circular": L, "valid": L - Lk + 1}[mode]
    out_dt = np.dtype(io)
    if device is None:
        device = data_device
        if data_device == "cpu" and ad.KIND == "numpy":
            device = host_problem_device(
                B * H, L, Lk, mode, bytes_in=B * H * L * x.dtype.itemsize + k.nbytes,
                bytes_out=B * H * L_out * out_dt.itemsize, io_dtype=io, precision=precision,
                workers=workers)
    for where in dict.fromkeys((data_device, device)):
        capacity = _capacity(where)
        _validate.check_fits_in_memory(S + (L_out,), out_dt.itemsize, "the output", capacity,
                                       "host" if where == "cpu" else "GPU")
        _validate.check_fits_in_memory(S + (L,), x.dtype.itemsize,
                                       "in1 broadcast to the output", capacity,
                                       "host" if where == "cpu" else "GPU")
    k2 = xp.ascontiguousarray(xp.broadcast_to(k.reshape(k.shape[i0:]), Hdims + (Lk,)))
    k2 = k2.reshape(H, Lk)
    x3 = xp.ascontiguousarray(xp.broadcast_to(x, S + (L,))).reshape(B, H, L)
    plan = _select_backend(k2, L, data_device=data_device, device=device, mode=mode,
                           freq_keep=freq_keep, precision=precision, io_dtype=io,
                           workers=workers)
    y = plan(_arrays.to_device(x3, device)).reshape(S + (L_out,))
    y = _arrays.to_device(y, data_device)
    return ad.from_backend(xp.ascontiguousarray(xp.moveaxis(y, -1, axis)), io, a1)


def _capacity(device):
    return _validate.host_memory() if device == "cpu" else _arrays.gpu_memory()


def _check_result_fits(shape, dtype, device):
    _validate.check_fits_in_memory(shape, np.dtype(dtype).itemsize, "the output",
                                   _capacity(device), "host" if device == "cpu" else "GPU")


def _n_dim(a1, a2, axes, mode, precision, workers):
    """Convolution over several axes: SciPy itself on the host, cuFFT on the GPU."""
    io = _scipy_result_dtype(a1.dtype, a2.dtype)
    s1, s2 = a1.shape, a2.shape
    full = [max(s1[i], s2[i]) if i not in axes else s1[i] + s2[i] - 1 for i in range(a1.ndim)]
    _check_result_fits(full, np.complex128 if np.dtype(io).itemsize > 4 else np.complex64,
                       _arrays.device_of(a1))
    c1, c2 = _precision_dtype(a1.dtype, precision), _precision_dtype(a2.dtype, precision)
    if _arrays.xp_of(a1) is np:
        import scipy.signal

        with _workers(workers):
            ret = scipy.signal.fftconvolve(a1.astype(c1, copy=False), a2.astype(c2, copy=False),
                                           mode=mode, axes=axes)
        return ret.astype(io, copy=False)
    return _n_dim_gpu(a1, a2, axes, mode, io, c1, c2)


def _n_dim_gpu(a1, a2, axes, mode, io, c1, c2):
    import cupy as cp

    from ._gpu_exact import _fast_len

    s1, s2 = a1.shape, a2.shape
    shape = [max(s1[i], s2[i]) if i not in axes else s1[i] + s2[i] - 1 for i in range(a1.ndim)]
    fshape = [_fast_len(shape[a]) for a in axes]
    single = all(np.dtype(c).name in ("float16", "float32", "complex64") for c in (c1, c2))
    if np.dtype(io).kind == "c":
        cdt = np.complex64 if single else np.complex128
        sp1 = cp.fft.fftn(a1.astype(cdt), fshape, axes=axes)
        sp2 = cp.fft.fftn(a2.astype(cdt), fshape, axes=axes)
        ret = cp.fft.ifftn(sp1 * sp2, fshape, axes=axes)
    else:
        rdt = np.float32 if single else np.float64
        sp1 = cp.fft.rfftn(a1.astype(rdt), fshape, axes=axes)
        sp2 = cp.fft.rfftn(a2.astype(rdt), fshape, axes=axes)
        ret = cp.fft.irfftn(sp1 * sp2, fshape, axes=axes)
    ret = ret[tuple(slice(s) for s in shape)]
    if mode == "same":
        ret = _centered(ret, s1)
    elif mode == "valid":
        ret = _centered(ret, [ret.shape[a] if a not in axes else s1[a] - s2[a] + 1
                              for a in range(ret.ndim)])
    return cp.ascontiguousarray(ret).astype(io, copy=False)


def convolve(x, k, causal=True, *, pregate=None, postgate=None, skip=None, precision=None,
             kernel_len=None, freq_keep=None, device=None):
    """Long convolution of sequences with per-channel filters (the sequence-model form).

    Parameters
    ----------
    x : array, shape (..., H, L) or (L,)
        Input sequences (NumPy or CuPy). Any ``L >= 1``.
    k : array, shape (H, Lk) or (Lk,)
        One filter per channel, or one filter shared by every channel. Any ``Lk >= 1``; with
        ``causal=True`` only the first ``L`` taps can reach the output.
    causal : bool, default True
        Index diagram (``t`` = output index, ``L`` points out in both cases)::

            causal=True    y[t] = sum_{s=0..t} k[s] x[t-s]          t = 0 .. L-1
                           x  |x0 x1 x2 ... x(L-1)|
                           y[t] sees x[0..t] only (no future samples)
            causal=False   y = fftconvolve(x, k, mode="same") along the last axis
                           y[t] = full[t + (Lk-1)//2]  (centred on the filter)

    pregate, postgate : array, shape broadcastable to x's, optional
        Multiplicative gates before and after the convolution.
    skip : array, shape (H,), optional
        Per-channel weight of a residual term (Hyena's "D").
    precision : {None, "half", "single", "double"}, optional
        ``None`` follows ``x``'s dtype. On the CPU "half"/"single" compute in float32.
    kernel_len : int, optional
        Use only the first ``kernel_len`` taps of ``k``.
    freq_keep : float in (0, 1], optional
        Keep only the filter's rfft bins ``j < ceil(freq_keep * (n//2 + 1))`` at the shared
        FFT size ``n`` (``LongConv(...).fft_size``).
    device : {None, "cpu", "gpu"}, optional
        Where to compute; the result comes back where ``x`` lives. ``None``: CuPy arrays on
        their GPU; NumPy arrays on a GPU when one is usable and the problem is large enough to
        pay for the copies to it and back (an estimate of both sides' times, see
        ``docs/api.md``), else on the CPU. Framework tensors (PyTorch, JAX) and Dask arrays
        compute where they live (another device is ``NotImplementedError``).

    Returns
    -------
    y : array, shape (..., H, L)
        Exactly::

            y = postgate * conv(pregate * x, k) + skip[h] * x

        The skip term uses the *ungated* input ``x`` and is added after the postgate.
        (Hyena applies its ``D`` to the convolution's own input inside the postgate,
        ``postgate * (conv(u) + D u)`` with ``u = pregate * x``; get that form by calling
        with ``x = pregate * x`` and multiplying the result by the postgate.)
        Same kind of array as ``x``; dtype of ``x`` (integers and bool -> float64; complex when
        ``k``, a gate or ``skip`` is complex).

    See Also
    --------
    LongConv : the same as a reusable plan with a cached filter spectrum.
    fftconvolve_long : the SciPy-compatible N-dimensional form.

    Examples
    --------
    >>> import numpy as np
    >>> from longconv import convolve
    >>> convolve(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0]))
    array([1., 3., 5.])
    """
    if (pregate is None and postgate is None and skip is None and precision is None
            and kernel_len is None and freq_keep is None and device is None
            and (causal is True or causal is False)):
        # an adapter's shortest path (adapters.FAST_CONVOLVE): a few microseconds of a small
        # call's ~20 spared
        fast = _FAST_CONVOLVE.get(type(x))
        if fast is not None:
            y = fast(x, k, causal)
            if y is not None:
                return y
    device = _validate.check_device(device)
    if any(_dask.is_dask(a) for a in (x, k, pregate, postgate, skip)):
        _check_no_device(device, "dask arrays")
        return _dask.convolve(x, k, causal, pregate=pregate, postgate=postgate, skip=skip,
                              precision=precision, kernel_len=kernel_len, freq_keep=freq_keep)
    causal = _validate.check_causal(causal)
    ad = _arrays.common_adapter({"x": x, "k": k, "pregate": pregate, "postgate": postgate,
                                 "skip": skip})
    own = getattr(ad, "convolve", None)
    if own is not None:
        if device is not None:
            here = next(ad.device(v) for v in (x, k, pregate, postgate, skip)
                        if v is not None and ad.is_array(v))
            if device != here:
                _check_no_device(device, f"{ad.KIND} arrays")
        return own(x, k, causal, pregate=pregate, postgate=postgate, skip=skip,
                   precision=precision, kernel_len=kernel_len, freq_keep=freq_keep)
    if (ad.KIND == "cupy" and device != "cpu" and pregate is None and postgate is None
            and skip is None and freq_keep is None and type(k) is type(x)):
        y = _fused_convolve(x, k, causal, _validate.check_precision(precision),
                            _validate.check_kernel_len(kernel_len))
        if y is not None:
            return y
    xa, xdt = _arrays.to_backend(x, ad)
    _validate.check_numeric_dtype(xdt, "x")
    _validate.check_signal(xa.shape)
    plan = LongConv._unbuilt(k, xa.shape[-1], causal=causal, precision=precision,
                             kernel_len=kernel_len, freq_keep=freq_keep, device=device)
    return plan(x, pregate=pregate, postgate=postgate, skip=skip)


def _fused_convolve(x, k, causal, precision, kernel_len):
    """The fused kernels' shortest path for a small CuPy call (``_fused.cupy_convolve``), or
    None where it does not serve the call."""
    try:
        from . import _fused
    except ImportError:  # pragma: no cover - CuPy arrays came in, so CuPy imports
        return None
    return _fused.cupy_convolve(x, k, causal, precision, kernel_len)
