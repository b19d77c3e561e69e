"""``longconv bench``: time longconv against the baselines installed on this machine.

Also the timing primitives shared with the repository's benchmark scripts
(``benchmarks/_harness.py`` re-exports them): :class:`Timing`, :func:`time_cpu`,
:func:`time_gpu` and :func:`markdown_table`.

The suite: a batch of ``B = 8`` float32 signals of length ``L`` (one channel each) convolved
causally with per-row filters of ``L`` taps, over a range of ``L``. CPU methods:
``longconv.convolve``, ``scipy.signal.fftconvolve`` and ``scipy.signal.oaconvolve`` (their
``full`` output cut to the first ``L`` samples), and ``torch.fft`` (rfft / irfft with the
filter spectrum precomputed) when PyTorch is installed. GPU methods, when CuPy sees a device:
``longconv.convolve`` on CuPy arrays and ``cupyx.scipy.signal.fftconvolve``. Every result is
checked against longconv's on the same device (relative L2 error <= 1e-4).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

BATCH = 8
QUICK_LENGTHS = (1 << 10, 1 << 12, 1 << 14, 1 << 16)
LENGTHS = tuple(1 << p for p in range(10, 23, 2))
CHECK_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call of one measurement."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repeats were."""
        return (max(self.times) - min(self.times)) / self.median

    def gbps(self, nbytes: int) -> float:
        """Throughput in GB/s (10**9 bytes) when one call moves ``nbytes``."""
        return nbytes / self.median / 1e9


def time_cpu(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1,
             max_seconds: float | None = None) -> Timing:
    """Timings of ``fn()`` on the CPU (``time.perf_counter``) after ``warmup`` untimed calls.

    ``max_seconds`` stops early (after at least three timed calls) once the timed calls took
    that long.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and len(times) >= 3 and sum(times) > max_seconds:
            break
    return Timing(tuple(times))


def time_gpu(fn: Callable[..., object], input_sets: Sequence[Sequence], *, repeat: int = 20,
             warmup: int = 3, stream=None) -> Timing:
    """Timings of ``fn(*input_sets[i % len(input_sets)])`` with CUDA events (CuPy).

    Each timed call is bracketed by its own pair of events on ``stream`` (default: the current
    stream) and the inputs rotate through ``input_sets``, so that with enough sets no call finds
    its inputs in L2. Warm-up calls absorb kernel compilation and planning.
    """
    import cupy

    stream = stream or cupy.cuda.get_current_stream()
    n_sets = len(input_sets)
    if n_sets == 0:
        raise ValueError("input_sets must hold at least one set of arguments")
    with stream:
        for i in range(warmup):
            fn(*input_sets[i % n_sets])
        stream.synchronize()
        events = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(repeat)]
        for i, (start, stop) in enumerate(events):
            args = input_sets[(warmup + i) % n_sets]
            start.record(stream)
            fn(*args)
            stop.record(stream)
        stream.synchronize()
    return Timing(tuple(cupy.cuda.get_elapsed_time(start, stop) / 1e3
                        for start, stop in events))


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown table of the given columns of ``rows``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the suite


def _cpu_methods():
    """(name, make) pairs; ``make(x, k)`` returns a function of no arguments."""
    import scipy.signal

    import longconv

    L_of = lambda x: x.shape[-1]  # noqa: E731

    methods = [
        ("longconv", lambda x, k: lambda: longconv.convolve(x, k, device="cpu")),
        ("scipy fftconvolve",
         lambda x, k: lambda: scipy.signal.fftconvolve(x, k, axes=-1)[..., :L_of(x)]),
        ("scipy oaconvolve",
         lambda x, k: lambda: scipy.signal.oaconvolve(x, k, axes=-1)[..., :L_of(x)]),
    ]
    try:
        import torch
    except ImportError:
        return methods

    def torch_conv(x, k):
        n = 2 * x.shape[-1]
        xt = torch.from_numpy(x)
        kf = torch.fft.rfft(torch.from_numpy(k), n=n)
        return lambda: torch.fft.irfft(torch.fft.rfft(xt, n=n) * kf, n=n)[..., :x.shape[-1]]

    methods.append(("torch.fft", torch_conv))
    return methods


def gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver or no device
        return False


def _gpu_methods():
    import cupyx.scipy.signal

    import longconv

    return [
        ("longconv", lambda x, k: longconv.convolve(x, k)),
        ("cupyx fftconvolve",
         lambda x, k: cupyx.scipy.signal.fftconvolve(x, k, axes=-1)[..., :x.shape[-1]]),
    ]


def _relative_error(y, ref) -> float:
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def run_cpu(lengths, *, repeat, max_seconds, rng, log=print):
    rows = []
    methods = _cpu_methods()
    for L in lengths:
        x = rng.standard_normal((BATCH, L), dtype=np.float32)
        k = rng.standard_normal((BATCH, L), dtype=np.float32)
        ref = None
        for name, make in methods:
            fn = make(x, k)
            y = np.asarray(fn())
            if ref is None:
                ref, err = y, 0.0
            else:
                err = _relative_error(y, ref)
            t = time_cpu(fn, repeat=repeat, warmup=0, max_seconds=max_seconds)
            rows.append({"device": "cpu", "method": name, "batch": BATCH, "length": L,
                         "dtype": "float32", "seconds": t.median, "spread": round(t.spread, 3),
                         "error vs longconv": f"{err:.1e}",
                         "ok": err <= CHECK_TOLERANCE})
            log(f"cpu  L={L:>8}  {name:<18} {t.median * 1e3:10.3f} ms  (error {err:.1e})")
    return rows


def run_gpu(lengths, *, repeat, rng, log=print):
    import cupy

    rows = []
    for L in lengths:
        x = cupy.asarray(rng.standard_normal((BATCH, L), dtype=np.float32))
        k = cupy.asarray(rng.standard_normal((BATCH, L), dtype=np.float32))
        ref = None
        for name, fn in _gpu_methods():
            y = cupy.asnumpy(fn(x, k))
            if ref is None:
                ref, err = y, 0.0
            else:
                err = _relative_error(y, ref)
            t = time_gpu(fn, [(x, k)], repeat=repeat, warmup=2)
            rows.append({"device": "gpu", "method": name, "batch": BATCH, "length": L,
                         "dtype": "float32", "seconds": t.median, "spread": round(t.spread, 3),
                         "error vs longconv": f"{err:.1e}",
                         "ok": err <= CHECK_TOLERANCE})
            log(f"gpu  L={L:>8}  {name:<18} {t.median * 1e3:10.3f} ms  (error {err:.1e})")
    return rows


def machine() -> dict[str, str]:
    """CPU, GPU and versions recorded with every CSV row."""
    from . import _cli

    info = _cli.collect_info()
    devices = info["devices"]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": info["cpu"],
        "cpu_cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else os.cpu_count()),
        "gpu": devices[0]["name"] if devices else "",
        "python": platform.python_version(),
        **{name: version or "" for name, version in info["versions"].items()
           if name != "python"},
    }


def write_csv(path: Path, rows: Sequence[dict], info: dict[str, str]) -> None:
    columns = list(rows[0]) + [c for c in info if c not in rows[0]]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**info, **row})


def plot(path: Path, rows: Sequence[dict], title: str) -> bool:
    """Time against length, log-log, one line per (device, method); False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for row in rows:
        series.setdefault((row["device"], row["method"]), []).append(
            (row["length"], row["seconds"]))
    for (device, method), points in series.items():
        points.sort()
        ax.loglog([p[0] for p in points], [p[1] for p in points], marker="o",
                  linestyle="-" if method == "longconv" else "--", label=f"{method} ({device})")
    ax.set_xlabel(f"length L (batch {BATCH}, float32, causal, L-tap filters)")
    ax.set_ylabel("seconds per call (median)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run_suite(*, quick: bool, out_dir, lengths=None, log=print) -> int:
    """Run the suite, print the table, write ``bench.csv`` and ``bench.png`` into ``out_dir``;
    returns the exit status (1 when a method disagrees with longconv)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"longconv bench: error: cannot create --out {str(out)!r}: {exc.strerror}",
              file=sys.stderr)
        return 2
    lengths = tuple(lengths or (QUICK_LENGTHS if quick else LENGTHS))
    repeat = 3 if quick else 5
    info = machine()
    log(f"# {info['cpu']} ({info['cpu_cores']} usable cores)"
        + (f", {info['gpu']}" if info["gpu"] else ", no GPU")
        + f"; longconv {info['longconv']}, numpy {info['numpy']}, scipy {info['scipy']}")
    rng = np.random.default_rng(0)
    rows = run_cpu(lengths, repeat=repeat, max_seconds=2.0 if quick else 10.0, rng=rng,
                   log=log)
    if gpu_available():
        rows += run_gpu(lengths, repeat=10 if quick else 20, rng=rng, log=log)
    else:
        log("no CUDA device usable through CuPy: GPU cases skipped")
    base = {(r["device"], r["length"]): r["seconds"] for r in rows if r["method"] == "longconv"}
    for r in rows:
        r["vs longconv"] = round(r["seconds"] / base[(r["device"], r["length"])], 2)
        r["seconds"] = float(f"{r['seconds']:.6g}")
    log("")
    log(markdown_table(rows, ["device", "method", "length", "seconds", "vs longconv",
                              "error vs longconv"]))
    write_csv(out / "bench.csv", rows, info)
    log(f"\nwrote {out / 'bench.csv'}")
    title = f"longconv bench: {info['cpu']}" + (f" / {info['gpu']}" if info["gpu"] else "")
    if plot(out / "bench.png", rows, title):
        log(f"wrote {out / 'bench.png'}")
    else:
        log("matplotlib is not installed: no plot written (pip install 'longconv[bench]')")
    bad = [r for r in rows if not r["ok"]]
    for r in bad:
        print(f"longconv bench: error: {r['method']} ({r['device']}, L={r['length']}) "
              f"disagrees with longconv: relative error {r['error vs longconv']}",
              file=sys.stderr)
    return 1 if bad else 0
