"""The scripts in examples/ run and their checks hold (each skipped without its framework)."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_hyena_jax():
    pytest.importorskip("jax")
    mod = runpy.run_path(str(EXAMPLES / "hyena_jax.py"))
    result = mod["main"](steps=10, verbose=False)
    assert max(result["errors"].values()) < 1e-4, result["errors"]
    assert result["losses"][-1] < result["losses"][0]
