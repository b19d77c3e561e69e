"""``longconv convolve`` on generated WAV / FLAC / .npy files (WAV and FLAC need soundfile)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.signal

from longconv import _cli
from longconv._signalfiles import NORMALIZE_PEAK

sf = pytest.importorskip("soundfile", reason="needs soundfile (pip install 'longconv[audio]')")

RATE = 8000


def run(capsys, *argv):
    status = _cli.main(["convolve", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def wav(path, data, rate=RATE, subtype="DOUBLE"):
    sf.write(str(path), data, rate, subtype=subtype)
    return path


def reverb(rng, taps, channels):
    decay = np.exp(-np.arange(taps) / (taps / 6))[:, None]
    return 0.1 * rng.standard_normal((taps, channels)) * decay


def full_conv(x, k, mode="full"):
    x2, k2 = x.reshape(len(x), -1), k.reshape(len(k), -1)
    c = max(x2.shape[1], k2.shape[1])
    y = scipy.signal.fftconvolve(np.broadcast_to(x2, (len(x2), c)), k2, axes=0)
    if mode == "causal":
        return y[:len(x2)]
    if mode == "same":
        s = (len(k2) - 1) // 2
        return y[s:s + len(x2)]
    return y


@pytest.mark.parametrize("mode", ["full", "same", "causal"])
def test_wav_stereo_matches_in_memory(tmp_path, rng, capsys, mode):
    x = rng.uniform(-0.5, 0.5, (3 * RATE + 17, 2))
    k = reverb(rng, 2500, 2)
    sig, ir = wav(tmp_path / "sig.wav", x), wav(tmp_path / "ir.wav", k)
    status, out, err = run(capsys, sig, ir, tmp_path / "out.npy", "--mode", mode,
                           "--block-len", 3000)
    assert status == 0, err
    y = np.load(tmp_path / "out.npy")
    ref = full_conv(x, k, mode)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)
    status, out, err = run(capsys, sig, ir, tmp_path / "out.wav", "--mode", mode)
    assert status == 0 and "wrote" in out
    yw, rate = sf.read(str(tmp_path / "out.wav"))
    assert rate == RATE and sf.info(str(tmp_path / "out.wav")).subtype == "FLOAT"
    # float32 samples: the reference rounded to float32, give or take one unit in the last
    # place (an output within 1e-15 of a rounding boundary may round to either side)
    np.testing.assert_allclose(yw, ref.astype(np.float32).astype(np.float64), rtol=2.0**-23,
                               atol=0)


def test_one_filter_for_all_channels_and_mono_to_stereo(tmp_path, rng, capsys):
    x = rng.standard_normal((5000, 3))
    k = rng.standard_normal(300)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "k.npy", k)
    assert run(capsys, tmp_path / "x.npy", tmp_path / "k.npy", tmp_path / "y.npy")[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), full_conv(x, k), atol=1e-11)
    xm = rng.standard_normal(4000)
    k2 = rng.standard_normal((200, 2))
    np.save(tmp_path / "xm.npy", xm)
    np.save(tmp_path / "k2.npy", k2)
    assert run(capsys, tmp_path / "xm.npy", tmp_path / "k2.npy", tmp_path / "y2.npy")[0] == 0
    y2 = np.load(tmp_path / "y2.npy")
    assert y2.shape == (4199, 2)
    np.testing.assert_allclose(y2, full_conv(xm, k2), atol=1e-11)
    np.save(tmp_path / "k1.npy", rng.standard_normal(10))
    assert run(capsys, tmp_path / "xm.npy", tmp_path / "k1.npy", tmp_path / "y1.npy")[0] == 0
    assert np.load(tmp_path / "y1.npy").shape == (4009,)


def test_normalize_flac(tmp_path, rng, capsys):
    x = rng.uniform(-1, 1, (RATE, 2))
    k = reverb(rng, 800, 1) * 20
    sig, ir = wav(tmp_path / "s.wav", x), wav(tmp_path / "k.wav", k)
    status, out, err = run(capsys, sig, ir, tmp_path / "o.flac", "--normalize")
    assert status == 0, err
    y, rate = sf.read(str(tmp_path / "o.flac"))
    ref = full_conv(x, k)
    gain = NORMALIZE_PEAK / np.abs(ref).max()
    assert rate == RATE and "gain" in out
    np.testing.assert_allclose(y, ref * gain, rtol=0, atol=2.0**-23)
    assert abs(np.abs(y).max() - NORMALIZE_PEAK) <= 2.0**-23
    # without --normalize, a FLAC output beyond full scale is clipped with a warning
    status, out, err = run(capsys, sig, ir, tmp_path / "c.flac")
    assert status == 0 and "clipped" in err and "--normalize" in err


def test_refuses_to_overwrite(tmp_path, rng, capsys):
    np.save(tmp_path / "x.npy", rng.standard_normal(100))
    out = tmp_path / "y.npy"
    out.write_bytes(b"keep")
    status, _, err = run(capsys, tmp_path / "x.npy", tmp_path / "x.npy", out)
    assert status == 2 and "--force" in err and out.read_bytes() == b"keep"
    status, _, err = run(capsys, tmp_path / "x.npy", tmp_path / "x.npy", out, "--force")
    assert status == 0 and np.load(out).shape == (199,)
    status, _, err = run(capsys, tmp_path / "x.npy", tmp_path / "x.npy", tmp_path / "x.npy",
                         "--force")
    assert status == 2 and "SIGNAL file" in err


@pytest.mark.parametrize("case, message", [
    ("missing", "cannot read SIGNAL"),
    ("corrupt", "cannot read SIGNAL"),
    ("rates", "sample rates differ"),
    ("channels", "channel counts do not match"),
    ("suffix", "unsupported file type"),
    ("npy_to_wav", "sample rate"),
])
def test_clear_errors(tmp_path, rng, capsys, case, message):
    sig = wav(tmp_path / "s.wav", rng.uniform(-0.5, 0.5, (1000, 2)))
    ir = wav(tmp_path / "k.wav", rng.uniform(-0.5, 0.5, (100, 2)))
    out = tmp_path / "o.wav"
    if case == "missing":
        sig = tmp_path / "nothere.wav"
    elif case == "corrupt":
        sig = tmp_path / "bad.wav"
        sig.write_bytes(b"RIFF not really a wave file")
    elif case == "rates":
        ir = wav(tmp_path / "k44.wav", np.ones((10, 2)) * 0.1, rate=44100)
    elif case == "channels":
        ir = wav(tmp_path / "k3.wav", np.ones((10, 3)) * 0.1)
    elif case == "suffix":
        out = tmp_path / "o.mp3"
    elif case == "npy_to_wav":
        np.save(tmp_path / "s.npy", np.ones(10))
        np.save(tmp_path / "k.npy", np.ones(3))
        sig, ir = tmp_path / "s.npy", tmp_path / "k.npy"
    status, out_text, err = run(capsys, sig, ir, out)
    assert status == 2
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_installed_command_no_progress_bar_without_tty(tmp_path, rng):
    np.save(tmp_path / "x.npy", rng.standard_normal((3000, 2)))
    np.save(tmp_path / "k.npy", rng.standard_normal(100))
    proc = subprocess.run([sys.executable, "-m", "longconv", "convolve", "x.npy", "k.npy",
                           "y.npy"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert np.load(tmp_path / "y.npy").shape == (3099, 2)


def test_progress_bar_on_a_terminal(tmp_path, rng, capsys, monkeypatch):
    pytest.importorskip("tqdm", reason="needs tqdm (pip install 'longconv[audio]')")
    np.save(tmp_path / "x.npy", rng.standard_normal((3000, 2)))
    np.save(tmp_path / "k.npy", rng.standard_normal(100))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    status, _, err = run(capsys, tmp_path / "x.npy", tmp_path / "k.npy", tmp_path / "y.npy")
    assert status == 0 and "convolve" in err and "frame" in err


def test_device_gpu_without_a_device(tmp_path, rng, capsys, monkeypatch):
    np.save(tmp_path / "x.npy", rng.standard_normal((1000, 2)))
    np.save(tmp_path / "k.npy", rng.standard_normal(50))
    monkeypatch.setattr(_cli, "gpu_status", lambda: ([], "CUDA reports no device"))
    status, _, err = run(capsys, tmp_path / "x.npy", tmp_path / "k.npy", tmp_path / "y.npy",
                         "--device", "gpu")
    assert status == 2 and "--device gpu: no usable CUDA device" in err
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["full", "same", "causal"])
def test_device_gpu_matches_cpu(tmp_path, rng, capsys, mode):
    x = rng.uniform(-0.5, 0.5, (3 * RATE + 17, 2))
    k = reverb(rng, 2500, 2)
    sig, ir = wav(tmp_path / "sig.wav", x), wav(tmp_path / "ir.wav", k)
    outs = {}
    for device in ("cpu", "gpu"):
        status, out, err = run(capsys, sig, ir, tmp_path / f"{device}.npy", "--mode", mode,
                               "--block-len", 3000, "--device", device)
        assert status == 0 and "wrote" in out, err
        outs[device] = np.load(tmp_path / f"{device}.npy")
    ref = full_conv(x, k, mode)
    assert outs["gpu"].shape == outs["cpu"].shape == ref.shape
    np.testing.assert_allclose(outs["gpu"], ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(outs["gpu"], outs["cpu"], rtol=0, atol=1e-12)
    # FLAC (24-bit PCM) with --normalize: the gain and every sample as on the CPU
    for device in ("cpu", "gpu"):
        status, out, err = run(capsys, sig, ir, tmp_path / f"{device}.flac", "--mode", mode,
                               "--normalize", "--device", device)
        assert status == 0 and "gain" in out, err
    y_cpu, _ = sf.read(str(tmp_path / "cpu.flac"))
    y_gpu, rate = sf.read(str(tmp_path / "gpu.flac"))
    assert rate == RATE
    np.testing.assert_allclose(y_gpu, y_cpu, rtol=0, atol=2.0**-23)


@pytest.mark.gpu
def test_device_gpu_mono_npy_to_stereo(tmp_path, rng, capsys):
    xm = rng.standard_normal(40000)
    k2 = rng.standard_normal((3000, 2))
    np.save(tmp_path / "xm.npy", xm)
    np.save(tmp_path / "k2.npy", k2)
    status, _, err = run(capsys, tmp_path / "xm.npy", tmp_path / "k2.npy", tmp_path / "y.npy",
                         "--device", "gpu")
    assert status == 0, err
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (42999, 2)
    np.testing.assert_allclose(y, full_conv(xm, k2), rtol=0, atol=1e-10)
