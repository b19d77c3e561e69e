"""Dask arrays: lazy convolutions whose chunks run through the in-memory paths.

:func:`longconv.fftconvolve_long` and :func:`longconv.convolve` hand any call with a
``dask.array.Array`` argument to this module and return a lazy ``dask.array.Array``.

* Chunks along the batch / channel axes are independent: each block is convolved by the
  in-memory function (NumPy blocks on the CPU backend, CuPy blocks on the GPU), with the rows of
  the filter bank that belong to the block.
* A time axis in one chunk is convolved per block exactly as in memory (every mode and option).
* A time axis in several chunks is convolved by causal overlap-save: block ``i`` (starting at
  sample ``s``) is extended on the left by a halo of ``h = Lk - 1`` samples taken from the end
  of block ``i - 1`` (zeros before the first block), convolved causally, and the ``h`` leading
  outputs are dropped::

      x chunks        |---- c0 ----|------ c1 ------|---- c2 ----|
      block 1 input         |- h -|------ c1 ------|          h = Lk - 1 halo from block 0
      block 1 output               |------ c1 ------|          causal outputs s .. s + c1 - 1

  ``full``, ``same`` and ``valid`` (and ``convolve(causal=False)``) are windows of the causal
  convolution of the signal padded on the right with zeros, so they reuse it and slice. The
  halo must come from one neighbouring block, so every chunk of the time axis (but the last)
  must hold at least ``h`` samples; otherwise a ``ValueError`` says how to rechunk.
  ``mode="circular"`` and ``freq_keep`` depend on the whole signal's length and need the time
  axis in one chunk.

Filters (``in2`` / ``k``) and ``skip`` are small and held in memory: a dask filter is computed
when the graph is built. The filter enters the graph once, as one task that every block depends
on (a distributed worker fetches it once, not once per block). Gates and ``skip`` are applied as
lazy element-wise operations around the convolution.

CuPy-backed dask arrays (chunks that are ``cupy.ndarray``) are convolved chunk by chunk on the
GPU and give a CuPy-backed result (its ``_meta`` is a CuPy array). The kind of ``x``'s chunks
decides: a filter, gate or ``skip`` held as the other kind (a NumPy filter for CuPy chunks, say)
is moved to the chunk's kind inside each task, on the worker that runs it.
"""

from __future__ import annotations

import numpy as np

from . import _validate


def is_dask(obj) -> bool:
    """Whether ``obj`` is a ``dask.array.Array`` (without importing dask)."""
    return (obj is not None and type(obj).__module__.split(".", 1)[0] == "dask"
            and hasattr(obj, "chunks") and hasattr(obj, "dask"))


def _where(block):
    """A chunk computes where it lives: NumPy chunks on the CPU backend (whatever the size
    policy for NumPy calls would choose), CuPy chunks on their GPU."""
    from ._arrays import device_of

    return device_of(block)


def _in_memory(obj):
    """A filter-like operand in memory (a dask array is computed)."""
    return obj.compute() if is_dask(obj) else obj


def _kind(a):
    """``"cupy"`` for a CuPy array, ``"numpy"`` for a NumPy array, else ``None``."""
    top = type(a).__module__.split(".", 1)[0]
    return top if top in ("numpy", "cupy") else None


def _xp(block):
    if _kind(block) == "cupy":
        import cupy

        return cupy
    return np


def _as_kind(a, kind):
    """``a`` as an array of ``kind`` (``"numpy"`` or ``"cupy"``); unchanged if it is one."""
    if kind == "cupy":
        if _kind(a) == "cupy":
            return a
        import cupy

        return cupy.asarray(a)
    return a.get() if _kind(a) == "cupy" else a


def _like(a, block):
    """``a`` (a filter) as the same kind of array as ``block`` (NumPy or CuPy)."""
    return _as_kind(a, "cupy" if _kind(block) == "cupy" else "numpy")


def _graph_constant(a, x):
    """``a`` (an in-memory filter) as one task of the graph, whose value is ``a`` as the kind of
    ``x``'s chunks; block functions take it as an argument.

    The graph holds ``a`` once, as a host (NumPy) array: it is serialised once (not with every
    block's task) and needs no GPU where the graph is unpacked (a distributed scheduler). The
    task moves it to the chunks' kind, so each worker computes or fetches it once and its
    blocks share it.

    For CuPy chunks the task is ``cupy.asarray`` itself (see :func:`_to_chunk_kind`).
    """
    import dask
    from dask.base import tokenize

    kind = "cupy" if _kind(x._meta) == "cupy" else "numpy"
    host = _as_kind(a, "numpy")
    fn, args = _to_chunk_kind(kind)
    return dask.delayed(fn, pure=True)(
        host, *args, dask_key_name=f"longconv-filter-{kind}-{tokenize(host)}")


def _to_chunk_kind(kind):
    """``(function, extra args)`` of a task that turns an operand into ``kind``'s array.

    For CuPy it is ``cupy.asarray``, pickled by reference: a distributed worker then imports
    CuPy while it unpickles the task, in its communication thread, as it does for any task
    that names a CuPy function, and never first inside a running task. A worker's first import
    of CuPy from two threads at once can fail (CPython reports CuPy's internal circular imports
    as a partially initialised module); the failure in the communication thread leaves the
    worker deaf to the scheduler, and the computation hangs. A task of our own that imported
    CuPy lazily did exactly that in 1 run in 8 of a ``LocalCUDACluster`` test. (The caller's
    chunks are CuPy arrays, so CuPy is imported here already.)"""
    if kind == "cupy":
        import cupy

        return cupy.asarray, ()
    return _as_kind, ("numpy",)


def _operand_like(a, x):
    """A gate or ``skip`` (in memory or dask) whose blocks are the same kind as ``x``'s chunks.

    Operands that already match (or are not arrays) are returned unchanged; the others become
    dask arrays converted block by block, inside the tasks.
    """
    import dask.array as da
    from dask.array.utils import meta_from_array

    kind = "cupy" if _kind(x._meta) == "cupy" else "numpy"
    own = _kind(a._meta) if is_dask(a) else _kind(a)
    if own is None or own == kind:
        return a
    a = a if is_dask(a) else da.asarray(a)
    fn, args = _to_chunk_kind(kind)
    return a.map_blocks(fn, *args, dtype=a.dtype,
                        meta=meta_from_array(x._meta, ndim=a.ndim, dtype=a.dtype))


def _take(a, axis, start, stop):
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(start, stop)
    return a[tuple(idx)]


def _meta(x, dtype):
    from dask.array.utils import meta_from_array

    return meta_from_array(x, ndim=x.ndim, dtype=np.dtype(dtype))


def rechunk_advice(axis_label, halo, chunk, taps):
    """The ``ValueError`` raised when a time chunk is shorter than the overlap-save halo."""
    return ValueError(
        f"the filter has {taps} taps but a chunk of the time axis holds only {chunk} samples; "
        f"overlap-save needs every chunk of the time axis (but the last) to hold at least "
        f"kernel_len - 1 = {halo} samples: rechunk the time axis to chunks >= {halo} samples: "
        f"x.rechunk({{{axis_label}: {halo}}}) (a few times that is faster)"
    )


def _check_halo(chunks, halo, axis_label, taps):
    for c in chunks[:-1]:
        if c < halo:
            raise rechunk_advice(axis_label, halo, c, taps)


def _overlap_save(x, axis, halo, block_fn, out_dtype, axis_label, taps, k):
    """Causal convolution of ``x`` (dask) along ``axis`` by overlap-save.

    ``block_fn(ext, loc, k)`` convolves one extended block ``ext`` (halo + block along
    ``axis``) causally with the filter ``k`` and returns all ``ext.shape[axis]`` outputs;
    ``loc`` is the block's location (``(start, stop)`` per axis) in ``x`` and ``k`` the value of
    the graph constant ``k`` (:func:`_graph_constant`). Returns a dask array with ``x``'s
    chunks.
    """
    import dask.array as da

    chunks = x.chunks[axis]
    meta = _meta(x, out_dtype)
    if halo == 0 or len(chunks) == 1:
        def one(block, kk, block_info=None):
            return block_fn(block, block_info[0]["array-location"], kk)

        return da.map_blocks(one, x, k, dtype=out_dtype, meta=meta)
    _check_halo(chunks, halo, axis_label, taps)
    ends = np.cumsum(chunks)
    tails = [da.zeros_like(_take(x, axis, 0, halo))]
    tails += [_take(x, axis, int(e) - halo, int(e)) for e in ends[:-1]]
    tails = da.concatenate(tails, axis=axis)

    def extended(block, tail, kk, block_info=None):
        xp = _xp(block)
        ext = xp.concatenate([_like(tail, block).astype(block.dtype, copy=False), block],
                             axis=axis)
        y = block_fn(ext, block_info[0]["array-location"], kk)
        return _take(y, axis, halo, None)

    return da.map_blocks(extended, x, tails, k, dtype=out_dtype, meta=meta)


def _pad_right(x, axis, pad):
    import dask.array as da

    if pad == 0:
        return x
    shape = list(x.shape)
    shape[axis] = pad
    chunks = list(x.chunks)
    chunks[axis] = (pad,)
    zeros = da.zeros_like(x, shape=tuple(shape), chunks=tuple(chunks))
    return da.concatenate([x, zeros], axis=axis)


# --------------------------------------------------------------------------------------------
# fftconvolve_long


def fftconvolve_long(in1, in2, mode="full", axes=None, *, precision=None, kernel_len=None,
                     freq_keep=None, workers=None):
    """:func:`longconv.fftconvolve_long` for dask arrays (lazy; see the module docstring)."""
    import dask.array as da

    from ._signaltools import _scipy_result_dtype
    from ._signaltools import fftconvolve_long as in_memory

    precision = _validate.check_precision(precision)
    kernel_len = _validate.check_kernel_len(kernel_len)
    freq_keep = _validate.check_freq_keep(freq_keep)
    workers = _validate.check_workers(workers)
    x = in1 if is_dask(in1) else da.asarray(in1)
    k = _in_memory(in2)
    k = k if hasattr(k, "ndim") else np.asarray(k)
    if x.ndim != k.ndim:
        raise ValueError(_validate.MSG_NDIM)
    if x.ndim == 0 or x.size == 0 or k.size == 0:
        raise NotImplementedError(
            "dask inputs need at least one dimension and non-empty in1 and in2; got shapes "
            f"{x.shape} and {k.shape}")
    if isinstance(mode, str) and mode == "circular":
        axes_list = _validate.circular_axes(x.shape, k.shape, axes)
        swap = False
    else:
        _validate.check_mode(mode)
        axes_list, swap = _validate.freq_conv_axes(x.shape, k.shape, mode, axes)
    if len(axes_list) != 1 or swap:
        raise NotImplementedError(
            "dask inputs support a convolution along one axis with in1 at least as long as in2 "
            f"for mode='valid'; got shapes {x.shape} and {k.shape} with axes={axes!r}")
    axis = axes_list[0]
    for i, (n1, n2) in enumerate(zip(x.shape, k.shape, strict=True)):
        if i != axis and n2 not in (1, n1):
            raise NotImplementedError(
                f"dask inputs need in2's length along each non-convolved axis to be 1 or "
                f"in1's; got shapes {x.shape} and {k.shape} (axis {i})")
    if kernel_len is not None:
        k = _take(k, axis, 0, kernel_len)
    io = _scipy_result_dtype(x.dtype, k.dtype)
    L, Lk = x.shape[axis], k.shape[axis]
    label = -1 if axis == x.ndim - 1 else axis
    kw = dict(precision=precision, freq_keep=freq_keep, workers=workers)

    kshape = k.shape

    def filter_for(kk, loc):
        idx = tuple(slice(None) if i == axis or kshape[i] == 1 else slice(*loc[i])
                    for i in range(len(kshape)))
        return kk[idx]

    kd = _graph_constant(k, x)
    if len(x.chunks[axis]) == 1:
        def whole(block, kk, block_info=None):
            kb = _like(filter_for(kk, block_info[0]["array-location"]), block)
            return in_memory(block, kb, mode=mode, axes=axis, device=_where(block), **kw)

        L_out = {"full": L + Lk - 1, "same": L, "valid": L - Lk + 1, "circular": L}[mode]
        chunks = list(x.chunks)
        chunks[axis] = (L_out,)
        return da.map_blocks(whole, x, kd, chunks=tuple(chunks), dtype=io, meta=_meta(x, io))
    if mode == "circular" or freq_keep is not None:
        raise NotImplementedError(
            "mode='circular' and freq_keep depend on the whole signal: rechunk the time axis "
            f"into one chunk, x.rechunk({{{label}: -1}})")
    from ._cpu import output_window

    start, L_out = output_window(mode, L, Lk)
    halo = Lk - 1

    def causal(ext, loc, kk):
        y = in_memory(ext, _like(filter_for(kk, loc), ext), mode="full", axes=axis,
                      device=_where(ext), **kw)
        return _take(y, axis, 0, ext.shape[axis])

    xpad = _pad_right(x, axis, start + L_out - L)
    y = _overlap_save(xpad, axis, halo, causal, io, label, Lk, kd)
    return _take(y, axis, start, start + L_out)


# --------------------------------------------------------------------------------------------
# convolve


def convolve(x, k, causal=True, *, pregate=None, postgate=None, skip=None, precision=None,
             kernel_len=None, freq_keep=None):
    """:func:`longconv.convolve` for dask arrays (lazy; see the module docstring)."""
    import dask.array as da

    from ._arrays import dtype_name
    from ._plan import io_dtype_for
    from ._signaltools import convolve as in_memory

    causal = _validate.check_causal(causal)
    precision = _validate.check_precision(precision)
    kernel_len = _validate.check_kernel_len(kernel_len)
    freq_keep = _validate.check_freq_keep(freq_keep)
    x = x if is_dask(x) else da.asarray(x)
    k = _in_memory(k)
    k = k if hasattr(k, "ndim") else np.asarray(k)
    _validate.check_numeric_dtype(x.dtype, "x")
    _validate.check_numeric_dtype(k.dtype, "k")
    _validate.check_signal(x.shape)
    _validate.check_filter(k.shape)
    _validate.check_filter_matches(x.shape, k.shape)
    skip = _in_memory(skip)
    dts = [dtype_name(k.dtype)]
    for name, g in (("pregate", pregate), ("postgate", postgate)):
        if g is not None:
            _validate.check_gate(np.shape(g), x.shape, name)
            dts.append(dtype_name(g.dtype if hasattr(g, "dtype") else np.asarray(g).dtype))
    if skip is not None:
        _validate.check_skip(np.shape(skip), x.shape[-2] if x.ndim >= 2 else 1)
        dts.append(dtype_name(skip.dtype))
    io = io_dtype_for(dtype_name(x.dtype), *dts)
    if kernel_len is not None:
        k = k[..., :kernel_len]
    L, Lk = x.shape[-1], k.shape[-1]
    per_channel = k.ndim == 2 and k.shape[0] > 1
    kw = dict(precision=precision, freq_keep=freq_keep)

    def filter_for(kk, loc):
        return kk[slice(*loc[-2])] if per_channel else kk

    kd = _graph_constant(k, x)
    # gates and skip held as the other kind of array than x's chunks move to their kind
    pregate, postgate, skip = (None if a is None else _operand_like(a, x)
                               for a in (pregate, postgate, skip))
    # the product takes the finer of both chunkings: keep x's, which the caller chose
    xg = x if pregate is None else (x * pregate).rechunk(x.chunks)
    if len(xg.chunks[-1]) == 1:
        def whole(block, kk, block_info=None):
            kb = _like(filter_for(kk, block_info[0]["array-location"]), block)
            return in_memory(block, kb, causal=causal, device=_where(block), **kw)

        y = da.map_blocks(whole, xg, kd, dtype=io, meta=_meta(xg, io))
    else:
        if freq_keep is not None:
            raise NotImplementedError(
                "freq_keep depends on the whole signal: rechunk the time axis into one chunk, "
                "x.rechunk({-1: -1})")

        def causal_block(ext, loc, kk):
            return in_memory(ext, _like(filter_for(kk, loc), ext), causal=True,
                             device=_where(ext), **kw)

        if causal:
            y = _overlap_save(xg, -1, min(Lk, L) - 1, causal_block, io, -1, Lk, kd)
        else:
            start = (Lk - 1) // 2
            y = _overlap_save(_pad_right(xg, -1, start), -1, Lk - 1, causal_block, io, -1, Lk,
                              kd)
            y = y[..., start:start + L]
    if postgate is not None:
        y = y * postgate
    if skip is not None:
        y = y + x * (skip.reshape(-1, 1) if x.ndim >= 2 else skip.reshape(-1))
    return y.astype(io, copy=False)
