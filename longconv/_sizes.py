"""The FFT size table shared by every backend.

The tensor-core kernels run radix-2^k Monarch FFTs, so the table holds the powers of two
``2**1 .. 2**40``. Every backend uses :func:`plan_fft_size` whenever the result depends on the
FFT size (``freq_keep``), so the CPU, the exact GPU path and the fused kernels agree bin for bin.
"""

from __future__ import annotations

MIN_LOG2 = 1
MAX_LOG2 = 40
MAX_FFT_SIZE = 1 << MAX_LOG2

#: Every size of the table, ascending.
TABLE = tuple(1 << e for e in range(MIN_LOG2, MAX_LOG2 + 1))

#: Radix 16 is the sweet spot on tensor cores (a 16x16 DFT matrix is one mma tile; radix 32 costs
#: about 1.6x the FLOPs per point), so every size is as many radix-16 stages as fit, plus one
#: leftover stage of radix 2, 4 or 8 at the end.
_DECOMPOSITIONS = {
    n: (16,) * (e // 4) + (((1 << (e % 4)),) if e % 4 else ())
    for e, n in zip(range(MIN_LOG2, MAX_LOG2 + 1), TABLE, strict=True)
}

MODES = ("causal", "circular", "full", "same", "valid")


def _check_length(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value}")


def fft_size(n_min):
    """Smallest table size ``>= n_min``.

    Parameters
    ----------
    n_min : int
        Minimum number of points, ``>= 1``.

    Returns
    -------
    int
        A power of two between ``2`` and ``2**40``.
    """
    _check_length("n_min", n_min)
    if n_min > MAX_FFT_SIZE:
        raise ValueError(f"n_min must be <= 2**{MAX_LOG2} (the largest FFT size); got {n_min}")
    return max(2, 1 << (n_min - 1).bit_length())


def decomposition(n):
    """Radices of the Monarch factorisation of the table size ``n``.

    Examples
    --------
    >>> decomposition(4096)
    (16, 16, 16)
    >>> decomposition(2048)
    (16, 16, 8)
    """
    radices = _DECOMPOSITIONS.get(n) if type(n) is int else None
    if radices is None:
        raise ValueError(f"n must be a power of two between 2 and 2**{MAX_LOG2}; got {n!r}")
    return radices


def plan_fft_size(mode, L, Lk_eff):
    """FFT size every backend uses for a convolution when the result depends on it.

    Parameters
    ----------
    mode : {"causal", "circular", "full", "same", "valid"}
    L : int
        Signal length (the output length of "causal", "circular" and "same").
    Lk_eff : int
        Filter length after ``kernel_len``.

    Returns
    -------
    int
        ``causal``: ``fft_size(L + min(Lk_eff, L) - 1)``; only the first ``L`` taps reach the
        first ``L`` outputs, and for ``Lk_eff >= L`` with ``L`` a power of two this is
        ``2 * L``, FlashFFTConv's size. ``circular``: ``L`` when ``L`` is a table size, else
        ``fft_size(2 * L - 1)`` (a linear convolution of ``L`` points with the filter folded to
        ``L`` taps, then folded modulo ``L``). ``full``, ``same``, ``valid``:
        ``fft_size(L + Lk_eff - 1)``.
    """
    _check_length("L", L)
    _check_length("Lk_eff", Lk_eff)
    if mode == "causal":
        return fft_size(L + min(Lk_eff, L) - 1)
    if mode == "circular":
        return L if is_table_size(L) else fft_size(2 * L - 1)
    if mode in ("full", "same", "valid"):
        return fft_size(L + Lk_eff - 1)
    raise ValueError(f"mode must be one of {MODES}; got {mode!r}")


def is_table_size(n):
    """Whether ``n`` is a size of the table."""
    return type(n) is int and n in _DECOMPOSITIONS

