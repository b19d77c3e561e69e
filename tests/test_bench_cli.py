"""``longconv bench``: table, CSV and plot (the plot needs matplotlib)."""

from __future__ import annotations

import csv
import sys

import pytest

from longconv import _bench, _cli


def test_quick_writes_csv_and_plot(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib", reason="needs matplotlib (pip install 'longconv[bench]')")
    monkeypatch.setattr(_bench, "QUICK_LENGTHS", (256, 2048))
    out = tmp_path / "results"
    assert _cli.main(["bench", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| device | method | length |" in text and "scipy oaconvolve" in text
    with open(out / "bench.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    methods = {r["method"] for r in rows}
    assert {"longconv", "scipy fftconvolve", "scipy oaconvolve"} <= methods
    assert {int(r["length"]) for r in rows} == {256, 2048}
    assert all(float(r["seconds"]) > 0 and r["ok"] == "True" for r in rows)
    assert all(r["cpu"] for r in rows)
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert _bench.run_suite(quick=True, out_dir=tmp_path, lengths=(128,)) == 0
    text = capsys.readouterr().out
    assert "matplotlib is not installed" in text
    assert (tmp_path / "bench.csv").exists() and not (tmp_path / "bench.png").exists()


def test_disagreeing_method_fails(tmp_path, capsys, monkeypatch):
    import numpy as np

    real = _bench._cpu_methods

    def broken():
        methods = real()
        return methods + [("wrong", lambda x, k: lambda: np.zeros_like(x))]

    monkeypatch.setattr(_bench, "_cpu_methods", broken)
    monkeypatch.setattr(_bench, "plot", lambda *a: True)
    assert _bench.run_suite(quick=True, out_dir=tmp_path, lengths=(128,)) == 1
    assert "wrong (cpu, L=128) disagrees" in capsys.readouterr().err


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _cli.main(["bench", "--quick", "--out", str(blocker / "sub")]) == 2
    assert "cannot create --out" in capsys.readouterr().err
