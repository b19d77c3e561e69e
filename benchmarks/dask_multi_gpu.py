"""Several GPUs through dask-cuda: one CuPy-backed dask array convolved on every GPU.

A ``dask_cuda.LocalCUDACluster`` starts one worker process per visible GPU. The signal, B
sequences of H channels and L samples, is a dask array whose chunks (``--chunk`` sequences
each) are CuPy arrays generated on the workers' GPUs; the filter bank ``(H, taps)`` is a NumPy
array in the client, as a user would hold it. ``longconv.convolve(x, k)`` (causal) gives a lazy
CuPy-backed dask array; every chunk is convolved on the GPU that holds it.

The script

1. prints the workers and their GPUs, and after a first (untimed) run, which GPU each chunk of
   the output was computed on (the scheduler's task stream);
2. checks the result against a single-GPU in-memory computation (``longconv.convolve`` on the
   whole CuPy array in this process, tolerance of the dtype) and two of its sequences against
   the float64 oracle (``longconv.testing``);
3. times, medians of ``--repeat`` runs after that first one, host clock around
   ``client.persist`` + ``wait`` (results stay on the GPUs): the in-memory computation on one
   GPU, the dask job restricted to one worker, and the dask job on every worker. Each timed dask
   run is a fresh copy of the graph (``dask.graph_manipulation.clone``) over the same persisted
   input, so it recomputes everything downstream of the input, moving the filter to each worker
   included;
4. writes ``dask-multi-gpu.csv`` (one row per size and method) and
   ``dask-multi-gpu-placement.csv`` to ``--out``.

With one GPU it says so and times what one GPU allows. Where dask-cuda is missing or does not
import, it says why and starts the same layout itself (one worker process per GPU, each with
its GPU first in ``CUDA_VISIBLE_DEVICES``), recording which cluster ran in the CSV. ``--cpu``
runs the same script on two CPU worker processes with NumPy chunks (no GPU needed; use small
sizes).

    python benchmarks/dask_multi_gpu.py [--batch 64,256] [--channels 64] [--length 65536]
        [--taps LENGTH] [--chunk 8] [--dtype float32] [--repeat 5] [--out DIR] [--cpu]

Needs dask[array], distributed, dask-cuda and CuPy with a CUDA device.
"""

from __future__ import annotations

import os

# Workers inherit this process's environment. NVLink multicast (NCCL's NVLS) stays off in all of
# them: this job has no use for it, and on a shared machine it can take the GPUs out of service.
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
os.environ["NVSHMEM_DISABLE_NVLS"] = "1"

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

import longconv  # noqa: E402
from longconv import testing  # noqa: E402

SEED = 20_240_611


def array_module(cpu):
    if cpu:
        return np
    import cupy

    return cupy


def make_rows(rows, H, L, dtype, cpu):
    """Sequences ``rows`` of the signal: row ``b`` is drawn from its own seeded generator, so
    any chunking gives the same numbers (the one-worker copy equals the all-worker one)."""
    xp = array_module(cpu)
    out = xp.empty((len(rows), H, L), dtype=dtype)
    for i, b in enumerate(np.asarray(rows).tolist()):
        out[i] = xp.random.default_rng(SEED + b).standard_normal((H, L), dtype=dtype)
    return out


def make_filter(H, taps, dtype):
    """A full-length random causal filter per channel, scaled so outputs are O(1)."""
    rng = np.random.default_rng(SEED - 1)
    return (rng.standard_normal((H, taps)) / np.sqrt(taps)).astype(dtype)


def where_am_i():
    """The device a worker computes on (run on every worker through ``client.run``)."""
    info = {"pid": os.getpid(), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    try:
        import cupy

        device = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(device.id)
        name = props["name"]
        info.update(device=device.id, pci_bus_id=device.pci_bus_id,
                    name=name.decode() if isinstance(name, bytes) else str(name))
    except Exception as exc:  # a CPU worker (--cpu), or no usable device
        info.update(device="cpu", pci_bus_id="", name=type(exc).__name__)
    return info


def gpu_label(info):
    visible = info["CUDA_VISIBLE_DEVICES"].split(",")[0]
    if info["device"] == "cpu":
        return f"cpu (pid {info['pid']})"
    return f"GPU {visible or info['device']} {info['name']} [{info['pci_bus_id']}]"


def relative_error(xp, y, ref):
    """``||y - ref|| / ||ref||`` in float64, on the arrays' device, a few sequences at a time."""
    num = den = 0.0
    for i in range(0, len(ref), 8):
        r = ref[i:i + 8].astype(xp.float64)
        num += float(((y[i:i + 8].astype(xp.float64) - r) ** 2).sum())
        den += float((r * r).sum())
    return float(np.sqrt(num / den))


def sync(cpu):
    if not cpu:
        import cupy

        cupy.cuda.Device().synchronize()


def per_process_cluster(envs):
    """One single-threaded worker process per entry of ``envs`` (its environment variables),
    without a memory limit (chunks on a GPU must never be spilled to disk by the host's
    memory manager)."""
    from distributed import Nanny, Scheduler, SpecCluster

    quiet = logging.WARNING
    workers = {f"worker-{i}": {"cls": Nanny, "options": {
        "nthreads": 1, "memory_limit": 0, "env": env, "host": "127.0.0.1",
        "silence_logs": quiet}} for i, env in enumerate(envs)}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None, "host": "127.0.0.1"}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=quiet)


def visible_gpus():
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    try:
        import pynvml

        pynvml.nvmlInit()
        return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no NVML: ask CUDA (this does not create a context)
        import cupy

        return [str(i) for i in range(cupy.cuda.runtime.getDeviceCount())]


def start_cluster(args, gpus):
    """The cluster and a description of it."""
    if args.cpu:
        return (per_process_cluster([{"CUDA_VISIBLE_DEVICES": ""}] * args.cpu_workers),
                f"{args.cpu_workers} CPU worker processes")
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        # what LocalCUDACluster does, without it: each worker sees its own GPU first
        print(f"# dask_cuda does not import ({type(exc).__name__}: {exc}); starting one worker "
              "process per GPU with distributed's SpecCluster instead")
        envs = [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i:] + gpus[:i])}
                for i in range(len(gpus))]
        return per_process_cluster(envs), "distributed.SpecCluster, one worker per GPU"
    return (LocalCUDACluster(threads_per_worker=1, dashboard_address=None),
            "dask_cuda.LocalCUDACluster")


def versions():
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("dask", "distributed", "dask-cuda", "cuda-core", "nvidia-ml-py"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} -")
    return ", ".join(out)


def run_size(client, args, B, workers, where, rows, placement_rows):
    import dask.array as da
    from dask.core import flatten
    from dask.graph_manipulation import clone
    from distributed import get_task_stream, wait

    cpu, H, L, dtype = args.cpu, args.channels, args.length, np.dtype(args.dtype)
    taps = args.taps or L
    xp = array_module(cpu)
    meta = xp.empty((0, 0, 0), dtype=dtype)
    k = make_filter(H, taps, dtype)
    seeds = da.arange(B, chunks=args.chunk)

    def signal(tag):
        # the same numbers under another name: a copy that can be placed elsewhere
        return seeds.map_blocks(make_rows, H, L, dtype, cpu, new_axis=[1, 2],
                                chunks=(seeds.chunks[0], (H,), (L,)), dtype=dtype, meta=meta,
                                name=f"signal-{tag}-{B}x{H}x{L}-{dtype.name}-{args.chunk}")

    x_lazy = signal("all")
    nbytes = B * H * L * dtype.itemsize
    print(f"\n## B={B} H={H} L={L} taps={taps} {dtype}: {x_lazy.npartitions} chunks of "
          f"{args.chunk} sequences ({nbytes / 2**30:.2f} GiB in, the same out)", flush=True)

    def timed_persist(y, x, on):
        kw = {} if on is None else {"workers": on, "allow_other_workers": False}
        times = []
        for i in range(args.repeat):
            yc = clone(y, omit=x, seed=(B, len(on or workers), i))
            t0 = time.perf_counter()
            yp = client.persist(yc, **kw)
            wait(yp)
            times.append(time.perf_counter() - t0)
            del yp
        return _harness.Timing(tuple(times))

    base = {"batch": B, "channels": H, "length": L, "taps": taps, "dtype": dtype.name,
            "chunk": args.chunk, "chunks": x_lazy.npartitions}
    results = {}

    # every worker: input persisted where the scheduler puts it, then the convolution
    x_all = client.persist(x_lazy)
    wait(x_all)
    y_all = longconv.convolve(x_all, k)
    assert isinstance(y_all._meta, type(meta)), type(y_all._meta)
    with get_task_stream(client) as stream:
        first = client.persist(y_all)
        wait(first)
    chunk_of = {str(key): key[1] for key in flatten(y_all.__dask_keys__())}
    ran_on = {chunk_of[str(t["key"])]: t["worker"] for t in stream.data
              if str(t.get("key")) in chunk_of}
    print("chunk -> where it was computed:")
    per_worker = {w: 0 for w in workers}
    for i in range(x_lazy.npartitions):
        w = ran_on.get(i, "?")
        per_worker[w] = per_worker.get(w, 0) + 1
        lo = sum(x_lazy.chunks[0][:i])
        label = gpu_label(where[w]) if w in where else "?"
        print(f"  chunk {i:3d} (sequences {lo}:{lo + x_lazy.chunks[0][i]}) -> {w} -> {label}")
        placement_rows.append({"batch": B, "chunk index": i, "sequences":
                               f"{lo}:{lo + x_lazy.chunks[0][i]}", "worker": w,
                               "device": label})
    for w, n in per_worker.items():
        print(f"  {w} ({gpu_label(where[w]) if w in where else '?'}): {n} chunks")
    if len(ran_on) != x_lazy.npartitions:
        print(f"error: the task stream shows {len(ran_on)} of {x_lazy.npartitions} chunks")
        return False

    # the single-GPU in-memory computation, in this process, on the same input
    x_mem = x_all.compute()
    k_mem = xp.asarray(k)
    ref = longconv.convolve(x_mem, k_mem)
    sync(cpu)
    got = first.compute()
    if not isinstance(got, type(meta)):
        print(f"error: the computed result is a {type(got).__name__}, not a "
              f"{type(meta).__name__}")
        return False
    err = relative_error(xp, got, ref)
    ends = [0, B - 1]
    err_oracle = max(testing.relative_error(
        got[b], testing.reference_convolve(x_mem[b], k)) for b in ends)
    del got, first
    tol = testing.tolerance(dtype)
    print(f"relative L2 error: dask vs in-memory {err:.2e}; vs the float64 oracle (sequences "
          f"{ends}) {err_oracle:.2e}; tolerance {tol:.0e}")
    if not (err <= tol and err_oracle <= tol):
        print("error: the dask result disagrees")
        return False

    def in_memory():
        longconv.convolve(x_mem, k_mem)
        sync(cpu)

    results["in-memory, 1 " + ("CPU process" if cpu else "GPU")] = (
        _harness.time_cpu(in_memory, repeat=args.repeat, warmup=1), 1)
    ref = x_mem = None  # free this process's device memory before the dask runs
    if not cpu:
        xp.get_default_memory_pool().free_all_blocks()

    # one worker: its own copy of the input, every task restricted to it
    w0 = workers[0]
    x_one = client.persist(signal("one"), workers=[w0], allow_other_workers=False)
    wait(x_one)
    y_one = longconv.convolve(x_one, k)
    results["dask, 1 worker"] = (timed_persist(y_one, x_one, [w0]), 1)
    del x_one, y_one
    if len(workers) > 1:
        results[f"dask, {len(workers)} workers"] = (timed_persist(y_all, x_all, None),
                                                    len(workers))
    else:
        print("one worker: nothing to compare the one-worker run with")
    del x_all, y_all

    t_one = results["dask, 1 worker"][0].median
    for method, (t, n) in results.items():
        row = {"method": method, "workers": n, **base, "median s": round(t.median, 4),
               "best s": round(t.best, 4), "spread": round(t.spread, 2),
               "GB/s in+out": round(2 * nbytes / t.median / 1e9, 1),
               "speedup vs dask 1 worker": round(t_one / t.median, 2),
               "err vs in-memory": f"{err:.1e}", "err vs float64 oracle": f"{err_oracle:.1e}"}
        rows.append(row)
        print(f"{method}: {t.median * 1e3:.1f} ms (best {t.best * 1e3:.1f}, spread "
              f"{t.spread:.2f}), {row['speedup vs dask 1 worker']}x the one-worker run",
              flush=True)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", default="64", help="sequences B; a comma-separated list "
                        "runs each size (default: 64)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--length", type=int, default=65536)
    parser.add_argument("--taps", type=int, default=None, help="filter taps (default: length)")
    parser.add_argument("--chunk", type=int, default=8, help="sequences per chunk")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="directory of the CSV files (default: benchmarks/results)")
    parser.add_argument("--cpu", action="store_true", help="CPU worker processes and NumPy "
                        "chunks, to try the script without a GPU")
    parser.add_argument("--cpu-workers", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(b) for b in args.batch.split(",")]
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
        if not args.cpu:
            import cupy  # noqa: F401
    except ImportError as exc:
        print(f"dask_multi_gpu: needs dask[array], distributed and CuPy (and dask-cuda): {exc}",
              file=sys.stderr)
        return 2
    from distributed import Client

    gpus = []
    if not args.cpu:
        try:
            gpus = visible_gpus()
        except Exception as exc:  # no driver
            print(f"dask_multi_gpu: no GPU visible ({type(exc).__name__}: {exc}); --cpu runs "
                  "the script on CPU workers", file=sys.stderr)
            return 2
        if not gpus:
            print("dask_multi_gpu: no GPU visible; --cpu runs the script on CPU workers",
                  file=sys.stderr)
            return 2
        if len(gpus) == 1:
            print("# only one GPU is visible: one worker; the script checks the result and "
                  "times one GPU, and has no multi-GPU run to compare (make more GPUs visible "
                  "through CUDA_VISIBLE_DEVICES)")
    print(f"# {versions()}")
    rows, placement = [], []
    cluster, kind = start_cluster(args, gpus)
    with cluster, Client(cluster) as client:
        where = client.run(where_am_i)
        workers = sorted(where)
        info = _harness.machine_info()
        info["dask cluster"] = kind
        info["dask workers"] = str(len(workers))
        print(f"# {info['cpu']}; {kind}, {len(workers)} workers:")
        for w in workers:
            print(f"#   {w}: {gpu_label(where[w])} (pid {where[w]['pid']}, "
                  f"CUDA_VISIBLE_DEVICES={where[w]['CUDA_VISIBLE_DEVICES'] or '-'})")
        if not args.cpu and len({where[w]["pci_bus_id"] for w in workers}) != len(workers):
            print("error: two workers share a GPU")
            return 1
        for B in sizes:
            if not run_size(client, args, B, workers, where, rows, placement):
                return 1
    print()
    print(_harness.markdown_table(rows, ["method", "workers", "batch", "chunks", "dtype",
                                         "median s", "speedup vs dask 1 worker",
                                         "GB/s in+out", "err vs in-memory"]))
    out = None if args.out is None else Path(args.out)
    name = "dask-multi-cpu" if args.cpu else "dask-multi-gpu"
    print(f"\nwrote {_harness.write_csv(name, rows, info, directory=out)}")
    print(f"wrote {_harness.write_csv(name + '-placement', placement, info, directory=out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
