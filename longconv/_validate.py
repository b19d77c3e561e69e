"""Validation of every user-supplied argument, in one place.

``TypeError`` for wrong kinds, ``ValueError`` for bad shapes or values, ``NotImplementedError``
for legal inputs a path cannot do. Every message names the parameter, what was expected and what
was given. Where ``fftconvolve_long`` mirrors ``scipy.signal.fftconvolve`` the messages are
SciPy's, word for word, and are raised in SciPy's order.
"""

from __future__ import annotations

import numbers
import operator
import os

import numpy as np

from . import _sizes

PRECISIONS = ("half", "single", "double")
DEVICES = ("cpu", "gpu")
#: Logical I/O dtypes of ``convolve`` and ``LongConv`` (bfloat16 travels as uint16 bit patterns).
IO_DTYPES = ("float16", "bfloat16", "float32", "float64", "complex64", "complex128")

# Messages of scipy.signal.fftconvolve (scipy/signal/_signaltools.py and scipy/fft/_pocketfft).
MSG_NDIM = "in1 and in2 should have the same dimensionality"
MSG_MODE = "acceptable mode flags are 'valid', 'same', or 'full'"
MSG_AXES_EMPTY = "when provided, axes cannot be empty"
MSG_AXES_INT = "axes must be a scalar or iterable of integers"
MSG_AXES_RANGE = "axes exceeds dimensionality of input"
MSG_AXES_UNIQUE = "all axes must be unique"
MSG_VALID = "For 'valid' mode, one must be at least as large as the other in every dimension"


def _type_name(obj):
    t = type(obj)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


# ---------------------------------------------------------------------------------------------
# scipy.signal.fftconvolve's checks


def scipy_axes(ndim, axes):
    """Normalise ``axes`` as ``scipy.fft``'s ``_init_nd_shape_and_axes`` does (same messages)."""
    if axes is None:
        return list(range(ndim))
    if isinstance(axes, numbers.Number):
        axes = (axes,)
    try:
        axes = [operator.index(a) for a in axes]
    except TypeError as e:
        raise ValueError(MSG_AXES_INT) from e
    axes = [a + ndim if a < 0 else a for a in axes]
    if any(a >= ndim or a < 0 for a in axes):
        raise ValueError(MSG_AXES_RANGE)
    if len(set(axes)) != len(axes):
        raise ValueError(MSG_AXES_UNIQUE)
    if not axes:
        raise ValueError(MSG_AXES_EMPTY)
    return axes


def check_broadcast_shapes(s1, s2, axes):
    """The non-convolved axes must broadcast (SciPy's message)."""
    if not all(s1[a] == s2[a] or s1[a] == 1 or s2[a] == 1 for a in range(len(s1)) if a not in axes):
        raise ValueError(f"incompatible shapes for in1 and in2: {tuple(s1)} and {tuple(s2)}")


def freq_conv_axes(s1, s2, mode, axes):
    """``scipy.signal._signaltools._init_freq_conv_axes`` on shapes.

    Returns ``(axes, swap)``: the axes that need a convolution (length-1 axes broadcast instead)
    and whether ``"valid"`` mode needs the inputs swapped.
    """
    axes = scipy_axes(len(s1), axes)
    axes = [a for a in axes if s1[a] != 1 and s2[a] != 1]
    check_broadcast_shapes(s1, s2, axes)
    swap = False
    if mode == "valid" and s1:
        ok1 = all(s1[i] >= s2[i] for i in axes)
        ok2 = all(s2[i] >= s1[i] for i in axes)
        if not (ok1 or ok2):
            raise ValueError(MSG_VALID)
        swap = not ok1
    return axes, swap


def circular_axes(s1, s2, axes):
    """Axes of a circular convolution: those where in2 is longer than 1 (others broadcast)."""
    axes = scipy_axes(len(s1), axes)
    conv = [a for a in axes if s2[a] != 1]
    check_broadcast_shapes(s1, s2, conv)
    return conv


def check_mode(mode):
    """``mode`` of ``fftconvolve_long``: SciPy's three plus ``"circular"`` (SciPy's message)."""
    if not isinstance(mode, str) or mode not in ("full", "same", "valid", "circular"):
        raise ValueError(MSG_MODE)


# ---------------------------------------------------------------------------------------------
# the extras


def check_precision(precision):
    if precision is None:
        return None
    if not isinstance(precision, str):
        raise TypeError(
            f"precision must be None or one of {PRECISIONS}; got {_type_name(precision)}"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be None or one of {PRECISIONS}; got {precision!r}")
    return precision


def check_kernel_len(kernel_len):
    if kernel_len is None:
        return None
    if not _is_int(kernel_len):
        raise TypeError(f"kernel_len must be None or an int >= 1; got {_type_name(kernel_len)}")
    if kernel_len < 1:
        raise ValueError(f"kernel_len must be None or an int >= 1; got {kernel_len}")
    return int(kernel_len)


def check_freq_keep(freq_keep):
    if freq_keep is None:
        return None
    if not isinstance(freq_keep, numbers.Real) or isinstance(freq_keep, (bool, np.bool_)):
        raise TypeError(
            f"freq_keep must be None or a real number in (0, 1]; got {_type_name(freq_keep)}"
        )
    if not 0 < freq_keep <= 1:
        raise ValueError(f"freq_keep must be None or a real number in (0, 1]; got {freq_keep!r}")
    return float(freq_keep)


def check_workers(workers):
    """``None`` or a non-zero int; negative values count back from the number of CPUs, as in
    ``scipy.fft`` (``-1`` = all of them)."""
    if workers is None:
        return None
    if not _is_int(workers):
        raise TypeError(f"workers must be None or a non-zero int; got {_type_name(workers)}")
    workers = int(workers)
    if workers < 0:
        workers += (os.cpu_count() or 1) + 1
        if workers < 1:
            raise ValueError(
                f"workers must be None, >= 1, or >= -{os.cpu_count() or 1} (counting back from "
                f"the number of CPUs); got {workers - (os.cpu_count() or 1) - 1}"
            )
    if workers == 0:
        raise ValueError("workers must be None or a non-zero int; got 0")
    return workers


def check_device(device):
    if device is None:
        return None
    if not isinstance(device, str):
        raise TypeError(f"device must be None, 'cpu' or 'gpu'; got {_type_name(device)}")
    if device not in DEVICES:
        raise ValueError(f"device must be None, 'cpu' or 'gpu'; got {device!r}")
    return device


def check_causal(causal):
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool; got {_type_name(causal)}")
    return bool(causal)


def check_length(length, name="length"):
    if not _is_int(length):
        raise TypeError(f"{name} must be an int >= 1; got {_type_name(length)}")
    if length < 1:
        raise ValueError(f"{name} must be an int >= 1; got {length}")
    if length > _sizes.MAX_FFT_SIZE // 2:
        raise ValueError(
            f"{name} must be <= 2**{_sizes.MAX_LOG2 - 1} (half the largest FFT size); got {length}"
        )
    return int(length)


def check_io_dtype(dtype, name="dtype"):
    """A logical I/O dtype: a NumPy dtype-like or the string ``"bfloat16"``; returns its name."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in ("bfloat16", "bf16"):
        return "bfloat16"
    if getattr(dtype, "__name__", None) == "bfloat16" or str(dtype) == "bfloat16":
        return "bfloat16"
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{name} must be one of {IO_DTYPES}; got {dtype!r}") from e
    if dt.name not in IO_DTYPES:
        raise TypeError(f"{name} must be one of {IO_DTYPES}; got {dt.name}")
    return dt.name


def check_numeric_dtype(dtype, name):
    """Arrays of ``convolve`` and ``LongConv``: bool, integer, floating or complex numbers."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return
    if np.dtype(dtype).kind not in "biufc":
        raise TypeError(
            f"{name} must hold numbers (bool, integer, floating or complex); got dtype {dtype}"
        )


def check_signal(shape, name="x"):
    """``x`` of ``convolve``: ``(..., H, L)`` or ``(L,)``, ``L >= 1``."""
    if len(shape) == 0:
        raise ValueError(f"{name} must have shape (..., H, L) or (L,); got shape ()")
    if shape[-1] == 0:
        raise ValueError(
            f"{name} must have length L >= 1 along its last axis; got shape {tuple(shape)}"
        )


def check_filter(shape, name="k"):
    """``k`` of ``convolve`` and ``LongConv``: ``(H, Lk)`` or ``(Lk,)``, ``Lk >= 1``."""
    if len(shape) not in (1, 2):
        raise ValueError(f"{name} must have shape (H, Lk) or (Lk,); got shape {tuple(shape)}")
    if shape[-1] == 0:
        raise ValueError(
            f"{name} must have length Lk >= 1 along its last axis; got shape {tuple(shape)}"
        )


def check_filter_matches(x_shape, k_shape):
    """A filter bank of ``H > 1`` filters needs ``x`` of shape ``(..., H, L)``."""
    if len(k_shape) == 2 and k_shape[0] != 1:
        H = k_shape[0]
        if len(x_shape) < 2 or x_shape[-2] != H:
            got = f"with H={x_shape[-2]}" if len(x_shape) >= 2 else "with no H axis"
            raise ValueError(
                f"k holds H={H} filters, so x must have shape (..., {H}, L); got x of shape "
                f"{tuple(x_shape)} {got}"
            )


def check_gate(shape, x_shape, name):
    """``pregate`` / ``postgate``: broadcastable to ``x``'s shape without enlarging it."""
    try:
        b = np.broadcast_shapes(tuple(shape), tuple(x_shape))
    except ValueError:
        b = None
    if b != tuple(x_shape):
        raise ValueError(
            f"{name} must have a shape that broadcasts to x's shape {tuple(x_shape)}; "
            f"got shape {tuple(shape)}"
        )


def check_skip(shape, H):
    """``skip``: one weight per channel, shape ``(H,)``, ``(1,)`` or ``()``."""
    if tuple(shape) not in ((), (1,), (H,)):
        raise ValueError(f"skip must have shape ({H},), (1,) or () (one weight per channel "
                         f"H={H}); got shape {tuple(shape)}")


def check_call_length(x_shape, length):
    if x_shape[-1] != length:
        raise ValueError(
            f"x must have length {length} (the plan's length) along its last axis; "
            f"got shape {tuple(x_shape)}"
        )


def check_backend_input(shape, H, L):
    """A backend plan's input: (B, H, L), or (B, anything, L) for a plan of one shared filter."""
    if len(shape) != 3 or shape[-1] != L or H not in (1, shape[1]):
        raise ValueError(f"x must have shape (B, {H if H != 1 else 'H'}, {L}); got {shape}")


def check_one_axis(n_axes, what):
    if n_axes != 1:
        raise NotImplementedError(
            f"{what} is supported for a convolution along one axis; got {n_axes} axes to "
            f"convolve (pass axes=<one axis>)"
        )


def check_real_for_freq_keep(is_complex):
    if is_complex:
        raise NotImplementedError(
            "freq_keep is supported for real inputs (it masks rfft bins); got complex input"
        )


def check_fits_in_memory(shape, itemsize, what, capacity, where):
    """Refuse, before allocating, a result that cannot fit: a ValueError naming the size."""
    n = 1
    for s in shape:
        n *= int(s)
    nbytes = n * int(itemsize)
    if capacity is not None and nbytes > capacity:
        raise ValueError(
            f"{what} of shape {tuple(int(s) for s in shape)} needs {_human(nbytes)}, more than "
            f"the {_human(capacity)} of memory on the {where}"
        )


def _human(nbytes):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if nbytes < 1024 or unit == "EiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes} B"
        nbytes /= 1024
    return f"{nbytes:.1f} EiB"


_HOST_MEMORY = []


def host_memory():
    """Physical memory of this machine in bytes (None if unknown); read once per process."""
    if not _HOST_MEMORY:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = None
        _HOST_MEMORY.append(total)
    return _HOST_MEMORY[0]
