"""Array adapters: how longconv recognises a caller's array and hands it back in the same kind.

Each adapter is a module named after the library whose arrays it handles, exposing:

``KIND``
    The name of the array kind (``"numpy"``, ``"cupy"``).
``is_array(obj) -> bool``
    Whether ``obj`` is an array of this kind.
``device(obj) -> "cpu" | "gpu"``
    Where the data lives.
``to_backend(obj) -> (array, logical_dtype)``
    The data as an array of the backend's array module (``numpy.ndarray`` on the CPU,
    ``cupy.ndarray`` on the GPU) and its logical dtype (the string ``"bfloat16"`` for bfloat16
    data, which travels as ``uint16`` bit patterns; otherwise the array's own ``numpy.dtype``).
``from_backend(array, logical_dtype, like) -> obj``
    A backend array turned back into this kind (``like`` is the caller's input, for its device).
``convolve(x, k, causal, *, pregate, postgate, skip, precision, kernel_len, freq_keep)``
    Optional: where present, ``longconv.convolve`` hands the whole call to it (a framework
    whose arrays record gradients wraps the computation in its own differentiable operator).
``fast_convolve(x, k, causal) -> result or None``
    Optional: the shortest path of a ``longconv.convolve`` call with every option at its
    default, tried before any other dispatch (:data:`FAST_CONVOLVE`); None where it does not
    serve the call, which then takes the general path (and its errors).

Adapters are found by the top-level module of the array's type (``type(obj).__module__``), so
adding PyTorch, JAX or Dask means adding a module here and one line to ``_REGISTRY``; nothing
else changes. No adapter imports its framework at module top level.
"""

from __future__ import annotations

import importlib

#: top-level module of an array type -> adapter module (imported on first use)
_REGISTRY = {
    "numpy": "numpy",
    "cupy": "cupy",
    "cupyx": "cupy",
    "torch": "torch",
    "jax": "jax",
    "jaxlib": "jax",
}

_loaded = {}
#: type -> its adapter's ``fast_convolve`` (filled as types are first seen)
FAST_CONVOLVE = {}
# type -> adapter module or None: every adapter's ``is_array`` is an ``isinstance`` test, so the
# answer depends on the type alone (looked up once per type; calls look up several operands)
_by_type = {}


def adapter_for(obj):
    """The adapter module handling ``obj``'s type, or ``None`` if no adapter claims it."""
    t = type(obj)
    try:
        return _by_type[t]
    except KeyError:
        pass
    root = t.__module__.split(".", 1)[0]
    name = _REGISTRY.get(root)
    if name is None:
        mod = None
    else:
        mod = _loaded.get(name)
        if mod is None:
            # import_module waits for another thread's import to finish; sys.modules may hold
            # a module that is still executing
            mod = importlib.import_module(f"{__name__}.{name}")
        _loaded[name] = mod
        mod = mod if mod.is_array(obj) else None
    if len(_by_type) < 4096:
        _by_type[t] = mod
        fast = getattr(mod, "fast_convolve", None)
        if fast is not None:
            FAST_CONVOLVE[t] = fast
    return mod


def get(kind):
    """The adapter module for an array kind by name (``"numpy"``, ``"cupy"``)."""
    mod = _loaded.get(kind)
    if mod is None:
        mod = importlib.import_module(f"{__name__}.{kind}")
        _loaded[kind] = mod
    return mod
