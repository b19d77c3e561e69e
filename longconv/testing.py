"""Testing helpers: the float64 oracle, the tolerance table and input generators.

Everything here runs on the host in float64 (complex128 for complex data) with NumPy and SciPy,
independently of longconv's backends, so any backend can be checked against it.

bfloat16 has no NumPy dtype; bfloat16 data is ``uint16`` bit patterns and the functions that
need to know take ``dtype="bfloat16"``.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.signal

from ._arrays import bf16_to_float32, float32_to_bf16
from ._sizes import plan_fft_size

__all__ = [
    "TOLERANCES",
    "assert_all_written",
    "assert_close",
    "nan_poison",
    "random_array",
    "reference",
    "reference_convolve",
    "reference_fftconvolve",
    "relative_error",
    "to_host",
    "tolerance",
]

#: Relative L2 error allowed per dtype against the float64 oracle (unit-scale random data,
#: random full-length filters). Exact paths (float64/complex128) are held to 1e-12.
TOLERANCES = {
    "float16": 1e-3,
    "bfloat16": 4e-3,
    "float32": 1e-5,
    "complex64": 1e-5,
    "float64": 1e-12,
    "complex128": 1e-12,
}


def _dtype_name(dtype):
    if isinstance(dtype, str) and dtype in ("bfloat16", "bf16"):
        return "bfloat16"
    return np.dtype(dtype).name


def tolerance(dtype):
    """Relative L2 tolerance for results of ``dtype`` (a dtype or ``"bfloat16"``)."""
    name = _dtype_name(dtype)
    if name not in TOLERANCES:
        raise ValueError(f"dtype must be one of {tuple(TOLERANCES)}; got {name}")
    return TOLERANCES[name]


def to_host(a, dtype=None):
    """``a`` as a NumPy array in float64 (complex128 for complex data).

    ``dtype="bfloat16"`` reads ``uint16`` bit patterns as bfloat16.
    """
    if hasattr(a, "get") and not isinstance(a, np.ndarray):
        a = a.get()
    a = np.asarray(a)
    if dtype is not None and _dtype_name(dtype) == "bfloat16":
        a = bf16_to_float32(a.view(np.uint16))
    if a.dtype.kind == "c":
        return a.astype(np.complex128)
    return a.astype(np.float64)


def relative_error(y, ref, dtype=None):
    """``||y - ref|| / ||ref||`` in float64 (``||y - ref||`` when ``ref`` is all zeros)."""
    y, ref = to_host(y, dtype), to_host(ref)
    if y.shape != ref.shape:
        raise ValueError(f"y and ref must have the same shape; got {y.shape} and {ref.shape}")
    num = np.linalg.norm((y - ref).ravel())
    den = np.linalg.norm(ref.ravel())
    return float(num / den) if den > 0 else float(num)


def assert_close(y, ref, dtype=None, *, rtol=None):
    """Assert ``relative_error(y, ref) <= tolerance(dtype)`` (or ``rtol``).

    ``dtype`` defaults to ``y``'s dtype. The failure message reports the relative error, the
    tolerance, the largest absolute error and where it is.
    """
    if dtype is None:
        dtype = y.dtype
    tol = tolerance(dtype) if rtol is None else rtol
    yh, rh = to_host(y, dtype), to_host(ref)
    if yh.shape != rh.shape:
        raise AssertionError(f"shape mismatch: got {yh.shape}, expected {rh.shape}")
    nonfinite = ~np.isfinite(yh) & np.isfinite(rh)
    if nonfinite.any():
        where = tuple(int(i) for i in np.argwhere(nonfinite)[0])
        raise AssertionError(f"non-finite output where the reference is finite, e.g. at {where}")
    err = relative_error(yh, rh)
    if not err <= tol:
        diff = np.abs(yh - rh)
        where = tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape))
        raise AssertionError(
            f"relative L2 error {err:.3e} > tolerance {tol:.1e} ({_dtype_name(dtype)}); "
            f"max abs error {diff.max():.3e} at index {where} "
            f"(got {yh[where]}, expected {rh[where]}; max |ref| {np.abs(rh).max():.3e})"
        )


def random_array(rng, shape, dtype="float64", xp=np):
    """Fresh unit-scale random data: standard normal (complex: unit variance in modulus).

    ``dtype="bfloat16"`` returns ``uint16`` bit patterns; integer dtypes draw from -8..8 and
    bool from {False, True}. ``xp`` (``numpy`` or ``cupy``) chooses where the result lives.
    """
    name = _dtype_name(dtype)
    if name == "bfloat16":
        a = float32_to_bf16(rng.standard_normal(shape).astype(np.float32))
    elif name == "bool":
        a = rng.integers(0, 2, shape).astype(bool)
    elif np.dtype(name).kind in "iu":
        lo = 0 if np.dtype(name).kind == "u" else -8
        a = rng.integers(lo, 9, shape).astype(name)
    elif np.dtype(name).kind == "c":
        a = ((rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / math.sqrt(2))
        a = a.astype(name)
    else:
        a = rng.standard_normal(shape).astype(name)
    return a if xp is np else xp.asarray(a)


def nan_poison(shape, dtype="float32", xp=np):
    """An output buffer filled with NaN (bfloat16: the NaN bit pattern 0x7FC0)."""
    if _dtype_name(dtype) == "bfloat16":
        return xp.full(shape, 0x7FC0, dtype=xp.uint16)
    return xp.full(shape, np.nan, dtype=dtype)


def assert_all_written(y, dtype=None):
    """Assert every element of ``y`` is finite (a poisoned buffer was completely written)."""
    yh = to_host(y, dtype)
    bad = ~np.isfinite(yh)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(f"{int(bad.sum())} of {yh.size} elements not written, e.g. {where}")


# ---------------------------------------------------------------------------------------------
# the oracle


def _fold(k, L):
    Lk = k.shape[-1]
    if Lk <= L:
        return k
    m = -(-Lk // L)
    kp = np.zeros(k.shape[:-1] + (m * L,), dtype=k.dtype)
    kp[..., :Lk] = k
    return kp.reshape(k.shape[:-1] + (m, L)).sum(axis=-2)


def _window(mode, L, Lk):
    return {
        "full": (0, L + Lk - 1),
        "causal": (0, L),
        "circular": (0, L),
        "same": ((Lk - 1) // 2, L),
        "valid": (Lk - 1, L - Lk + 1),
    }[mode]


def _conv_last_axis(x, k, mode, freq_keep):
    """Float64 convolution of x (..., L) with k (..., Lk) along the last axis, broadcasting."""
    L, Lk = x.shape[-1], k.shape[-1]
    if mode == "causal":
        k = k[..., :L]
        Lk = k.shape[-1]
    if mode == "circular":
        k = _fold(k, L)
        Lk = k.shape[-1]
    if freq_keep is None:
        if mode == "circular":
            n = L
            op = np.fft.fft if np.iscomplexobj(x) or np.iscomplexobj(k) else None
            if op is None:
                return np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(k, n), n)
            return np.fft.ifft(np.fft.fft(x, n) * np.fft.fft(k, n), n)
        xb, kb = np.broadcast_arrays(x[..., :1], k[..., :1])
        full = scipy.signal.fftconvolve(
            np.broadcast_to(x, xb.shape[:-1] + (L,)),
            np.broadcast_to(k, kb.shape[:-1] + (Lk,)), mode="full", axes=-1)
        s, m = _window(mode, L, Lk)
        return full[..., s:s + m]
    n = plan_fft_size(mode, L, Lk)
    K = np.fft.rfft(k, n)
    K[..., math.ceil(freq_keep * (n // 2 + 1)):] = 0
    y = np.fft.irfft(np.fft.rfft(x, n) * K, n)
    if mode == "circular":
        return _fold(y, L) if n != L else y
    s, m = _window(mode, L, Lk)
    return y[..., s:s + m]


def reference(x, k, mode="causal", *, kernel_len=None, freq_keep=None, dtype=None):
    """Float64 convolution along the last axis, in any mode of the backend protocol.

    Parameters
    ----------
    x : array, shape (..., L)
    k : array, shape (..., Lk)
        Broadcasts against ``x`` over the leading axes.
    mode : {"causal", "circular", "full", "same", "valid"}
        Output ``t = 0 .. L_out-1`` of ``y[t] = sum_s k[s] x[t-s]``: causal ``t < L``;
        full ``L + Lk - 1`` points; same centred on full (start ``(Lk-1)//2``, ``L`` points);
        valid ``full[Lk-1 : L]``; circular ``x`` periodic with period ``L`` (``k`` folded
        modulo ``L``).
    kernel_len, freq_keep, dtype
        As in :func:`reference_convolve`.
    """
    x, k = to_host(x, dtype), to_host(k, dtype)
    if kernel_len is not None:
        k = k[..., :kernel_len]
    modes = ("causal", "circular", "full", "same", "valid")
    if mode not in modes:
        raise ValueError(f"mode must be one of {modes}; got {mode!r}")
    return _conv_last_axis(x, k, mode, freq_keep)


def reference_convolve(x, k, causal=True, *, pregate=None, postgate=None, skip=None,
                       kernel_len=None, freq_keep=None, dtype=None):
    """The float64 definition of :func:`longconv.convolve`.

    ``y = postgate * conv(pregate * x, k) + skip[h] * x`` with ``conv`` causal
    (``y[t] = sum_{s<=t} k[s] x[t-s]``) or centred (``fftconvolve(..., mode="same")``), the
    filter cut to ``kernel_len`` taps and, with ``freq_keep``, its rfft at the shared FFT size
    ``n = plan_fft_size(mode, L, Lk)`` masked to bins ``j < ceil(freq_keep * (n//2 + 1))``.
    ``dtype="bfloat16"`` reads every ``uint16`` operand as bfloat16. Returns float64 or
    complex128 of ``x``'s shape, on the host.
    """
    bf = dtype
    x = to_host(x, bf)
    k = to_host(k, bf)
    if kernel_len is not None:
        k = k[..., :kernel_len]
    if k.ndim == 1:
        k = k[None, :]
    u = x if pregate is None else x * to_host(pregate, bf)
    x2 = u[None, :] if u.ndim == 1 else u
    y = _conv_last_axis(x2, k, "causal" if causal else "same", freq_keep)
    y = y.reshape(x.shape)
    if postgate is not None:
        y = y * to_host(postgate, bf)
    if skip is not None:
        s = to_host(skip, bf).reshape(-1)
        H = x.shape[-2] if x.ndim >= 2 else 1
        s = np.broadcast_to(s, (H,))
        y = y + (s[:, None] * x if x.ndim >= 2 else s[0] * x)
    return y


def reference_fftconvolve(in1, in2, mode="full", axes=None, *, kernel_len=None, freq_keep=None):
    """The float64 definition of :func:`longconv.fftconvolve_long` (values, not dtypes).

    SciPy's ``fftconvolve`` on float64/complex128 copies of the inputs for ``"full"``,
    ``"same"`` and ``"valid"``; for ``"circular"`` (one axis, ``y[t] = sum_s in2[s]
    in1[(t-s) mod L]``, in2 folded modulo L), ``kernel_len`` (in2 cut along the axis) and
    ``freq_keep`` (the mask at the shared FFT size) the definitions on one axis.
    """
    a1, a2 = to_host(in1), to_host(in2)
    if a1.ndim == 0 or a1.size == 0 or a2.size == 0:
        return scipy.signal.fftconvolve(a1, a2, mode=mode, axes=axes)
    if mode != "circular" and kernel_len is None and freq_keep is None:
        return scipy.signal.fftconvolve(a1, a2, mode=mode, axes=axes)
    if axes is None:
        cand = [a for a in range(a1.ndim) if not (a1.shape[a] == 1 and a2.shape[a] == 1)]
        axis = cand[0] if len(cand) == 1 else a1.ndim - 1
        if mode == "circular" and kernel_len is None and freq_keep is None:
            cand = [a for a in range(a1.ndim) if a2.shape[a] != 1]
            axis = cand[0] if cand else a1.ndim - 1
    else:
        axis = axes if np.ndim(axes) == 0 else list(axes)[0]
    x = np.moveaxis(a1, axis, -1)
    k = np.moveaxis(a2, axis, -1)
    if kernel_len is not None:
        k = k[..., :kernel_len]
    if mode == "valid" and k.shape[-1] > x.shape[-1]:
        x, k = k, x
    if mode == "same":
        s1 = x.shape[:-1]
        y = _conv_last_axis(x, k, mode, freq_keep)
        start = [(c - n) // 2 for c, n in zip(y.shape[:-1], s1, strict=True)]
        y = y[tuple(slice(s, s + n) for s, n in zip(start, s1, strict=True))]
    else:
        y = _conv_last_axis(x, k, mode, freq_keep)
    return np.moveaxis(y, -1, axis)
