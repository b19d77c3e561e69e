"""Streaming overlap-save (``longconv.stream_convolve``) against SciPy on the whole signal."""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
import pytest
import scipy.signal

import longconv
from longconv import testing
from longconv._stream import StreamConvolver, block_factor, output_frames


def reference(x, k, mode):
    x2 = x.reshape(len(x), -1)
    k2 = k.reshape(len(k), -1)
    c = max(x2.shape[1], k2.shape[1])
    x2 = np.broadcast_to(x2, (len(x2), c))
    full = scipy.signal.fftconvolve(x2, k2, mode="full", axes=0)
    Lk = len(k2)
    start = (Lk - 1) // 2 if mode == "same" else 0
    return full[start:start + output_frames(mode, len(x2), Lk)]


def pieces(x, sizes):
    out, i, j = [], 0, 0
    while i < len(x):
        n = sizes[j % len(sizes)]
        out.append(x[i:i + n])
        i, j = i + n, j + 1
    return out


@pytest.mark.parametrize("mode", ["full", "same", "causal"])
@pytest.mark.parametrize("Lk, C, Ck, block_len", [
    (1, 1, 1, None), (2, 2, 1, 5), (97, 3, 3, 50), (1000, 1, 2, 300), (4097, 2, 2, None),
    (30000, 2, 1, None),
])
def test_matches_scipy(rng, mode, Lk, C, Ck, block_len):
    x = rng.standard_normal((20011, C))
    k = rng.standard_normal((Lk, Ck))
    blocks = pieces(x, [1, 777, 5000, 3])
    y = np.concatenate(list(longconv.stream_convolve(blocks, k, mode=mode,
                                                     block_len=block_len)))
    ref = reference(x, k, mode)
    assert y.shape == ref.shape
    testing.assert_close(y, ref, np.float64)


def test_signal_shorter_than_filter_and_1d_blocks(rng):
    x = rng.standard_normal(50)
    k = rng.standard_normal(3000)
    for mode in ("full", "same", "causal"):
        y = np.concatenate(list(longconv.stream_convolve([x[:20], x[20:]], k, mode=mode)))
        testing.assert_close(y, reference(x, k, mode), np.float64)


def test_float32_and_push_finish(rng):
    x = rng.standard_normal((10000, 2)).astype(np.float32)
    k = rng.standard_normal((500, 2)).astype(np.float32)
    conv = StreamConvolver(k, 2, mode="causal", block_len=1000)
    parts = [conv.push(b) for b in pieces(x, [999, 1, 4000])] + [conv.finish()]
    y = np.concatenate(parts)
    assert y.dtype == np.float32
    testing.assert_close(y, reference(x.astype(np.float64), k.astype(np.float64), "causal"),
                         np.float32)
    with pytest.raises(RuntimeError):
        conv.push(x[:10])


def test_causality(rng):
    x = rng.standard_normal((5000, 1))
    k = rng.standard_normal((700, 1))
    x2 = x.copy()
    x2[3000:] = rng.standard_normal((2000, 1))
    y1 = np.concatenate(list(longconv.stream_convolve([x], k, mode="causal", block_len=256)))
    y2 = np.concatenate(list(longconv.stream_convolve([x2], k, mode="causal", block_len=256)))
    # equal up to FFT rounding: a segment holding samples on both sides of t = 3000 sees both
    np.testing.assert_allclose(y1[:3000], y2[:3000], rtol=0, atol=1e-10)
    assert np.abs(y1[3000:] - y2[3000:]).max() > 1e-3


def test_memory_bounded_by_filter():
    conv = StreamConvolver(np.ones(5_760_000), 2)
    assert block_factor(5_760_000) == 2
    assert conv.fft_size < 3 * 5_760_000
    assert StreamConvolver(np.ones(96_000), 8).fft_size < 9 * 96_000


def test_errors():
    with pytest.raises(ValueError, match="channels"):
        StreamConvolver(np.ones((10, 3)), 2)
    with pytest.raises(ValueError, match="mode"):
        StreamConvolver(np.ones(10), 1, mode="valid")
    with pytest.raises(ValueError, match=r"shape \(frames, 2\)"):
        StreamConvolver(np.ones(10), 2).push(np.ones((5, 3)))
    with pytest.raises(ValueError, match="empty"):
        list(longconv.stream_convolve([], np.ones(3)))


class NumpyAsCupy:
    """NumPy posing as the ``cupy`` module: runs StreamConvolver's device branch on the CPU and
    counts the copies between host and "device"."""

    def __init__(self):
        self.cuda = types.SimpleNamespace(Device=contextlib.nullcontext)
        self.fft = np.fft
        self.zeros = np.zeros
        self.ascontiguousarray = np.ascontiguousarray
        self.to_device = 0
        self.to_host = 0

    def asarray(self, a):
        self.to_device += 1
        return np.array(a)

    def asnumpy(self, a):
        self.to_host += 1
        return np.array(a)


@pytest.mark.parametrize("mode", ["full", "same", "causal"])
@pytest.mark.parametrize("C, Ck", [(2, 2), (1, 3), (3, 1)])
def test_device_branch_layout_and_copies(rng, monkeypatch, mode, C, Ck):
    fake = NumpyAsCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    x = rng.standard_normal((9000, C))
    k = rng.standard_normal((700, Ck))
    conv = StreamConvolver(k, C, mode=mode, block_len=1500, device="gpu")
    assert fake.to_device == 1  # the filter
    sizes = [2000, 0, 1, 3999, 3000]
    parts = [conv.push(b) for b in pieces(x, sizes)] + [conv.finish()]
    # one copy per non-empty block in, one per FFT segment out
    assert fake.to_device == 1 + sum(1 for b in pieces(x, sizes) if len(b))
    assert conv._produced % conv.hop == 0
    assert fake.to_host == conv._produced // conv.hop
    for p in parts:
        assert isinstance(p, np.ndarray) and p.dtype == np.float64
        assert p.flags.c_contiguous and p.flags.owndata and p.shape[1] == max(C, Ck)
    y = np.concatenate(parts)
    testing.assert_close(y, reference(x, k, mode), np.float64)


# --------------------------------------------------------------------------------------------
# on a GPU


def in_memory(x, k, mode):
    """``longconv.fftconvolve_long`` on the whole signal (mono x with Ck filters broadcast)."""
    x2, k2 = x.reshape(len(x), -1), k.reshape(len(k), -1)
    full = longconv.fftconvolve_long(x2, k2, mode="full", axes=0)
    if mode == "causal":
        return full[:len(x2)]
    if mode == "same":
        s = (len(k2) - 1) // 2
        return full[s:s + len(x2)]
    return full


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["full", "same", "causal"])
@pytest.mark.parametrize("Lk, C, Ck, block_len", [
    (1, 1, 1, None), (97, 3, 3, 50), (1000, 1, 2, 300), (4097, 2, 2, None),
    (30000, 2, 1, None),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_matches_in_memory(rng, mode, Lk, C, Ck, block_len, dtype):
    x = rng.standard_normal((20011, C)).astype(dtype)
    k = rng.standard_normal((Lk, Ck)).astype(dtype)
    blocks = pieces(x, [1, 777, 5000, 3, 0])
    out = list(longconv.stream_convolve(blocks, k, mode=mode, block_len=block_len,
                                        device="gpu"))
    for y in out:
        assert isinstance(y, np.ndarray) and y.dtype == dtype and y.flags.c_contiguous
    y = np.concatenate(out)
    ref = in_memory(x, k, mode)
    assert y.shape == ref.shape
    testing.assert_close(y, ref, dtype)
    testing.assert_close(y, reference(x.astype(np.float64), k.astype(np.float64), mode), dtype)


@pytest.mark.gpu
def test_gpu_equals_cpu_stream_and_push_finish(cp, rng):
    x = rng.standard_normal((50000, 2))
    k = rng.standard_normal((3000, 2))
    cpu = np.concatenate(list(longconv.stream_convolve(pieces(x, [4096]), k)))
    conv = StreamConvolver(cp.asarray(k), 2, mode="full", block_len=2000, device="gpu")
    parts = [conv.push(b) for b in pieces(x, [999, 1, 12000])] + [conv.finish()]
    gpu = np.concatenate(parts)
    assert gpu.shape == cpu.shape == (50000 + 3000 - 1, 2)
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-10 * np.abs(cpu).max())
    testing.assert_close(gpu, reference(x, k, "full"), np.float64)
    with pytest.raises(RuntimeError):
        conv.push(x[:10])


@pytest.mark.gpu
def test_gpu_float32_long_filter_defaults(rng):
    # the default segment (4x a 1-second filter) and float32 audio blocks
    x = rng.uniform(-0.5, 0.5, (5 * 48000, 2)).astype(np.float32)
    k = (rng.standard_normal((48000, 2)) * np.exp(-np.arange(48000) / 8000)[:, None])
    k = k.astype(np.float32)
    y = np.concatenate(list(longconv.stream_convolve(pieces(x, [48000]), k, device="gpu")))
    assert y.dtype == np.float32
    testing.assert_close(y, longconv.fftconvolve_long(x, k, mode="full", axes=0), np.float32)


@pytest.mark.gpu
def test_gpu_stays_on_its_device(cp, rng):
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    x = rng.standard_normal((9000, 2))
    k = rng.standard_normal((700, 2))
    with cp.cuda.Device(1):
        conv = StreamConvolver(k, 2, block_len=1000, device="gpu")
    assert conv._seg.device.id == 1
    parts = [conv.push(x[:5000])]  # device 0 is current here
    with cp.cuda.Device(0):
        parts += [conv.push(x[5000:]), conv.finish()]
    assert cp.cuda.Device().id == 0
    testing.assert_close(np.concatenate(parts), reference(x, k, "full"), np.float64)
