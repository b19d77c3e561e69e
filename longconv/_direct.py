"""Direct (time-domain) convolution of small float32/float64 problems on the GPU.

One launch of ``lc_direct_conv_f32`` / ``_f64`` (``cuda_src/direct_conv.cu``) sums the products
of each output in the data's precision: no filter spectrum, no padded buffers, none of cuFFT's
five or more launches. It serves calls whose work ``rows * Lout * taps`` is at most
:data:`DIRECT_MAX_WORK`, where a call's cost is its host time; larger problems take cuFFT
(:mod:`longconv._gpu_exact`), which calls into this module for the small ones.
"""

from __future__ import annotations

from . import _compile
from ._kernels import direct_key

#: Mirror of ``struct DirectParams`` in ``cuda_src/direct_conv.cu`` (same order).
DIRECT_PARAMS_FIELDS = (
    ("x", "ptr"), ("k", "ptr"), ("pregate", "ptr"), ("postgate", "ptr"), ("skip", "ptr"),
    ("y", "ptr"), ("rows", "i64"), ("H", "i64"), ("L", "i64"), ("Lout", "i64"),
    ("start", "i64"), ("taps", "i64"), ("k_stride", "i64"), ("wrap", "i64"), ("tiles", "i64"),
)
DIRECT_PARAMS_DTYPE = _compile.params_dtype(DIRECT_PARAMS_FIELDS)
#: Outputs per block (``LC_DIRECT_TILE``), one a thread.
TILE = 256
#: Entry points: by I/O dtype for float32/float64 (the sums in that precision, the filters and
#: skip of that dtype); by (I/O dtype, filter dtype) for float16/bfloat16 data (sums in
#: float32, skip in float32 as the fused kernels take it).
ENTRY = {"float32": "lc_direct_conv_f32", "float64": "lc_direct_conv_f64"}
ENTRY.update({(io, kdt): f"lc_direct_conv_{io_tag}_{k_tag}"
              for io, io_tag in (("float16", "f16"), ("bfloat16", "bf16"))
              for kdt, k_tag in (("float16", "f16"), ("float32", "f32"), ("float64", "f64"))})
# Work bound (multiply-adds of a call) of the direct kernel, by dtype. Its inner loop reads
# shared memory for every multiply-add (the taps broadcast, the inputs in a row), about 25 of them
# a clock per SM: 2^26 float32 terms take ~10 us of an H100, as much GPU time as cuFFT's route
# spends on such a problem (rfft, product, irfft, copies: ~7 passes over the padded rows) while
# that route costs ~190 us of host time against ~15. float64 runs at about half the rate.
DIRECT_MAX_WORK = {"float32": 1 << 26, "float64": 1 << 25,
                   # float16/bfloat16 data has the fused kernels, whose one-shot call costs two
                   # launches (the filter spectrum, then the convolution) and two allocations,
                   # 25-34 us of an H100 host's time; the direct kernel makes one. Up to 2^18
                   # terms (L = 512 with a full filter, or 4 rows at L = 256) its GPU time stays
                   # a few microseconds, below a launch's host cost.
                   "float16": 1 << 18, "bfloat16": 1 << 18}
#: Blocks resident per SM (256 threads, 9 / 18 KB of static shared memory): the grid's bound.
_BLOCKS_PER_SM = 8
#: dtype code (``dtype.char``) -> I/O dtype name.
_NAME_BY_CHAR = {"f": "float32", "d": "float64"}


_LAUNCHERS = {}


def _launcher(cupy, entry):
    dev = cupy.cuda.runtime.getDevice()
    launch = _LAUNCHERS.get((dev, entry))
    if launch is None:
        kernel = _compile.get_kernel(direct_key(), ENTRY[entry])
        launch = _compile.Launcher(kernel, DIRECT_PARAMS_DTYPE, TILE)
        _LAUNCHERS[(dev, entry)] = launch
    return launch


def serves(io, rows, Lout, taps) -> bool:
    """Whether the direct kernel serves ``rows`` rows of ``Lout`` outputs of ``taps`` taps in
    the I/O dtype ``io``."""
    bound = DIRECT_MAX_WORK.get(io)
    return bound is not None and rows * Lout * taps <= bound


def launch(cupy, entry, x, k, k_stride, pregate, postgate, skip, y, B, H, L, Lout, start, taps,
           wrap, stream):
    """One launch on device addresses (0: absent) on the stream handle ``stream``: ``x`` and
    ``pregate`` (B, H, L), ``y`` and ``postgate`` (B, H, Lout) C-contiguous, ``skip`` (H,),
    filters rows of ``taps`` contiguous taps ``k_stride`` elements apart (0: one filter), the
    dtypes those of ``entry`` (an :data:`ENTRY` key). ``start``: full-convolution index of
    output 0; ``wrap``: L for a circular convolution (the filter folded to at most L taps),
    else 0. Nothing is checked."""
    rows = B * H
    tiles = -(-Lout // TILE)
    info = _compile.device_info()
    grid = int(min(rows * tiles, info.sm_count * _BLOCKS_PER_SM))
    _launcher(cupy, entry)(grid, 0, stream, (
        x, k, pregate, postgate, skip, y, rows, H, L, Lout, start, taps, k_stride, wrap, tiles))


def convolve_geometry(io, kdt, rows, L, Lk, causal):
    """``(entry, taps, start)`` of a ``convolve(x, k, causal)`` call on the direct kernel:
    ``rows`` rows of ``L`` samples, filters of ``Lk`` taps (after any ``kernel_len`` cut) of
    dtype ``kdt``, I/O dtype ``io``, ``L`` outputs a row. None where the kernel does not serve
    it: no entry point for the dtypes (float32/float64 data take filters of their own dtype),
    or more work than :data:`DIRECT_MAX_WORK`."""
    if io == "float32" or io == "float64":
        if kdt != io:
            return None
        entry = io
    else:
        entry = (io, kdt)
        if entry not in ENTRY:
            return None
    taps = min(Lk, L) if causal else Lk
    if not serves(io, rows, L, taps):
        return None
    # causal: output t is full-convolution index t; "same": centred on the filter
    return entry, taps, 0 if causal else (Lk - 1) // 2


def launch_convolve(cupy, geometry, x, k, k_stride, pregate, postgate, skip, y, rows, H, L,
                    stream):
    """:func:`launch` of a ``convolve`` call whose :func:`convolve_geometry` is ``geometry``:
    ``rows`` rows (a multiple of ``H``) of ``L`` samples in and out, the operands' device
    addresses (0: absent; ``k_stride`` 0 when one filter serves every channel)."""
    entry, taps, start = geometry
    launch(cupy, entry, x, k, k_stride, pregate, postgate, skip, y, rows // H, H, L, L, start,
           taps, 0, stream)


def _cupy():
    import cupy

    return cupy


def cupy_convolve(x, k, causal):
    """``longconv.convolve(x, k, causal)`` with default options for float32/float64 CuPy
    arrays on the direct kernel, or None where it does not serve the call (other dtypes,
    layouts or devices, too much work): the general path then runs."""
    name = _NAME_BY_CHAR.get(x.dtype.char)
    if name is None or k.dtype != x.dtype:
        return None
    from ._fused import call_layout

    layout = call_layout(x, k)
    if layout is None:
        return None
    L, H, Hk, Lk, stride = layout
    geometry = convolve_geometry(name, name, x.size // L, L, Lk, causal)
    if geometry is None:
        return None
    cupy = _cupy()
    dev = cupy.cuda.runtime.getDevice()
    if x.data.device_id != dev or k.data.device_id != dev:
        return None
    y = cupy.empty(x.shape, dtype=x.dtype)
    # one filter: every channel reads row 0
    launch_convolve(cupy, geometry, x.data.ptr, k.data.ptr, stride if Hk > 1 else 0, 0, 0, 0,
                    y.data.ptr, x.size // L, H, L, cupy.cuda.get_current_stream().ptr)
    return y
