"""NumPy arrays (host memory, CPU backend)."""

from __future__ import annotations

import numpy as np

KIND = "numpy"


def is_array(obj):
    """NumPy arrays; NumPy scalars (``np.float32(2)``) count as plain numbers, like Python's."""
    return isinstance(obj, np.ndarray)


def device(obj):
    return "cpu"


def to_backend(obj):
    arr = obj if type(obj) is np.ndarray else np.asarray(obj)
    # the built-in dtypes first: ``dtype.name`` is slow (computed in Python on each access)
    if arr.dtype.kind == "V" and arr.dtype.name == "bfloat16":
        return arr.view(np.uint16), "bfloat16"
    return arr, arr.dtype


def from_backend(array, logical_dtype, like=None):
    if hasattr(array, "get") and type(array).__module__.split(".", 1)[0] == "cupy":
        array = array.get()
    array = np.asarray(array)
    if logical_dtype == "bfloat16":
        # The caller's own representation: a NumPy bfloat16 dtype (ml_dtypes, as JAX uses on
        # the host) stays one; uint16 bit patterns stay bit patterns.
        like_dtype = getattr(like, "dtype", None)
        if getattr(like_dtype, "name", None) == "bfloat16":
            return array.view(like_dtype)
    return array
