"""GPU benchmark of forward + backward (y.backward(dy)) against torch rfft autograd.

Shapes follow FlashFFTConv's benchmark as in bench_gpu.py (B = 64, H = 768; N = 16K: B = 32), fp16
or bf16 input, fp32 filter of shape (H, L) that requires grad, times scaled linearly to 64 * 768
sequences; medians of CUDA-event timings after warm-up, every method in this process on the same
inputs. Three numbers per case:

- ``kernels``: our fused forward launch plus ``FusedPlan.backward`` (one backward launch, the dk
  reduction and its inverse FFT over H filters), on CuPy arrays;
- ``torch``: ``longconv.convolve`` on torch tensors through autograd, forward and backward as a
  training step sees them (spectrum of k computed in the forward and again in the backward,
  adapter overhead included);
- ``torch rfft``: ``irfft(rfft(u, n) * rfft(k, n), n)`` through torch autograd, the baseline.

The gated case is FlashFFTConv's gated circular convolution with gradients for x, k and both
gates. Errors are relative L2 errors of our dx and dk against float64 on the device.

    python benchmarks/bench_gpu_bwd.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness  # noqa: E402

FULL_B = 64 * 768

# FlashFFTConv forward + backward / torch rfft forward + backward (TARGETS.md, H100, fp16)
FLASH_RATIO = {
    "causal": {256: 0.406 / 0.991, 1024: 1.054 / 3.066, 4096: 4.180 / 12.26,
               8192: 9.084 / 24.53, 16384: 27.23 / 50.27, 32768: 83.14 / 109.6},
    "gated circular": {256: 0.361 / 1.102, 1024: 1.382 / 4.000, 4096: 6.319 / 15.82,
                       8192: 14.55 / 31.71, 16384: 46.94 / 64.54, 32768: 133.8 / 138.4},
}


def batch_for(n):
    return 32 if n == 16384 else 16 if n == 32768 else 64


def run_case(cp, torch, fused, longconv, kind, n, dtype, H=768, reps=10):
    B = batch_for(n)
    gated = kind == "gated circular"
    L = n if gated else n // 2
    mode = "circular" if gated else "causal"
    tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float16
    bf16 = dtype == "bfloat16"
    torch.manual_seed(n)
    x = torch.randn((B, H, L), device="cuda").to(tdt)
    dy = torch.randn((B, H, L), device="cuda").to(tdt)
    k = torch.randn((H, L), device="cuda")
    pre = torch.randn((B, H, L), device="cuda").to(tdt) if gated else None
    post = torch.randn((B, H, L), device="cuda").to(tdt) if gated else None

    def view(t):
        if t is None:
            return None
        a = cp.from_dlpack(t.view(torch.int16) if bf16 else t)
        return a.view(cp.uint16) if bf16 else a

    xc, dyc, prec, postc = view(x), view(dy), view(pre), view(post)
    kc = cp.from_dlpack(k)

    # -- our kernels: forward launch + fused backward
    plan = fused.FusedPlan(kc, L, mode=mode, io_dtype=dtype)
    yc = cp.empty_like(xc)
    fwd_args = plan.launch_args(xc, prec, postc, None, yc)

    def kernels():
        plan.launch(*fwd_args)
        plan.backward(xc, dyc, prec, postc, need_pregate=gated, need_postgate=gated)

    t_kern = _harness.time_gpu(kernels, [()], repeat=reps)

    # -- through torch autograd
    leaves = [x.clone().requires_grad_(), k.clone().requires_grad_()]
    if gated:
        leaves += [pre.clone().requires_grad_(), post.clone().requires_grad_()]

    def ours_torch():
        torch.autograd.backward(longconv.convolve(leaves[0], leaves[1], True), dy)

    # longconv.convolve is causal or centred: the gated circular case (FlashFFTConv's circular
    # semantics) is timed through the kernels only.
    t_torch = None if gated else _harness.time_gpu(ours_torch, [()], repeat=reps)

    # -- torch rfft autograd baseline
    def baseline():
        u = leaves[0].float()
        if gated:
            u = u * leaves[2].float()
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(leaves[1], n=n), n=n)
        y = y[..., :L]
        if gated:
            y = y * leaves[3].float()
        torch.autograd.backward(y, dy.float())

    t_base = _harness.time_gpu(baseline, [()], repeat=reps)
    leaves.clear()
    torch.cuda.empty_cache()
    res = plan.backward(xc, dyc, prec, postc, need_pregate=gated, need_postgate=gated)
    err_dx, err_dk = errors(cp, xc, kc, dyc, prec, postc, res, n, L, gated, bf16)
    del res
    cp.get_default_memory_pool().free_all_blocks()
    scale = FULL_B / (B * H)
    ms = {name: (None if t is None else t.median * 1e3 * scale)
          for name, t in (("kern", t_kern), ("torch", t_torch), ("base", t_base))}
    bar = FLASH_RATIO[kind].get(n)
    row = {
        "kind": kind, "dtype": dtype, "N": n, "B": B, "H": H, "L": L,
        "kernels_ms": round(ms["kern"], 4),
        "torch_adapter_ms": None if ms["torch"] is None else round(ms["torch"], 4),
        "torch_rfft_ms": round(ms["base"], 4),
        "kernels_over_torch_rfft": round(ms["kern"] / ms["base"], 4),
        "adapter_over_torch_rfft": None if ms["torch"] is None else
        round(ms["torch"] / ms["base"], 4),
        "flashfftconv_over_torch_rfft": None if bar is None else round(bar, 4),
        "speedup_vs_flashfftconv": None if bar is None else
        round(bar / (ms["kern"] / ms["base"]), 2),
        "rel_err_dx": f"{err_dx:.2e}", "rel_err_dk": f"{err_dk:.2e}",
    }
    return row


def errors(cp, xc, kc, dyc, prec, postc, res, n, L, gated, bf16):
    """Relative L2 errors of dx and dk against float64 on the device (first 8 rows of the batch
    for dx; dk over the whole batch)."""
    def f64(a):
        if a is None:
            return None
        if bf16:
            return (a.astype(cp.uint32) << 16).view(cp.float32).astype(cp.float64)
        return a.astype(cp.float64)

    x, dy, pre, post = f64(xc), f64(dyc), f64(prec), f64(postc)
    u = x if pre is None else x * pre
    g = dy if post is None else dy * post
    kf = cp.fft.rfft(kc.astype(cp.float64), n=n)
    G = cp.fft.rfft(g, n=n)
    c_g = cp.fft.irfft(G * cp.conj(kf), n=n)[..., :L]
    dx = c_g if pre is None else c_g * pre
    dk = cp.fft.irfft((G * cp.conj(cp.fft.rfft(u, n=n))).sum(axis=0), n=n)[..., :L]
    got_dx = f64(res["x"])
    e_dx = float(cp.linalg.norm((got_dx - dx).ravel()) / cp.linalg.norm(dx.ravel()))
    e_dk = float(cp.linalg.norm((res["k"] - dk).ravel()) / cp.linalg.norm(dk.ravel()))
    return e_dx, e_dk


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes")
    ap.add_argument("--out", default=None, help="directory for the CSV (default results/)")
    args = ap.parse_args(argv)
    import cupy as cp
    import torch

    import longconv
    from longconv import _fused

    sizes = [256, 1024, 4096, 8192, 16384]
    if args.quick:
        sizes = [1024, 4096]
    cases = [("causal", n, "float16") for n in sizes]
    cases += [("causal", n, "bfloat16") for n in sizes]
    cases += [("gated circular", n, "float16") for n in sizes]
    rows = []
    for kind, n, dtype in cases:
        row = run_case(cp, torch, _fused, longconv, kind, n, dtype)
        rows.append(row)
        print(row, flush=True)
        cp.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    path = _harness.write_csv("gpu_fused_bwd", rows, directory=args.out)
    cols = ["kind", "dtype", "N", "kernels_ms", "torch_adapter_ms", "torch_rfft_ms",
            "kernels_over_torch_rfft", "adapter_over_torch_rfft", "flashfftconv_over_torch_rfft",
            "speedup_vs_flashfftconv", "rel_err_dx", "rel_err_dk"]
    print(_harness.markdown_table(rows, cols))
    print(f"wrote {path}")
    return 0 if all(math.isfinite(float(r["rel_err_dx"])) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
