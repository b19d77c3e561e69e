"""Streaming convolution against ``scipy.signal.oaconvolve`` on the same job in memory.

The job: 8 channels x 10 minutes at 48 kHz (28.8M frames) convolved with a 2-second impulse
response (96000 taps, one per channel), mode full, float32 (the dtype of audio files read as
floats) and float64.

Methods, same inputs, same process:

* ``oaconvolve``: ``scipy.signal.oaconvolve(x, k, axes=-1)`` on the whole (8, L) signal in
  memory, as users call it (one thread), and inside ``scipy.fft.set_workers(N)``;
* ``stream`` (``--devices cpu``): :func:`longconv.stream_convolve` over 1-second blocks of the
  (L, 8) signal, every output block copied into a preallocated output (what a file writer
  receives), with its defaults (all usable cores) and ``workers=1``;
* ``stream gpu`` (``--devices gpu``): the same with ``device="gpu"`` (host blocks in and out,
  FFTs on the current CUDA device), and its transfer floor ``transfer floor``: the same 1-second
  blocks copied to the device and the same output blocks copied back into new host arrays and
  then into the preallocated output, with no arithmetic (what any streaming convolution with
  host arrays in and out must move).

Every streamed output is checked against oaconvolve's (relative L2 error <= 1e-5 in float32,
1e-12 in float64). CPU times are medians of ``--repeat`` calls after no warm-up (each call is
seconds long); GPU times are medians of ``--repeat`` calls after the checking call (which
absorbs CUDA initialisation and FFT planning), host clock around the whole call (every call
ends with its last output on the host).

    python benchmarks/bench_stream.py [--minutes 10] [--channels 8] [--repeat 3]
                                      [--devices cpu,gpu] [--csv NAME] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.signal

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

import longconv  # noqa: E402

RATE = 48_000
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def measure(dtype, C, L, Lk, cores, repeat, rng, devices):
    """One row of results for ``dtype``; ``None`` when an output disagrees."""
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

    def stream(workers=None, device="cpu"):
        pos = 0
        blocks = (x_frames[i:i + block] for i in range(0, L, block))
        for y in longconv.stream_convolve(blocks, k_frames, workers=workers, device=device):
            out[pos:pos + len(y)] = y
            pos += len(y)
        return out

    methods = [("oaconvolve", oa), (f"oaconvolve x{cores}", oa_threads)]
    checks = []
    if "cpu" in devices:
        methods += [("stream", stream), ("stream x1", lambda: stream(1))]
        checks.append(("stream", stream))
    if "gpu" in devices:
        gpu_stream = partial(stream, device="gpu")
        methods += [("stream gpu", gpu_stream), ("transfer floor", transfer_floor(
            x_frames, out, block, longconv.StreamConvolver(k_frames, C).hop))]
        checks.append(("stream gpu", gpu_stream))

    ref = oa()
    ref_norm = np.linalg.norm(ref.astype(np.float64))
    row = {"channels": C, "frames": L, "taps": Lk, "dtype": dtype}
    for name, fn in checks:
        fn()
        err = float(np.linalg.norm(out.T.astype(np.float64) - ref) / ref_norm)
        if not err <= TOLERANCE[dtype]:
            print(f"{dtype}: {name} disagrees with oaconvolve: relative error {err:.2e}")
            return None
        row[f"err {name}"] = f"{err:.1e}"
    del ref
    for name, fn in methods:
        t = _harness.time_cpu(fn, repeat=repeat, warmup=0)
        row[f"{name} s"] = round(t.median, 3)
        print(f"{dtype} {name}: {t.median:.3f} s (spread {t.spread:.2f})", flush=True)
    for name, _ in checks:
        row[f"speedup {name}"] = round(row["oaconvolve s"] / row[f"{name} s"], 2)
        row[f"speedup {name} vs oaconvolve threaded"] = round(
            row[f"oaconvolve x{cores} s"] / row[f"{name} s"], 2)
    if "gpu" in devices:
        row["stream gpu / transfer floor"] = round(
            row["stream gpu s"] / row["transfer floor s"], 2)
    return row


def transfer_floor(x_frames, out, block, hop):
    """The copies of a GPU stream with host arrays in and out, without its arithmetic."""
    import cupy

    C = x_frames.shape[1]
    device_out = cupy.zeros((hop, C), dtype=out.dtype)

    def run():
        for i in range(0, len(x_frames), block):
            cupy.asarray(x_frames[i:i + block])
        for pos in range(0, len(out), hop):
            m = min(hop, len(out) - pos)
            out[pos:pos + m] = cupy.asnumpy(device_out[:m])
        return out

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--ir-seconds", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--devices", default="cpu",
                        help="streaming methods to time: cpu, gpu or cpu,gpu (default: cpu); "
                             "oaconvolve is always timed")
    parser.add_argument("--csv", default="stream", help="result file name; 'none' writes "
                        "nothing")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="directory of the result file (default: benchmarks/results)")
    args = parser.parse_args(argv)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if not devices or not set(devices) <= {"cpu", "gpu"}:
        parser.error(f"--devices takes cpu, gpu or cpu,gpu; got {args.devices!r}")
    cores = _harness.usable_cores()
    info = _harness.machine_info()
    if "gpu" in devices and not info["gpu"]:
        print("bench_stream: --devices gpu needs CuPy and a CUDA device; none is usable here",
              file=sys.stderr)
        return 2
    L = int(args.minutes * 60 * RATE)
    Lk = int(args.ir_seconds * RATE)
    C = args.channels
    gpu = f"; GPU {info['gpu']}" if "gpu" in devices else ""
    print(f"# {info['cpu']}, {cores} usable cores{gpu}; {C} channels x {L} frames, {Lk} taps")
    rng = np.random.default_rng(0)
    rows = []
    for dtype in args.dtypes.split(","):
        row = measure(dtype, C, L, Lk, cores, args.repeat, rng, devices)
        if row is None:
            return 1
        rows.append(row)
    columns = list(rows[0])
    print()
    print(_harness.markdown_table(rows, columns))
    if args.csv != "none":
        path = _harness.write_csv(args.csv, rows, info,
                                  directory=None if args.out is None else Path(args.out))
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
