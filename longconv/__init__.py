"""longconv: fast long convolutions with a SciPy-compatible API, on the CPU and on NVIDIA GPUs.

Functions and classes
---------------------
fftconvolve_long(in1, in2, mode="full", axes=None, *, precision=None, kernel_len=None,
                 freq_keep=None, workers=None, device=None)
    Drop-in for ``scipy.signal.fftconvolve`` (same values, shapes, dtypes and errors), plus
    ``mode="circular"`` and the keyword-only extras.
convolve(x, k, causal=True, *, pregate=None, postgate=None, skip=None, precision=None,
         kernel_len=None, freq_keep=None, device=None)
    Sequence-model form: ``x`` (..., H, L), ``k`` (H, Lk); causal or centred; gates and skip:
    ``y = postgate * conv(pregate * x, k) + skip[h] * x``.
LongConv(k, length, *, causal=True, dtype=None, precision=None, kernel_len=None,
         freq_keep=None, device=None)
    A reusable plan with the filter spectrum cached; ``plan(x, pregate=None, postgate=None,
    skip=None)``, ``plan.update(k)``, ``plan.fft_size``, ``plan.backend``.
stream_convolve(blocks, k, *, mode="full", block_len=None, dtype=None, device="cpu",
                workers=None)
    Streaming overlap-save over a signal given as ``(frames, channels)`` blocks (longer than
    memory); yields the output in blocks. :class:`StreamConvolver` is the push/finish form.
fft_size(n_min), decomposition(n)
    The FFT size table shared by every backend (powers of two, radix-16 Monarch factorisation).
testing
    The float64 oracle, tolerance table and helpers (:mod:`longconv.testing`).

Arrays
------
NumPy arrays (and anything ``numpy.asarray`` accepts) run on the CPU backend (``scipy.fft``), or
on a GPU when one is usable and the problem is large enough to pay for the copies (``device=``
decides instead); CuPy arrays run on the GPU (fused tensor-core kernels where available, else
cuFFT). Results come back as the caller's kind of array. bfloat16 travels as ``uint16`` bit
patterns. Dask arrays give lazy dask arrays (chunks convolved by the paths above, overlap-save
along a chunked time axis).
"""

from ._plan import LongConv
from ._signaltools import convolve, fftconvolve_long
from ._sizes import decomposition, fft_size
from ._stream import StreamConvolver, stream_convolve

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("longconv")
except PackageNotFoundError:
    __version__ = "0.1.0"

__all__ = [
    "LongConv",
    "StreamConvolver",
    "__version__",
    "convolve",
    "decomposition",
    "fft_size",
    "fftconvolve_long",
    "stream_convolve",
    "testing",
]


def __getattr__(name):
    if name == "testing":
        import importlib

        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module 'longconv' has no attribute {name!r}")
