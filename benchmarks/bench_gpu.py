"""GPU benchmark of the fused tensor-core kernels against torch rfft and the copy floor.

Shapes follow FlashFFTConv's benchmark (TARGETS): B = 64, H = 768, reduced for long sequences
(N = 16K: B = 32; N = 32K: B = 16) and scaled linearly to 64 * 768 sequences. Times are medians of
CUDA-event timings after warm-up with inputs rotated past the L2 cache; every method runs in
this process on the same inputs. The error column is the relative L2 error of our output
against a float64 FFT convolution of the same inputs.

    python benchmarks/bench_gpu.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness  # noqa: E402

FULL_B = 64 * 768


def batch_for(n):
    return 32 if n == 16384 else 16 if n == 32768 else 64


def fp64_reference(cp, x, k, n, mode, L, pregate=None, postgate=None, bf16=False):
    """Float64 FFT convolution on the device (exact to ~1e-15), for the error column."""
    xf = _to_f64(cp, x, bf16)
    if pregate is not None:
        xf = xf * _to_f64(cp, pregate, bf16)
    y = cp.fft.irfft(cp.fft.rfft(xf, n=n) * cp.fft.rfft(k.astype(cp.float64), n=n), n=n)[..., :L]
    if postgate is not None:
        y = y * _to_f64(cp, postgate, bf16)
    return y


def _to_f64(cp, a, bf16):
    if bf16:
        return (a.astype(cp.uint32) << 16).view(cp.float32).astype(cp.float64)
    return a.astype(cp.float64)


def rel_err(cp, y, ref, bf16):
    y = _to_f64(cp, y, bf16)
    return float(cp.linalg.norm((y - ref).ravel()) / cp.linalg.norm(ref.ravel()))


def run_case(cp, torch, fused, kind, n, dtype, H=768, reps=20):
    B = batch_for(n)
    circular = kind != "causal"
    gated = kind == "gated circular"
    L = n if circular else n // 2
    bf16 = dtype == "bfloat16"
    rng = np.random.default_rng(n)
    k = cp.asarray(rng.standard_normal((H, L)).astype(np.float32))
    plan = fused.FusedPlan(k, L, mode="circular" if circular else "causal", io_dtype=dtype)
    tdt = torch.bfloat16 if bf16 else torch.float16

    def make_x(i):
        x = torch.randn((B, H, L), device="cuda", dtype=torch.float32).to(tdt)
        return x

    nbytes_x = B * H * L * 2
    n_in = 3 if gated else 1
    sets = []
    for i in range(_harness.rotation_count(nbytes_x * (n_in + 1), max_bytes=24 << 30)):
        xs = [make_x(i) for _ in range(n_in)]
        y = torch.empty((B, H, L), device="cuda", dtype=tdt)
        sets.append((xs, y))

    def cupy_view(t):
        a = cp.from_dlpack(t.view(torch.int16) if bf16 else t)
        return a.view(cp.uint16) if bf16 else a

    launches = []
    for xs, y in sets:
        xc = [cupy_view(t) for t in xs]
        args = plan.launch_args(xc[0], xc[1] if gated else None, xc[2] if gated else None,
                                None, cupy_view(y))
        launches.append((args,))
    ours = _harness.time_gpu(lambda a: plan.launch(*a), launches, repeat=reps)

    # error of our output against the float64 oracle (first input set)
    xs, y = sets[0]
    xc = [cupy_view(t) for t in xs]
    plan.launch(*launches[0][0])
    ref = fp64_reference(cp, xc[0], k, n if not circular else L, kind, L,
                         xc[1] if gated else None, xc[2] if gated else None, bf16)
    err = rel_err(cp, cupy_view(y), ref, bf16)
    del ref

    kt = torch.from_dlpack(k)
    Kf = torch.fft.rfft(kt, n=n)

    def torch_conv(xs, y):
        if gated:
            u = (xs[1] * xs[0]).float()
            return xs[2] * torch.fft.irfft(torch.fft.rfft(u, n=n) * Kf, n=n)
        return torch.fft.irfft(torch.fft.rfft(xs[0].float(), n=n) * Kf, n=n)[..., :L]

    base = _harness.time_gpu(torch_conv, sets, repeat=reps)
    floor = _harness.gpu_copy_floor(nbytes_x * n_in, nbytes_x, repeat=reps)
    scale = FULL_B / (B * H)
    t_ours, t_base, t_floor = (t.median * 1e3 * scale for t in (ours, base, floor))
    gbs = (n_in + 1) * nbytes_x / (ours.median * 1e9)
    del sets, launches
    return {
        "kind": kind, "dtype": dtype, "N": n, "B": B, "H": H, "L": L,
        "ours_ms": round(t_ours, 4), "torch_rfft_ms": round(t_base, 4),
        "copy_floor_ms": round(t_floor, 4), "ours_over_torch": round(t_ours / t_base, 4),
        "ours_over_floor": round(t_ours / t_floor, 2), "GB_per_s": round(gbs, 1),
        "rel_err": f"{err:.2e}", "spread_pct": round(100 * ours.spread, 1),
    }


# FlashFFTConv / torch rfft from TARGETS.md (same shapes, H100): the bars to beat.
FLASH_RATIO = {
    "causal": {256: 0.438, 1024: 0.289, 4096: 0.337, 8192: 0.388, 16384: 0.535, 32768: 0.601},
    "gated circular": {256: 0.380, 1024: 0.237, 4096: 0.233, 8192: 0.296, 16384: 0.498,
                       32768: 0.510},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes")
    ap.add_argument("--out", default=None, help="directory for the CSV (default results/)")
    args = ap.parse_args(argv)
    import cupy as cp
    import torch

    from longconv import _fused

    sizes = [256, 1024, 4096, 8192, 16384, 32768]
    if args.quick:
        sizes = [1024, 4096, 16384]
    cases = [("causal", n, "float16") for n in sizes]
    cases += [("causal", n, "bfloat16") for n in sizes]
    cases += [("gated circular", n, "float16") for n in sizes]
    cases += [("circular", 4096, "bfloat16")]
    rows = []
    for kind, n, dtype in cases:
        row = run_case(cp, torch, _fused, kind, n, dtype)
        bar = FLASH_RATIO.get(kind, {}).get(n)
        if bar is not None:
            row["flashfftconv_over_torch"] = bar
            row["speedup_vs_flashfftconv"] = round(bar / row["ours_over_torch"], 2)
        rows.append(row)
        print({k: row[k] for k in ("kind", "dtype", "N", "ours_ms", "torch_rfft_ms",
                                   "copy_floor_ms", "rel_err")}, flush=True)
        cp.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    path = _harness.write_csv("gpu_fused", rows, directory=args.out)
    cols = ["kind", "dtype", "N", "ours_ms", "torch_rfft_ms", "copy_floor_ms", "ours_over_torch",
            "flashfftconv_over_torch", "speedup_vs_flashfftconv", "ours_over_floor", "GB_per_s",
            "rel_err"]
    print(_harness.markdown_table(rows, cols))
    print(f"wrote {path}")
    return 0 if all(math.isfinite(float(r["rel_err"])) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
