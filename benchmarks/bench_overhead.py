"""Host overhead per call of a small convolution through each array kind (CuPy, PyTorch, NumPy).

The problem is tiny (default B = 1, H = 1, L = 256, a full-length filter), so the kernels take a
few microseconds and a call's cost is what the path spends on the host around them:
validation, dispatch, plan and filter spectrum, DLPack, launches. GPU work is asynchronous, so
``--calls`` calls issued back to back and timed with the wall clock (no synchronisation inside
the loop) give the host time per call; CUDA events recorded around the same loop give the GPU
time per call. While the host is slower than the GPU the events measure the host too (the GPU
waits for work); when the GPU is slower the queue fills and the wall clock measures the GPU.
``wall+sync`` adds the final synchronisation (what a caller waiting for the result sees,
averaged over the loop). Every number is the median over ``--repeat`` loops after
``--warmup`` calls. The target is under 30 us of host time per call on the GPU paths.

Cases (each in float16 and float32; the GPU ones only with CuPy and a CUDA device):

* ``numpy convolve`` / ``numpy LongConv``: NumPy on the CPU backend (wall time includes the
  arithmetic; for reference);
* ``cupy elementwise``: one CuPy element-wise kernel on x, the floor of any CuPy call;
* ``cupy backend plan``: the backend plan of a ``LongConv`` called on ``(B, H, L)`` arrays (the
  fused kernel's or cuFFT's launches without longconv's dispatch);
* ``cupy LongConv``: ``plan(x)``, a plan built once (filter spectrum cached);
* ``cupy convolve``: ``longconv.convolve(x, k)`` (plan and filter spectrum on every call);
* ``torch.fft`` (reference): ``irfft(rfft(x, 2L) * rfft(k, 2L))[..., :L]`` in torch;
* ``torch LongConv``: ``plan(x)`` on CUDA tensors, a plan built once;
* ``torch convolve``: ``longconv.convolve`` on tensors, no gradient;
* ``torch convolve fwd+bwd``: the same with ``x`` and ``k`` requiring grad, then
  ``y.backward(dy)``;
* ``torch cpu convolve``: CPU tensors (CPU backend; reference).

    python benchmarks/bench_overhead.py [--B 1] [--H 1] [--L 256] [--calls 1000] [--repeat 7]
                                        [--warmup 50] [--out results/overhead.csv]
                                        [--profile "cupy convolve float16"]

``--profile CASE`` also runs ``--calls`` calls of one case under cProfile and prints the
functions with the most own time (host-side dispatch costs, with file and line).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness  # noqa: E402

TARGET_US = 30.0


def _gpu():
    try:
        import cupy

        return cupy if cupy.is_available() else None
    except Exception:  # no CuPy, no driver or no device
        return None


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


class _Clock:
    """Events and synchronisation of one stream kind: ``None`` (CPU), CuPy's or torch's."""

    def __init__(self, kind):
        self.kind = kind

    def sync(self):
        if self.kind == "cupy":
            import cupy

            cupy.cuda.get_current_stream().synchronize()
        elif self.kind == "torch":
            import torch

            torch.cuda.current_stream().synchronize()

    def event(self):
        if self.kind == "cupy":
            import cupy

            ev = cupy.cuda.Event()
            ev.record(cupy.cuda.get_current_stream())
            return ev
        if self.kind == "torch":
            import torch

            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return None

    def elapsed_s(self, start, stop):
        if self.kind == "cupy":
            import cupy

            return cupy.cuda.get_elapsed_time(start, stop) / 1e3
        if self.kind == "torch":
            return start.elapsed_time(stop) / 1e3
        return float("nan")


def measure(fn, clock, *, calls, repeat, warmup):
    """(host, gpu, wall+sync) seconds per call: medians over ``repeat`` loops of ``calls``."""
    for _ in range(warmup):
        fn()
    clock.sync()
    host, gpu, wall = [], [], []
    for _ in range(repeat):
        start = clock.event()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        stop = clock.event()
        clock.sync()
        t2 = time.perf_counter()
        host.append((t1 - t0) / calls)
        wall.append((t2 - t0) / calls)
        gpu.append(clock.elapsed_s(start, stop) / calls)
    return statistics.median(host), statistics.median(gpu), statistics.median(wall)


def cases(B, H, L, dtype, rng):
    """(name, kind, clock, function of no arguments) for one dtype."""
    import longconv

    x = rng.standard_normal((B, H, L)).astype(dtype)
    k = rng.standard_normal((H, L)).astype(dtype)
    out = [
        ("numpy convolve", "numpy", _Clock(None),
         lambda: longconv.convolve(x, k, device="cpu")),
    ]
    plan_np = longconv.LongConv(k, L, device="cpu")
    out.append(("numpy LongConv", "numpy", _Clock(None), lambda: plan_np(x)))

    cupy = _gpu()
    if cupy is not None:
        xc, kc = cupy.asarray(x), cupy.asarray(k)
        buf = cupy.empty_like(xc)
        plan = longconv.LongConv(kc, L)
        backend = plan._primary_plan()
        x3 = xc.reshape(B, H, L)
        cupy_clock = _Clock("cupy")
        out += [
            ("cupy elementwise", "cupy", cupy_clock, lambda: cupy.multiply(xc, 2, out=buf)),
            (f"cupy backend plan ({backend.backend})", "cupy", cupy_clock, lambda: backend(x3)),
            ("cupy LongConv", "cupy", cupy_clock, lambda: plan(xc)),
            ("cupy convolve", "cupy", cupy_clock, lambda: longconv.convolve(xc, kc)),
        ]

    torch = _torch()
    if torch is not None:
        tdt = {np.float16: torch.float16, np.float32: torch.float32}[np.dtype(dtype).type]
        xt, kt = torch.from_numpy(x.copy()), torch.from_numpy(k.copy())
        out.append(("torch cpu convolve", "torch", _Clock(None),
                    lambda: longconv.convolve(xt, kt)))
        if cupy is not None and torch.cuda.is_available():
            xg, kg = xt.cuda().to(tdt), kt.cuda().to(tdt)
            xr = xg.clone().requires_grad_()
            kr = kg.clone().requires_grad_()
            dy = torch.randn_like(xg)
            torch_clock = _Clock("torch")

            def torch_fft():
                n = 2 * L
                wide = xg.float()
                y = torch.fft.irfft(torch.fft.rfft(wide, n=n) * torch.fft.rfft(kg.float(), n=n),
                                    n=n)
                return y[..., :L].to(tdt)

            def fwd_bwd():
                longconv.convolve(xr, kr).backward(dy)

            tplan = longconv.LongConv(kg, L)
            out += [
                ("torch.fft", "torch", torch_clock, torch_fft),
                ("torch LongConv", "torch", torch_clock, lambda: tplan(xg)),
                ("torch convolve", "torch", torch_clock, lambda: longconv.convolve(xg, kg)),
                ("torch convolve fwd+bwd", "torch", torch_clock, fwd_bwd),
            ]
    return out


def profile(fn, calls, top=25):
    """Run ``fn`` ``calls`` times under cProfile and print the functions with most own time."""
    for _ in range(10):
        fn()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(top)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--H", type=int, default=1)
    parser.add_argument("--L", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32"],
                        choices=("float16", "float32"))
    parser.add_argument("--calls", type=int, default=1000, help="calls per timed loop")
    parser.add_argument("--repeat", type=int, default=7, help="timed loops (median)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--out", default=str(_harness.RESULTS / "overhead.csv"),
                        help="CSV file to write ('none': no file)")
    parser.add_argument("--profile", metavar="CASE",
                        help="also profile one case, named as in the table with its dtype, "
                             "e.g. 'cupy convolve float16'")
    args = parser.parse_args(argv)
    for name in ("B", "H", "L", "calls", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer; got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0; got {args.warmup}")

    info = _harness.machine_info()
    print(f"# {info['gpu'] or 'no GPU'}; {info['cpu']} ({info['cpu_cores']} cores); "
          f"x ({args.B}, {args.H}, {args.L}), k ({args.H}, {args.L}); median of {args.repeat} "
          f"loops of {args.calls} calls after {args.warmup}")
    rng = np.random.default_rng(0)
    rows, profiled = [], False
    header = (f"{'case':<34}{'dtype':<9}{'host us':>9}{'GPU us':>9}{'wall+sync us':>14}"
              f"{'< 30 us':>9}")
    print(header)
    for dtype in args.dtypes:
        for name, kind, clock, fn in cases(args.B, args.H, args.L, dtype, rng):
            host, gpu, wall = measure(fn, clock, calls=args.calls, repeat=args.repeat,
                                      warmup=args.warmup)
            on_gpu = clock.kind is not None
            meets = ("yes" if host * 1e6 < TARGET_US else "no") if on_gpu else ""
            gpu_us = f"{gpu * 1e6:.1f}" if on_gpu else ""
            print(f"{name:<34}{dtype:<9}{host * 1e6:>9.1f}{gpu_us:>9}{wall * 1e6:>14.1f}"
                  f"{meets:>9}")
            rows.append({"case": name, "array": kind, "device": "gpu" if on_gpu else "cpu",
                         "dtype": dtype, "B": args.B, "H": args.H, "L": args.L,
                         "host_us": round(host * 1e6, 2),
                         "gpu_us": round(gpu * 1e6, 2) if on_gpu else "",
                         "wall_sync_us": round(wall * 1e6, 2), "target_us": TARGET_US,
                         "meets_target": meets, "calls": args.calls, "repeat": args.repeat})
            if args.profile and args.profile.strip() == f"{name} {dtype}":
                print(f"\n# cProfile: {args.calls} calls of {name} {dtype}")
                profile(fn, args.calls)
                clock.sync()
                profiled = True
                print(header)
    if args.profile and not profiled:
        parser.error(f"--profile {args.profile!r}: no such case (use a name from the table "
                     f"followed by its dtype)")
    if args.out.lower() != "none":
        out = Path(args.out)
        path = _harness.write_csv(out.stem, rows, info, directory=out.parent)
        print(f"# wrote {path}")
    return rows


if __name__ == "__main__":
    main()
