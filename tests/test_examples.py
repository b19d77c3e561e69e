"""The scripts in examples/ run and their checks hold (each skipped without its framework)."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_hyena_torch_as_a_script():
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, str(EXAMPLES / "hyena_torch.py")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Adam steps" in out.stdout


def test_hyena_jax():
    pytest.importorskip("jax")
    mod = runpy.run_path(str(EXAMPLES / "hyena_jax.py"))
    result = mod["main"](steps=10, verbose=False)
    assert max(result["errors"].values()) < 1e-4, result["errors"]
    assert result["losses"][-1] < result["losses"][0]
