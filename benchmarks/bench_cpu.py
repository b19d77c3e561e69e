"""CPU benchmark: longconv against ``scipy.signal.fftconvolve``.

Cases (all along the last axis):

* x (16, 64, 65536), k (64, 65536), float32 and float64, modes full and causal
  (causal = the first L outputs of full, ``longconv.convolve``);
* x (8, 2**22), k (4097,), float32 and float64, modes full and causal.

Methods, same inputs, same process:

* ``scipy``: ``scipy.signal.fftconvolve(x, k, axes=-1)`` as users call it (one thread);
* ``scipy xN``: the same inside ``scipy.fft.set_workers(N)``, N = the usable cores;
* ``longconv``: ``longconv.fftconvolve_long`` (full) or ``longconv.convolve`` (causal) with
  their defaults (threads: every usable core);
* ``longconv x1``: the same on one thread (``workers=1``; for causal, whose public function has
  no ``workers`` argument, the CPU backend's plan with ``workers=1``).

Every method's result is checked against the first one's (relative L2 error <= 1e-5 for
float32, 1e-12 for float64). Times are medians of ``--repeat`` calls after one warm-up call.

Usage::

    python benchmarks/bench_cpu.py            # all cases, writes benchmarks/results/cpu.csv
    python benchmarks/bench_cpu.py --quick    # a reduced subset in well under a minute
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.signal

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

import longconv  # noqa: E402
from longconv import _cpu  # noqa: E402

TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def cases(quick: bool):
    """(name, x shape, k shape, dtype, mode) of every case."""
    if quick:
        shapes = [("batched", (4, 16, 65536), (16, 65536)), ("long", (2, 2**20), (4097,))]
        dtypes, modes = ("float32",), ("full", "causal")
    else:
        shapes = [("batched", (16, 64, 65536), (64, 65536)), ("long", (8, 2**22), (4097,))]
        dtypes, modes = ("float32", "float64"), ("full", "causal")
    for name, xs, ks in shapes:
        for dtype in dtypes:
            for mode in modes:
                yield name, xs, ks, dtype, mode


def methods(mode: str, cores: int):
    """(label, function of (x, k)) of every method, the reference first.

    ``k`` has one dimension less than ``x`` (``(H, Lk)`` or ``(Lk,)``), as ``convolve`` takes
    it; SciPy gets ``k[None]`` (it wants equal ranks and broadcasts the rest).
    """
    def scipy_default(x, k):
        y = scipy.signal.fftconvolve(x, k[None], axes=-1)
        return y[..., : x.shape[-1]] if mode == "causal" else y

    def scipy_threads(x, k):
        with scipy.fft.set_workers(cores):
            return scipy_default(x, k)

    def ours(x, k):
        if mode == "causal":
            return longconv.convolve(x, k, device="cpu")
        return longconv.fftconvolve_long(x, k[None], mode="full", axes=-1, device="cpu")

    def ours_one_thread(x, k):
        if mode == "causal":
            # convolve has no workers argument: call the CPU backend's plan directly
            k2 = k.reshape(-1, k.shape[-1])
            x3 = x.reshape(-1, k2.shape[0] if k2.shape[0] > 1 else 1, x.shape[-1])
            plan = _cpu.make_conv_plan(k2, x.shape[-1], mode="causal", io_dtype=x.dtype.name,
                                       workers=1)
            return plan(x3).reshape(x.shape)
        return longconv.fftconvolve_long(x, k[None], mode="full", axes=-1, workers=1,
                                         device="cpu")

    return [("scipy", scipy_default), (f"scipy x{cores}", scipy_threads),
            ("longconv", ours), ("longconv x1", ours_one_thread)]


def relative_error(y, ref) -> float:
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller shapes, float32 only (well under a minute)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per method")
    parser.add_argument("--only", default="", help="run only cases whose name contains this "
                        "(batched, long, float32, causal, ...)")
    parser.add_argument("--csv", default=None,
                        help="result file name in benchmarks/results (default: cpu, or "
                             "cpu-quick with --quick); 'none' writes nothing")
    args = parser.parse_args(argv)

    cores = _harness.usable_cores()
    info = _harness.machine_info()
    print(f"# {info['cpu']}, {cores} usable cores; numpy {info['numpy']}, scipy "
          f"{info['scipy']}, longconv {info['longconv']} ({info['git_sha']}); load average "
          f"{info['load_avg_1min']} at start")
    rows = []
    rng = np.random.default_rng(0)
    for name, xs, ks, dtype, mode in cases(args.quick):
        label = f"{name} x{xs} k{ks} {dtype} {mode}"
        if args.only and args.only not in label:
            continue
        x = rng.standard_normal(xs).astype(dtype)
        k = rng.standard_normal(ks).astype(dtype)
        row = {"case": name, "x": "x".join(map(str, xs)), "k": "x".join(map(str, ks)),
               "dtype": dtype, "mode": mode}
        ref = None
        for method, fn in methods(mode, cores):
            y = fn(x, k)
            if ref is None:
                ref = y
            else:
                err = relative_error(y, ref)
                row[f"err {method}"] = f"{err:.1e}"
                if not err <= TOLERANCE[dtype]:
                    print(f"{label}: {method} disagrees with scipy: relative error {err:.2e}")
                    return 1
            del y
            timing = _harness.time_cpu(lambda fn=fn, x=x, k=k: fn(x, k), repeat=args.repeat,
                                       warmup=0)
            row[f"{method} s"] = round(timing.median, 4)
        del ref
        base = row["scipy s"]
        for method in ("longconv", "longconv x1"):
            row[f"speedup {method}"] = round(base / row[f"{method} s"], 2)
        row["speedup vs scipy threaded"] = round(row[f"scipy x{cores} s"] / row["longconv s"], 2)
        rows.append(row)
        print(f"{label}: scipy {base:.3f} s, scipy x{cores} {row[f'scipy x{cores} s']:.3f} s, "
              f"longconv {row['longconv s']:.3f} s ({row['speedup longconv']:.2f}x), "
              f"longconv x1 {row['longconv x1 s']:.3f} s ({row['speedup longconv x1']:.2f}x)",
              flush=True)

    if not rows:
        print("no case matched --only")
        return 1
    columns = ["case", "x", "k", "dtype", "mode", "scipy s", f"scipy x{cores} s", "longconv s",
               "longconv x1 s", "speedup longconv", "speedup longconv x1",
               "speedup vs scipy threaded"]
    print()
    print(_harness.markdown_table(rows, columns))
    csv_name = args.csv or ("cpu-quick" if args.quick else "cpu")
    if csv_name != "none":
        path = _harness.write_csv(csv_name, rows, info)
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
