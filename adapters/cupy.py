"""CuPy arrays (device memory, GPU backends)."""

from __future__ import annotations

KIND = "cupy"


def _cupy():
    import cupy

    return cupy


def is_array(obj):
    return isinstance(obj, _cupy().ndarray)


def device(obj):
    return "gpu"


def to_backend(obj):
    cp = _cupy()
    arr = obj if isinstance(obj, cp.ndarray) else cp.asarray(obj)
    return arr, arr.dtype


def from_backend(array, logical_dtype, like=None):
    cp = _cupy()
    if isinstance(array, cp.ndarray):
        return array
    return cp.asarray(array)
