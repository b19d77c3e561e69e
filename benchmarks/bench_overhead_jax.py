"""Host overhead of one small ``longconv.convolve`` call on JAX arrays, eager and jitted.

A problem so small (default B=1, H=1, L=256, float32) that the arithmetic is negligible: the
time per call is what the path costs around the kernels (validation, plan building, DLPack or
callbacks, dispatch). Rows, each the median over ``--calls`` calls after ``--warmup`` calls,
every call waited for (``block_until_ready``, and on a GPU a device-wide synchronisation), the
cases taking turns (``--rounds``) so that a drift of the host's speed reaches every row alike:

* ``jnp.fft jit``: the same causal convolution written with ``jnp.fft`` under ``jax.jit``,
  the floor of a jitted call on this device;
* ``jnp x * 2 eager``: one eager JAX operation on ``x``, the floor of any eager call (JAX's
  own dispatch of an operation outside ``jit``);
* ``jnp.fft eager``: the ``jnp.fft`` convolution called eagerly (six eager operations);
* ``longconv eager``: ``longconv.convolve(x, k)`` on concrete arrays (DLPack on the GPU);
* ``longconv jit``: ``jax.jit(longconv.convolve)`` (``buffer_callback`` on XLA's stream on a
  CUDA GPU, ``pure_callback`` on the CPU);
* ``longconv jit gated``: the same with pregate, postgate and skip;
* ``longconv jit grad``: ``jax.jit(jax.grad(...))`` of ``sum(convolve(x, k) ** 2)`` with
  respect to ``x`` and ``k`` (forward and backward callbacks).

The column ``over floor us`` subtracts the ``jnp.fft jit`` median; ``over eager op us``
subtracts the ``jnp x * 2 eager`` median from the eager rows.

    python benchmarks/bench_overhead_jax.py [--device gpu|cpu] [--dtype float32] [--B 1]
                                            [--H 1] [--L 256] [--calls 2000] [--warmup 50]
                                            [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# JAX would take 75% of the GPU's memory at its first use and leave CuPy little room.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _time_cases(cases, calls, warmup, rounds, sync=None):
    """Median microseconds per call of each case ``(name, fn, args)``, every result waited for
    (and ``sync()`` after each call when given). The cases take turns, ``rounds`` times
    ``calls // rounds`` calls each, so that a drift of the host's speed during the run (seen
    on shared hosts: 1.6x between minutes) reaches every row alike."""
    import jax

    def once(fn, args):
        jax.block_until_ready(fn(*args))
        if sync is not None:
            sync()

    for _, fn, args in cases:
        for _ in range(warmup):
            once(fn, args)
    times = {name: [] for name, _, _ in cases}
    per_round = max(1, calls // rounds)
    for _ in range(rounds):
        for name, fn, args in cases:
            for _ in range(per_round):
                t0 = time.perf_counter()
                once(fn, args)
                times[name].append(time.perf_counter() - t0)
    return [(name, statistics.median(times[name]) * 1e6) for name, _, _ in cases]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("gpu", "cpu"), default=None,
                        help="where the arrays live (default: JAX's default backend)")
    parser.add_argument("--dtype", default="float32",
                        choices=("float16", "bfloat16", "float32", "float64"))
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--H", type=int, default=1)
    parser.add_argument("--L", type=int, default=256)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10,
                        help="turns the cases take (each times calls // rounds calls a turn)")
    args = parser.parse_args(argv)
    for name in ("B", "H", "L", "calls", "warmup", "rounds"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name} must be a positive integer; got {getattr(args, name)}")

    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import longconv
    from longconv.adapters import jax as ljax

    platform = args.device or ("cpu" if jax.default_backend() == "cpu" else "gpu")
    try:
        device = jax.devices(platform)[0]
    except RuntimeError:
        parser.error(f"--device {platform}: JAX has no {platform} backend here")
    rng = np.random.default_rng(0)
    B, H, L = args.B, args.H, args.L

    def put(shape):
        return jax.device_put(jnp.asarray(rng.standard_normal(shape)).astype(args.dtype), device)

    x, k = put((B, H, L)), put((H, L))
    pre, post, skip = put((H, L)), put((B, H, L)), put((H,))

    def jnp_conv(x, k):
        n = 2 * L
        wide = jnp.float64 if x.dtype == jnp.float64 else jnp.float32  # jnp.fft: no 16 bits
        xf, kf = jnp.fft.rfft(x.astype(wide), n), jnp.fft.rfft(k.astype(wide), n)
        return jnp.fft.irfft(xf * kf, n)[..., :L].astype(x.dtype)

    def loss(x, k):
        return jnp.sum(longconv.convolve(x, k).astype(jnp.float32) ** 2)

    cases = [
        ("jnp.fft jit", jax.jit(jnp_conv), (x, k)),
        ("jnp x * 2 eager", lambda x: x * 2, (x,)),
        ("jnp.fft eager", jnp_conv, (x, k)),
        ("longconv eager", longconv.convolve, (x, k)),
        ("longconv jit", jax.jit(lambda x, k: longconv.convolve(x, k)), (x, k)),
        ("longconv jit gated",
         jax.jit(lambda x, k, a, b, s: longconv.convolve(x, k, pregate=a, postgate=b, skip=s)),
         (x, k, pre, post, skip)),
        ("longconv jit grad", jax.jit(jax.grad(loss, (0, 1))), (x, k)),
    ]
    gpu_route = platform == "gpu" and ljax._buffer_callback() is not None
    route = "buffer_callback on XLA's stream" if gpu_route else "pure_callback (host)"
    print(f"# jax {jax.__version__} on {device.device_kind} ({device.platform}); longconv "
          f"{longconv.__version__}; x ({B}, {H}, {L}) {args.dtype}; jitted path: {route}; "
          f"median of {args.calls} calls in {args.rounds} turns after {args.warmup}")
    sync = None
    if platform == "gpu":
        # every row also waits for the whole device (CuPy's streams included), the same cost
        # for each row, so that no path is timed before its kernels have finished
        import cupy

        sync = cupy.cuda.runtime.deviceSynchronize
    rows = _time_cases(cases, args.calls, args.warmup, args.rounds, sync)
    floor, eager_floor = rows[0][1], rows[1][1]
    print(f"{'path':<22}{'us/call':>12}{'over floor us':>16}{'over eager op us':>19}")
    for name, us in rows:
        over_op = f"{us - eager_floor:>19.1f}" if "eager" in name else ""
        print(f"{name:<22}{us:>12.1f}{us - floor:>16.1f}{over_op}")
    return rows


if __name__ == "__main__":
    main()
