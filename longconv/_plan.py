"""Plans: backend selection (one function) and the public :class:`LongConv`."""

from __future__ import annotations

import numpy as np

from . import _arrays, _sizes, _validate

_REAL_TO_COMPLEX = {
    "float16": "complex64",
    "bfloat16": "complex64",
    "float32": "complex64",
    "float64": "complex128",
}


def _host_problem_wants_gpu(k, L, io_dtype):
    """Policy hook: should a problem given as host (NumPy) arrays run on a GPU?

    Today always ``False``: host data stays on the CPU unless ``device="gpu"`` asks otherwise.
    The policy "a GPU for NumPy problems large enough to win over the transfers" plugs in here.
    """
    return False


def _select_backend(k, L, *, data_device, device, mode, n=None, freq_keep=None,
                    kernel_len=None, precision=None, io_dtype, workers=None):
    """The one place a backend is chosen; returns a backend plan (see ``make_conv_plan``).

    Parameters
    ----------
    k : numpy.ndarray or cupy.ndarray, shape (Hk, Lk)
        Filters, on any device; moved to the chosen one.
    L : int
        Signal length.
    data_device : {"cpu", "gpu"}
        Where the caller's data lives.
    device : {None, "cpu", "gpu"}
        The caller's override.
    mode, freq_keep, kernel_len, precision, io_dtype, workers
        As in the backend protocol. ``n`` is the FFT size; when ``freq_keep`` is given it is
        fixed by the shared size table (:func:`longconv._sizes.plan_fft_size`) so that every
        backend computes the same result.

    Order: data on a CUDA device in fp16/bf16 (or ``precision="half"``) is first offered to
    ``longconv._fused.make_plan`` (which may return ``None``: not supported); then CuPy's
    cuFFT (exact path) on the GPU; the CPU backend for host data.
    """
    if device is None:
        device = data_device
        if device == "cpu" and _host_problem_wants_gpu(k, L, io_dtype):
            device = "gpu"
    if n is None and freq_keep is not None:
        Lk = k.shape[-1] if kernel_len is None else min(k.shape[-1], kernel_len)
        n = _sizes.plan_fft_size(mode, L, Lk)
    k = _arrays.to_device(k, device)
    kwargs = dict(mode=mode, n=n, freq_keep=freq_keep, kernel_len=kernel_len,
                  precision=precision, io_dtype=io_dtype, workers=workers)
    if device == "gpu":
        if io_dtype in ("float16", "bfloat16") or precision == "half":
            try:
                from . import _fused
            except ImportError:
                _fused = None
            if _fused is not None:
                plan = _fused.make_plan(k, L, **kwargs)
                if plan is not None:
                    return plan
        from . import _gpu_exact

        return _gpu_exact.make_conv_plan(k, L, **kwargs)
    from . import _cpu

    return _cpu.make_conv_plan(k, L, **kwargs)


def _operand(a, ad, name, bf16_bits):
    """``a`` as a backend array and its logical dtype name; with ``bf16_bits``, uint16 arrays are
    bfloat16 bit patterns."""
    arr, dt = _arrays.to_backend(a, ad)
    _validate.check_numeric_dtype(dt, name)
    dt = _arrays.dtype_name(dt)
    return arr, "bfloat16" if bf16_bits and dt == "uint16" else dt


def io_dtype_for(x_dtype, *others):
    """Output dtype of ``convolve`` / ``LongConv``: ``x``'s, integers and bool -> float64, and
    complex when any other operand (filter, gate, skip) is complex."""
    if x_dtype == "bfloat16":
        base = "bfloat16"
    else:
        kind = np.dtype(x_dtype).kind
        base = "float64" if kind in "biu" else np.dtype(x_dtype).name
    if base in _REAL_TO_COMPLEX and any(
        o is not None and o != "bfloat16" and np.dtype(o).kind == "c" for o in others
    ):
        return _REAL_TO_COMPLEX[base]
    return base


class LongConv:
    """A reusable long convolution: validated once, filter spectrum computed once.

    Parameters
    ----------
    k : array, shape (H, Lk) or (Lk,)
        Filters (NumPy or CuPy; one per channel, or one shared by all channels).
    length : int
        Sequence length ``L`` of the inputs (any ``L >= 1``).
    causal : bool, default True
        ``True``: ``y[t] = sum_{s=0..t} k[s] x[t-s]``; ``False``: the centred ("same")
        convolution of ``scipy.signal.fftconvolve``.
    dtype : dtype or "bfloat16", optional
        I/O dtype of the inputs. When given, calls with another dtype raise ``TypeError``;
        when ``None`` the plan serves any dtype and the output has ``x``'s dtype (see
        :func:`longconv.convolve`).
    precision : {None, "half", "single", "double"}, optional
        Arithmetic precision (``None``: by dtype).
    kernel_len : int, optional
        Use only the first ``kernel_len`` taps of ``k``.
    freq_keep : float in (0, 1], optional
        Keep the filter's rfft bins ``j < ceil(freq_keep * (n//2 + 1))`` at the plan's FFT
        size ``n`` (:attr:`fft_size`), zero the rest.
    device : {None, "cpu", "gpu"}, optional
        Where to compute. ``None``: where each call's data lives.

    Attributes
    ----------
    fft_size : int
        FFT size of the plan built for ``k``'s device and dtype.
    backend : str
        ``"cpu"``, ``"cupy"`` or ``"fused"``.

    Examples
    --------
    >>> import numpy as np
    >>> from longconv import LongConv
    >>> rng = np.random.default_rng(0)
    >>> plan = LongConv(rng.standard_normal((4, 1000)), 1000)
    >>> y = plan(rng.standard_normal((2, 4, 1000)))
    >>> y.shape
    (2, 4, 1000)
    """

    def __init__(self, k, length, *, causal=True, dtype=None, precision=None, kernel_len=None,
                 freq_keep=None, device=None):
        self._setup(k, length, causal, dtype, precision, kernel_len, freq_keep, device)
        io = self.dtype or io_dtype_for(self._k_dtype)
        self._primary = self._plan(self.device or _arrays.device_of(self._k), io)

    @classmethod
    def _unbuilt(cls, k, length, *, causal, precision, kernel_len, freq_keep):
        """A plan whose backend plan is built by its first call (one-shot ``convolve``)."""
        self = cls.__new__(cls)
        self._setup(k, length, causal, None, precision, kernel_len, freq_keep, None)
        self._primary = None
        return self

    def _setup(self, k, length, causal, dtype, precision, kernel_len, freq_keep, device):
        self.causal = _validate.check_causal(causal)
        self.length = _validate.check_length(length)
        self.dtype = _validate.check_io_dtype(dtype)
        self.precision = _validate.check_precision(precision)
        self.kernel_len = _validate.check_kernel_len(kernel_len)
        self.freq_keep = _validate.check_freq_keep(freq_keep)
        self.device = _validate.check_device(device)
        self.mode = "causal" if self.causal else "same"
        self._plans = {}
        self._set_k(k)

    def _set_k(self, k, shape=None):
        ad = _arrays.common_adapter({"k": k})
        arr, kdt = _operand(k, ad, "k", self.dtype == "bfloat16")
        _validate.check_filter(arr.shape)
        if shape is not None and tuple(arr.shape) != shape:
            raise ValueError(
                f"k must keep the plan's filter shape {shape}; got shape {tuple(arr.shape)}"
            )
        self._k_shape = tuple(arr.shape)
        self._k_dtype = kdt
        self._k = arr.reshape(1, -1) if arr.ndim == 1 else arr
        if kdt == "bfloat16":
            # backends receive filters as numbers, never as bfloat16 bit patterns (exact)
            self._k = _arrays.bf16_to_float32(self._k, _arrays.xp_of(self._k))
        self.H = self._k.shape[0] if arr.ndim == 2 else 1

    def _plan(self, device, io_dtype):
        key = (device, io_dtype)
        plan = self._plans.get(key)
        if plan is None:
            plan = _select_backend(
                self._k, self.length, data_device=device, device=device, mode=self.mode,
                freq_keep=self.freq_keep, kernel_len=self.kernel_len,
                precision=self.precision, io_dtype=io_dtype,
            )
            self._plans[key] = plan
        return plan

    def _primary_plan(self):
        if self._primary is None:
            io = self.dtype or io_dtype_for(self._k_dtype)
            self._primary = self._plan(self.device or _arrays.device_of(self._k), io)
        return self._primary

    @property
    def fft_size(self):
        return self._primary_plan().fft_size

    @property
    def backend(self):
        return self._primary_plan().backend

    def update(self, k):
        """Replace the filters (same shape) and recompute every cached spectrum."""
        self._set_k(k, shape=self._k_shape)
        for (device, _), plan in self._plans.items():
            plan.update(_arrays.to_device(self._k, device))

    def __repr__(self):
        k = "x".join(str(s) for s in self._k_shape)
        return (
            f"LongConv(k={k} {self._k_dtype}, length={self.length}, mode={self.mode!r}, "
            f"dtype={self.dtype}, precision={self.precision}, backend={self.backend!r}, "
            f"fft_size={self.fft_size})"
        )

    def __call__(self, x, pregate=None, postgate=None, skip=None):
        """Convolve ``x``.

        Parameters
        ----------
        x : array, shape (..., H, L) or (L,)
        pregate, postgate : array, shape broadcastable to x's, optional
        skip : array, shape (H,), optional

        Returns
        -------
        y : array, shape (..., H, L)
            ``postgate * conv(pregate * x, k) + skip[h] * x``, same kind of array as ``x``.
        """
        named = {"x": x, "pregate": pregate, "postgate": postgate, "skip": skip}
        ad = _arrays.common_adapter(named)
        xa, xdt = _operand(x, ad, "x", self.dtype == "bfloat16")
        _validate.check_signal(xa.shape)
        _validate.check_call_length(xa.shape, self.length)
        _validate.check_filter_matches(xa.shape, self._k_shape)
        if self.dtype is not None and xdt != self.dtype:
            raise TypeError(f"x must have dtype {self.dtype} (the plan's dtype); got {xdt}")
        extra = {}
        dts = [self._k_dtype]
        for name in ("pregate", "postgate", "skip"):
            v = named[name]
            if v is None:
                continue
            a, adt = _operand(v, ad, name, xdt == "bfloat16")
            if name == "skip":
                _validate.check_skip(a.shape, xa.shape[-2] if xa.ndim >= 2 else 1)
            else:
                _validate.check_gate(a.shape, xa.shape, name)
            extra[name] = a
            dts.append(adt)
        io = io_dtype_for(xdt, *dts)
        data_device = _arrays.device_of(xa)
        device = self.device or data_device
        xp = _arrays.xp_for(device)
        shape = xa.shape
        B = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        H = shape[-2] if len(shape) >= 2 else 1
        out_dt = np.float32 if io == "bfloat16" else np.dtype(io)
        if xa.size == 0:
            y = xp.empty(shape, dtype=np.uint16 if io == "bfloat16" else out_dt)
            return ad.from_backend(_arrays.to_device(y, data_device), io, x)
        capacity = _validate.host_memory() if device == "cpu" else _arrays.gpu_memory()
        where = "host" if device == "cpu" else "GPU"
        _validate.check_fits_in_memory(shape, np.dtype(out_dt).itemsize, "the output",
                                       capacity, where)
        _validate.check_fits_in_memory(shape, xa.dtype.itemsize, "x", capacity, where)
        x3 = xp.ascontiguousarray(_arrays.to_device(xa, device).reshape(B, H, self.length))
        gates = {}
        for name in ("pregate", "postgate"):
            if name in extra:
                g = _arrays.to_device(extra[name], device)
                g = xp.broadcast_to(g, shape).reshape(B, H, self.length)
                gates[name] = xp.ascontiguousarray(g)
        skip = extra.get("skip")
        if skip is not None:
            skip = xp.ascontiguousarray(
                xp.broadcast_to(_arrays.to_device(skip, device).reshape(-1), (H,))
            )
        plan = self._plan(device, io)
        if self._primary is None:
            self._primary = plan
        y = plan(x3, gates.get("pregate"), gates.get("postgate"), skip)
        y = y.reshape(shape)
        return ad.from_backend(_arrays.to_device(y, data_device), io, x)
