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

import numpy as np
import scipy.fft as sp_fft

from . import _validate

BACKEND = "cpu"

# Working-set size of one chunk (spectra and time-domain blocks of the rows in flight).
# Measured on x (16, 64, 65536) * k (64, 65536), full mode, 2 cores: 1 MiB chunks -> 1.10 s,
# 4 MiB -> 1.05 s, 16 MiB -> 1.08 s, 64 MiB -> 1.21 s, whole batch -> 1.9 s (float64);
# small chunks keep the multiply and the copies in cache, but too few rows per call
# starve the threads. 8 MiB sits in the flat part of the curve.
CHUNK_BYTES = 8 << 20

# Overlap-add block FFT size, as a multiple of the filter length: cost per output sample is
# ~ nf*log2(nf) / (nf - Lk + 1); the minimum of that model is at nf ~ 8 Lk, and caches favour
# smaller blocks. Measured on x (8, 2**22) * k (4097,), float64, 2 threads: nf = 16384 -> 0.62 s,
# 32768 -> 0.55 s, 65536 -> 0.57 s, 131072 -> 0.66 s; one FFT of the whole row -> 1.5 s.
OA_BLOCK_FACTOR = 8
# Overlap-add is used when its modelled cost is below this fraction of one big FFT's (the
# model ignores that big FFTs also leave the cache, so the threshold errs towards overlap-add).
OA_GAIN = 0.8


def default_workers():
    """Threads used when ``workers=None``: every CPU this process may run on.

    The FFTs of a batch are independent, so threads scale almost linearly (x (16, 64, 65536)
    float64 full: 1 worker 2.02 s, 2 workers 1.05 s on a 2-core machine).
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
            k = k.view(np.uint16)
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
            K = sp_fft.fft(k, n, axis=-1, workers=self.workers)
        else:
            K = sp_fft.rfft(k, n, axis=-1, workers=self.workers)
        if self.freq_keep is not None:
            K[:, keep_bins(self.freq_keep, n):] = 0
        return K

    def update(self, k):
        """Recompute the cached filter spectrum for new filters of the same shape."""
        self._set_filter(k, self.kernel_len)

    # -- convolution ----------------------------------------------------------------------

    def _transform(self, xc, hi):
        """Linear (or cyclic at n = L) convolution of rows ``xc`` (..., L) with the filters
        ``hi`` (a slice of the filter bank, or all of it).

        Returns the window [start, start + L_out) of the result.
        """
        n, w, K = self.n, self.workers, self._K
        if self._oa_block is not None:
            if np.isfinite(xc).all():
                return self._overlap_add(xc, K if self.H == 1 else K[hi])
            # NaN or inf: one FFT over the whole row spreads them over every output, exactly as
            # scipy.signal.fftconvolve does; overlap-add would confine them to their blocks.
            if self._K_direct is None:
                self._K_direct = self._spectrum(self._k_time, self._n_direct)
            n, K = self._n_direct, self._K_direct
        if self.H != 1:
            K = K[hi]
        if self.is_complex:
            X = sp_fft.fft(xc, n, axis=-1, workers=w)
            np.multiply(X, K, out=X)
            y = sp_fft.ifft(X, n, axis=-1, workers=w, overwrite_x=True)
        else:
            X = sp_fft.rfft(xc, n, axis=-1, workers=w)
            np.multiply(X, K, out=X)
            y = sp_fft.irfft(X, n, axis=-1, workers=w, overwrite_x=True)
        if self._fold_output:
            y = fold(y, self.L)
        return y[..., self.start:self.start + self.L_out]

    def _overlap_add(self, xc, K):
        nf, Bk = self.n, self._oa_block
        lead, L = xc.shape[:-1], xc.shape[-1]
        nb = -(-L // Bk)
        xp = np.zeros(lead + (nb * Bk,), dtype=xc.dtype)
        xp[..., :L] = xc
        xb = xp.reshape(lead + (nb, Bk))
        Kb = K[..., None, :]
        if self.is_complex:
            X = sp_fft.fft(xb, nf, axis=-1, workers=self.workers)
            np.multiply(X, Kb, out=X)
            yb = sp_fft.ifft(X, nf, axis=-1, workers=self.workers, overwrite_x=True)
        else:
            X = sp_fft.rfft(xb, nf, axis=-1, workers=self.workers)
            np.multiply(X, Kb, out=X)
            yb = sp_fft.irfft(X, nf, axis=-1, workers=self.workers, overwrite_x=True)
        del X
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
        else:
            per_row = (self.n + 2) * np.dtype(self.rdtype).itemsize * 2
        if self.is_complex:
            per_row *= 2
        rows = max(1, CHUNK_BYTES // per_row)
        return max(rows, min(self.workers, 64))

    def __call__(self, x, pregate=None, postgate=None, skip=None):
        """Convolve ``x`` of shape (B, H, L); returns (B, H, L_out) of dtype ``io_dtype``."""
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[-1] != self.L or self.H not in (1, x.shape[1]):
            raise ValueError(
                f"x must have shape (B, {self.H if self.H != 1 else 'H'}, {self.L}); "
                f"got {x.shape}"
            )
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
        if H >= rows:
            chunks = ((b, slice(h0, min(h0 + rows, H))) for b in range(B)
                      for h0 in range(0, H, rows))
        else:
            per = max(1, rows // H)
            chunks = ((slice(b0, min(b0 + per, B)), slice(None)) for b0 in range(0, B, per))
        for bi, hi in chunks:
            idx = (bi, hi)
            xin = x[idx]
            if bf16:
                from ._arrays import bf16_to_float32

                xin = bf16_to_float32(xin)
            xc = xin.astype(cdt, copy=False)
            if pregate is not None:
                xc = xc * _widen(pregate[idx], bf16)
            y = self._transform(xc, hi)
            if postgate is not None:
                y = y * _widen(postgate[idx], bf16)
            if skip is not None:
                y = y + _widen(skip[hi], bf16) * xin
            out[idx] = y


def _widen(a, bf16):
    if bf16 and a.dtype == np.uint16:
        from ._arrays import bf16_to_float32

        return bf16_to_float32(a)
    return a
