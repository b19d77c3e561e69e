"""Array kinds: recognise the caller's arrays, convert them for a backend and back.

The kinds themselves live in :mod:`longconv.adapters` (one module per array library, looked up by
the module of the array's type); this module is the only place the public functions talk to.
"""

from __future__ import annotations

import numpy as np

from . import adapters


def adapter_of(obj):
    """The adapter of ``obj`` or ``None`` for Python scalars, lists and unknown objects."""
    if obj is None:
        return None
    return adapters.adapter_for(obj)


def common_adapter(named):
    """The single array kind among the arrays of ``named`` (a dict ``name -> value``).

    Python scalars and lists take the kind of the arrays beside them (NumPy when alone). Mixing
    kinds (a NumPy array with a CuPy array) is a ``TypeError`` naming both: moving data between
    devices silently is never what a caller wants.
    """
    found = {}
    for name, obj in named.items():
        ad = adapter_of(obj)
        if ad is not None:
            found.setdefault(ad.KIND, (name, ad))
    if len(found) > 1:
        (n1, a1), (n2, a2) = list(found.values())[:2]
        raise TypeError(
            f"{n1} and {n2} must be the same kind of array; got {a1.KIND} ({n1}) and "
            f"{a2.KIND} ({n2})"
        )
    if found:
        return next(iter(found.values()))[1]
    return adapters.get("numpy")


def to_backend(obj, adapter):
    """``obj`` as an array of ``adapter``'s kind, plus its logical dtype name."""
    own = adapter_of(obj)
    if own is not None and own is not adapter:
        raise TypeError(f"expected a {adapter.KIND} array; got {own.KIND}")
    return adapter.to_backend(obj)


# dtype -> name: ``numpy.dtype.name`` is computed in Python on every access (NumPy 2), a few
# microseconds that every call paid several times over
_DTYPE_NAMES = {}


def dtype_name(dtype):
    """Name of a logical dtype (``"bfloat16"`` or a NumPy dtype's name)."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return "bfloat16"
    try:
        return _DTYPE_NAMES[dtype]
    except (KeyError, TypeError):
        pass
    name = np.dtype(dtype).name
    if isinstance(dtype, np.dtype) and len(_DTYPE_NAMES) < 256:
        _DTYPE_NAMES[dtype] = name
    return name


_GPU_MEMORY = {}


def gpu_memory():
    """Total memory of the current CUDA device in bytes (constant: cached per device, so that
    calls make no ``cudaMemGetInfo``, which costs microseconds and is not something to issue
    while a CUDA graph is being captured)."""
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    total = _GPU_MEMORY.get(dev)
    if total is None:
        total = _GPU_MEMORY[dev] = cupy.cuda.Device(dev).mem_info[1]
    return total


def xp_of(array):
    """The array module (``numpy`` or ``cupy``) of a backend array."""
    if isinstance(array, np.ndarray):
        return np
    import cupy

    return cupy


def xp_for(device):
    """The array module of a device: NumPy for ``"cpu"``, CuPy for ``"gpu"``."""
    if device == "cpu":
        return np
    import cupy

    return cupy


def to_device(array, device):
    """A backend array moved to ``device`` (``"cpu"`` -> NumPy, ``"gpu"`` -> CuPy)."""
    if device == "cpu":
        if isinstance(array, np.ndarray):
            return array
        return array.get()
    import cupy

    return cupy.asarray(array)


def device_of(array):
    return "cpu" if isinstance(array, np.ndarray) else "gpu"


def contiguous(array):
    """C-contiguous, positively strided data (needed before any DLPack export)."""
    xp = xp_of(array)
    return xp.ascontiguousarray(array)


def bf16_to_float32(bits, xp=np):
    """bfloat16 bit patterns (``uint16``) to float32, exactly (bf16 is the top half of fp32)."""
    return (bits.astype(xp.uint32) << 16).view(xp.float32)


def float32_to_bf16(x, xp=np):
    """float32 to bfloat16 bit patterns (``uint16``), rounding to nearest even; NaN stays NaN."""
    x = xp.ascontiguousarray(x, dtype=xp.float32)
    u = x.view(xp.uint32)
    rounded = (u + xp.uint32(0x7FFF) + ((u >> 16) & xp.uint32(1))) >> 16
    nan = xp.isnan(x)
    bits = xp.where(nan, (u >> 16) | xp.uint32(0x0040), rounded)
    return bits.astype(xp.uint16)
