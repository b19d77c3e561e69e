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

import math

import numpy as np

from . import _compile, _sizes
from ._kernels import BWD_ENTRY, BWD_MAX_N, FUSED_ENTRY, FUSED_MAX_N, FUSED_MIN_N, fused_key

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

THREADS = 256
MODES = ("causal", "circular", "full", "same", "valid")
# Pairs of sequences per tile: at N = 256 (one segment per pair) 16 pairs give each of the 8 warps
# two segments per phase; more would only lengthen the tile.
MAX_PAIRS = 16


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


def _kspec_order(cupy, n):
    """Frequency index of each stored spectrum element in storage order, on the device (cached).

    Stored per segment as 4 groups of (32 lanes x 2 complex): group i of every lane in turn, so
    each of a warp's four 16-byte loads reads 512 contiguous bytes.
    """
    key = ("kspec", cupy.cuda.runtime.getDevice(), n)
    order = _ORDERS.get(key)
    if order is None:
        o = spectrum_order(n).reshape(n // 256, 32, 4, 2).transpose(0, 2, 1, 3)
        order = _ORDERS[key] = cupy.asarray(np.ascontiguousarray(o).reshape(-1))
    return order


def _frag_inverse(cupy, n):
    """For each frequency, its element in the backward's dk sums ((segment, lane, 8)), cached."""
    key = ("frag", cupy.cuda.runtime.getDevice(), n)
    inv = _ORDERS.get(key)
    if inv is None:
        inv = _ORDERS[key] = cupy.asarray(np.argsort(spectrum_order(n).reshape(-1)))
    return inv


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


def _aligned16(a) -> bool:
    return a is None or a.data.ptr % 16 == 0


def _cupy():
    try:
        import cupy
    except ImportError:
        return None
    try:
        if not cupy.is_available():
            return None
    except Exception:
        return None
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
    """

    backend = "fused"

    def __init__(self, k, L, *, mode, io_dtype, n=None, freq_keep=None):
        cupy = _cupy()
        if cupy is None:
            raise RuntimeError("the fused kernels need CuPy and a CUDA device")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.io_dtype = _io_dtype_name(io_dtype)
        if self.io_dtype not in FUSED_ENTRY:
            raise NotImplementedError(
                f"io_dtype must be one of {sorted(FUSED_ENTRY)}, got {io_dtype!r}")
        k = cupy.asarray(k)
        if k.ndim == 1:
            k = k[None]
        if k.ndim != 2 or k.shape[1] < 1:
            raise ValueError(f"k must have shape (H, Lk), got {k.shape}")
        self.L, self.mode = int(L), mode
        self.Lk = int(k.shape[1])
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
        self.Hk = int(k.shape[0])
        self._kernel = _compile.get_kernel(fused_key(), FUSED_ENTRY[self.io_dtype])
        self._wtab = _twiddle_table(cupy)
        self._wtn = _twiddle_table_n(cupy, N)
        # fp16 inputs are bounded by 65504 and read once; bf16 and fp32 inputs can exceed the
        # fp16 operands' range, so each tile is scaled by a power of two (one more read of the
        # tile, from L2).
        self._prescale = int(self.io_dtype != "float16")
        self._info = info
        self.freq_keep = freq_keep
        self.update(k)

    def update(self, k):
        """Recompute the filter spectrum (same shape as before)."""
        cupy = _cupy()
        k = cupy.asarray(k)
        if k.ndim == 1:
            k = k[None]
        if k.shape != (self.Hk, self.Lk):
            raise ValueError(f"k must keep its shape {(self.Hk, self.Lk)}, got {k.shape}")
        N = self.n
        kk = k.astype(cupy.float64)
        if self.mode == "causal" and self.Lk > self.L:
            # taps past L never reach a causal output, but their circular images would
            kk = kk[:, : self.L]
        if self.mode == "circular":
            # Circular of length L: the taps fold onto the circle of length L.
            L = self.L
            reps = -(-self.Lk // L)
            padded = cupy.zeros((self.Hk, reps * L), dtype=cupy.float64)
            padded[:, : self.Lk] = kk
            kk = padded.reshape(self.Hk, reps, L).sum(axis=1)
        spec = cupy.fft.fft(kk, n=N, axis=-1)
        if self.freq_keep is not None:
            keep = math.ceil(self.freq_keep * (N // 2 + 1))
            j = cupy.arange(N)
            spec = spec * (cupy.minimum(j, N - j) < keep)
        spec *= 1.0 / math.sqrt(N)
        # Stored with max |K| in (1/2, 1]: the kernel's fp16 range bound assumes it; the power of
        # two returns in the output multiplier, which stays in device memory (the kernels read
        # it), so no call reads back to the host (stream order, CUDA-graph capture).
        peak = cupy.abs(spec).max()
        ok = (peak > 0) & (peak < math.inf)
        scale = cupy.where(ok, cupy.exp2(cupy.ceil(cupy.log2(cupy.where(ok, peak, 1.0)))), 1.0)
        spec *= 1.0 / scale
        self._out_scale_dev = scale.astype(cupy.float32).reshape(1)
        self._kspec = cupy.ascontiguousarray(spec[:, _kspec_order(cupy, N)].astype(cupy.complex64))
        return self

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

    def launch_args(self, x, pregate, postgate, skip, y):
        """(grid, shared memory bytes, packed params) of one launch on validated operands."""
        B, H, L = (int(s) for s in x.shape)
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
        vec_in = L % 8 == 0 and all(_aligned16(a) for a in (x, pregate))
        vec_out = vec_in and self.Lout % 8 == 0 and all(_aligned16(a) for a in (y, postgate))
        params = _compile.pack_params(
            PARAMS_DTYPE, x=x, pregate=pregate, postgate=postgate, skip=skip, kspec=self._kspec,
            wtab=self._wtab, wtn=self._wtn, y=y, B=B, H=H, L=L, Lout=self.Lout,
            out_offset=self.out_offset, fold=self.fold,
            k_hstride=0 if self.Hk == 1 else self.n // 2, n_tiles=n_tiles,
            tiles_per_h=tiles_per_h, n=self.n, pairs=pairs, prescale=self._prescale,
            vec_in=int(vec_in), vec_out=int(vec_out),
            out_scale_ptr=self._out_scale_dev, out_scale=1.0)
        return grid, smem, params

    def launch(self, grid, smem, params):
        """Launch on the current stream with arguments from :meth:`launch_args`."""
        _compile.prepare(self._kernel, smem)
        self._kernel((grid,), (THREADS,), (params,), shared_mem=smem)

    # ------------------------------------------------------------------ backward

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
        N = self.n
        npairs = (B + 1) // 2
        pairs = max(1, min(MAX_PAIRS, _smem_budget(self._info, 8 * N) // (8 * N), npairs))
        slots = max(1, 8 // (N // 256))
        groups = -(-npairs // pairs)
        # Tiles (channel, run of pairs): enough for two blocks per SM, no more, since every
        # tile adds one dk partial sum (slots x N complex) for the host to reduce.
        sms = self._info.sm_count
        splits = min(groups, max(1, -(-2 * sms // H)))
        tile_pairs = -(-groups // splits) * pairs
        splits = -(-npairs // tile_pairs)
        n_tiles = H * splits
        dks = cupy.empty(n_tiles * slots * N, dtype=cupy.complex64) if need_k else None
        smem = 8 * N * pairs
        blocks_per_sm = max(1, min(2, self._info.smem_per_sm // (smem + 1024)))
        grid = int(min(n_tiles, sms * blocks_per_sm))
        vec_in = L % 8 == 0 and all(_aligned16(a) for a in (x, pregate, dx, dpre))
        vec_out = self.Lout % 8 == 0 and all(_aligned16(a) for a in (dy, postgate, dpost))
        want = ("u" if need_postgate else "") + ("g" if want_g else "") or "k"
        kernel = _compile.get_kernel(fused_key(), BWD_ENTRY[self.io_dtype][want])
        params = _compile.pack_params(
            BWD_PARAMS_DTYPE, x=x, pregate=pregate, dy=dy, postgate=postgate, skip=skip,
            kspec=self._kspec, wtab=self._wtab, wtn=self._wtn, out_scale_ptr=self._out_scale_dev,
            dx=dx, dpre=dpre, dpost=dpost, dkspec=dks, B=B, H=H, L=L, Lout=self.Lout,
            out_offset=self.out_offset, k_hstride=0 if self.Hk == 1 else N // 2,
            n_tiles=n_tiles, splits=splits, tile_pairs=tile_pairs, n=N, pairs=pairs,
            prescale=self._prescale, vec_in=int(vec_in), vec_out=int(vec_out), slots=slots,
            out_scale=1.0)
        _compile.prepare(kernel, smem)
        kernel((grid,), (THREADS,), (params,), shared_mem=smem)
        res["x"], res["pregate"], res["postgate"] = dx, dpre, dpost
        if need_k:
            # sum over tiles and slots (fp32), back to natural frequency order; the real part of
            # N * IFFT is the batch sum of the pairs' correlations (see fused_bwd.cuh).
            acc = dks.reshape(H, splits * slots, N)
            acc = acc[:, 0] if splits * slots == 1 else acc.sum(axis=1)
            corr = cupy.fft.ifft(acc[:, _frag_inverse(cupy, N)], axis=-1).real
            if self.mode == "circular":
                dk = corr[:, cupy.arange(self.Lk) % N] * np.float32(N)
            else:
                # taps past the output window never meet the input (their circular images
                # would alias back onto it when the filter is longer than the signal)
                m = min(self.Lk, self.out_offset + self.Lout)
                dk = cupy.zeros((H, self.Lk), dtype=cupy.float32)
                dk[:, :m] = corr[:, :m] * np.float32(N)
            res["k"] = dk.sum(axis=0, keepdims=True) if self.Hk == 1 and H > 1 else dk
        return res


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
