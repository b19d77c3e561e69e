"""The ``longconv`` command (also ``python -m longconv``).

``longconv demo``
    The main job: convolve a batch of long random signals with a long random filter on the best
    available backend, check the result against the float64 reference of
    :mod:`longconv.testing` and print backend, shapes, time and error. Exits with status 1 when
    the error exceeds the tolerance of the dtype.
``longconv info``
    Versions, the CUDA device (name, compute capability, SM count, shared memory), NVRTC and
    the kernel cache location.
``longconv convolve SIGNAL FILTER OUT``
    Stream a WAV / FLAC / ``.npy`` signal through a filter file into OUT in bounded memory
    (:mod:`longconv._signalfiles`, :mod:`longconv._stream`).
``longconv bench``
    The benchmark suite on this machine against the installed baselines; a table, a CSV and a
    PNG plot (:mod:`longconv._bench`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import time

import numpy as np

MODES = ("causal", "full", "same", "valid", "circular")
DTYPES = ("float16", "float32", "float64")
_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _positive_int(text: str) -> int:
    """argparse type: a positive integer, optionally with a binary suffix (``64K``, ``1M``)."""
    raw = text.strip().replace("_", "")
    scale = 1
    if raw and raw[-1].lower() in _SUFFIXES:
        scale = _SUFFIXES[raw[-1].lower()]
        raw = raw[:-1]
    try:
        value = int(raw) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer such as 4096, 64K or 1M; got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longconv",
        description="Fast long 1-D convolutions on the CPU and on NVIDIA GPUs.",
        epilog="Run 'longconv COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"longconv {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="convolve long random signals with a long filter and check the result",
        description=(
            "Convolve BATCH random signals of LENGTH samples with one random filter of TAPS "
            "taps on the best available backend (the GPU when CuPy and a CUDA device are "
            "present, else the CPU), check the result against a float64 reference on a few "
            "rows and print backend, shapes, time and relative error. Exits with status 1 "
            "when the error exceeds the tolerance of the dtype. Sizes accept the binary "
            "suffixes K and M (64K = 65536, 1M = 1048576)."
        ),
    )
    demo.add_argument("--length", type=_positive_int, default=1 << 20, metavar="L",
                      help="samples per signal (default: 1M = 1048576)")
    demo.add_argument("--taps", type=_positive_int, default=1 << 16, metavar="LK",
                      help="filter taps (default: 64K = 65536)")
    demo.add_argument("--batch", type=_positive_int, default=8, metavar="B",
                      help="number of signals (default: 8)")
    demo.add_argument("--mode", choices=MODES, default="causal",
                      help="causal: longconv.convolve (first L outputs of the full "
                           "convolution); full, same, valid, circular: "
                           "longconv.fftconvolve_long (default: causal)")
    demo.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                      help="where to compute; auto picks the GPU when one is usable "
                           "(default: auto)")
    demo.add_argument("--dtype", choices=DTYPES, default="float32",
                      help="dtype of signal and filter (default: float32)")
    demo.add_argument("--repeat", type=_positive_int, default=3, metavar="N",
                      help="timed calls after the first one; the median is reported "
                           "(default: 3)")
    demo.add_argument("--check-rows", type=_positive_int, default=2, metavar="R",
                      help="rows checked against the float64 reference (default: 2)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(func=run_demo)

    info = commands.add_parser(
        "info",
        help="print versions, the CUDA device and the kernel cache location",
        description=(
            "Print the versions of longconv and of the array libraries it works with, the "
            "CUDA device (name, compute capability, SM count, shared memory per block), the "
            "NVRTC library used to compile the kernels and the kernel cache location."
        ),
    )
    info.set_defaults(func=run_info)

    conv = commands.add_parser(
        "convolve",
        help="convolve a WAV/FLAC/.npy signal with a filter file, streaming",
        description=(
            "Convolve the signal file SIGNAL with the filter (impulse response) file FILTER and "
            "write OUT. Files are WAV or FLAC (needs soundfile: pip install "
            "'longconv[audio]') or .npy arrays of shape (frames,) or (frames, channels). The "
            "signal is read in overlapping blocks (overlap-save, filter spectrum computed "
            "once), so memory depends on the filter, not on the recording's length. A filter "
            "of one channel applies to every channel; one of C channels to a signal of C "
            "channels (channel by channel) or to a mono signal (C outputs). OUT takes the "
            "signal's sample rate; WAV output is 32-bit float, FLAC 24-bit PCM (samples "
            "beyond full scale are clipped, with a warning), .npy float64. Exit status 2 with "
            "a one-line message for unreadable files, different sample rates, incompatible "
            "channel counts and an existing OUT without --force."
        ),
    )
    conv.add_argument("signal", metavar="SIGNAL", help="input signal (.wav, .flac, .npy)")
    conv.add_argument("filter", metavar="FILTER", help="filter / impulse response "
                      "(.wav, .flac, .npy)")
    conv.add_argument("out", metavar="OUT", help="output file (.wav, .flac, .npy)")
    conv.add_argument("--mode", choices=("full", "same", "causal"), default="full",
                      help="full: every output sample (L + Lk - 1 frames, the reverb tail "
                           "included); causal: the first L frames of full (aligned with the "
                           "input); same: L frames centred as scipy.signal.fftconvolve "
                           "(default: full)")
    conv.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                      help="where the FFTs run; gpu needs CuPy and a CUDA device "
                           "(default: cpu)")
    conv.add_argument("--normalize", action="store_true",
                      help="scale the output so that its largest absolute sample over all "
                           "channels is 32767/32768 (just below full scale; one gain for "
                           "every channel); an all-zero output is left as is")
    conv.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    conv.add_argument("--block-len", type=_positive_int, default=None, metavar="N",
                      help="new samples per FFT segment (default: chosen from the filter "
                           "length, a few times the filter)")
    conv.set_defaults(func=run_convolve)

    bench = commands.add_parser(
        "bench",
        help="benchmark this machine against the installed baselines",
        description=(
            "Time longconv against the baselines installed here (scipy.signal.fftconvolve and "
            "oaconvolve on the CPU; cupyx.scipy.signal.fftconvolve on a GPU when CuPy sees "
            "one) over a range of lengths, print a table, and write bench.csv and bench.png "
            "(time against length, log-log; needs matplotlib) into DIR."
        ),
    )
    bench.add_argument("--quick", action="store_true",
                       help="fewer and shorter lengths, fewer repeats (well under a minute)")
    bench.add_argument("--out", default="longconv-bench", metavar="DIR",
                       help="directory for bench.csv and bench.png, created if needed "
                            "(default: ./longconv-bench)")
    bench.set_defaults(func=run_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``longconv`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args, parser)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------------------------
# info


def _version(dist: str = "longconv") -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        if dist == "longconv":
            import longconv

            return getattr(longconv, "__version__", "unknown")
        return None


def _first_version(*dists: str) -> str | None:
    for dist in dists:
        version = _version(dist)
        if version is not None:
            return f"{version} ({dist})" if len(dists) > 1 else version
    return None


def cpu_model() -> str:
    """The CPU's model name, best effort."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def gpu_status() -> tuple[list[dict], str | None]:
    """The usable CUDA devices, or an empty list and the reason there are none."""
    try:
        import cupy
    except ImportError:
        return [], ("CuPy is not installed (pip install 'longconv[cuda13]' or "
                    "'longconv[cuda12]')")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when there is no driver or device
        return [], f"CuPy cannot use CUDA: {str(exc).splitlines()[0]}"
    if count == 0:
        return [], "CUDA reports no device"
    devices = []
    for device_id in range(count):
        attrs = cupy.cuda.Device(device_id).attributes
        props = cupy.cuda.runtime.getDeviceProperties(device_id)
        name = props["name"]
        if isinstance(name, bytes):
            name = name.decode(errors="replace")


        def get(attr, prop, attrs=attrs, props=props):
            value = attrs.get(attr, props.get(prop))
            return None if value is None else int(value)

        devices.append({
            "id": device_id,
            "name": name,
            "compute_capability": (int(props["major"]), int(props["minor"])),
            "sm_count": get("MultiProcessorCount", "multiProcessorCount"),
            "smem_per_block_optin": get("MaxSharedMemoryPerBlockOptin",
                                        "sharedMemPerBlockOptin"),
            "l2_bytes": get("L2CacheSize", "l2CacheSize"),
            "memory_bytes": int(props["totalGlobalMem"]),
        })
    return devices, None


def _kernel_cache_dir() -> str | None:
    try:
        from longconv import _compile
    except ImportError:
        _compile = None
    if _compile is not None and hasattr(_compile, "cache_dir"):
        return _compile.cache_dir()
    return os.environ.get("CUPY_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cupy", "kernel_cache"))


def _nvrtc() -> str:
    try:
        from longconv import _compile

        version = _compile.nvrtc_version()
        path = _compile.nvrtc_path()
    except Exception as exc:  # the loader is optional for this report
        return f"unknown ({type(exc).__name__}: {exc})"
    if version is None:
        return "not found (pip install nvidia-cuda-nvrtc, or set CUDA_PATH)"
    return f"{version[0]}.{version[1]} ({path})"


def collect_info() -> dict:
    """Everything ``longconv info`` prints, as a dictionary."""
    devices, why_none = gpu_status()
    versions = {
        "longconv": _version(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": _version("scipy"),
        "cupy": _first_version("cupy-cuda13x", "cupy-cuda12x", "cupy"),
        "torch": _version("torch"),
        "jax": _version("jax"),
    }
    return {
        "versions": versions,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "devices": devices,
        "no_device_reason": why_none,
        "nvrtc": _nvrtc(),
        "kernel_cache": _kernel_cache_dir(),
    }


def run_info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    info = collect_info()
    rows = [(name, version or "not installed") for name, version in info["versions"].items()]
    rows += [("platform", info["platform"]), ("cpu", f"{info['cpu']} ({info['cpu_count']} "
                                                     "logical cores)")]
    if info["devices"]:
        for dev in info["devices"]:
            major, minor = dev["compute_capability"]
            rows.append((f"gpu {dev['id']}", (
                f"{dev['name']}, compute capability {major}.{minor}, {dev['sm_count']} SMs, "
                f"{dev['smem_per_block_optin']} B shared memory per block (opt-in), "
                f"{(dev['l2_bytes'] or 0) / 2**20:.0f} MiB L2, "
                f"{dev['memory_bytes'] / 2**30:.1f} GiB memory")))
    else:
        rows.append(("gpu", f"no CUDA device: {info['no_device_reason']}"))
    rows.append(("nvrtc", info["nvrtc"]))
    rows.append(("kernel cache", info["kernel_cache"] or "in memory only (CUPY_CACHE_IN_MEMORY)"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


# --------------------------------------------------------------------------------------------
# convolve and bench


def run_convolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ._signalfiles import SignalFileError, convolve_files

    if args.device == "gpu":
        devices, why_none = gpu_status()
        if not devices:
            print(f"longconv convolve: error: --device gpu: no usable CUDA device: {why_none}",
                  file=sys.stderr)
            return 2
    try:
        job = convolve_files(args.signal, args.filter, args.out, mode=args.mode,
                             device=args.device, normalize=args.normalize, force=args.force,
                             block_len=args.block_len, progress=sys.stderr.isatty())
    except SignalFileError as exc:
        print(f"longconv convolve: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("longconv convolve: error: out of memory for the filter's FFT segments; pass a "
              "smaller --block-len", file=sys.stderr)
        return 2
    rate = f", {job['samplerate']} Hz" if job["samplerate"] else ""
    print(f"wrote {args.out}: {job['frames']} frames x {job['channels']} channels{rate}"
          + (f", gain {job['gain']:.6g}" if args.normalize else ""))
    if job["clipped"]:
        print(f"longconv convolve: warning: {job['clipped']} samples beyond full scale were "
              f"clipped in {args.out}; --normalize scales the output below full scale",
              file=sys.stderr)
    return 0


def run_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ._bench import run_suite

    return run_suite(quick=args.quick, out_dir=args.out)


# --------------------------------------------------------------------------------------------
# demo


def _error(message: str) -> int:
    print(f"longconv demo: error: {message}", file=sys.stderr)
    return 2


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def _memory_limit(device: dict | None) -> int | None:
    """Bytes of memory of the GPU ``device``, or of the machine when None (None if unknown)."""
    if device is not None:
        return device["memory_bytes"]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _tolerance(dtype) -> float:
    """Relative L2 error allowed for results of ``dtype`` (:func:`longconv.testing.tolerance`)."""
    from longconv import testing

    return testing.tolerance(dtype)


def _synchronize(xp) -> None:
    if xp is not np:
        xp.cuda.Device().synchronize()


def run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import longconv
    from longconv import testing

    if args.mode == "valid" and args.taps > args.length:
        return _error(f"--mode valid needs --taps <= --length; got --taps {args.taps} and "
                      f"--length {args.length}")
    devices, why_none = gpu_status()
    if args.device == "gpu" and not devices:
        return _error(f"--device gpu: no usable CUDA device: {why_none}")
    use_gpu = args.device == "gpu" or (args.device == "auto" and bool(devices))

    dtype = np.dtype(args.dtype)
    out_len = args.length + args.taps - 1 if args.mode == "full" else args.length
    # inputs, output and the FFT workspace of a few rows, in the compute precision
    nbytes = (args.batch * (args.length + out_len) + args.taps) * max(dtype.itemsize, 4)
    limit = _memory_limit(devices[0] if use_gpu else None)
    if limit is not None and nbytes > limit:
        return _error(f"the inputs and output need about {_gib(nbytes)} but the "
                      f"{'GPU' if use_gpu else 'machine'} has {_gib(limit)}; choose a smaller "
                      "--batch, --length or --taps")
    try:
        rng = np.random.default_rng(args.seed)
        x = rng.standard_normal((args.batch, args.length), dtype=np.float32).astype(dtype)
        k = rng.standard_normal(args.taps, dtype=np.float32).astype(dtype)
    except MemoryError:
        return _error(f"not enough memory for the inputs (about {_gib(nbytes)}); "
                      "choose a smaller --batch, --length or --taps")

    if use_gpu:
        import cupy as xp

        backend = f"gpu {devices[0]['id']}: {devices[0]['name']} (CuPy {xp.__version__})"
    else:
        xp = np
        backend = f"cpu: {cpu_model()} ({os.cpu_count()} logical cores)"
    x_in, k_in = xp.asarray(x), xp.asarray(k)
    device = "gpu" if use_gpu else "cpu"  # the backend printed above, not the NumPy policy

    if args.mode == "causal":
        what = "causal convolution (longconv.convolve)"

        def call():
            return longconv.convolve(x_in, k_in, device=device)
    else:
        what = f"mode={args.mode!r} convolution (longconv.fftconvolve_long)"

        def call():
            return longconv.fftconvolve_long(x_in, k_in[None, :], mode=args.mode, axes=-1,
                                             device=device)

    times = []
    try:
        for _ in range(1 + args.repeat):
            t0 = time.perf_counter()
            y = call()
            _synchronize(xp)
            times.append(time.perf_counter() - t0)
    except MemoryError:
        return _error("out of memory; choose a smaller --batch, --length or --taps")
    y = y if xp is np else xp.asnumpy(y)

    rows = sorted({round(i * (args.batch - 1) / max(args.check_rows - 1, 1))
                   for i in range(min(args.check_rows, args.batch))})
    ref = testing.reference(x[rows], k, mode=args.mode)
    err = testing.relative_error(y[rows], ref)
    tol = _tolerance(dtype)
    median = statistics.median(times[1:])
    n_out = y.size

    print(f"longconv {_version()} demo: {what}")
    print(f"  backend     {backend}")
    print(f"  input       x {x.shape} {x.dtype}, k {k.shape} {k.dtype}")
    print(f"  output      y {y.shape} {y.dtype}")
    print(f"  first call  {times[0] * 1e3:9.2f} ms (includes planning"
          f"{' and kernel loading' if use_gpu else ''})")
    print(f"  time        {median * 1e3:9.2f} ms, median of {args.repeat} calls "
          f"({n_out / median / 1e6:,.1f} M output samples/s)")
    status = "OK" if err <= tol else "FAILED"
    print(f"  error       {err:.2e} relative L2 against the float64 reference on rows {rows} "
          f"(tolerance {tol:.0e}): {status}")
    return 0 if err <= tol else 1
