"""Fused tensor-core FFT convolution on the GPU (``cuda_src/fused_conv.cu``).

One launch reads every input sequence once and writes every output once: load (and pregate),
forward FFT, product with the cached filter spectrum, inverse FFT, postgate, skip, store. Whole
sequences live in shared memory, so the FFT size ``N`` is limited to 256 .. 32768 (and to what
the device's shared memory holds: one pair of sequences needs ``4 N`` bytes).

Layout of the filter spectrum. The kernel's FFT leaves the spectrum in a permuted order (the
Monarch decomposition works in place, see ``fused_conv.cu``) and each warp reads the spectrum of a
256-point segment in the order of its mma accumulator fragments. :func:`spectrum_order` gives the
frequency index of every stored element; :class:`FusedPlan` gathers the filter's FFT into that
order once per plan.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from . import _compile, _direct, _sizes
from ._kernels import (
    BWD_ENTRY,
    BWD_ENTRY_1,
    BWD_ENTRY_C,
    BWD_MAX_N,
    FUSED_ENTRY,
    FUSED_ENTRY_C,
    FUSED_MAX_N,
    FUSED_MIN_N,
    fused_key,
)

__all__ = ["BWD_PARAMS_FIELDS", "FusedPlan", "PARAMS_FIELDS", "make_plan", "spectrum_order",
           "window", "fft_size_for"]

#: Mirror of ``struct ConvParams`` in ``cuda_src/params.cuh`` (same order).
PARAMS_FIELDS = (
    ("x", "ptr"), ("pregate", "ptr"), ("postgate", "ptr"), ("skip", "ptr"), ("kspec", "ptr"),
    ("wtab", "ptr"), ("wtn", "ptr"), ("out_scale_ptr", "ptr"), ("y", "ptr"),
    ("B", "i64"), ("H", "i64"), ("L", "i64"), ("Lout", "i64"), ("out_offset", "i64"),
    ("fold", "i64"), ("k_hstride", "i64"), ("n_tiles", "i64"), ("tiles_per_h", "i64"),
    ("n", "i32"), ("pairs", "i32"), ("prescale", "i32"), ("vec_in", "i32"), ("vec_out", "i32"),
    ("out_scale", "f32"),
)
PARAMS_DTYPE = _compile.params_dtype(PARAMS_FIELDS)

#: Mirror of ``struct BwdParams`` in ``cuda_src/params.cuh`` (same order).
BWD_PARAMS_FIELDS = (
    ("x", "ptr"), ("pregate", "ptr"), ("dy", "ptr"), ("postgate", "ptr"), ("skip", "ptr"),
    ("kspec", "ptr"), ("wtab", "ptr"), ("wtn", "ptr"), ("out_scale_ptr", "ptr"),
    ("dx", "ptr"), ("dpre", "ptr"), ("dpost", "ptr"), ("dkspec", "ptr"),
    ("B", "i64"), ("H", "i64"), ("L", "i64"), ("Lout", "i64"), ("out_offset", "i64"),
    ("k_hstride", "i64"), ("n_tiles", "i64"), ("splits", "i64"), ("tile_pairs", "i64"),
    ("n", "i32"), ("pairs", "i32"), ("prescale", "i32"), ("vec_in", "i32"), ("vec_out", "i32"),
    ("slots", "i32"), ("out_scale", "f32"),
)
BWD_PARAMS_DTYPE = _compile.params_dtype(BWD_PARAMS_FIELDS)

#: Mirror of ``struct KspecParams`` in ``cuda_src/kspec.cuh`` (same order).
KSPEC_PARAMS_FIELDS = (
    ("k", "ptr"), ("rspec", "ptr"), ("pos", "ptr"), ("wtn", "ptr"), ("kspec", "ptr"),
    ("partial", "ptr"), ("out_scale", "ptr"),
    ("Hk", "i64"), ("taps", "i64"), ("k_stride", "i64"), ("wrap", "i64"),
    ("n", "i32"), ("keep", "i32"), ("nparts", "i32"), ("norm", "f32"),
)
KSPEC_PARAMS_DTYPE = _compile.params_dtype(KSPEC_PARAMS_FIELDS)

#: Mirror of ``struct DkParams`` in ``cuda_src/kspec.cuh`` (same order).
DK_PARAMS_FIELDS = (
    ("dks", "ptr"), ("fpos", "ptr"), ("wtn", "ptr"), ("dk", "ptr"), ("half", "ptr"),
    ("Hk", "i64"), ("Lk", "i64"), ("m", "i64"), ("S", "i64"),
    ("n", "i32"), ("circular", "i32"), ("chunks_per_item", "i32"),
)
DK_PARAMS_DTYPE = _compile.params_dtype(DK_PARAMS_FIELDS)
#: Taps per work item of ``lc_kspec_dk`` (``LC_DK_TAPS``).
DK_TAPS = 64
# The backward's dk comes from the direct inverse sum (lc_kspec_dk) when channels * N * taps
# is at most this (a one-launch path for small problems, whose host time is most of a call),
# else from lc_dk_gather and an inverse real cuFFT (three launches; a forward + backward step
# took 131 us of host time at N = 1024 against 53-61 us at N = 256).
# H100, B = 64, H = 768: N = 256 (direct, 2^24.6 terms) 11.9 us; N = 1024 (FFT) 17 us, N = 8192
# (FFT) 81 us, where the earlier per-frequency direct sum took 31 us and the complex-ifft path
# (a take, a sum, ifft, real part, scale) 36 and 205 us.
DK_DIRECT_MAX_WORK = 1 << 25
KSPEC_THREADS = 256
#: Bins per work item of the direct spectrum kernel (``LC_KSPEC_BINS`` in kspec.cuh).
KSPEC_BINS = 64
#: Blocks of the spectrum kernels at most: the finalize launch's every block reads one partial
#: maximum per block of the first launch, so their count stays small.
KSPEC_MAX_BLOCKS = 512
# The spectrum is summed directly (lc_kspec_dft) when taps * (N / 2 + 1) * filters is at most
# KSPEC_DFT_MAX_WORK, else taken from a float64 cuFFT rfft (lc_kspec_gather). A term costs the
# direct kernel about a dozen instructions, so 2^25 terms are ~10 us of one H100; the cuFFT path
# costs ~150 us of host time per update through CuPy (plan lookup, the transform, the casts) and
# ~10 us of GPU time for such sizes. Larger problems (many long filters) are the cuFFT's.
KSPEC_DFT_MAX_WORK = 1 << 25
# Up to KSPEC_SINGLE_BLOCK_WORK terms one block sums the spectrum and scales it (one launch,
# ~3 us of GPU time at the bound; N = 256 with 256 taps is 33K terms), saving the finalize
# launch's ~4 us of host time. Not more: at 2^17 (L = 256 at N = 512 with a full-length filter,
# 65.8K terms) the one block took ~16 us of GPU time, and the small one-shot call, host-bound
# at ~22 us with two launches, became GPU-bound at 26.7 us (H100, benchmarks/bench_overhead.py).
KSPEC_SINGLE_BLOCK_WORK = 1 << 16
#: Direct spectrum kernels by the filters' dtype.
_DFT_ENTRY = {"float16": "dft_f16", "float32": "dft_f32", "float64": "dft_f64"}
_DFT_KERNEL = {name: "lc_kspec_" + entry for name, entry in _DFT_ENTRY.items()}
#: Filter dtype names of the direct spectrum kernels by NumPy type code (``dtype.char``, a C
#: attribute: ``dtype.name`` is computed in Python at every access).
_DFT_NAME_BY_CHAR = {"e": "float16", "f": "float32", "d": "float64"}

THREADS = 256
MODES = ("causal", "circular", "full", "same", "valid")
# Pairs of sequences per tile: at N = 256 (one segment per pair) 16 pairs give each of the 8 warps
# two segments per phase; more would only lengthen the tile.
MAX_PAIRS = 16
#: FFT sizes from which the fused backward runs one block per SM holding as many pairs as the
#: whole shared memory takes, built for up to 255 registers a thread (at 16384 one pair already
#: needs more than half of the SM); from BWD_ONE_BLOCK_CAUSAL_MIN_N when the causal forms of the
#: outer stages apply (input and output window below N / 2). H100, B = 64, H = 768, forward +
#: backward at N = 8192, one block per SM against two of 128 registers (which spill): causal fp16
#: 4.86 against 5.64 ms, causal bf16 5.13 against 5.49, gated circular fp16 11.58 against 9.92;
#: at N = 1024 one block lost (0.66 against 0.54 ms causal fp16).
BWD_ONE_BLOCK_MIN_N = 16384
BWD_ONE_BLOCK_CAUSAL_MIN_N = 8192


def _outer_radices(n: int) -> tuple[int, ...]:
    """Outer Monarch radices of an FFT of size ``n`` (the kernel's decomposition table)."""
    r = n // 256
    if r == 1:
        return ()
    return (r,) if r <= 16 else (r // 16, 16)


def _inner_order() -> np.ndarray:
    """Frequency (of the 256-point segment) held by lane ``l``, element ``e``: shape (32, 8)."""
    lane = np.arange(32)[:, None]
    e = np.arange(8)[None, :]
    g, c, t, d = lane >> 2, lane & 3, e >> 2, e & 3
    k2 = g + 8 * (d >> 1)
    k3 = 2 * c + (d & 1) + 8 * t
    return k2 + 16 * k3


def spectrum_order(n: int) -> np.ndarray:
    """Frequency index of each stored spectrum element for FFT size ``n``.

    Returns
    -------
    numpy.ndarray of int64, shape (n // 256, 32, 8)
        ``order[s, l, e]`` is the DFT bin that segment ``s``, lane ``l``, element ``e`` holds after
        the kernel's forward transform. Recursion of the in-place Monarch stage: with
        ``n = r * S``, position ``S k + j`` holds bin ``k + r * order_S(j)``.
    """
    if n < 256 or n & (n - 1):
        raise ValueError(f"spectrum_order: n must be a power of two >= 256, got {n}")
    seg = np.arange(n // 256)[:, None, None]
    inner = _inner_order()[None]

    def freq(seg, size, radices):
        if not radices:
            return inner + 0 * seg
        r = radices[0]
        s = size // r
        per_row = s // 256
        k, sub = seg // per_row, seg % per_row
        return k + r * freq(sub, s, radices[1:])

    return freq(seg, n, _outer_radices(n)).astype(np.int64)


def window(mode: str, L: int, Lk: int) -> tuple[int, int, int]:
    """Output window of a mode: (length needed from the linear product, offset, output length).

    The linear convolution of x (length L) and k (length Lk) has L + Lk - 1 samples; a mode keeps
    ``[offset, offset + Lout)`` of it. ``circular`` is handled by :func:`fft_size_for`.
    """
    if mode == "causal":
        return L + min(L, Lk) - 1, 0, L
    if mode == "full":
        return L + Lk - 1, 0, L + Lk - 1
    if mode == "same":
        return L + Lk - 1, (Lk - 1) // 2, L
    if mode == "valid":
        return L + Lk - 1, min(L, Lk) - 1, abs(L - Lk) + 1
    raise ValueError(f"window: unknown mode {mode!r}")


def fft_size_for(mode: str, L: int, Lk: int) -> tuple[int, int, int, int]:
    """(N, out_offset, Lout, fold) of the fused kernel for a problem, N not yet range-checked.

    N is the shared size table's (:func:`longconv._sizes.plan_fft_size`), at least the fused
    minimum. ``circular``: N = L when L is a table size the kernels serve (the filter folded to
    length L), else the linear product of the signal and the folded filter (N >= 2L - 1) folded
    back (``fold = L``).
    """
    n = _sizes.plan_fft_size(mode, L, Lk)
    if mode == "circular":
        if n == L and L >= FUSED_MIN_N:
            return L, 0, L, 0
        return max(FUSED_MIN_N, _sizes.fft_size(2 * L - 1)), 0, L, L
    _, off, lout = window(mode, L, Lk)
    return max(FUSED_MIN_N, n), off, lout, 0


_ORDERS = {}


def storage_order(n: int) -> np.ndarray:
    """Frequency of each stored spectrum element in storage order, shape (n,).

    Stored per segment as 4 groups of (32 lanes x 2 complex): group i of every lane in turn, so
    each of a warp's four 16-byte loads reads 512 contiguous bytes.
    """
    o = spectrum_order(n).reshape(n // 256, 32, 4, 2).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(o).reshape(-1)


def _frag_inverse(cupy, n):
    """For each frequency, its element in the backward's dk sums ((segment, lane, 8)), int32,
    on the device (cached)."""
    key = ("frag", cupy.cuda.runtime.getDevice(), n)
    inv = _ORDERS.get(key)
    if inv is None:
        inv = _ORDERS[key] = cupy.asarray(
            np.argsort(spectrum_order(n).reshape(-1)).astype(np.int32))
    return inv


def _kspec_pos(cupy, n):
    """Storage slot of each frequency (the inverse of :func:`storage_order`), int32, on the
    device (cached)."""
    key = ("pos", cupy.cuda.runtime.getDevice(), n)
    pos = _ORDERS.get(key)
    if pos is None:
        pos = _ORDERS[key] = cupy.asarray(np.argsort(storage_order(n)).astype(np.int32))
    return pos


_WTAB = {}


def _twiddle_table(cupy):
    """W_4096^j = exp(-2 pi i j / 4096), j < 4096, complex64 on the current device (cached)."""
    dev = cupy.cuda.runtime.getDevice()
    tab = _WTAB.get(dev)
    if tab is None:
        j = np.arange(4096)
        tab = _WTAB[dev] = cupy.asarray(np.exp(-2j * np.pi * j / 4096).astype(np.complex64))
    return tab


_WTN = {}


def _twiddle_table_n(cupy, n):
    """Two-level table of W_N: W_N^j for j < 64, then W_N^(64 j) for j < N / 64 (cached)."""
    key = (cupy.cuda.runtime.getDevice(), n)
    tab = _WTN.get(key)
    if tab is None:
        j = np.concatenate([np.arange(64), 64 * np.arange(n // 64)])
        tab = _WTN[key] = cupy.asarray(np.exp(-2j * np.pi * j / n).astype(np.complex64))
    return tab


def _smem_budget(info, per_pair: int) -> int:
    """Shared memory per block for tiles of ``per_pair`` bytes per sequence pair.

    Two blocks per SM (the kernels' __launch_bounds__ minimum) so the phases of one block overlap
    those of the other, each at most 64 KB so about 100 KB of the SM's 256 KB stay L1 for the
    filter spectra the warps re-read per pair (ncu, H100, N = 4096: 76% L1 hit rate with 64 KB
    blocks; with 115 KB blocks the re-reads went to L2 and the kernel ran 1.3x slower). A pair
    larger than that gets the whole opt-in limit (one block per SM).
    """
    budget = min(info.smem_optin, info.smem_per_sm // 2 - 8192, 65536)
    return budget if per_pair <= budget else info.smem_optin


def row_stride(k):
    """Elements between the rows of a 2-D device array whose rows are contiguous (what the
    spectrum kernels read), or None."""
    it = k.itemsize
    s0, s1 = k.strides
    return s0 // it if s1 == it and s0 % it == 0 and s0 >= 0 else None


_CUPY = []


def _cupy():
    """CuPy when it imports and sees a CUDA device, else None (asked once per process)."""
    if _CUPY:
        return _CUPY[0]
    try:
        import cupy
    except ImportError:
        cupy = None
    try:
        if cupy is not None and not cupy.is_available():
            cupy = None
    except Exception:
        cupy = None
    _CUPY.append(cupy)
    return cupy


def _io_dtype_name(io_dtype) -> str:
    name = str(getattr(io_dtype, "name", io_dtype))
    return {"float16": "float16", "half": "float16", "bfloat16": "bfloat16", "uint16": "bfloat16",
            "float32": "float32", "single": "float32"}.get(name, name)


class FusedPlan:
    """A fused convolution plan: filter spectrum in the kernel's layout, launch geometry.

    Parameters
    ----------
    k : cupy.ndarray, shape (H, Lk) or (1, Lk), real
        Filters (already cut to ``kernel_len``); one row is shared by every channel.
    L : int
        Input length.
    mode : {"causal", "circular", "full", "same", "valid"}
    io_dtype : {"float16", "bfloat16", "float32"}
        Dtype of x, the gates and y (bfloat16 travels as uint16 bits).
    n : int, optional
        FFT size to use (must be a power of two covering the problem); default: the smallest.
    freq_keep : float, optional
        Keep the filter's rfft bins ``j < ceil(freq_keep * (n // 2 + 1))``, zero the rest.

    A plan serves the device that was current when it was built. :meth:`shell` builds one
    without a spectrum, for callers that compute spectra per call into their own memory
    (:meth:`spectrum_into`) and launch on raw pointers (:meth:`forward_ptrs`).
    """

    backend = "fused"

    def __init__(self, k, L, *, mode, io_dtype, n=None, freq_keep=None):
        cupy = _cupy()
        if cupy is None:
            raise RuntimeError("the fused kernels need CuPy and a CUDA device")
        k = cupy.asarray(k)
        if k.ndim == 1:
            k = k[None]
        if k.ndim != 2 or k.shape[1] < 1:
            raise ValueError(f"k must have shape (H, Lk), got {k.shape}")
        self._setup(int(k.shape[0]), int(k.shape[1]), L, mode, io_dtype, n, freq_keep)
        self.update(k)

    @classmethod
    def shell(cls, Hk, Lk, L, *, mode, io_dtype, n=None, freq_keep=None):
        """A plan for ``Hk`` filters of ``Lk`` taps without a spectrum: :meth:`spectrum_into`
        and :meth:`forward_ptrs` with an explicit spectrum serve it (:meth:`update` gives it
        its own)."""
        if _cupy() is None:
            raise RuntimeError("the fused kernels need CuPy and a CUDA device")
        self = cls.__new__(cls)
        self._setup(int(Hk), int(Lk), L, mode, io_dtype, n, freq_keep)
        return self

    _kbuf = None
    _kspec_ptr = _scale_ptr = 0

    def _setup(self, Hk, Lk, L, mode, io_dtype, n, freq_keep):
        cupy = _cupy()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.io_dtype = _io_dtype_name(io_dtype)
        if self.io_dtype not in FUSED_ENTRY:
            raise NotImplementedError(
                f"io_dtype must be one of {sorted(FUSED_ENTRY)}, got {io_dtype!r}")
        if Hk < 1 or Lk < 1:
            raise ValueError(f"k must have shape (H, Lk) with H, Lk >= 1, got {(Hk, Lk)}")
        self.L, self.mode = int(L), mode
        self.Hk, self.Lk = Hk, Lk
        N, self.out_offset, self.Lout, self.fold = fft_size_for(mode, self.L, self.Lk)
        if n is not None:
            if n < N or n & (n - 1):
                raise ValueError(f"n={n} does not hold the problem (needs a power of two >= {N})")
            N = int(n)
        if not FUSED_MIN_N <= N <= FUSED_MAX_N:
            raise NotImplementedError(
                f"the fused kernels serve FFT sizes {FUSED_MIN_N}..{FUSED_MAX_N}, "
                f"this problem needs {N}")
        self.n = self.fft_size = N
        info = _compile.device_info()
        # Shared memory: 4 N bytes per pair (see _smem_budget).
        per_pair = 4 * N
        budget = _smem_budget(info, per_pair)
        if per_pair > budget:
            raise NotImplementedError(
                f"FFT size {N} needs {per_pair} bytes of shared memory; {info.name} allows "
                f"{info.smem_optin}")
        self.max_pairs = max(1, min(MAX_PAIRS, budget // per_pair))
        self.device = cupy.cuda.runtime.getDevice()
        # N = 256 with the input and the output window below 128 (causal problems): the entry
        # point whose 256-point transform skips the zero half of the input and the unkept half of
        # the output (H100, causal fp16, B = 64, H = 768: see docs/benchmarks.md)
        self._c256 = (N == 256 and self.fold == 0 and self.L <= 128
                      and self.out_offset + self.Lout <= 128)
        entry = (FUSED_ENTRY_C if self._c256 else FUSED_ENTRY)[self.io_dtype]
        self._kernel = _compile.get_kernel(fused_key(), entry)
        self._launch = _compile.Launcher(self._kernel, PARAMS_DTYPE, THREADS)
        self._wtab = _twiddle_table(cupy)
        self._wtn = _twiddle_table_n(cupy, N)
        self._wtab_ptr, self._wtn_ptr = self._wtab.data.ptr, self._wtn.data.ptr
        self._kpos_ptr = _kspec_pos(cupy, N).data.ptr  # the table is cached, never freed
        # fp16 inputs are bounded by 65504 and read once; bf16 and fp32 inputs can exceed the
        # fp16 operands' range, so each tile is scaled by a power of two (one more read of the
        # tile, from L2).
        self._prescale = int(self.io_dtype != "float16")
        self._info = info
        self.freq_keep = freq_keep
        self._keep = N if freq_keep is None else min(N, math.ceil(freq_keep * (N // 2 + 1)))
        # taps that reach the spectrum: a causal output never meets taps past L (their circular
        # images would); circular folds every tap onto the circle of length L
        self._taps = min(Lk, self.L) if mode == "causal" else Lk
        self._wrap = self.L if mode == "circular" else 0
        work = self._taps * (N // 2 + 1) * Hk
        self.direct_spectrum = work <= KSPEC_DFT_MAX_WORK
        chunks = -(-(N // 2 + 1) // KSPEC_BINS)
        items = Hk * chunks if self.direct_spectrum else -(-Hk * (N // 2 + 1) // KSPEC_THREADS)
        self._kspec_grid = min(items, KSPEC_MAX_BLOCKS)
        # one block that also scales: one launch instead of two (nparts = 0 tells the kernel)
        self._single = self.direct_spectrum and work <= KSPEC_SINGLE_BLOCK_WORK
        if self._single:
            self._kspec_grid = 1
        self._nparts = 0 if self._single else self._kspec_grid
        self._final_grid = max(1, min(KSPEC_MAX_BLOCKS, -(-2 * Hk * N // (4 * KSPEC_THREADS))))
        #: bytes of a spectrum buffer (:meth:`spectrum_into`): the spectrum, its multiplier and
        #: the spectrum kernels' partial maxima
        self.spectrum_bytes = 8 * Hk * N + 16 + 4 * self._kspec_grid
        self._geometry = {}
        self._ready, self._ready_seen, self._update_stream = None, False, -1
        self._launchers = {}

    # ------------------------------------------------------------------ filter spectrum

    def spectrum_into(self, k, k_dtype, k_stride, buf, stream):
        """Launch the direct spectrum kernels: filters at device address ``k`` (``k_dtype``
        "float16", "float32" or "float64"; ``Hk`` rows ``k_stride`` elements apart, at least
        ``min(Lk, L)`` (causal) or ``Lk`` taps each) into the buffer at ``buf``
        (:attr:`spectrum_bytes`, 16-byte aligned) on the stream handle ``stream``. Only for
        plans with :attr:`direct_spectrum`. Returns ``(spectrum, multiplier)`` addresses for
        :meth:`forward_ptrs`."""
        return self._spectrum_launches(_DFT_KERNEL[k_dtype], k, 0, k_stride, buf, stream)

    def gather_spectrum_into(self, rspec, buf, stream):
        """Launch the gather (and finalize) kernels on the float64 rfft at device address
        ``rspec`` (complex128, ``(Hk, N/2 + 1)`` C-contiguous: the first :attr:`spectrum_taps`
        taps of each filter transformed at ``N``; the modes of ``convolve`` only, no circular
        fold) into the buffer at ``buf`` (:attr:`spectrum_bytes`) on the stream handle
        ``stream``. Returns ``(spectrum, multiplier)`` addresses for :meth:`forward_ptrs`."""
        return self._spectrum_launches("lc_kspec_gather", 0, rspec, 0, buf, stream)

    @property
    def spectrum_taps(self):
        """Taps of each filter that reach the spectrum (a causal output never meets taps past
        L)."""
        return self._taps

    def _spectrum_launches(self, entry, k, rspec, k_stride, buf, stream):
        """The direct (``k``) or gather (``rspec``) launch, then the finalize launch unless one
        block also scaled: ``(spectrum, multiplier)`` addresses in ``buf``."""
        kspec, scale = buf, buf + 8 * self.Hk * self.n
        partial = scale + 16
        self._launcher(entry, KSPEC_PARAMS_DTYPE, KSPEC_THREADS)(self._kspec_grid, 0, stream, (
            k, rspec, self._kpos_ptr, self._wtn_ptr, kspec, partial,
            scale, self.Hk, self._taps, k_stride, self._wrap, self.n, self._keep, self._nparts,
            1.0 / math.sqrt(self.n)))
        if not self._single:
            self._launcher("lc_kspec_finalize", KSPEC_PARAMS_DTYPE, KSPEC_THREADS)(
                self._final_grid, 0, stream, (0, 0, 0, 0, kspec, partial, scale, self.Hk, 0, 0,
                                              0, self.n, self._keep, self._nparts, 0.0))
        return kspec, scale

    def with_spectrum(self, k, k_dtype, k_stride, stream):
        """A copy of this (shell) plan holding the spectrum of the filters at device address
        ``k`` (as :meth:`spectrum_into`), computed on the stream handle ``stream`` into a CuPy
        buffer allocated on CuPy's current stream (make it ``stream``): a plan for
        :meth:`backward` or calls without building one (the copy shares the shell's kernels
        and tables). Only for plans with :attr:`direct_spectrum`."""
        plan = copy.copy(self)
        plan._kbuf = _cupy().empty(self.spectrum_bytes, dtype=np.uint8)
        plan._kspec_ptr, plan._scale_ptr = self.spectrum_into(k, k_dtype, k_stride,
                                                              plan._kbuf.data.ptr, stream)
        plan._update_stream, plan._ready_seen = stream, True
        return plan

    def with_buffer(self, owner, spectrum, multiplier, stream):
        """A copy of this (shell) plan holding a spectrum already computed by
        :meth:`spectrum_into` on the stream handle ``stream`` (its ``(spectrum, multiplier)``
        addresses, in memory that ``owner`` keeps alive): the forward's spectrum reused by the
        backward."""
        plan = copy.copy(self)
        plan._kbuf, plan._kowner = None, owner
        plan._kspec_ptr, plan._scale_ptr = int(spectrum), int(multiplier)
        plan._update_stream, plan._ready_seen = stream, True
        return plan

    def _launcher(self, entry, dtype, threads):
        """The :class:`_compile.Launcher` of a kernel entry point (cached; copies made by
        :meth:`with_spectrum` share the cache)."""
        launch = self._launchers.get(entry)
        if launch is None:
            kernel = _compile.get_kernel(fused_key(), entry)
            launch = self._launchers[entry] = _compile.Launcher(kernel, dtype, threads)
        return launch

    def update(self, k):
        """Recompute the filter spectrum (same shape as before), on CuPy's current stream."""
        cupy = _cupy()
        k = cupy.asarray(k)
        if k.ndim == 1:
            k = k[None]
        if k.shape != (self.Hk, self.Lk):
            raise ValueError(f"k must keep its shape {(self.Hk, self.Lk)}, got {k.shape}")
        self._check_device()
        stream = cupy.cuda.get_current_stream()
        buf = cupy.empty(self.spectrum_bytes, dtype=cupy.uint8)
        if self.direct_spectrum:
            if k.dtype.name not in _DFT_ENTRY:
                k = k.astype(cupy.float64 if k.dtype.itemsize > 4 or k.dtype.kind in "iu"
                             else cupy.float32)
            if row_stride(k) is None:
                k = cupy.ascontiguousarray(k)
            kspec, scale = self.spectrum_into(k.data.ptr, k.dtype.name, row_stride(k),
                                              buf.data.ptr, stream.ptr)
        else:
            N = self.n
            kk = k[:, : self._taps].astype(cupy.float64)
            if self._wrap:
                # circular of length L: the taps fold onto the circle of length L
                L = self.L
                reps = -(-self.Lk // L)
                padded = cupy.zeros((self.Hk, reps * L), dtype=cupy.float64)
                padded[:, : self.Lk] = kk
                kk = padded.reshape(self.Hk, reps, L).sum(axis=1)
            rspec = cupy.fft.rfft(kk, n=N, axis=-1)
            kspec, scale = self._spectrum_launches("lc_kspec_gather", 0, rspec.data.ptr, 0,
                                                   buf.data.ptr, stream.ptr)
        self._kbuf, self._kspec_ptr, self._scale_ptr = buf, kspec, scale
        # launches on other streams wait for this update (_own_spectrum)
        self._ready = cupy.cuda.Event(block=False, disable_timing=True)
        self._ready.record(stream)
        self._ready_seen = False
        self._update_stream = stream.ptr
        return self

    def _own_spectrum(self, stream):
        """The plan's spectrum and multiplier addresses for work on the stream handle
        ``stream``, that work ordered after the last :meth:`update` when it was made on
        another stream (until the update is seen complete)."""
        if stream != self._update_stream and not self._ready_seen:
            if self._kbuf is None:
                raise RuntimeError("this fused plan has no spectrum of its own (a shell plan): "
                                   "pass one from spectrum_into")
            if self._ready.done:
                self._ready_seen = True
            else:
                _cupy().cuda.runtime.streamWaitEvent(stream, self._ready.ptr, 0)
        return self._kspec_ptr, self._scale_ptr

    @property
    def _kspec(self):
        """The stored spectrum as a complex64 array of shape (Hk, N) in storage order."""
        cupy = _cupy()
        return self._kbuf[: 8 * self.Hk * self.n].view(cupy.complex64).reshape(self.Hk, self.n)

    @property
    def _out_scale_dev(self):
        """The output multiplier (float32, shape (1,), on the device)."""
        cupy = _cupy()
        off = 8 * self.Hk * self.n
        return self._kbuf[off: off + 4].view(cupy.float32)

    def _check_device(self):
        dev = _cupy().cuda.runtime.getDevice()
        if dev != self.device:
            raise ValueError(f"this fused plan serves CUDA device {self.device}; the current "
                             f"device is {dev} (build a plan per device)")

    # ------------------------------------------------------------------ forward

    def __call__(self, x, pregate=None, postgate=None, skip=None, out=None):
        """y = postgate * conv(pregate * x, k) + skip * x for x of shape (B, H, L)."""
        cupy = _cupy()
        x, pregate, postgate, skip = self._operands(x, pregate, postgate, skip)
        B, H, L = x.shape
        dt = x.dtype
        y = out if out is not None else cupy.empty((B, H, self.Lout), dtype=dt)
        if y.shape != (B, H, self.Lout) or y.dtype != dt or not y.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {dt} array of shape {(B, H, self.Lout)}")
        if B == 0 or H == 0 or self.Lout == 0:
            return y
        self.launch(*self.launch_args(x, pregate, postgate, skip, y))
        return y

    def _operands(self, x, pregate, postgate, skip):
        """x (B, H, L) and the gates and skip checked against the plan, C-contiguous, the gates
        broadcast to (B, H, L) and (B, H, Lout) in x's dtype, skip to (H,) float32."""
        cupy = _cupy()
        if x.ndim != 3 or x.shape[2] != self.L:
            raise ValueError(f"x must have shape (B, H, {self.L}), got {x.shape}")
        B, H, L = (int(s) for s in x.shape)
        if self.Hk not in (1, H):
            raise ValueError(f"x has {H} channels but the plan holds {self.Hk} filters")
        dt = x.dtype

        def operand(a, shape, name):
            if a is None:
                return None
            a = cupy.asarray(a)
            if a.dtype != dt:
                raise TypeError(f"{name} must have dtype {dt}, got {a.dtype}")
            return cupy.ascontiguousarray(cupy.broadcast_to(a, shape))

        pregate = operand(pregate, (B, H, L), "pregate")
        postgate = operand(postgate, (B, H, self.Lout), "postgate")
        if skip is not None:
            if self.Lout != L:
                raise ValueError(f"skip needs an output as long as the input ({L}), "
                                 f"this mode gives {self.Lout}")
            skip = cupy.ascontiguousarray(
                cupy.broadcast_to(cupy.asarray(skip, dtype=cupy.float32), (H,)))
        return cupy.ascontiguousarray(x), pregate, postgate, skip

    def _tiles(self, B, H):
        """(grid, shared memory bytes, pairs, n_tiles, tiles_per_h) of a forward launch."""
        geo = self._geometry.get((B, H))
        if geo is None:
            npairs = (B + 1) // 2
            pairs = min(self.max_pairs, npairs)
            # Enough tiles for every SM (two blocks each) before packing more pairs into a tile.
            sms = self._info.sm_count
            while pairs > 1 and H * -(-npairs // pairs) < 2 * sms:
                pairs //= 2
            tiles_per_h = -(-npairs // pairs)
            n_tiles = H * tiles_per_h
            smem = 4 * self.n * pairs
            blocks_per_sm = max(1, min(2, self._info.smem_per_sm // (smem + 1024)))
            grid = int(min(n_tiles, sms * blocks_per_sm))
            geo = (grid, smem, pairs, n_tiles, tiles_per_h)
            if len(self._geometry) >= 256:
                self._geometry.clear()
            self._geometry[(B, H)] = geo
        return geo

    def forward_ptrs(self, x, pregate, postgate, skip, y, B, H, stream, *, kspec=None,
                     scale=None):
        """One forward launch on device addresses (0: absent) on the stream handle ``stream``.

        ``x``, ``pregate`` (B, H, L) and ``y``, ``postgate`` (B, H, Lout) are C-contiguous in the
        plan's I/O dtype, ``skip`` (H,) float32; ``kspec``/``scale`` default to the plan's own
        spectrum (:meth:`update`), else come from :meth:`spectrum_into`. Nothing is checked:
        the callers validate.
        """
        if kspec is None:
            kspec, scale = self._own_spectrum(stream)
        grid, smem, pairs, n_tiles, tiles_per_h = self._tiles(B, H)
        L, Lout = self.L, self.Lout
        vec_in = L % 8 == 0 and x % 16 == 0 and pregate % 16 == 0
        vec_out = vec_in and Lout % 8 == 0 and y % 16 == 0 and postgate % 16 == 0
        self._launch(grid, smem, stream, (
            x, pregate, postgate, skip, kspec, self._wtab_ptr, self._wtn_ptr, scale, y,
            B, H, L, Lout, self.out_offset, self.fold, 0 if self.Hk == 1 else self.n // 2,
            n_tiles, tiles_per_h, self.n, pairs, self._prescale, int(vec_in), int(vec_out),
            1.0))

    def serves_ptrs(self, B, H):
        """Whether :meth:`forward_ptrs` serves calls on (B, H, L) inputs (always)."""
        return True

    def launch_args(self, x, pregate, postgate, skip, y):
        """(grid, shared memory bytes, arguments) of one launch on validated CuPy operands."""
        B, H, _ = (int(s) for s in x.shape)
        ptr = [0 if a is None else a.data.ptr for a in (x, pregate, postgate, skip, y)]
        grid, smem = self._tiles(B, H)[:2]
        return grid, smem, (*ptr, B, H)

    def launch(self, grid, smem, args):
        """Launch on CuPy's current stream with arguments from :meth:`launch_args`."""
        self._check_device()
        self.forward_ptrs(*args, _cupy().cuda.get_current_stream().ptr)

    # ------------------------------------------------------------------ backward

    def dk_taps(self):
        """Taps of dk the backward computes (the rest of the ``Lk`` are zero)."""
        if self.mode == "circular":
            return self.Lk
        # taps past the output window never meet the input (their circular images would
        # alias back onto it when the filter is longer than the signal)
        return min(self.Lk, self.out_offset + self.Lout)

    def reduce_dk(self, dks, H, S, stream, out=None):
        """dk from the backward's partial spectra ``dks`` ((H, S, N) complex64, fragment order):
        float32 ``(Hk, Lk)``, the channels summed when one filter serves them all; written into
        ``out`` (a C-contiguous float32 CuPy array of that shape) when given, and returned.

        Small problems take one launch of the direct inverse sum (``lc_kspec_dk``); the others
        gather the Hermitian half spectrum (``lc_dk_gather``) for an inverse real cuFFT."""
        cupy = _cupy()
        N, Lk = self.n, self.Lk
        rows = H
        if self.Hk == 1:
            rows = 1
            if H > 1:
                # one filter for every channel: its gradient is linear in the partial spectra
                dks = dks.reshape(H, S * N).sum(axis=0)
        if self.dk_direct(H):
            dk = cupy.empty((rows, Lk), dtype=cupy.float32) if out is None else out
            self.dk_into(dks.data.ptr, rows, S, dk.data.ptr, stream)
            return dk
        half = cupy.empty((rows, N // 2 + 1), dtype=cupy.complex64)
        self.dk_gather_into(dks.data.ptr, rows, S, half.data.ptr, stream)
        # norm="forward": the unscaled sum over the Hermitian extension of the half spectrum;
        # cuFFT's C2R overwrites its input, which is scratch here (no copy of it)
        import cupyx.scipy.fft

        corr = cupyx.scipy.fft.irfft(half, n=N, axis=-1, norm="forward", overwrite_x=True)
        if self.mode == "circular" and Lk != N:
            corr = corr[:, np.arange(Lk) % N]  # the taps' images on the circle
        m = self.dk_taps()
        if out is None and m == Lk:
            return cupy.ascontiguousarray(corr[:, :Lk])  # no copy when it already is one
        dk = cupy.empty((rows, Lk), dtype=cupy.float32) if out is None else out
        dk[:, :m] = corr[:, :m]
        dk[:, m:] = 0  # taps past the output window never meet the input
        return dk

    def _numbers(self, a):
        """An I/O array's values in float32 (bfloat16 travels as uint16 bits)."""
        cupy = _cupy()
        if self.io_dtype == "bfloat16":
            from ._arrays import bf16_to_float32

            return bf16_to_float32(a, cupy)
        return a.astype(cupy.float32)

    def _io_array(self, v):
        """float32 values as an I/O array (bfloat16: uint16 bits, rounded to nearest even)."""
        cupy = _cupy()
        if self.io_dtype == "bfloat16":
            from ._arrays import float32_to_bf16

            return float32_to_bf16(v.astype(cupy.float32), cupy)
        return v.astype(self.io_dtype)

    @property
    def backward_supported(self) -> bool:
        """Whether :meth:`backward` serves this plan (FFT size, no fold, no freq_keep, memory)."""
        return (self.fold == 0 and self.freq_keep is None and self.n <= BWD_MAX_N
                and 8 * self.n <= _smem_budget(self._info, 8 * self.n))

    def backward(self, x, dy, pregate=None, postgate=None, skip=None, *, need_x=True,
                 need_k=True, need_pregate=False, need_postgate=False, need_skip=False,
                 out=None):
        """Gradients of ``y = postgate * conv(pregate * x, k) + skip * x`` for a given ``dy``.

        One launch of the fused backward computes every requested gradient: ``dx``,
        ``dpregate = x * corr(postgate * dy, k)`` and ``dpostgate = dy * conv(pregate * x, k)``
        (elementwise, shape of x and y; the caller sums over axes a gate was broadcast along),
        and ``dk``, the batch sum of ``corr(postgate * dy, pregate * x)`` accumulated in fp32,
        shape ``(Hk, Lk)`` float32. ``dskip`` (shape (H,), float32) is a reduction of dy * x.

        ``out`` may hold C-contiguous arrays for the keys ``x``, ``pregate``, ``postgate`` to write
        into.

        Returns
        -------
        dict with keys ``x``, ``k``, ``pregate``, ``postgate``, ``skip``: arrays, or None where
        not requested.
        """
        cupy = _cupy()
        if not self.backward_supported:
            raise NotImplementedError(
                f"the fused backward serves FFT sizes {FUSED_MIN_N}..{BWD_MAX_N} without "
                f"freq_keep or a circular fold; this plan has N={self.n}, fold={self.fold}, "
                f"freq_keep={self.freq_keep}")
        self._check_device()
        x, pregate, postgate, skip = self._operands(x, pregate, postgate, skip)
        B, H, L = x.shape
        dt = x.dtype
        if dy.shape != (B, H, self.Lout) or dy.dtype != dt:
            raise ValueError(f"dy must be a {dt} array of shape {(B, H, self.Lout)}, "
                             f"got {dy.dtype} {dy.shape}")
        dy = cupy.ascontiguousarray(dy)
        need_pregate = need_pregate and pregate is not None
        need_postgate = need_postgate and postgate is not None
        res = {"x": None, "k": None, "pregate": None, "postgate": None, "skip": None}
        if need_skip and skip is not None:
            res["skip"] = (self._numbers(dy) * self._numbers(x)).sum(axis=(0, 2))
        want_g = need_x or need_pregate
        if not (want_g or need_k or need_postgate) or B == 0 or H == 0:
            if need_x:
                res["x"] = cupy.zeros_like(x) if skip is None else \
                    self._io_array(skip[:, None] * self._numbers(dy))
            if need_k:
                res["k"] = cupy.zeros((self.Hk, self.Lk), dtype=cupy.float32)
            return res
        def buffer(name, like, wanted):
            if not wanted:
                return None
            a = (out or {}).get(name)
            if a is None:
                return cupy.empty_like(like)
            if a.shape != like.shape or a.dtype != like.dtype or not a.flags.c_contiguous:
                raise ValueError(f"out[{name!r}] must be a C-contiguous {like.dtype} array of "
                                 f"shape {like.shape}")
            return a

        dx = buffer("x", x, need_x)
        dpre = buffer("pregate", x, need_pregate)
        dpost = buffer("postgate", dy, need_postgate)
        want = ("u" if need_postgate else "") + ("g" if want_g else "") or "k"
        stream = cupy.cuda.get_current_stream().ptr
        dks = None
        if need_k:
            dks = cupy.empty(self.backward_scratch_bytes(B, H, want) // 8, dtype=cupy.complex64)
        ptr = [0 if a is None else a.data.ptr
               for a in (x, pregate, dy, postgate, skip, dx, dpre, dpost, dks)]
        S = self.backward_ptrs(*ptr, B, H, want, stream)
        res["x"], res["pregate"], res["postgate"] = dx, dpre, dpost
        if need_k:
            res["k"] = self.reduce_dk(dks, H, S, stream)
        return res

    def _bwd_geometry(self, B, H, want):
        """(launcher, grid, shared memory bytes, pairs, n_tiles, splits, tile_pairs, slots) of a
        backward launch computing ``want`` (cached)."""
        key = ("bwd", B, H, want)
        geo = self._geometry.get(key)
        if geo is not None:
            return geo
        N, L = self.n, self.L
        npairs = (B + 1) // 2
        if self._c256 and want == "g":
            launch = self._launcher(BWD_ENTRY_C[self.io_dtype], BWD_PARAMS_DTYPE, THREADS)
        else:
            launch = self._launcher(BWD_ENTRY[self.io_dtype][want], BWD_PARAMS_DTYPE, THREADS)
        budget = _smem_budget(self._info, 8 * N)
        causal_forms = 2 * L <= N and 2 * (self.out_offset + self.Lout) <= N
        if N >= BWD_ONE_BLOCK_MIN_N or (N >= BWD_ONE_BLOCK_CAUSAL_MIN_N and causal_forms):
            budget = self._info.smem_optin
        # what the block's static tables leave of the per-block limit
        budget = min(budget, self._info.smem_optin - launch.static_smem)
        pairs = max(1, min(MAX_PAIRS, budget // (8 * N), npairs))
        slots = max(1, 8 // (N // 256))
        groups = -(-npairs // pairs)
        # Tiles (channel, run of pairs): enough for two blocks per SM, no more, since every
        # tile adds one dk partial sum (slots x N complex) for the host to reduce.
        sms = self._info.sm_count
        splits = min(groups, max(1, -(-2 * sms // H)))
        tile_pairs = -(-groups // splits) * pairs
        splits = -(-npairs // tile_pairs)
        n_tiles = H * splits
        smem = 8 * N * pairs
        blocks_per_sm = max(1, min(2, self._info.smem_per_sm // (smem + 1024)))
        grid = int(min(n_tiles, sms * blocks_per_sm))
        if blocks_per_sm == 1:
            # shared memory allows no second block: the entry built for one block per SM, with
            # the whole register file
            launch = self._launcher(BWD_ENTRY_1[self.io_dtype][want], BWD_PARAMS_DTYPE, THREADS)
        geo = (launch, grid, smem, pairs, n_tiles, splits, tile_pairs, slots)
        if len(self._geometry) >= 256:
            self._geometry.clear()
        self._geometry[key] = geo
        return geo

    def backward_scratch_bytes(self, B, H, want):
        """Bytes of the dk partial spectra a backward launch writes (``dks`` of
        :meth:`backward_ptrs`)."""
        _, _, _, _, n_tiles, _, _, slots = self._bwd_geometry(B, H, want)
        return 8 * n_tiles * slots * self.n

    def backward_ptrs(self, x, pregate, dy, postgate, skip, dx, dpre, dpost, dks, B, H, want,
                      stream, *, kspec=None, scale=None):
        """One backward launch on device addresses (0: absent) on the stream handle ``stream``,
        computing ``want`` ("g": dx/dpregate, "u": dpostgate, "ug" both, "k": dk only; dk's
        partial spectra go to ``dks``, :meth:`backward_scratch_bytes`, whenever it is not 0).
        Operands as in :meth:`backward`, C-contiguous; nothing is checked (the callers
        validate). ``kspec``/``scale`` default to the plan's own spectrum, else come from
        :meth:`spectrum_into`. Returns the partial spectra per channel, ``S`` of
        :meth:`dk_into`."""
        launch, grid, smem, pairs, n_tiles, splits, tile_pairs, slots = self._bwd_geometry(
            B, H, want)
        N, L = self.n, self.L
        vec_in = L % 8 == 0 and x % 16 == 0 and pregate % 16 == 0 and dx % 16 == 0 \
            and dpre % 16 == 0
        vec_out = self.Lout % 8 == 0 and dy % 16 == 0 and postgate % 16 == 0 \
            and dpost % 16 == 0
        if kspec is None:
            kspec, scale = self._own_spectrum(stream)
        launch(grid, smem, stream, (
            x, pregate, dy, postgate, skip, kspec, self._wtab_ptr, self._wtn_ptr, scale, dx,
            dpre, dpost, dks, B, H, L, self.Lout, self.out_offset,
            0 if self.Hk == 1 else N // 2, n_tiles, splits, tile_pairs, N, pairs,
            self._prescale, int(vec_in), int(vec_out), slots, 1.0))
        return splits * slots

    def dk_gather_into(self, dks, H, S, half, stream):
        """dk's Hermitian half spectrum (complex64 ``(H, N/2 + 1)`` at address ``half``) from
        the partial spectra at ``dks`` (``H`` channels, ``S`` partials each) in one launch on
        the stream handle ``stream``: its inverse real FFT unnormalised ("forward" norm) is the
        correlation whose first taps are dk (:meth:`backward` does it with cuFFT)."""
        N = self.n
        launch = self._launcher("lc_dk_gather", DK_PARAMS_DTYPE, KSPEC_THREADS)
        launch(min(H, KSPEC_MAX_BLOCKS * 4), 8 * N, stream, (
            dks, _frag_inverse(_cupy(), N).data.ptr, self._wtn_ptr, 0, half, H, self.Lk,
            self.dk_taps(), S, N, int(self.mode == "circular"), 1))

    def dk_direct(self, H):
        """Whether :meth:`dk_into` serves the dk of a backward over ``H`` channels (the direct
        inverse sum, one launch, no scratch; with one filter for every channel, once the
        channels' partial spectra are summed): else :meth:`backward` reduces with cuFFT."""
        rows = 1 if self.Hk == 1 else H
        return rows * self.n * self.dk_taps() <= DK_DIRECT_MAX_WORK

    def dk_into(self, dks, H, S, dk, stream):
        """dk (float32 ``(Hk, Lk)`` at address ``dk``) from the partial spectra at ``dks``
        (``H`` channels, ``S`` partials each) in one launch on the stream handle ``stream``;
        only where :meth:`dk_direct` says so."""
        N, Lk = self.n, self.Lk
        chunks = -(-Lk // DK_TAPS)
        # enough work items for two blocks per SM; each item sums its row's partials once
        cpi = max(1, min(chunks, H * chunks // (2 * self._info.sm_count)))
        items = H * -(-chunks // cpi)
        launch = self._launcher("lc_kspec_dk", DK_PARAMS_DTYPE, KSPEC_THREADS)
        launch(min(items, KSPEC_MAX_BLOCKS * 4), 8 * N + 8 * (N // 2 + 1), stream, (
            dks, _frag_inverse(_cupy(), N).data.ptr, self._wtn_ptr, dk, 0, H, Lk,
            self.dk_taps(), S, N, int(self.mode == "circular"), cpi))


def make_plan(k, L, *, mode, io_dtype, n=None, freq_keep=None, kernel_len=None, precision=None,
              **_unused):
    """A :class:`FusedPlan`, or None when the fused kernels do not serve this problem.

    Served: a CUDA device with CuPy; fp16 / bf16 I/O (fp32 I/O only with ``precision="half"``);
    real filters; FFT sizes 256 .. 32768 that fit the device's shared memory. ``n`` (given with
    ``freq_keep``, from the shared size table) must be such a size, so every backend masks the
    same spectrum.
    """
    io = _io_dtype_name(io_dtype)
    if _cupy() is None or io not in FUSED_ENTRY or mode not in MODES:
        return None
    if precision in ("single", "double") or (io == "float32" and precision != "half"):
        return None
    if getattr(k, "dtype", np.dtype(np.float32)).kind == "c":
        return None
    if kernel_len is not None:
        k = k[..., :kernel_len]
    N = fft_size_for(mode, int(L), int(k.shape[-1]))[0]
    if n is not None and (n < N or n & (n - 1)):
        return None
    if not FUSED_MIN_N <= (N if n is None else n) <= FUSED_MAX_N:
        return None
    try:
        return FusedPlan(k, L, mode=mode, io_dtype=io, n=n, freq_keep=freq_keep)
    except NotImplementedError:
        return None


# ---------------------------------------------------------------------------------- shells

_SHELLS = {}


def shell_for(Hk, Lk, L, mode, io_dtype, *, direct=True):
    """A cached :meth:`FusedPlan.shell` on the current device, or None when the fused kernels
    do not serve the problem (the callers then build a full plan). With ``direct`` (default)
    only shells that compute their spectra with the direct kernel (:meth:`spectrum_into`);
    else also those whose spectra come from a float64 rfft the caller computes
    (:meth:`gather_spectrum_into`). Shells hold no per-call state, so threads share them.
    """
    cupy = _cupy()
    if cupy is None:
        return None
    key = (cupy.cuda.runtime.getDevice(), Hk, Lk, L, mode, io_dtype)
    try:
        shell = _SHELLS[key]
    except KeyError:
        try:
            shell = FusedPlan.shell(Hk, Lk, L, mode=mode, io_dtype=io_dtype)
        except NotImplementedError:
            shell = None
        if len(_SHELLS) >= 1024:
            _SHELLS.clear()
        _SHELLS[key] = shell
    if shell is not None and direct and not shell.direct_spectrum:
        return None
    return shell


def cupy_convolve(x, k, causal, precision, kernel_len):
    """``longconv.convolve(x, k, causal)`` without gates for CuPy arrays on the shortest path:
    one spectrum and one convolution launch on the current stream, no plan object. Returns
    None when the call is not of the kind this path serves (the caller takes the general one):
    float16 x (float32 with ``precision="half"``), float16/32/64 filters ``(H, Lk)``,
    ``(1, Lk)`` or ``(Lk,)``, everything C-contiguous on the current device, a problem the
    direct spectrum kernel serves. Tiny float16 problems (``longconv._direct.DIRECT_MAX_WORK``)
    take one launch of the direct kernel instead.

    Every test here is a C attribute or a dict lookup: the call's host time is the two launches
    and the output's allocation (see benchmarks/bench_overhead.py).
    """
    xc = x.dtype.char
    if xc == "e":
        if precision is not None and precision != "half":
            return None
        io = "float16"
    elif xc == "f" and precision == "half":
        io = "float32"
    else:
        return None
    kdt = _DFT_NAME_BY_CHAR.get(k.dtype.char)
    if kdt is None:
        return None
    if x.nbytes > (1 << 30):
        return None
    layout = call_layout(x, k)
    if layout is None:
        return None
    L, H, Hk, Lk, stride = layout
    if kernel_len is not None and kernel_len < Lk:
        Lk = kernel_len  # the first taps of each row: same address and row stride
    cupy = _cupy()
    dev = cupy.cuda.runtime.getDevice()
    if x.data.device_id != dev or k.data.device_id != dev:
        return None
    stream = cupy.cuda.get_current_stream().ptr
    rows = x.size // L
    geometry = _direct.convolve_geometry(io, kdt, rows, L, Lk, causal) if io == "float16" \
        else None
    if geometry is not None:
        # a tiny problem: one launch of the direct kernel (sums in float32), no spectrum
        y = cupy.empty(x.shape, dtype=x.dtype)
        _direct.launch_convolve(cupy, geometry, x.data.ptr, k.data.ptr,
                                stride if Hk > 1 else 0, 0, 0, 0, y.data.ptr, rows, H, L, stream)
        return y
    shell = shell_for(Hk, Lk, L, "causal" if causal else "same", io)
    if shell is None:
        return None
    y = cupy.empty(x.shape, dtype=x.dtype)
    # the spectrum's scratch straight from CuPy's pool: no array object around it (the pool
    # orders its reuse on this stream after the launches below)
    buf = cupy.cuda.alloc(shell.spectrum_bytes)
    kspec, scale = shell.spectrum_into(k.data.ptr, kdt, stride, buf.ptr, stream)
    shell.forward_ptrs(x.data.ptr, 0, 0, 0, y.data.ptr, x.size // (H * L), H, stream,
                       kspec=kspec, scale=scale)
    return y


def call_layout(x, k):
    """``(L, H, Hk, Lk, k_stride)`` of a ``convolve(x, k)`` call on device arrays the short
    paths serve: ``x`` ``(..., H, L)`` C-contiguous and not empty, ``k`` ``(Hk, Lk)`` with
    ``Hk`` 1 or ``H`` or ``(Lk,)``, taps contiguous (``k_stride``: elements between filter rows,
    0 for a 1-D filter); None for anything else."""
    shape = x.shape
    nd = len(shape)
    if not nd or x.size == 0 or not x.flags.c_contiguous:
        return None
    L = shape[-1]
    H = shape[-2] if nd >= 2 else 1
    kd = k.ndim
    if kd == 1:
        Hk, Lk = 1, k.shape[0]
        if Lk > 1 and k.strides[0] != k.itemsize:
            return None
        stride = 0
    elif kd == 2:
        Hk, Lk = k.shape
        stride = row_stride(k)
        if stride is None:
            return None
    else:
        return None
    if (Hk != 1 and Hk != H) or Lk < 1:
        return None
    return L, H, Hk, Lk, stride
