"""Timing, machine description and result files shared by the benchmark scripts.

CPU timings: :func:`time_cpu` (``time.perf_counter``, warm-up calls, median of repeats).
GPU timings: :func:`time_gpu` (CUDA events through CuPy, warm-up calls, input sets rotated so
their total size exceeds twice the L2 cache, median of repeats) and :func:`gpu_copy_floor`
(a device-to-device copy that moves the same bytes, measured the same way: the memory floor a
kernel that reads its inputs once and writes its output once cannot beat).
Results: :func:`write_csv` writes ``benchmarks/results/<name>.csv``, one row per measurement,
each row carrying the machine description of :func:`machine_info`.
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import math
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

# Timing, time_cpu, time_gpu and markdown_table live in the installed package (``longconv bench``
# uses them too) and are re-exported here for the scripts.
from longconv._bench import Timing, markdown_table, time_cpu, time_gpu  # noqa: F401
from longconv._cli import cpu_model

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


# --------------------------------------------------------------------------------------------
# GPU (CuPy); nothing here imports CuPy before it is called


def l2_cache_bytes(device_id: int | None = None) -> int:
    """L2 cache size of a CUDA device in bytes."""
    import cupy

    device = cupy.cuda.Device(device_id)
    return int(device.attributes["L2CacheSize"])


def rotation_count(bytes_per_set: int, *, l2_bytes: int | None = None,
                   max_bytes: int | None = None) -> int:
    """Number of distinct input sets whose total exceeds twice the L2 cache.

    With that many sets used in turn, every call reads its inputs from HBM, not from an L2
    that still holds them from the previous call. ``max_bytes`` caps the total (at least two
    sets are always used).
    """
    if l2_bytes is None:
        l2_bytes = l2_cache_bytes()
    count = max(2, math.floor(2 * l2_bytes / max(bytes_per_set, 1)) + 1)
    if max_bytes is not None:
        count = max(2, min(count, max_bytes // max(bytes_per_set, 1)))
    return count


def make_rotating_inputs(make: Callable[[int], Sequence], bytes_per_set: int, *,
                         max_bytes: int | None = None) -> list:
    """``[make(0), make(1), ...]``: enough input sets to rotate past the L2 cache.

    ``make(i)`` returns the arguments of one call (a tuple of device arrays); the default cap
    on their total is a quarter of the free device memory.
    """
    if max_bytes is None:
        import cupy

        free, _total = cupy.cuda.runtime.memGetInfo()
        max_bytes = free // 4
    return [make(i) for i in range(rotation_count(bytes_per_set, max_bytes=max_bytes))]


def gpu_copy_floor(bytes_read: int, bytes_written: int, *, repeat: int = 20,
                   warmup: int = 3) -> Timing:
    """Memory floor of a kernel that reads ``bytes_read`` and writes ``bytes_written`` once.

    Measured as device-to-device copies of ``(bytes_read + bytes_written) / 2`` bytes (a copy
    of ``n`` bytes moves ``2n``), with the buffers rotated past the L2 cache like
    :func:`time_gpu`. A convolution ``y = conv(x, k)`` with ``x`` and ``y`` of the same size
    has the floor of copying ``x``; a gated one (``x``, two gates in, ``y`` out) that of
    copying twice ``x``'s bytes.
    """
    import cupy

    nbytes = max((bytes_read + bytes_written) // 2, 1)
    sets = make_rotating_inputs(
        lambda i: (cupy.empty(nbytes, dtype=cupy.uint8), cupy.empty(nbytes, dtype=cupy.uint8)),
        2 * nbytes,
    )
    for src, _dst in sets:
        src.fill(1)

    def copy(src, dst):
        cupy.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes,
                                      cupy.cuda.runtime.memcpyDeviceToDevice,
                                      cupy.cuda.get_current_stream().ptr)

    return time_gpu(copy, sets, repeat=repeat, warmup=warmup)


# --------------------------------------------------------------------------------------------
# machine description and result files


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def git_sha() -> str:
    """Commit of the source tree, with ``-dirty`` when it has uncommitted changes.

    ``BENCH_GIT_SHA`` overrides it (for copies of the tree without git metadata).
    """
    if os.environ.get("BENCH_GIT_SHA"):
        return os.environ["BENCH_GIT_SHA"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=HERE,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=HERE, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask), else all of the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_name() -> str:
    """Name of the current CUDA device, or an empty string without one."""
    try:
        import cupy

        device = cupy.cuda.Device()
        name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
    except Exception:  # no CuPy, no driver or no device
        return ""
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def machine_info() -> dict[str, str]:
    """CPU, GPU, library versions, git commit and date of a benchmark run."""
    cupy_version = next((v for v in (_dist_version(d) for d in
                                     ("cupy-cuda13x", "cupy-cuda12x", "cupy")) if v), "")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_sha": git_sha(),
        "cpu": cpu_model(),
        "cpu_cores": str(usable_cores()),
        "cpu_cores_total": str(os.cpu_count()),
        "load_avg_1min": f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "",
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "longconv": _dist_version("longconv"),
        "numpy": _dist_version("numpy"),
        "scipy": _dist_version("scipy"),
        "cupy": cupy_version,
        "torch": _dist_version("torch"),
        "jax": _dist_version("jax"),
    }


def write_csv(name: str, rows: Sequence[dict], info: dict[str, str] | None = None,
              directory: Path | None = None) -> Path:
    """Write ``rows`` to ``<directory>/<name>.csv`` (default ``benchmarks/results``).

    Every row gets the columns of ``info`` (default :func:`machine_info`) appended, so a file
    stays self-describing when rows of several runs are concatenated.
    """
    info = machine_info() if info is None else info
    directory = RESULTS if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.csv"
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    columns += [c for c in info if c not in columns]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**info, **row})
    return path
