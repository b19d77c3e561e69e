"""The ``longconv`` command: ``demo`` and ``info`` on the CPU, and argument errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from longconv import _cli

SMALL = ["--length", "3000", "--taps", "700", "--batch", "3", "--repeat", "1"]


def run_module(*args, timeout=120):
    """``python -m longconv ARGS`` in a subprocess; returns the CompletedProcess."""
    env = dict(os.environ, CUPY_CACHE_IN_MEMORY="1")
    return subprocess.run([sys.executable, "-m", "longconv", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_module_help_lists_commands():
    proc = run_module("--help")
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout and "info" in proc.stdout


def test_module_demo_on_cpu():
    proc = run_module("demo", *SMALL, "--device", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "backend     cpu" in out
    assert "x (3, 3000) float32, k (700,) float32" in out
    assert "y (3, 3000) float32" in out
    assert ": OK" in out


def test_module_info():
    proc = run_module("info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in ("longconv", "numpy", "scipy", "cupy", "torch", "jax", "kernel cache", "nvrtc"):
        assert name in out
    assert "no CUDA device" in out or "compute capability" in out


@pytest.mark.parametrize("mode", _cli.MODES)
@pytest.mark.parametrize("dtype", _cli.DTYPES)
def test_demo_modes_and_dtypes(mode, dtype, capsys):
    status = _cli.main(["demo", *SMALL, "--device", "cpu", "--mode", mode, "--dtype", dtype])
    out = capsys.readouterr().out
    assert status == 0, out
    expected_len = {"causal": 3000, "circular": 3000, "same": 3000, "full": 3699,
                    "valid": 2301}[mode]
    assert f"y (3, {expected_len})" in out
    assert ": OK" in out


def test_demo_single_row_and_suffixes(capsys):
    status = _cli.main(["demo", "--length", "4K", "--taps", "1k", "--batch", "1",
                        "--repeat", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "x (1, 4096) float32, k (1024,) float32" in out
    assert "rows [0]" in out


def test_demo_reports_failure_when_error_exceeds_tolerance(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "_tolerance", lambda dtype: 0.0)
    status = _cli.main(["demo", *SMALL, "--device", "cpu"])
    out = capsys.readouterr().out
    assert status == 1
    assert "FAILED" in out


def test_info_collects_versions_and_cache():
    info = _cli.collect_info()
    assert info["versions"]["numpy"]
    assert info["versions"]["longconv"]
    assert info["kernel_cache"] is None or isinstance(info["kernel_cache"], str)
    assert bool(info["devices"]) != bool(info["no_device_reason"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["demo", "--length", "0"], "argument --length: expected a positive integer; got '0'"),
        (["demo", "--length", "-5"], "argument --length: expected a positive integer"),
        (["demo", "--taps", "abc"], "argument --taps: expected a positive integer such as"),
        (["demo", "--batch", "2.5"], "argument --batch: expected a positive integer such as"),
        (["demo", "--mode", "sideways"], "argument --mode: invalid choice: 'sideways'"),
        (["demo", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        (["demo", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["demo", "--mode", "valid", "--length", "100", "--taps", "101"],
         "--mode valid needs --taps <= --length; got --taps 101 and --length 100"),
    ],
)
def test_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        status = _cli.main(args)
        raise SystemExit(status)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "error" in err


def test_bad_arguments_in_subprocess():
    proc = run_module("demo", "--length", "zero")
    assert proc.returncode == 2
    assert "argument --length" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_gpu_requested_without_device(capsys):
    devices, _why = _cli.gpu_status()
    if devices:
        pytest.skip("a CUDA device is available")
    status = _cli.main(["demo", *SMALL, "--device", "gpu"])
    assert status == 2
    assert "--device gpu: no usable CUDA device" in capsys.readouterr().err


def test_too_large_request_fails_cleanly():
    # about 2**62 samples: refused with a clear message before anything is allocated
    proc = run_module("demo", "--length", "4194304M", "--batch", "1024")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "error" in proc.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["causal", "full", "circular"])
@pytest.mark.parametrize("dtype", _cli.DTYPES)
def test_demo_on_gpu(mode, dtype, capsys):
    status = _cli.main(["demo", *SMALL, "--device", "gpu", "--mode", mode, "--dtype", dtype])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "backend     gpu 0" in out
    assert ": OK" in out


@pytest.mark.gpu
def test_info_on_gpu(capsys):
    assert _cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "compute capability" in out and "SMs" in out and "shared memory per block" in out
