"""CPU backend: batched FFT convolution on ``scipy.fft`` (pocketfft).

Implements the internal backend protocol: :func:`make_conv_plan` returns a plan that convolves a
sequence batch ``x`` of shape ``(B, H, L)`` with ``k`` of shape ``(Hk, Lk)`` (``Hk`` is ``H`` or
``1``). The filter spectrum is computed once per plan and reused for every row and call; the
batch is processed in chunks, so that beyond the input and the output only a few MiB of
temporaries are live (peak memory stays well within 3x input + output).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.fft as sp_fft

from . import _validate

try:
    # pocketfft's own entry points take an output array; scipy.fft's public functions allocate
    # a fresh one per call (see CPUConvPlan._scratch). Without them the public ones serve.
    from scipy.fft._pocketfft import pypocketfft as _pocketfft
except ImportError:
    _pocketfft = None

BACKEND = "cpu"

# Measurements below: one Intel Xeon server pinned to 2 of its cores, best of two calls after a
# warm-up, in seconds; "w1"/"w2" = 1 or 2 workers; scipy = scipy.signal.fftconvolve on one
# thread, as users call it. Earlier and later runs of one case differ by up to ~20%.

# Bytes of temporaries (time-domain rows and spectra) one chunk of rows may use. Short rows get
# many rows per chunk, long rows few (at least ROWS_PER_CALL): the batch is never transformed
# whole, so beyond input and output only a few chunks of scratch are live, and the multiply and
# the copies run on data that was just touched (scipy allocates ~4 GiB of temporaries over a
# call on x (16, 64, 65536) float64, a 0.5 GiB input). x (16, 64, 65536) * k (64, 65536),
# w1 / w2 (scipy 1.907 | 2.025 | 3.784 | 2.705; scipy on 2 threads 1.309 | 1.660 | 2.812 | 1.969):
#                   float32 full  float32 causal  float64 full  float64 causal
#   8 MiB chunks     1.661/0.693   1.206/0.623     2.520/1.325   2.115/1.091
#   32 MiB chunks    1.866/1.269   1.691/0.914     2.624/1.252   2.699/1.808
CHUNK_BYTES = 8 << 20

# pocketfft transforms several rows at once with SIMD (4-8 float64 or 8-16 float32 rows), so a
# chunk of the direct path holds at least that many rows. Chunks run on the worker threads whole,
# FFTs single-threaded inside, so that the copies and the spectrum multiply run in parallel too.
ROWS_PER_CALL = 8

# Overlap-add block FFT size, as a multiple of the filter length. Cost per output sample
# ~ nf*log2(nf) / (nf - Lk + 1) has its minimum between 8 and 16 Lk; smaller blocks stay in
# cache. x (8, 2**22) * k (4097,), w1 / w2, measured before chunks ran whole on the threads
# (scipy 0.769 | 0.804 | 1.380 | 1.517):
#                          float32 full  float32 causal  float64 full  float64 causal
#   one FFT per row         0.678/0.447   0.651/0.419     1.260/0.950   1.212/0.796
#   nf = 8 Lk  (32805)      0.484/0.382   0.403/0.333     0.896/0.708   0.800/0.612
#   nf = 16 Lk (65610)      0.572/0.325   0.442/0.302     0.928/0.713   0.846/0.627
# and with them, nf = 8 Lk (scipy 0.859 | 0.826 | 1.436 | 1.525):
#                           0.414/0.255   0.434/0.248     0.887/0.525   0.871/0.506
OA_BLOCK_FACTOR = 8
# Overlap-add is used when its modelled cost is below this fraction of one big FFT's; the model
# ignores that a big FFT also leaves the cache, so the margin only guards against choosing
# blocks barely shorter than the row.
OA_GAIN = 0.8


def default_workers():
    """Threads used when ``workers=None``: every CPU this process may run on.

    The rows of a batch are independent FFTs, so the work splits across threads, like BLAS
    uses every core by default. On 2 cores, x (16, 64, 65536) * k (64, 65536): float32 full
    1.661 s on 1 worker, 0.693 s on 2; float64 causal 2.115 s and 1.091 s. Pass ``workers=1``
    where the process runs beside others (a pool of processes, a busy server).
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def compute_dtypes(precision, io_dtype, is_complex):
    """(real, complex) dtypes the FFTs run in."""
    if precision is None:
        single = io_dtype in ("float16", "bfloat16", "float32", "complex64")
    else:
        single = precision in ("half", "single")
    if single:
        return np.float32, np.complex64
    return np.float64, np.complex128


def output_window(mode, L, Lk):
    """(start, length) of the output within the full linear convolution of length L + Lk - 1.

    ::

        full      y[t] = sum_s k[s] x[t-s],  t = 0 .. L+Lk-2      start 0,          L+Lk-1 points
        causal    the first L points of full                   start 0,          L points
        same      centred on full, as scipy                    start (Lk-1)//2,  L points
        valid     no zero padding involved                     start Lk-1,       L-Lk+1 points
        circular  full folded modulo L                         start 0,          L points
    """
    if mode == "full":
        return 0, L + Lk - 1
    if mode in ("causal", "circular"):
        return 0, L
    if mode == "same":
        return (Lk - 1) // 2, L
    if mode == "valid":
        if Lk > L:
            raise ValueError(f"mode 'valid' needs L >= Lk; got L={L}, Lk={Lk}")
        return Lk - 1, L - Lk + 1
    raise ValueError(f"mode must be one of causal, circular, full, same, valid; got {mode!r}")


def fold(k, L, xp=np):
    """Wrap a filter longer than ``L`` modulo ``L``: ``kf[j] = sum_{s = j mod L} k[s]``."""
    Lk = k.shape[-1]
    if Lk <= L:
        return k
    m = -(-Lk // L)
    kp = xp.zeros(k.shape[:-1] + (m * L,), dtype=k.dtype)
    kp[..., :Lk] = k
    return kp.reshape(k.shape[:-1] + (m, L)).sum(axis=-2)


def keep_bins(freq_keep, n):
    """Number of rfft bins kept by ``freq_keep`` at FFT size ``n``."""
    return min(n // 2 + 1, math.ceil(freq_keep * (n // 2 + 1)))


def _fft_cost(n):
    return n * math.log2(max(n, 2))


def make_conv_plan(k, L, *, mode, n=None, freq_keep=None, kernel_len=None, precision=None,
                   io_dtype="float64", workers=None):
    """Backend protocol entry point; see :class:`CPUConvPlan`."""
    return CPUConvPlan(k, L, mode=mode, n=n, freq_keep=freq_keep, kernel_len=kernel_len,
                       precision=precision, io_dtype=io_dtype, workers=workers)


class CPUConvPlan:
    """A convolution of sequences of length ``L`` with a fixed filter bank, on the CPU.

    Parameters
    ----------
    k : numpy.ndarray, shape (Hk, Lk)
        Filters (``Hk = 1``: one filter shared by every channel).
    L : int
        Signal length.
    mode : {"causal", "circular", "full", "same", "valid"}
    n : int or None
        FFT size to use (given with ``freq_keep`` so that every backend computes the same
        thing); ``None`` lets the plan pick a fast size or overlap-add.
    freq_keep : float or None
        Keep the filter's rfft bins ``j < ceil(freq_keep * (n//2 + 1))``, zero the rest.
    kernel_len : int or None
        Use only the first ``kernel_len`` taps.
    precision : {None, "half", "single", "double"}
        ``"half"`` and ``"single"`` compute in float32, ``"double"`` in float64; ``None``
        follows ``io_dtype``.
    io_dtype : str
        dtype name of the output (``"bfloat16"``: uint16 bit patterns).
    workers : int or None
        Threads for ``scipy.fft``.
    """

    backend = BACKEND

    def __init__(self, k, L, *, mode, n=None, freq_keep=None, kernel_len=None, precision=None,
                 io_dtype="float64", workers=None):
        self.L = int(L)
        self.mode = mode
        self.io_dtype = io_dtype
        self.workers = default_workers() if workers is None else int(workers)
        self.freq_keep = freq_keep
        self.precision = precision
        self._n_requested = n
        self._complex_io = io_dtype in ("complex64", "complex128")
        self._tls = threading.local()
        self._set_filter(k, kernel_len)

    # -- filter ---------------------------------------------------------------------------

    def _set_filter(self, k, kernel_len=None):
        k = np.asarray(k)
        if k.ndim != 2:
            raise ValueError(f"k must have shape (H, Lk); got shape {k.shape}")
        if kernel_len is not None:
            k = k[:, :kernel_len]
        self.kernel_len = kernel_len
        L, mode = self.L, self.mode
        self.is_complex = self._complex_io or k.dtype.kind == "c"
        self.rdtype, self.cdtype = compute_dtypes(self.precision, self.io_dtype, self.is_complex)
        kdt = self.cdtype if self.is_complex else self.rdtype
        if k.dtype == np.uint16 and self.io_dtype == "bfloat16":
            from ._arrays import bf16_to_float32

            k = bf16_to_float32(k)
        k = k.astype(kdt, copy=False)
        if mode == "causal":
            k = k[:, :L]
        if mode == "circular":
            k = fold(k, L)
        self.H, self.Lk = k.shape
        self.start, self.L_out = output_window(mode, L, self.Lk)
        n = self._n_requested
        full = L + self.Lk - 1
        self._oa_block = None
        if n is not None:
            self.n = int(n)
        elif mode == "circular":
            # exact cyclic convolution at size L (pocketfft handles any L)
            self.n = L
        else:
            # circular aliasing of an n-point FFT lands on outputs [0, full - n): fine for
            # outputs starting at self.start when n >= full - start (the overlap-save trick
            # for 'valid' and 'same').
            need = max(full - self.start, self.start + self.L_out)
            self.n = self._n_direct = sp_fft.next_fast_len(need, real=not self.is_complex)
            nf = self._overlap_add_size(need)
            if nf is not None:
                self.n = nf
                self._oa_block = nf - self.Lk + 1
        self.fft_size = self.n
        self._fold_output = mode == "circular" and self.n != L
        self._k_time = k
        self._K = self._spectrum(k, self.n)
        self._K_direct = None

    def _overlap_add_size(self, need):
        Lk, L = self.Lk, self.L
        nf = sp_fft.next_fast_len(OA_BLOCK_FACTOR * Lk, real=not self.is_complex)
        if nf >= need or 2 * (nf - Lk + 1) > L:
            return None
        direct = _fft_cost(self.n) / self.L_out
        blocks = _fft_cost(nf) / (nf - Lk + 1)
        return nf if blocks < OA_GAIN * direct else None

    def _spectrum(self, k, n):
        bins = n if self.is_complex else n // 2 + 1
        _validate.check_fits_in_memory((k.shape[0], bins), np.dtype(self.cdtype).itemsize,
                                       "the filter spectrum", _validate.host_memory(), "host")
        if self.is_complex:
            K = sp_fft.fft(k, n, axis=-1, norm="forward", workers=self.workers)
        else:
            K = sp_fft.rfft(k, n, axis=-1, norm="forward", workers=self.workers)
        if self.freq_keep is not None:
            K[:, keep_bins(self.freq_keep, n):] = 0
        return K

    def update(self, k):
        """Recompute the cached filter spectrum for new filters of the same shape."""
        self._set_filter(k, self.kernel_len)

    # -- convolution ----------------------------------------------------------------------

    def _scratch(self, shape, dtype, role="input"):
        """A buffer of ``shape`` for ``role``, reused across chunks and calls (per thread).

        "input" buffers start zeroed and only the leading part of each row is ever written
        (the signal), so the zero padding the FFT needs is paid once instead of once per chunk.
        Reuse also spares a fresh allocation per chunk: a 4 MiB array taken from the OS is
        page-faulted in again on every call (rfft of 1024 float32 rows of 131072 points in
        chunks of 32 rows: 0.86 s with fresh outputs, 0.37 s into a reused one).
        """
        cache = self._tls.__dict__.setdefault("buffers", {})
        key = (shape, np.dtype(dtype).str, role)
        buf = cache.get(key)
        if buf is None:
            if len(cache) >= 8:
                cache.clear()
            buf = cache[key] = np.zeros(shape, dtype=dtype)
        return buf

    def _fft_conv(self, buf, K, n):
        """Circular convolution of the rows of ``buf`` (..., n) with spectra ``K``.

        ``K`` carries the 1/n of the inverse transform, so both transforms run unnormalised.
        The result lives in a per-thread scratch buffer: use it before the next call.
        """
        w = getattr(self._tls, "fft_workers", self.workers)
        axes = (buf.ndim - 1,)
        lead = buf.shape[:-1]
        cdt = np.result_type(buf.dtype, np.complex64)
        if _pocketfft is not None:
            if self.is_complex:
                X = self._scratch(lead + (n,), cdt, "spectrum")
                _pocketfft.c2c(buf, axes, True, 0, X, w)
                np.multiply(X, K, out=X)
                return _pocketfft.c2c(X, axes, False, 0, X, w)
            X = self._scratch(lead + (n // 2 + 1,), cdt, "spectrum")
            _pocketfft.r2c(buf, axes, True, 0, X, w)
            np.multiply(X, K, out=X)
            y = self._scratch(lead + (n,), buf.dtype, "result")
            return _pocketfft.c2r(X, axes, n, False, 0, y, w)
        if self.is_complex:
            X = sp_fft.fft(buf, axis=-1, workers=w)
            np.multiply(X, K, out=X)
            return sp_fft.ifft(X, n, axis=-1, norm="forward", workers=w, overwrite_x=True)
        X = sp_fft.rfft(buf, axis=-1, workers=w)
        np.multiply(X, K, out=X)
        return sp_fft.irfft(X, n, axis=-1, norm="forward", workers=w, overwrite_x=True)

    def _load(self, buf, xin, pregate):
        """Write ``pregate * xin`` into the leading ``L`` points of the rows of ``buf``."""
        view = buf[..., :self.L]
        np.copyto(view, xin, casting="unsafe")
        if pregate is not None:
            np.multiply(view, pregate, out=view, casting="unsafe")
        return view

    def _transform(self, xin, hi, pregate, cdt):
        """Convolution of rows ``xin`` (..., L) (gated by ``pregate``) with the filters ``hi``
        (a slice of the filter bank). Returns the window [start, start + L_out)."""
        K = self._K if self.H == 1 else self._K[hi]
        lead = xin.shape[:-1]
        if self._oa_block is not None:
            y = self._overlap_add(xin, K, pregate, cdt)
            if y is not None:
                return y
            # NaN or inf: one FFT over the whole row spreads them over every output, exactly as
            # scipy.signal.fftconvolve does; overlap-add would confine them to their blocks.
            if self._K_direct is None:
                self._K_direct = self._spectrum(self._k_time, self._n_direct)
            n = self._n_direct
            K = self._K_direct if self.H == 1 else self._K_direct[hi]
        else:
            n = self.n
        buf = self._scratch(lead + (n,), cdt)
        self._load(buf, xin, pregate)
        y = self._fft_conv(buf, K, n)
        if self._fold_output:
            y = fold(y, self.L)
        return y[..., self.start:self.start + self.L_out]

    def _overlap_add(self, xin, K, pregate, cdt):
        """Overlap-add with blocks of ``Bk`` samples and FFTs of ``nf``; ``None`` when the input
        holds NaN or inf."""
        nf, Bk, L = self.n, self._oa_block, self.L
        lead = xin.shape[:-1]
        nb = -(-L // Bk)
        flat = self._scratch(lead + (nb * Bk,), cdt)
        x = self._load(flat, xin, pregate)
        if not np.isfinite(x).all():
            return None
        blocks = self._scratch(lead + (nb, nf), cdt)
        blocks[..., :Bk] = flat.reshape(lead + (nb, Bk))
        yb = self._fft_conv(blocks, K[..., None, :], nf)
        tail = nf - Bk
        y = np.empty(lead + ((nb + 1) * Bk,), dtype=yb.dtype)
        y[..., :nb * Bk].reshape(lead + (nb, Bk))[...] = yb[..., :Bk]
        y[..., nb * Bk:] = 0
        y[..., Bk:(nb + 1) * Bk].reshape(lead + (nb, Bk))[..., :tail] += yb[..., Bk:]
        return y[..., self.start:self.start + self.L_out]

    def _rows_per_chunk(self):
        if self._oa_block is not None:
            nb = -(-self.L // self._oa_block)
            per_row = nb * (self.n + 2) * np.dtype(self.rdtype).itemsize * 2
            min_rows = 1
        else:
            per_row = (self.n + 2) * np.dtype(self.rdtype).itemsize * 2
            min_rows = ROWS_PER_CALL
        if self.is_complex:
            per_row *= 2
        return max(min_rows, CHUNK_BYTES // per_row)

    def __call__(self, x, pregate=None, postgate=None, skip=None):
        """Convolve ``x`` of shape (B, H, L); returns (B, H, L_out) of dtype ``io_dtype``."""
        x = np.asarray(x)
        _validate.check_backend_input(x.shape, self.H, self.L)
        B, H, L = x.shape
        bf16 = self.io_dtype == "bfloat16"
        out_dt = np.float32 if bf16 else np.dtype(self.io_dtype)
        _validate.check_fits_in_memory((B, H, self.L_out), np.dtype(out_dt).itemsize,
                                       "the output", _validate.host_memory(), "host")
        out = np.empty((B, H, self.L_out), dtype=out_dt)
        if out.size:
            self._run(x, out, pregate, postgate, skip, bf16)
        if bf16:
            from ._arrays import float32_to_bf16

            return float32_to_bf16(out)
        return out

    def _run(self, x, out, pregate, postgate, skip, bf16):
        B, H, L = x.shape
        rows = self._rows_per_chunk()
        cdt = self.cdtype if (self.is_complex or x.dtype.kind == "c") else self.rdtype
        if skip is not None:
            skip = np.asarray(skip).reshape(-1)
            skip = np.broadcast_to(skip, (H,))[:, None]
            if skip.dtype.kind == "f" and skip.dtype.itemsize < np.dtype(self.rdtype).itemsize:
                # the skip term in the arithmetic's precision (as the GPU kernels take it), not
                # a float16 product rounded before the sum
                skip = skip.astype(self.rdtype)
        if H >= rows:
            chunks = [(b, slice(h0, min(h0 + rows, H))) for b in range(B)
                      for h0 in range(0, H, rows)]
        else:
            per = max(1, rows // H)
            chunks = [(slice(b0, min(b0 + per, B)), slice(None)) for b0 in range(0, B, per)]

        def work(chunk, fft_workers):
            self._tls.fft_workers = fft_workers
            bi, hi = idx = chunk
            xin = x[idx]
            if bf16:
                from ._arrays import bf16_to_float32

                xin = bf16_to_float32(xin)
            pre = None if pregate is None else _widen(pregate[idx], bf16)
            y = self._transform(xin, hi, pre, cdt)
            if postgate is not None:
                y = y * _widen(postgate[idx], bf16)
            if skip is not None:
                y = y + _widen(skip[hi], bf16) * xin
            out[idx] = y

        if self.workers > 1 and len(chunks) > 1:
            # Chunks go to threads whole (copies, multiply and FFTs of a chunk on one thread):
            # every pass runs in parallel, not only the FFTs.
            with ThreadPoolExecutor(min(self.workers, len(chunks))) as pool:
                for _ in pool.map(lambda c: work(c, 1), chunks):
                    pass
        else:
            for chunk in chunks:
                work(chunk, self.workers)


def _widen(a, bf16):
    if bf16 and a.dtype == np.uint16:
        from ._arrays import bf16_to_float32

        return bf16_to_float32(a)
    return a
