"""Shared fixtures and markers.

Markers: ``gpu`` (skipped automatically when CuPy is missing or no CUDA device is usable) and
``slow``. Every test gets a fresh random generator; its seed is printed, so a failure can be
replayed with ``LONGCONV_SEED=<seed>``.
"""

import os

import numpy as np
import pytest


def _gpu_available():
    try:
        import cupy
    except Exception:
        return False
    try:
        return bool(cupy.is_available())
    except Exception:
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (cupy missing or cupy.is_available() False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    seed = os.environ.get("LONGCONV_SEED")
    seed = int(seed) if seed else int(np.random.SeedSequence().entropy % (1 << 63))
    print(f"LONGCONV_SEED={seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def cp():
    """The cupy module (GPU tests only)."""
    import cupy

    return cupy
