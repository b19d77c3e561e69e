"""Streaming convolution against ``scipy.signal.oaconvolve`` on the same job in memory.

The job: 8 channels x 10 minutes at 48 kHz (28.8M frames) convolved with a 2-second impulse
response (96000 taps, one per channel), mode full, float32 (the dtype of audio files read as
floats) and float64.

Methods, same inputs, same process:

* ``oaconvolve``: ``scipy.signal.oaconvolve(x, k, axes=-1)`` on the whole (8, L) signal in
  memory, as users call it (one thread), and inside ``scipy.fft.set_workers(N)``;
* ``stream``: :func:`longconv.stream_convolve` over 1-second blocks of the (L, 8) signal, every
  output block copied into a preallocated output (what a file writer receives), with its
  defaults (all usable cores) and ``workers=1``.

The streamed output is checked against oaconvolve's (relative L2 error <= 1e-5 in float32,
1e-12 in float64). Times are medians of ``--repeat`` calls after no warm-up (each call is
seconds long).

    python benchmarks/bench_stream.py [--minutes 10] [--channels 8] [--repeat 3] [--csv NAME]
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

RATE = 48_000
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def measure(dtype, C, L, Lk, cores, repeat, rng):
    """One row of results for ``dtype``; ``None`` when the outputs disagree."""
    x = rng.standard_normal((C, L), dtype=np.float32).astype(dtype)
    k = (rng.standard_normal((C, Lk), dtype=np.float32)
         * np.exp(-np.arange(Lk) / (Lk / 6))).astype(dtype)
    x_frames = np.ascontiguousarray(x.T)
    k_frames = np.ascontiguousarray(k.T)
    out = np.empty((L + Lk - 1, C), dtype=dtype)
    block = RATE

    def oa():
        return scipy.signal.oaconvolve(x, k, axes=-1)

    def oa_threads():
        with scipy.fft.set_workers(cores):
            return oa()

    def stream(workers=None):
        pos = 0
        blocks = (x_frames[i:i + block] for i in range(0, L, block))
        for y in longconv.stream_convolve(blocks, k_frames, workers=workers):
            out[pos:pos + len(y)] = y
            pos += len(y)
        return out

    ref = oa()
    stream()
    err = float(np.linalg.norm(out.T.astype(np.float64) - ref)
                / np.linalg.norm(ref.astype(np.float64)))
    del ref
    if not err <= TOLERANCE[dtype]:
        print(f"{dtype}: stream disagrees with oaconvolve: relative error {err:.2e}")
        return 1
    row = {"channels": C, "frames": L, "taps": Lk, "dtype": dtype, "err stream": f"{err:.1e}"}
    for name, fn in [("oaconvolve", oa), (f"oaconvolve x{cores}", oa_threads),
                     ("stream", stream), ("stream x1", lambda: stream(1))]:
        t = _harness.time_cpu(fn, repeat=repeat, warmup=0)
        row[f"{name} s"] = round(t.median, 3)
        print(f"{dtype} {name}: {t.median:.3f} s (spread {t.spread:.2f})", flush=True)
    row["speedup stream"] = round(row["oaconvolve s"] / row["stream s"], 2)
    row["speedup stream vs oaconvolve threaded"] = round(
        row[f"oaconvolve x{cores} s"] / row["stream s"], 2)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--ir-seconds", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--csv", default="stream", help="result file name in "
                        "benchmarks/results; 'none' writes nothing")
    args = parser.parse_args(argv)
    cores = _harness.usable_cores()
    info = _harness.machine_info()
    L = int(args.minutes * 60 * RATE)
    Lk = int(args.ir_seconds * RATE)
    C = args.channels
    print(f"# {info['cpu']}, {cores} usable cores; {C} channels x {L} frames, {Lk} taps")
    rng = np.random.default_rng(0)
    rows = []
    for dtype in args.dtypes.split(","):
        row = measure(dtype, C, L, Lk, cores, args.repeat, rng)
        if row is None:
            return 1
        rows.append(row)
    columns = list(rows[0])
    print()
    print(_harness.markdown_table(rows, columns))
    if args.csv != "none":
        print(f"\nwrote {_harness.write_csv(args.csv, rows, info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
