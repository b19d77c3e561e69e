"""Signal files for ``longconv convolve``: WAV / FLAC (through soundfile) and ``.npy``.

Readers give ``(frames, channels)`` float64 blocks without loading the whole file (``.npy`` is
memory-mapped); writers take the same blocks. :func:`convolve_files` streams a signal file
through :class:`longconv._stream.StreamConvolver` into an output file.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from ._stream import StreamConvolver, output_frames

AUDIO_SUFFIXES = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24")}
SUFFIXES = (".wav", ".flac", ".npy")

#: ``--normalize`` scales the output so that its largest absolute sample (over every channel)
#: is this: 32767/32768, the largest 16-bit PCM value, about -0.0003 dBFS.
NORMALIZE_PEAK = 1.0 - 2.0**-15


class SignalFileError(Exception):
    """A problem with the command's files, reported as one line and exit status 2."""


def _soundfile():
    try:
        import soundfile
    except ImportError:
        raise SignalFileError(
            "WAV and FLAC files need the soundfile package: pip install 'longconv[audio]'"
        ) from None
    return soundfile


class SignalReader:
    """A signal file read in blocks: ``frames``, ``channels``, ``samplerate`` (None for
    ``.npy``), ``mono_1d`` (a 1-D ``.npy``) and :meth:`blocks`."""

    def __init__(self, path, role):
        self.path = Path(path)
        self.role = role
        suffix = self.path.suffix.lower()
        if suffix not in SUFFIXES:
            raise SignalFileError(
                f"{role} {str(path)!r}: unsupported file type {suffix or '(none)'!r}; use "
                f"{', '.join(SUFFIXES)}")
        self.mono_1d = False
        if not self.path.is_file():
            what = "is a directory" if self.path.is_dir() else "no such file"
            raise SignalFileError(f"cannot read {role} {str(path)!r}: {what}")
        try:
            if suffix == ".npy":
                arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
                if arr.ndim not in (1, 2) or arr.shape[0] == 0 or arr.dtype.kind not in "biuf":
                    raise ValueError(f"expected a non-empty real array of shape (frames,) or "
                                     f"(frames, channels); got shape {arr.shape}, dtype "
                                     f"{arr.dtype}")
                self.mono_1d = arr.ndim == 1
                self._array = arr.reshape(arr.shape[0], -1)
                self.frames, self.channels = self._array.shape
                self.samplerate = None
            else:
                sf = _soundfile()
                info = sf.info(str(self.path))
                self._array = None
                self.frames, self.channels = int(info.frames), int(info.channels)
                self.samplerate = int(info.samplerate)
                if self.frames == 0:
                    raise ValueError("the file holds no frames")
        except SignalFileError:
            raise
        except Exception as exc:  # unreadable: missing, corrupt, wrong format
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SignalFileError(f"cannot read {role} {str(path)!r}: {reason}") from None

    def blocks(self, size):
        """``(frames, channels)`` float64 blocks of ``size`` frames (the last may be shorter)."""
        if self._array is not None:
            for i in range(0, self.frames, size):
                yield np.asarray(self._array[i:i + size], dtype=np.float64)
            return
        sf = _soundfile()
        with sf.SoundFile(str(self.path)) as fh:
            yield from fh.blocks(blocksize=size, dtype="float64", always_2d=True)

    def read_all(self):
        return np.concatenate(list(self.blocks(1 << 20)), axis=0)


class _NpyWriter:
    def __init__(self, path, frames, channels, squeeze, dtype=np.float64):
        shape = (frames,) if squeeze else (frames, channels)
        self._out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self._pos = 0

    def write(self, block):
        m = block.shape[0]
        view = self._out[self._pos:self._pos + m]
        view[...] = block.reshape(view.shape)
        self._pos += m

    def close(self):
        self._out.flush()
        del self._out


class _SoundWriter:
    def __init__(self, path, samplerate, channels, fmt, subtype):
        self._fh = _soundfile().SoundFile(path, mode="w", samplerate=samplerate,
                                          channels=channels, format=fmt, subtype=subtype)
        self._clip = subtype.startswith("PCM")
        self.clipped = 0

    def write(self, block):
        if self._clip:
            self.clipped += int(np.count_nonzero(np.abs(block) > 1.0))
        self._fh.write(block)

    def close(self):
        self._fh.close()


def _progress(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="frame", unit_scale=True, desc="convolve", file=sys.stderr)


def convolve_files(signal, filt, out, *, mode="full", device="cpu", normalize=False,
                   force=False, block_len=None, progress=False):
    """Convolve the signal file ``signal`` with the filter file ``filt`` into ``out``.

    The signal is streamed in blocks (bounded memory); the filter is read whole. Channels: a
    filter of one channel applies to every signal channel, one of ``C`` channels to a signal
    of ``C`` (channel by channel) or to a mono signal (giving ``C`` outputs). ``.npy`` signals
    are ``(frames,)`` or ``(frames, channels)``. The output takes the signal's sample rate (or
    the filter's for a ``.npy`` signal); WAV output is 32-bit float, FLAC 24-bit PCM, ``.npy``
    float64. ``normalize`` scales the output so that its peak absolute sample over all
    channels is ``NORMALIZE_PEAK`` (an all-zero output stays zero). ``progress`` shows a tqdm
    progress bar on standard error (when tqdm is installed). Returns a dict describing the job
    (frames, channels, sample rate, gain, clipped samples).
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise SignalFileError(f"OUT {str(out)!r}: unsupported file type {suffix or '(none)'!r}; "
                              f"use {', '.join(SUFFIXES)}")
    sig = SignalReader(signal, "SIGNAL")
    flt = SignalReader(filt, "FILTER")
    if out.exists():
        if not force:
            raise SignalFileError(f"OUT {str(out)!r} exists; pass --force to overwrite it")
        for r in (sig, flt):
            if out.resolve() == r.path.resolve():
                raise SignalFileError(f"OUT {str(out)!r} is the {r.role} file; choose another")
    if not out.parent.exists():
        raise SignalFileError(f"OUT {str(out)!r}: directory {str(out.parent)!r} does not exist")
    if sig.samplerate and flt.samplerate and sig.samplerate != flt.samplerate:
        raise SignalFileError(
            f"sample rates differ: SIGNAL {sig.samplerate} Hz, FILTER {flt.samplerate} Hz; "
            "resample one of them first")
    if not (flt.channels == 1 or sig.channels in (1, flt.channels)):
        raise SignalFileError(
            f"channel counts do not match: SIGNAL has {sig.channels}, FILTER {flt.channels}; "
            "the filter needs 1 channel (applied to every channel) or as many as the signal")
    rate = sig.samplerate or flt.samplerate
    if suffix != ".npy" and rate is None:
        raise SignalFileError(
            f"OUT {str(out)!r}: neither SIGNAL nor FILTER has a sample rate (both .npy); "
            "write a .npy output")
    k = flt.read_all()
    conv = StreamConvolver(k, sig.channels, mode=mode, block_len=block_len, dtype=np.float64,
                           device=device)
    frames = output_frames(mode, sig.frames, k.shape[0])
    channels = conv.out_channels
    squeeze = sig.mono_1d and flt.mono_1d and channels == 1

    def make_writer(path, final):
        if suffix == ".npy":
            return _NpyWriter(path, frames, channels, squeeze)
        if not final:
            return _NpyWriter(path, frames, channels, False, np.float32)
        fmt, subtype = AUDIO_SUFFIXES[suffix]
        return _SoundWriter(path, rate, channels, fmt, subtype)

    tmp_files = []

    def temp_path(tag, ext=suffix):
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".{tag}{ext}",
                                    dir=out.parent)
        os.close(fd)
        tmp_files.append(name)
        return name

    bar = _progress(sig.frames, progress)
    peak = 0.0
    try:
        first = temp_path("pass1", ".npy") if normalize else temp_path("tmp")
        writer = make_writer(first, final=not normalize)
        for block in sig.blocks(conv.hop):
            y = conv.push(block)
            if len(y):
                peak = max(peak, float(np.abs(y).max()))
                writer.write(y)
            if bar is not None:
                bar.update(block.shape[0])
        y = conv.finish()
        if len(y):
            peak = max(peak, float(np.abs(y).max()))
            writer.write(y)
        writer.close()
        gain = 1.0
        clipped = getattr(writer, "clipped", 0)
        result = first
        if normalize:
            gain = NORMALIZE_PEAK / peak if peak > 0 else 1.0
            result = temp_path("tmp")
            final = make_writer(result, final=True)
            data = np.load(first, mmap_mode="r")
            for i in range(0, frames, 1 << 18):
                final.write(np.asarray(data[i:i + (1 << 18)], dtype=np.float64) * gain)
            del data
            final.close()
            clipped = getattr(final, "clipped", 0)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(result, 0o666 & ~umask)  # temporary files are private; OUT is not
        os.replace(result, out)
    finally:
        if bar is not None:
            bar.close()
        for name in tmp_files:
            if os.path.exists(name):
                os.unlink(name)
    return {"frames": frames, "channels": channels, "samplerate": rate, "peak": peak,
            "gain": gain, "clipped": clipped, "fft_size": conv.fft_size, "hop": conv.hop}
