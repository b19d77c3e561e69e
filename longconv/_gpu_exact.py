"""Exact GPU backend on CuPy's cuFFT.

Implements the internal backend protocol for CuPy arrays: ``x`` (B, H, L), ``k`` (Hk, Lk). Real
data goes through ``cupy.fft.rfft``/``irfft``, complex data through ``fft``/``ifft``; the filter
spectrum is computed once per plan. float16 is promoted to float32 (as SciPy does) and
bfloat16, which travels as ``uint16`` bit patterns, is widened to float32 on the device before
any FFT: CuPy's FFT would silently turn bfloat16 into float64, so it never sees it.
"""

from __future__ import annotations

import numpy as np

from . import _validate
from ._arrays import bf16_to_float32, float32_to_bf16, gpu_memory
from ._cpu import compute_dtypes, fold, keep_bins, output_window

BACKEND = "cupy"

# Rows per chunk are chosen so that the temporaries of one chunk (spectrum + time-domain result)
# stay under this many bytes; large enough that cuFFT runs big batches, small enough to leave
# room next to the input and output on any card.
CHUNK_BYTES = 512 << 20


def _cupy():
    import cupy

    return cupy


def make_conv_plan(k, L, *, mode, n=None, freq_keep=None, kernel_len=None, precision=None,
                   io_dtype="float32", workers=None):
    """Backend protocol entry point; see :class:`CupyConvPlan` (``workers`` is ignored)."""
    return CupyConvPlan(k, L, mode=mode, n=n, freq_keep=freq_keep, kernel_len=kernel_len,
                        precision=precision, io_dtype=io_dtype)


class CupyConvPlan:
    """A convolution of sequences of length ``L`` with a fixed filter bank, on cuFFT.

    Parameters are those of :class:`longconv._cpu.CPUConvPlan`; ``k`` is a CuPy array of shape
    ``(Hk, Lk)`` (bfloat16 as ``uint16`` bit patterns when ``io_dtype == "bfloat16"``).
    """

    backend = BACKEND

    def __init__(self, k, L, *, mode, n=None, freq_keep=None, kernel_len=None, precision=None,
                 io_dtype="float32"):
        self.L = int(L)
        self.mode = mode
        self.io_dtype = io_dtype
        self.freq_keep = freq_keep
        self.precision = precision
        self._n_requested = n
        self._complex_io = io_dtype in ("complex64", "complex128")
        self._set_filter(k, kernel_len)

    def _set_filter(self, k, kernel_len=None):
        cp = _cupy()
        k = cp.asarray(k)
        if k.ndim != 2:
            raise ValueError(f"k must have shape (H, Lk); got shape {k.shape}")
        if kernel_len is not None:
            k = k[:, :kernel_len]
        self.kernel_len = kernel_len
        if self.io_dtype == "bfloat16" and k.dtype == cp.uint16:
            k = bf16_to_float32(k, cp)
        self.is_complex = self._complex_io or k.dtype.kind == "c"
        self.rdtype, self.cdtype = compute_dtypes(self.precision, self.io_dtype, self.is_complex)
        k = k.astype(self.cdtype if self.is_complex else self.rdtype, copy=False)
        L, mode = self.L, self.mode
        if mode == "causal":
            k = k[:, :L]
        if mode == "circular":
            k = fold(k, L, cp)
        self.H, self.Lk = k.shape
        self.start, self.L_out = output_window(mode, L, self.Lk)
        if self._n_requested is not None:
            self.n = int(self._n_requested)
        elif mode == "circular":
            self.n = L
        else:
            full = L + self.Lk - 1
            need = max(full - self.start, self.start + self.L_out)
            self.n = _fast_len(need)
        self.fft_size = self.n
        self._fold_output = mode == "circular" and self.n != L
        bins = self.n if self.is_complex else self.n // 2 + 1
        _validate.check_fits_in_memory((self.H, bins), cp.dtype(self.cdtype).itemsize,
                                       "the filter spectrum", gpu_memory(), "GPU")
        self._kt = k
        self._K = None  # the spectrum, computed by the first call that needs it
        # small real problems in the data's precision take the direct kernel (_direct), which
        # reads these filters: rows of taps, contiguous, in the I/O dtype. Plans whose one row
        # is already beyond its work bound never do, and drop the filters once the spectrum
        # exists (a bank of long filters is not held twice).
        self._direct_name = None
        if (not self.is_complex and self.freq_keep is None
                and self.io_dtype == np.dtype(self.rdtype).name):
            from . import _direct

            if self.io_dtype in _direct.ENTRY and _direct.serves(self.io_dtype, 1, self.L_out,
                                                                  self.Lk):
                self._direct_name = self.io_dtype
                self._kt = cp.ascontiguousarray(k)
        #: device of the plan's arrays (the direct launches' check, as FusedPlan.device)
        self.device = self._kt.data.device_id

    def _spectrum(self):
        K = self._K
        if K is None:
            cp = _cupy()
            k = self._kt
            if self.is_complex:
                K = cp.fft.fft(k, self.n, axis=-1)
            else:
                K = cp.fft.rfft(k, self.n, axis=-1)
            if self.freq_keep is not None:
                K[:, keep_bins(self.freq_keep, self.n):] = 0
            self._K = K
            if self._direct_name is None:
                self._kt = None  # only the spectrum is used from now on
        return K

    def serves_ptrs(self, B, H):
        """Whether :meth:`forward_ptrs` serves ungated calls on (B, H, L) inputs (the direct
        kernel for small real problems in float32/float64)."""
        return self._direct_name is not None and self._direct_serves(B * H)

    def _direct_serves(self, rows):
        from . import _direct

        return rows > 0 and self.L_out > 0 and _direct.serves(self._direct_name, rows,
                                                                self.L_out, self.Lk)

    def forward_ptrs(self, x, pregate, postgate, skip, y, B, H, stream):
        """One launch of the direct kernel on device addresses (0: absent) on the stream handle
        ``stream``: ``x``, ``pregate`` (B, H, L), ``y``, ``postgate`` (B, H, L_out) C-contiguous
        and ``skip`` (H,), all in the plan's I/O dtype; only where :meth:`serves_ptrs` says so.
        Nothing is checked: the callers validate."""
        from . import _direct

        _direct.launch(_cupy(), self._direct_name, x, self._kt.data.ptr,
                       self.Lk if self.H > 1 else 0, pregate, postgate, skip, y, B, H, self.L,
                       self.L_out, self.start, self.Lk, self.L if self.mode == "circular" else 0,
                       stream)

    def update(self, k):
        """Recompute the cached filter spectrum for new filters of the same shape."""
        self._set_filter(k, self.kernel_len)

    def _transform(self, xc, K):
        cp = _cupy()
        n = self.n
        if self.is_complex:
            y = cp.fft.ifft(cp.fft.fft(xc, n, axis=-1) * K, n, axis=-1)
        else:
            y = cp.fft.irfft(cp.fft.rfft(xc, n, axis=-1) * K, n, axis=-1)
        if self._fold_output:
            y = fold(y, self.L, cp)
        return y[..., self.start:self.start + self.L_out]

    def __call__(self, x, pregate=None, postgate=None, skip=None):
        """Convolve ``x`` of shape (B, H, L); returns (B, H, L_out) of dtype ``io_dtype``."""
        cp = _cupy()
        x = cp.asarray(x)
        _validate.check_backend_input(x.shape, self.H, self.L)
        B, H, L = x.shape
        bf16 = self.io_dtype == "bfloat16"
        out_dt = cp.float32 if bf16 else cp.dtype(self.io_dtype)
        _validate.check_fits_in_memory((B, H, self.L_out), cp.dtype(out_dt).itemsize,
                                       "the output", gpu_memory(), "GPU")
        out = cp.empty((B, H, self.L_out), dtype=out_dt)
        if (self._direct_name is not None and x.dtype == self._direct_name
                and self._direct_serves(B * H)
                and all(g is None or g.dtype == x.dtype for g in (pregate, postgate))):
            if skip is not None:
                skip = cp.broadcast_to(cp.asarray(skip).reshape(-1).astype(x.dtype), (H,))
            # contiguous operands (copies live until the launch is queued: CuPy's pool orders
            # their reuse after it on this stream)
            ops = [None if a is None else cp.ascontiguousarray(a)
                   for a in (x, pregate, postgate, skip)]
            self.forward_ptrs(*(0 if a is None else a.data.ptr for a in ops), out.data.ptr, B,
                              H, cp.cuda.get_current_stream().ptr)
            return out
        if skip is not None:
            skip = cp.broadcast_to(cp.asarray(skip).reshape(-1), (H,))[:, None]
        per_row = (self.n + 2) * cp.dtype(self.rdtype).itemsize * (4 if self.is_complex else 2)
        rows = max(1, CHUNK_BYTES // per_row)
        per = max(1, rows // max(H, 1))
        for b0 in range(0, B, per):
            idx = slice(b0, min(b0 + per, B))
            xin = x[idx]
            if bf16:
                xin = bf16_to_float32(xin, cp)
            cdt = self.cdtype if (self.is_complex or xin.dtype.kind == "c") else self.rdtype
            xc = xin.astype(cdt, copy=False)
            if pregate is not None:
                xc = xc * _widen(pregate[idx], bf16, cp)
            y = self._transform(xc, self._spectrum())
            if postgate is not None:
                y = y * _widen(postgate[idx], bf16, cp)
            if skip is not None:
                y = y + _widen(skip, bf16, cp) * xin
            out[idx] = y
        if bf16:
            return float32_to_bf16(out, cp)
        return out


def _widen(a, bf16, cp):
    if bf16 and a.dtype == cp.uint16:
        return bf16_to_float32(a, cp)
    return a


def _fast_len(n):
    """Smallest 2^a 3^b 5^c 7^d >= n (sizes cuFFT runs fastest)."""
    best = 1 << (n - 1).bit_length()
    p7 = 1
    while p7 < best:
        p5 = p7
        while p5 < best:
            p3 = p5
            while p3 < best:
                p2 = p3
                while p2 < n:
                    p2 *= 2
                best = min(best, p2)
                p3 *= 3
            p5 *= 5
        p7 *= 7
    return best
