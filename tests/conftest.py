"""Shared fixtures and markers.

Markers: ``gpu`` (skipped automatically when CuPy is missing or no CUDA device is usable) and
``slow``. Every test gets a fresh random generator; its seed is printed, so a failure can be
replayed with ``LONGCONV_SEED=<seed>``.
"""

import os

import numpy as np
import pytest

from longconv._plan import _gpu_available  # CuPy importable and a usable CUDA device


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


@pytest.fixture(autouse=True)
def _numpy_on_the_cpu(request):
    """Tests not marked ``gpu`` mean the CPU backend for NumPy data, also on a machine with a
    GPU (where the size policy would move large NumPy problems there). The policy's own tests
    (test_device_policy.py) run it."""
    if "gpu" in request.node.keywords or request.node.path.name == "test_device_policy.py":
        yield
        return
    from longconv import _plan

    with _plan.host_data_on_cpu():
        yield


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


@pytest.fixture
def torch_cuda():
    """The torch module, for tests that need torch with CUDA (skipped without)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


@pytest.fixture
def spy(monkeypatch):
    """``spy(owner, name, record)``: replace ``owner.name`` (a module's function or a class's
    method, for this test only) by a wrapper that calls the real one and appends
    ``record(args, result)`` to the list it returns (default: the positional arguments)."""

    def install(owner, name, record=lambda args, result: args):
        real = getattr(owner, name)
        calls = []

        def wrapper(*args, **kwargs):
            result = real(*args, **kwargs)
            calls.append(record(args, result))
            return result

        monkeypatch.setattr(owner, name, wrapper)
        return calls

    return install
