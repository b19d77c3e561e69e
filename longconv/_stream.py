"""Streaming convolution: signals longer than memory, read and written block by block.

:class:`StreamConvolver` convolves a multichannel signal that arrives in blocks of any length
with a fixed filter by overlap-save: the filter spectrum is computed once, and each FFT segment
of ``n`` samples holds the last ``Lk - 1`` samples of the previous segment followed by
``hop = n - Lk + 1`` new ones; the last ``hop`` points of the segment's circular convolution are
exact outputs of the linear convolution::

    input        ... |--- Lk-1 (history) ---|-------- hop (new) --------|
    segment          |<------------------------- n ---------------------->|
    output                                  |-------- hop outputs -------|

Memory is bounded by the filter, never by the signal: about ``(3 C + Ck) * n`` numbers of the
compute dtype (``C`` channels, ``Ck`` filters), with ``n`` a fast FFT size near
``block_factor * Lk`` (4 up to 2M taps, 2 beyond: a 60-second 96 kHz impulse response,
5.76M taps, uses ``n`` about 11.5M, some 370 MB per channel in float64).

Layout follows audio files: blocks are ``(frames, channels)`` (or ``(frames,)`` for one channel)
and so is the filter, ``(Lk,)`` for one filter applied to every channel or ``(Lk, Ck)`` for one
per channel. A mono signal with ``Ck`` filters gives ``Ck`` output channels (mono source, stereo
reverb).

Modes, as windows of the full linear convolution ``full[t] = sum_s k[s] x[t-s]`` of a signal of
``L`` frames: ``"full"`` (``L + Lk - 1`` frames), ``"causal"`` (the first ``L``) and ``"same"``
(``L`` frames from ``(Lk - 1) // 2``, as ``scipy.signal.fftconvolve(mode="same")``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
import scipy.fft as sp_fft

STREAM_MODES = ("full", "same", "causal")

# FFT segment length as a multiple of the filter length. The arithmetic per output sample,
# ~ n log n / (n - Lk + 1), is lowest near n = 8 Lk, but segments that large leave the caches:
# 8 channels x 2 minutes at 48 kHz, 96000 taps, float32, 2 cores, seconds (best of 3, 1 / 2
# threads): hop = Lk (n ~ 2 Lk) 0.84 / 0.72; hop = 2 Lk 0.75 / 0.62; hop = 3 Lk (n ~ 4 Lk)
# 0.73 / 0.77; hop = 7 Lk (n ~ 8 Lk) 1.19 / 0.85. Filters beyond 2M taps use n ~ 2 Lk so that a
# segment of a 60-second 96 kHz impulse response (5.76M taps) stays ~370 MB per channel.
def block_factor(taps: int) -> int:
    return 4 if taps <= 1 << 21 else 2


# Segments shorter than this waste time in per-call overhead for short filters.
MIN_FFT = 1 << 14


def _window_start(mode, Lk):
    return (Lk - 1) // 2 if mode == "same" else 0


def output_frames(mode, frames, taps):
    """Frames of the output of ``mode`` for a signal of ``frames`` and a filter of ``taps``."""
    if mode not in STREAM_MODES:
        raise ValueError(f"mode must be one of {', '.join(STREAM_MODES)}; got {mode!r}")
    return frames + taps - 1 if mode == "full" else frames


class StreamConvolver:
    """Overlap-save convolution of a signal arriving in blocks with a fixed filter.

    Parameters
    ----------
    k : array, shape (Lk,) or (Lk, Ck)
        The filter: one for every channel, or one per channel.
    channels : int
        Channels of the signal blocks (1, or ``Ck``; a mono signal with ``Ck > 1`` filters is
        convolved with each of them).
    mode : {"full", "same", "causal"}, default "full"
    block_len : int, optional
        New samples per FFT segment (the hop); default ``n - Lk + 1`` with ``n`` the fast FFT
        size near ``block_factor(Lk) * Lk`` (at least 16384).
    dtype : numpy dtype, optional
        Compute and output dtype: float32 or float64 (default: float64 for a float64 filter,
        else float32).
    device : {"cpu", "gpu"}, default "cpu"
        ``"gpu"`` runs the FFTs through CuPy on the current CUDA device; blocks in and out are
        host (NumPy) arrays either way (each input block is copied to the device once, in its
        ``(frames, channels)`` layout, and each output block back, already in that layout).
        ``k`` may then be a CuPy array.
    workers : int, optional
        ``scipy.fft`` threads on the CPU (default: every usable core; the channels' FFTs run in
        parallel).

    Use :meth:`push` for each input block and :meth:`finish` once at the end; each returns the
    output frames that became final, as an array ``(frames, C_out)``. Concatenated, they are the
    mode's output.
    """

    def __init__(self, k, channels, *, mode="full", block_len=None, dtype=None, device="cpu",
                 workers=None):
        if mode not in STREAM_MODES:
            raise ValueError(f"mode must be one of {', '.join(STREAM_MODES)}; got {mode!r}")
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu'; got {device!r}")
        k = k.get() if type(k).__module__.split(".", 1)[0] == "cupy" else np.asarray(k)
        if k.ndim not in (1, 2) or k.shape[0] == 0 or k.size == 0:
            raise ValueError(f"k must have shape (Lk,) or (Lk, Ck) with Lk >= 1; got {k.shape}")
        if k.dtype.kind not in "biuf":
            raise TypeError(f"k must be real; got dtype {k.dtype}")
        k2 = k.reshape(k.shape[0], -1)
        Lk, Ck = k2.shape
        channels = int(channels)
        if channels < 1 or not (Ck == 1 or channels in (1, Ck)):
            raise ValueError(
                f"the signal has {channels} channels and the filter {Ck}: use one filter for "
                f"every channel, one per channel, or a mono signal")
        if dtype is None:
            dtype = np.float64 if k.dtype == np.float64 else np.float32
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64; got {self.dtype}")
        from ._cpu import default_workers

        self.workers = default_workers() if workers is None else int(workers)
        self.mode, self.taps, self.channels = mode, Lk, channels
        self.out_channels = max(channels, Ck)
        if block_len is None:
            n = sp_fft.next_fast_len(max(block_factor(Lk) * Lk, MIN_FFT), real=True)
        else:
            if int(block_len) < 1:
                raise ValueError(f"block_len must be >= 1; got {block_len}")
            n = sp_fft.next_fast_len(int(block_len) + Lk - 1, real=True)
        self.fft_size, self.hop = n, n - Lk + 1
        self.device = device
        if device == "gpu":
            import cupy

            self._xp = cupy
            self._fft = cupy.fft
            # the device the filter spectrum and the segment live on: every later call works
            # there, whichever device is current then
            self._device = cupy.cuda.Device()
        else:
            self._xp, self._fft, self._device = np, None, None
        xp = self._xp
        kt = xp.asarray(np.ascontiguousarray(k2.T, dtype=self.dtype))
        self._K = self._rfft(kt, n)
        self._K *= 1.0 / n  # the inverse transform then runs unnormalised
        # the segment: Lk - 1 samples of history (zeros before the signal), then new samples
        self._seg = xp.zeros((self.out_channels, n), dtype=self.dtype)
        self._fill = Lk - 1
        self._received = 0
        self._produced = 0
        self._emitted = 0
        self._start = _window_start(mode, Lk)
        self._finished = False

    # -- transforms ---------------------------------------------------------------------

    def _rfft(self, a, n):
        if self._fft is not None:
            return self._fft.rfft(a, n, axis=-1)
        return sp_fft.rfft(a, n, axis=-1, workers=self.workers)

    def _irfft(self, a, n):
        if self._fft is not None:
            return self._fft.irfft(a, n, axis=-1, norm="forward")
        return sp_fft.irfft(a, n, axis=-1, norm="forward", workers=self.workers,
                            overwrite_x=True)

    def _segment(self):
        """Convolve the full segment; returns the ``hop`` new outputs (C, hop), on the device
        of the computation."""
        n, Lk = self.fft_size, self.taps
        X = self._rfft(self._seg, n)
        X *= self._K
        y = self._irfft(X, n)[:, Lk - 1:]
        if Lk > 1:
            self._seg[:, :Lk - 1] = self._seg[:, n - Lk + 1:].copy()
        self._fill = Lk - 1
        return y

    def _emit(self, y, end=None):
        """Keep the outputs of ``y`` (full-convolution indices from ``self._produced``) that
        fall in the mode's window ``[start, end)``; returns them as (frames, C) on the host."""
        t0 = self._produced
        self._produced += y.shape[1]
        lo = max(self._start - t0, 0)
        hi = y.shape[1] if end is None else min(y.shape[1], max(end - t0, 0))
        if hi <= lo:
            return None
        self._emitted += hi - lo
        if self._xp is np:
            return y[:, lo:hi].T
        # transpose on the device: the host receives (frames, C) rows, C-contiguous
        return self._xp.asnumpy(self._xp.ascontiguousarray(y[:, lo:hi].T))

    # -- public -------------------------------------------------------------------------

    def _on_device(self):
        return contextlib.nullcontext() if self._device is None else self._device

    def push(self, block):
        """Feed the next ``(frames, channels)`` block; returns the outputs now final."""
        if self._finished:
            raise RuntimeError("push after finish")
        with self._on_device():
            return self._push(block)

    def _push(self, block):
        block = np.asarray(block)
        if block.ndim == 1:
            block = block[:, None]
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(
                f"blocks must have shape (frames, {self.channels}); got {block.shape}")
        out = []
        pos, m = 0, block.shape[0]
        self._received += m
        n = self.fft_size
        if self._xp is not np and m:
            # one host-to-device copy of the whole block, in its (frames, C) layout
            block = self._xp.asarray(np.ascontiguousarray(block))
        while pos < m:
            take = min(n - self._fill, m - pos)
            dst = self._seg[:, self._fill:self._fill + take]
            dst[...] = block[pos:pos + take].T
            self._fill += take
            pos += take
            if self._fill == n:
                y = self._emit(self._segment())
                if y is not None:
                    out.append(y)
        return self._join(out)

    def finish(self):
        """Flush: the remaining outputs of the mode's window (zeros follow the signal)."""
        if self._finished:
            raise RuntimeError("finish called twice")
        self._finished = True
        with self._on_device():
            return self._finish()

    def _finish(self):
        end = self._start + output_frames(self.mode, self._received, self.taps)
        out = []
        while self._produced < end:
            self._seg[:, self._fill:] = 0
            self._fill = self.fft_size
            y = self._emit(self._segment(), end)
            if y is not None:
                out.append(y)
        return self._join(out)

    def _join(self, parts):
        if not parts:
            return np.empty((0, self.out_channels), dtype=self.dtype)
        if len(parts) > 1:
            return np.concatenate(parts, axis=0)
        # a CPU part is a view of the segment's transform; a GPU part is already a new array
        return parts[0].copy() if self._xp is np else parts[0]


def stream_convolve(blocks: Iterable, k, *, mode="full", block_len=None, dtype=None,
                    device="cpu", workers=None) -> Iterator[np.ndarray]:
    """Convolve a signal given as blocks with ``k``, yielding the output in blocks.

    Parameters
    ----------
    blocks : iterable of arrays, each (frames,) or (frames, channels)
        The signal in order (``soundfile.SoundFile.blocks(...)``, slices of a memory-mapped
        ``.npy``, a generator). Block lengths may differ.
    k : array, shape (Lk,) or (Lk, Ck)
        One filter for every channel or one per channel.
    mode, block_len, dtype, device, workers
        As :class:`StreamConvolver`.

    Yields
    ------
    y : numpy.ndarray, shape (frames, C_out)
        Consecutive pieces of the output; concatenated along axis 0 they equal
        ``scipy.signal.fftconvolve(x, k[:, None] or k, mode, axes=0)`` (``"causal"``: its
        first ``L`` frames of ``"full"``).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((100_000, 2))
    >>> k = np.exp(-np.arange(4800) / 800.0)
    >>> pieces = stream_convolve((x[i:i + 30_000] for i in range(0, len(x), 30_000)), k)
    >>> np.concatenate(list(pieces)).shape
    (104799, 2)
    """
    conv = None
    for block in blocks:
        block = np.asarray(block)
        if conv is None:
            channels = 1 if block.ndim == 1 else block.shape[1]
            conv = StreamConvolver(k, channels, mode=mode, block_len=block_len, dtype=dtype,
                                   device=device, workers=workers)
        y = conv.push(block)
        if len(y):
            yield y
    if conv is None:
        raise ValueError("blocks is empty: the signal needs at least one block")
    y = conv.finish()
    if len(y):
        yield y
