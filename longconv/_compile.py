"""Kernel loader: the one module that owns NVRTC.

The CUDA sources live in ``cuda_src/`` (installed as ``longconv.cuda_src``).
A *family* ``f`` is the translation unit ``cuda_src/f.cu``; the project's own
headers it includes with quotes are inlined into one source string (with
``#line`` directives so diagnostics point at the original file and line), so
CuPy's on-disk kernel cache, keyed by source text and options, follows header
edits.

A specialisation is named by a :class:`KernelKey` (family, FFT size, dtype,
flags, extra integer parameters, target architecture) and becomes a set of
``-D`` defines.  Two compile paths share the same source and options:

* GPU: :func:`get_kernel` compiles through ``cupy.RawModule`` (NVRTC backend)
  for the current device's architecture, memoised per key and device;
  :func:`prepare` raises the kernel's dynamic shared-memory limit before
  launches that need more than the 48 KiB default.
* CPU: :func:`compile_cubin` calls NVRTC directly through ``ctypes`` (no GPU
  and no CuPy needed), so CI proves that every specialisation compiles for
  ``sm_80`` and ``sm_90a``.

Kernel arguments travel in one params struct mirrored on the host by a NumPy
structured dtype (:func:`params_dtype`, :func:`pack_params`).  CuPy passes a
size-one ``numpy.ndarray`` argument by value: the driver copies
``sizeof(param)`` bytes from the array's data pointer.
:func:`layout_static_asserts` and :func:`check_layout` prove with NVRTC that
the dtype matches the C layout.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import glob
import importlib
import importlib.resources
import operator
import os
import re
import struct
import sys
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DeviceInfo",
    "KernelCompileError",
    "KernelKey",
    "KernelSourceError",
    "Launcher",
    "arch_from_cc",
    "cache_dir",
    "check_layout",
    "compile_cubin",
    "compile_options",
    "defines",
    "device_arch",
    "device_info",
    "get_kernel",
    "layout_static_asserts",
    "load_source",
    "nvrtc_available",
    "nvrtc_compile",
    "nvrtc_path",
    "nvrtc_version",
    "pack_params",
    "params_bytes",
    "params_dtype",
    "prepare",
    "struct_for",
]

#: Dynamic shared memory a block may use without opting in (bytes).
DEFAULT_DYNAMIC_SMEM = 48 * 1024

#: Options every specialisation is compiled with.  No ``--use_fast_math``:
#: the FFT twiddles need accurate ``sincosf``.
BASE_OPTIONS = ("-std=c++17",)

# CuPy appends these to every NVRTC compile (``-ftz=true`` in its cache layer,
# ``--device-as-default-execution-space`` when jitify is off).  The CPU path
# adds them too so that it checks exactly what the GPU path compiles.
_CUPY_IMPLICIT_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ARCH = re.compile(r"sm_[0-9]{2,3}[af]?\Z")
_INCLUDE = re.compile(r'^\s*#\s*include\s*(?:"([^"]+)"|<([^>]+)>)')
_PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\b")


# --------------------------------------------------------------------------
# errors


class KernelSourceError(ValueError):
    """A kernel source file is missing or uses a forbidden construct."""


class KernelCompileError(RuntimeError):
    """NVRTC rejected a kernel source.

    Attributes
    ----------
    key : KernelKey or None
        The specialisation that failed (None for ad-hoc sources).
    files : tuple of str
        The source files that make up the translation unit.
    log : str
        The NVRTC program log.
    """

    def __init__(self, message, *, key=None, files=(), log=""):
        super().__init__(message)
        self.key = key
        self.files = tuple(files)
        self.log = log


# --------------------------------------------------------------------------
# specialisation keys


@dataclasses.dataclass(frozen=True)
class KernelKey:
    """Name of one compiled specialisation.

    Parameters
    ----------
    family : str
        Kernel family; its source is ``cuda_src/<family>.cu``.
    fft_size : int
        FFT size ``N`` the specialisation is built for (``-DLC_FFT_SIZE=N``).
    dtype : str
        Storage dtype tag, e.g. ``"fp16"``, ``"bf16"``, ``"fp32"``
        (``-DLC_DTYPE_<TAG>=1``).
    flags : iterable of str, optional
        Boolean switches, e.g. ``("causal", "gated")`` (``-DLC_<FLAG>=1``).
        Stored sorted and de-duplicated, so the order does not matter.
    arch : str, optional
        Target architecture, e.g. ``"sm_80"`` or ``"sm_90a"``.  Empty means
        "the current device's" (filled in by :func:`get_kernel`).
    params : mapping or iterable of (str, int), optional
        Further integer compile-time parameters, e.g. tile sizes
        (``-DLC_<NAME>=<value>``).  Stored sorted by name.
    """

    family: str
    fft_size: int
    dtype: str
    flags: tuple[str, ...] = ()
    arch: str = ""
    params: tuple[tuple[str, int], ...] = ()

    def __post_init__(self):
        if not isinstance(self.family, str) or not _IDENT.match(self.family):
            raise ValueError(
                f"KernelKey: family must be an identifier, got {self.family!r}"
            )
        if isinstance(self.fft_size, bool):
            raise TypeError("KernelKey: fft_size must be an int, got bool")
        fft_size = operator.index(self.fft_size)
        if fft_size < 1:
            raise ValueError(f"KernelKey: fft_size must be >= 1, got {fft_size}")
        if not isinstance(self.dtype, str) or not _IDENT.match(self.dtype):
            raise ValueError(
                f"KernelKey: dtype must be an identifier, got {self.dtype!r}"
            )
        if isinstance(self.flags, str):
            raise TypeError(
                "KernelKey: flags must be an iterable of str, got a str "
                f"({self.flags!r})"
            )
        flags = tuple(sorted(set(self.flags)))
        for flag in flags:
            if not isinstance(flag, str) or not _IDENT.match(flag):
                raise ValueError(
                    f"KernelKey: every flag must be an identifier, got {flag!r}"
                )
        if not isinstance(self.arch, str) or (
            self.arch and not _ARCH.match(self.arch)
        ):
            raise ValueError(
                "KernelKey: arch must be '' or like 'sm_80' / 'sm_90a', "
                f"got {self.arch!r}"
            )
        raw = self.params.items() if isinstance(self.params, dict) else self.params
        params = []
        for item in raw:
            name, value = item
            if not isinstance(name, str) or not _IDENT.match(name):
                raise ValueError(
                    f"KernelKey: param names must be identifiers, got {name!r}"
                )
            if isinstance(value, bool):
                raise TypeError(f"KernelKey: param {name!r} must be an int, got bool")
            params.append((name, operator.index(value)))
        params.sort()
        names = [name.upper() for name, _ in params]
        reserved = {"FFT_SIZE"} | {flag.upper() for flag in flags}
        clash = sorted(
            n for n in set(names)
            if names.count(n) > 1 or n in reserved or n.startswith("DTYPE_")
        )
        if clash:
            raise ValueError(
                f"KernelKey: param names {clash} collide with other defines"
            )
        object.__setattr__(self, "fft_size", fft_size)
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "params", tuple(params))

    def with_arch(self, arch: str) -> KernelKey:
        """Return a copy of this key targeting ``arch``."""
        return dataclasses.replace(self, arch=arch)

    def __str__(self):
        parts = [self.family, f"n={self.fft_size}", self.dtype, *self.flags]
        parts += [f"{k}={v}" for k, v in self.params]
        parts.append(self.arch or "arch=<device>")
        return "KernelKey(" + ", ".join(parts) + ")"


def defines(key: KernelKey) -> tuple[str, ...]:
    """Preprocessor defines of a specialisation.

    Parameters
    ----------
    key : KernelKey

    Returns
    -------
    tuple of str
        ``-DLC_FFT_SIZE=<n>``, ``-DLC_DTYPE_<TAG>=1``, one ``-DLC_<FLAG>=1``
        per flag and one ``-DLC_<NAME>=<value>`` per parameter, in that order.

    Examples
    --------
    >>> defines(KernelKey("conv", 4096, "bf16", flags=("causal",)))
    ('-DLC_FFT_SIZE=4096', '-DLC_DTYPE_BF16=1', '-DLC_CAUSAL=1')
    """
    out = [f"-DLC_FFT_SIZE={key.fft_size}", f"-DLC_DTYPE_{key.dtype.upper()}=1"]
    out += [f"-DLC_{flag.upper()}=1" for flag in key.flags]
    out += [f"-DLC_{name.upper()}={value}" for name, value in key.params]
    return tuple(out)


def compile_options(key: KernelKey, *, lineinfo: bool = False) -> tuple[str, ...]:
    """NVRTC options of a specialisation (architecture included).

    Parameters
    ----------
    key : KernelKey
        Must name an architecture (``key.arch`` non-empty).
    lineinfo : bool, optional
        Add ``-lineinfo`` (source lines for profilers and compute-sanitizer).

    Returns
    -------
    tuple of str
    """
    if not key.arch:
        raise ValueError(
            f"{key}: no target architecture; use key.with_arch(device_arch())"
        )
    opts = (*BASE_OPTIONS, f"--gpu-architecture={key.arch}")
    if lineinfo:
        opts += ("-lineinfo",)
    return opts + defines(key)


# --------------------------------------------------------------------------
# sources


def _default_root():
    try:
        root = importlib.resources.files("longconv.cuda_src")
        if root.is_dir():
            return root
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "cuda_src"


def _read(root, relpath: str, included_from: str | None) -> str:
    node = root
    for part in relpath.split("/"):
        if part in ("", ".", ".."):
            raise KernelSourceError(
                f"{included_from or relpath}: include path {relpath!r} must be "
                "relative to cuda_src/ without '.' or '..' components"
            )
        node = node / part
    if not node.is_file():
        where = f" (included from {included_from})" if included_from else ""
        raise KernelSourceError(f"kernel source {relpath!r} not found{where}")
    return node.read_text(encoding="utf-8")


def _line_directive(line: int, name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'#line {line} "{escaped}"'


def _assemble(family: str, root=None) -> tuple[str, tuple[str, ...]]:
    stem, dot, ext = family.rpartition(".")
    if not (dot and ext in ("cu", "cuh") and _IDENT.match(stem)) and not _IDENT.match(family):
        raise ValueError(
            f"family must be an identifier (or a file name like 'params.cuh'), got {family!r}"
        )
    root = _default_root() if root is None else root
    once: set[str] = set()
    files: list[str] = []
    out: list[str] = []

    def inline(relpath: str, stack: tuple[str, ...], included_from):
        text = _read(root, relpath, included_from)
        if relpath not in files:
            files.append(relpath)
        lines = text.splitlines()
        if any(_PRAGMA_ONCE.match(line) for line in lines):
            once.add(relpath)
        out.append(_line_directive(1, relpath))
        for lineno, line in enumerate(lines, start=1):
            if _PRAGMA_ONCE.match(line):
                out.append("")
                continue
            m = _INCLUDE.match(line)
            if m is None:
                out.append(line)
                continue
            where = f"{relpath}:{lineno}"
            header, system = m.group(1), m.group(2)
            if system is not None:
                raise KernelSourceError(
                    f"{where}: system include <{system}> is not allowed; the "
                    "kernels are header-free (NVRTC runs without the CUDA "
                    "toolkit headers) and include only cuda_src/ headers "
                    'with quotes, e.g. #include "common.cuh"'
                )
            if header in once:
                out.append("")
                continue
            if header in stack:
                chain = " -> ".join((*stack, header))
                raise KernelSourceError(
                    f"{where}: include cycle {chain} (add #pragma once)"
                )
            inline(header, (*stack, header), where)
            out.append(_line_directive(lineno + 1, relpath))

    main = family if dot and ext in ("cu", "cuh") else f"{family}.cu"
    inline(main, (main,), None)
    return "\n".join(out) + "\n", tuple(files)


def load_source(family: str, *, root=None) -> str:
    """Read ``cuda_src/<family>.cu`` with the project's headers inlined.

    Every ``#include "name.cuh"`` (quotes, path relative to ``cuda_src/``)
    is replaced by the header's text, recursively; a header that contains
    ``#pragma once`` is inlined only the first time.  ``#line`` directives
    keep diagnostics pointing at the original file and line.  System
    includes (``#include <...>``) are rejected: the kernels are header-free.

    Parameters
    ----------
    family : str
        Kernel family (file stem in ``cuda_src/``), or a file name with its
        suffix (``"params.cuh"``) to load a header on its own, e.g. for
        :func:`check_layout`.
    root : path-like or importlib.resources.abc.Traversable, optional
        Directory holding the sources.  Default: the installed
        ``longconv.cuda_src`` package, else ``cuda_src/`` beside the
        ``longconv`` package of a source checkout.

    Returns
    -------
    str
        One self-contained translation unit.

    Raises
    ------
    KernelSourceError
        A file is missing, an include is a system include, or headers
        include each other in a cycle without ``#pragma once``.
    """
    if root is not None and not hasattr(root, "joinpath"):
        root = Path(root)
    return _assemble(family, root)[0]


# --------------------------------------------------------------------------
# NVRTC through ctypes (no GPU needed)


def _nvrtc_candidates() -> list[str]:
    """Library files to try, most preferred first."""
    if sys.platform == "win32":
        lib_globs = [("bin", "nvrtc64_*.dll"), ("lib", "nvrtc64_*.dll")]
        toolkit_globs = [("bin", "nvrtc64_*.dll"), ("bin/x64", "nvrtc64_*.dll")]
    else:
        lib_globs = [("lib", "libnvrtc.so*")]
        toolkit_globs = [("lib64", "libnvrtc.so*"), ("lib", "libnvrtc.so*")]

    def newest_first(paths):
        def version(path):
            nums = re.findall(r"\d+", os.path.basename(path))
            return [int(n) for n in nums]

        return sorted(paths, key=version, reverse=True)

    found: list[str] = []
    # 1. the NVIDIA PyPI wheels: nvidia/cu13/lib (CUDA 13),
    #    nvidia/cuda_nvrtc/lib (CUDA 12 and older).
    try:
        nvidia = importlib.import_module("nvidia")
        for base in list(getattr(nvidia, "__path__", [])):
            for sub in ("cu13", "cuda_nvrtc", "cu12"):
                for libdir, pattern in lib_globs:
                    found += newest_first(
                        glob.glob(os.path.join(base, sub, libdir, pattern))
                    )
    except ImportError:
        pass
    # 2. a CUDA toolkit.
    roots = [os.environ.get(v) for v in ("CUDA_PATH", "CUDA_HOME")]
    if sys.platform != "win32":
        roots.append("/usr/local/cuda")
    for root in filter(None, roots):
        for libdir, pattern in toolkit_globs:
            found += newest_first(glob.glob(os.path.join(root, libdir, pattern)))
    # 3. the system loader's search path.
    name = ctypes.util.find_library("nvrtc")
    if name:
        found.append(name)
    unique: list[str] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


class _Nvrtc:
    """Typed ctypes binding of the NVRTC C API."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        prog_p = ctypes.POINTER(ctypes.c_void_p)
        strs = ctypes.POINTER(ctypes.c_char_p)
        size_p = ctypes.POINTER(ctypes.c_size_t)
        int_p = ctypes.POINTER(ctypes.c_int)
        signatures = {
            "nvrtcGetErrorString": (ctypes.c_char_p, [ctypes.c_int]),
            "nvrtcVersion": (ctypes.c_int, [int_p, int_p]),
            "nvrtcCreateProgram": (
                ctypes.c_int,
                [prog_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                 strs, strs],
            ),
            "nvrtcDestroyProgram": (ctypes.c_int, [prog_p]),
            "nvrtcCompileProgram": (
                ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, strs]),
            "nvrtcGetProgramLogSize": (ctypes.c_int, [ctypes.c_void_p, size_p]),
            "nvrtcGetProgramLog": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
            "nvrtcGetCUBINSize": (ctypes.c_int, [ctypes.c_void_p, size_p]),
            "nvrtcGetCUBIN": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
        }
        for fname, (restype, argtypes) in signatures.items():
            fn = getattr(lib, fname)
            fn.restype = restype
            fn.argtypes = argtypes
        self.lib = lib
        self.path = path
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)),
                   "nvrtcVersion")
        self.version = (major.value, minor.value)

    def check(self, status: int, what: str) -> None:
        if status != 0:
            msg = self.lib.nvrtcGetErrorString(status)
            text = msg.decode() if msg else f"error {status}"
            raise RuntimeError(f"{what} failed: {text} ({status})")

    def compile(self, source: str, name: str, options) -> tuple[int, bytes, str]:
        """Return (status of nvrtcCompileProgram, cubin, log)."""
        lib = self.lib
        prog = ctypes.c_void_p()
        self.check(
            lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode("utf-8"),
                                   name.encode("utf-8"), 0, None, None),
            "nvrtcCreateProgram",
        )
        try:
            opts = [o.encode("utf-8") for o in options]
            argv = (ctypes.c_char_p * max(len(opts), 1))(*opts)
            status = lib.nvrtcCompileProgram(prog, len(opts), argv)
            size = ctypes.c_size_t()
            self.check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)),
                       "nvrtcGetProgramLogSize")
            buf = ctypes.create_string_buffer(size.value + 1)
            self.check(lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
            log = buf.value.decode("utf-8", errors="replace")
            if status != 0:
                return status, b"", log
            self.check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)),
                       "nvrtcGetCUBINSize")
            if size.value == 0:
                raise RuntimeError(
                    "NVRTC produced no CUBIN; --gpu-architecture must name a "
                    "real architecture (sm_XX), not a virtual one (compute_XX)"
                )
            cubin = ctypes.create_string_buffer(size.value)
            self.check(lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
            return status, cubin.raw, log
        finally:
            self.check(lib.nvrtcDestroyProgram(ctypes.byref(prog)),
                       "nvrtcDestroyProgram")


_nvrtc_lock = threading.Lock()
_nvrtc_state: dict[str, Any] = {}


def _nvrtc() -> _Nvrtc | None:
    with _nvrtc_lock:
        if "lib" not in _nvrtc_state:
            lib = None
            errors = []
            for path in _nvrtc_candidates():
                try:
                    lib = _Nvrtc(path)
                    break
                except (OSError, AttributeError, RuntimeError) as exc:
                    errors.append(f"{path}: {exc}")
            _nvrtc_state["lib"] = lib
            _nvrtc_state["errors"] = errors
        return _nvrtc_state["lib"]


def _require_nvrtc() -> _Nvrtc:
    lib = _nvrtc()
    if lib is None:
        tried = "; ".join(_nvrtc_state.get("errors", ())) or "no candidates found"
        raise RuntimeError(
            "NVRTC library not found (install the 'nvidia-cuda-nvrtc' wheel, "
            "e.g. pip install 'longconv[test]', or set CUDA_PATH to a CUDA "
            f"toolkit); tried: {tried}"
        )
    return lib


def nvrtc_available() -> bool:
    """Whether an NVRTC shared library could be loaded through ctypes.

    Search order: the ``nvidia`` PyPI wheels (``nvidia/cu13/lib``,
    ``nvidia/cuda_nvrtc/lib``), ``$CUDA_PATH``, ``$CUDA_HOME``,
    ``/usr/local/cuda``, then the system loader (``find_library("nvrtc")``).
    """
    return _nvrtc() is not None


def nvrtc_path() -> str | None:
    """File of the NVRTC library used by the CPU path, or None."""
    lib = _nvrtc()
    return None if lib is None else lib.path


def nvrtc_version() -> tuple[int, int] | None:
    """``(major, minor)`` of the NVRTC library used by the CPU path, or None."""
    lib = _nvrtc()
    return None if lib is None else lib.version


def nvrtc_compile(source: str, options, *, name: str = "longconv.cu") -> bytes:
    """Compile a CUDA C++ source to a CUBIN with NVRTC (no GPU needed).

    Parameters
    ----------
    source : str
        Self-contained translation unit.
    options : sequence of str
        NVRTC options; must include ``--gpu-architecture=sm_XX``.
    name : str, optional
        Program name used in diagnostics.

    Returns
    -------
    bytes
        The CUBIN.

    Raises
    ------
    KernelCompileError
        Compilation failed; the message contains the NVRTC log.
    RuntimeError
        NVRTC is not installed or an NVRTC call failed.
    """
    status, cubin, log = _require_nvrtc().compile(source, name, list(options))
    if status != 0:
        raise KernelCompileError(
            f"NVRTC failed to compile {name} with options {list(options)}:\n{log}",
            files=(name,), log=log,
        )
    return cubin


def compile_cubin(key: KernelKey, *, root=None, lineinfo: bool = False) -> bytes:
    """Compile a specialisation to a CUBIN on the CPU (no GPU needed).

    Uses the same source and options as :func:`get_kernel`, plus the options
    CuPy adds to every NVRTC compile, so it checks what the GPU compiles.

    Parameters
    ----------
    key : KernelKey
        ``key.arch`` must be a real architecture, e.g. ``"sm_80"``.
    root : path-like, optional
        Source directory (see :func:`load_source`).
    lineinfo : bool, optional
        Add ``-lineinfo``.

    Returns
    -------
    bytes
        The CUBIN.

    Raises
    ------
    KernelCompileError
        NVRTC rejected the source; the message names the key, the files and
        contains the NVRTC log.
    """
    if root is not None and not hasattr(root, "joinpath"):
        root = Path(root)
    source, files = _assemble(key.family, root)
    options = compile_options(key, lineinfo=lineinfo) + _CUPY_IMPLICIT_OPTIONS
    try:
        return nvrtc_compile(source, options, name=files[0])
    except KernelCompileError as exc:
        raise _compile_error(key, files, exc.log) from None


def _compile_error(key, files, log) -> KernelCompileError:
    return KernelCompileError(
        f"failed to compile {key} (sources: {', '.join(files)}; "
        f"defines: {' '.join(defines(key))}):\n{log.strip()}",
        key=key, files=files, log=log,
    )


# --------------------------------------------------------------------------
# params struct


_C_TYPES = {
    "ptr": np.dtype(np.uint64),
    "i64": np.dtype(np.int64),
    "u64": np.dtype(np.uint64),
    "i32": np.dtype(np.int32),
    "u32": np.dtype(np.uint32),
    "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64),
}


def params_dtype(fields) -> np.dtype:
    """NumPy structured dtype with the layout of a C struct.

    Parameters
    ----------
    fields : sequence of (name, c_type) or (name, c_type, count)
        Members in declaration order.  ``c_type`` is one of ``"ptr"`` (any
        device pointer, 8 bytes), ``"i64"``, ``"u64"``, ``"i32"``, ``"u32"``,
        ``"f32"``, ``"f64"``; ``count`` makes a fixed-size array member
        (``T name[count]``).

    Returns
    -------
    numpy.dtype
        Aligned (``align=True``): each member at its natural alignment, the
        size padded to a multiple of the largest alignment, as a C compiler
        lays the struct out.  ``dtype.metadata["c_types"]`` records the
        ``c_type`` of each field (pointer fields are stored as uint64).
    """
    names, formats, c_types = [], [], {}
    for field in fields:
        if len(field) == 2:
            (name, c_type), count = field, None
        elif len(field) == 3:
            name, c_type, count = field
        else:
            raise ValueError(
                f"params_dtype: field must be (name, c_type[, count]), got {field!r}"
            )
        if not isinstance(name, str) or not _IDENT.match(name):
            raise ValueError(f"params_dtype: bad field name {name!r}")
        if name in c_types:
            raise ValueError(f"params_dtype: duplicate field {name!r}")
        if c_type not in _C_TYPES:
            raise ValueError(
                f"params_dtype: field {name!r} has c_type {c_type!r}; expected "
                f"one of {sorted(_C_TYPES)}"
            )
        fmt = _C_TYPES[c_type]
        if count is not None:
            count = operator.index(count)
            if count < 1:
                raise ValueError(f"params_dtype: field {name!r} count must be >= 1")
            fmt = np.dtype((fmt, (count,)))
        names.append(name)
        formats.append(fmt)
        c_types[name] = c_type
    if not names:
        raise ValueError("params_dtype: a struct needs at least one field")
    dt = np.dtype({"names": names, "formats": formats}, align=True)
    return np.dtype(dt, metadata={"c_types": c_types})


def _as_address(name: str, value) -> int:
    if value is None:
        return 0
    ptr = getattr(getattr(value, "data", None), "ptr", None)  # cupy.ndarray: no dict built
    if type(ptr) is int and 0 <= ptr < 2**64:
        return ptr
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        address = int(value)
    elif hasattr(value, "__cuda_array_interface__"):
        address = int(value.__cuda_array_interface__["data"][0])
    elif hasattr(value, "ptr"):  # cupy.cuda.MemoryPointer
        address = int(value.ptr)
    else:
        raise TypeError(
            f"pack_params: field {name!r} is a pointer; expected an int address, "
            f"a device array or a MemoryPointer, got {type(value).__name__}"
        )
    if not 0 <= address < 2**64:
        raise ValueError(f"pack_params: field {name!r} address {address} out of range")
    return address


def pack_params(dtype: np.dtype, **values) -> np.ndarray:
    """Fill one params struct.

    Parameters
    ----------
    dtype : numpy.dtype
        From :func:`params_dtype`.
    **values
        One value per field, all fields required.  Pointer fields take an
        int address, ``None`` (null), a MemoryPointer or any object with
        ``__cuda_array_interface__`` (CuPy, PyTorch, ...).  Integer fields
        are range-checked.

    Returns
    -------
    numpy.ndarray, shape (1,)
        Pass it directly as a ``cupy.RawKernel`` argument: CuPy passes a
        size-one NumPy array by value, copying ``sizeof(param)`` bytes from
        its data pointer at launch.
    """
    names = dtype.names or ()
    missing = [n for n in names if n not in values]
    extra = sorted(set(values) - set(names))
    if missing or extra:
        raise TypeError(
            f"pack_params: missing fields {missing}, unknown fields {extra}; "
            f"the struct has {list(names)}"
        )
    row = []
    for name, kind, lo, hi in _field_kinds(dtype):
        value = values[name]
        if kind == "ptr":
            value = _as_address(name, value)
        elif kind == "int":
            if type(value) is int:  # the common case, checked without building arrays
                if not lo <= value <= hi:
                    raise ValueError(
                        f"pack_params: field {name!r} ({dtype.fields[name][0].base}) out of "
                        f"range: {value!r}")
            else:
                items = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
                items = np.asarray(items, dtype=object).ravel().tolist()
                if not all(isinstance(v, (int, np.integer)) for v in items):
                    raise TypeError(
                        f"pack_params: field {name!r} is {dtype.fields[name][0].base}; "
                        f"got {value!r}")
                if any(not lo <= int(v) <= hi for v in items):
                    raise ValueError(
                        f"pack_params: field {name!r} ({dtype.fields[name][0].base}) out of "
                        f"range: {value!r}")
        row.append(value)
    return np.array([tuple(row)], dtype=dtype)


_STRUCT_CHARS = {"ptr": "Q", "i64": "q", "u64": "Q", "i32": "i", "u32": "I", "f32": "f",
                 "f64": "d"}
_STRUCTS = {}


def struct_for(dtype: np.dtype) -> struct.Struct:
    """A :class:`struct.Struct` packing one params struct of ``dtype`` (from :func:`params_dtype`,
    scalar fields only) byte for byte as NumPy lays it out, fields in declaration order.

    ``pack_into`` with positional values is the launch path's packer: about 1 us, against
    several for building a structured NumPy array. Pointer fields take int addresses (0 for
    null); out-of-range values raise ``struct.error``.
    """
    st = _STRUCTS.get(dtype)
    if st is None:
        c_types = (dtype.metadata or {}).get("c_types", {})
        fmt, at = "<", 0
        for name in dtype.names or ():
            base, offset = dtype.fields[name][:2]
            if base.shape or name not in c_types:
                raise ValueError(f"struct_for: field {name!r} is not a scalar params field")
            if offset > at:
                fmt += f"{offset - at}x"
            fmt += _STRUCT_CHARS[c_types[name]]
            at = offset + base.itemsize
        if dtype.itemsize > at:
            fmt += f"{dtype.itemsize - at}x"
        st = _STRUCTS[dtype] = struct.Struct(fmt)
        if st.size != dtype.itemsize:  # pragma: no cover - the layout rules above are C's
            raise AssertionError(f"struct_for: {fmt} packs {st.size} bytes, not {dtype.itemsize}")
    return st


_LAUNCH_TLS = threading.local()


def _launch_buffers():
    """This thread's argument buffer and the one-entry argument array pointing at it (reused:
    ``cuLaunchKernel`` copies the arguments before it returns)."""
    bufs = getattr(_LAUNCH_TLS, "bufs", None)
    if bufs is None:
        arg = ctypes.create_string_buffer(1024)
        argv = (ctypes.c_void_p * 1)(ctypes.addressof(arg))
        bufs = _LAUNCH_TLS.bufs = (arg, ctypes.addressof(argv), argv)
    return bufs


class Launcher:
    """Launches of one compiled kernel whose only argument is a params struct, at the driver.

    Parameters
    ----------
    kernel : cupy.RawKernel
        From :func:`get_kernel`, on the current device (the launcher serves that device).
    dtype : numpy.dtype
        The kernel's params struct (:func:`params_dtype`).
    threads : int
        Threads per block.

    A call packs the struct into a per-thread buffer and calls ``cuLaunchKernel`` directly:
    a few microseconds of host time, against about 20 through ``RawKernel.__call__`` with a
    structured NumPy argument. The dynamic shared memory opt-in (:func:`prepare`) is made once
    per size.
    """

    __slots__ = ("kernel", "struct", "fptr", "threads", "static_smem", "_smem_ok", "device")

    def __init__(self, kernel, dtype: np.dtype, threads: int):
        self.kernel = kernel
        #: the device whose context holds the kernel (current at construction)
        self.device = _cupy().cuda.runtime.getDevice()
        self.struct = struct_for(dtype)
        if self.struct.size > 1024:  # pragma: no cover - every params struct is far smaller
            raise ValueError("Launcher: params struct larger than the argument buffer")
        self.fptr = kernel.kernel.ptr
        self.threads = int(threads)
        #: bytes of static shared memory of the kernel (beside the dynamic amount of a launch)
        self.static_smem = int(getattr(kernel, "shared_size_bytes", 0) or 0)
        self._smem_ok = DEFAULT_DYNAMIC_SMEM - self.static_smem

    def __call__(self, grid: int, smem: int, stream: int, values) -> None:
        """Launch ``grid`` blocks with ``smem`` bytes of dynamic shared memory on the stream
        handle ``stream`` (an int; 0 is the legacy default stream), ``values`` the struct's
        fields in order."""
        if smem > self._smem_ok:
            prepare(self.kernel, smem)
            self._smem_ok = smem
        arg, argv, _ = _launch_buffers()
        self.struct.pack_into(arg, 0, *values)
        try:
            _driver_launch(self.fptr, grid, 1, 1, self.threads, 1, 1, smem, stream, argv, 0)
        except Exception as exc:
            # A thread that has made no CUDA runtime call yet has no current context for the
            # driver (torch's autograd threads, for one, when their allocations come from
            # torch's cache): bind the device's primary context and launch again.
            if getattr(exc, "status", None) != _CUDA_ERROR_INVALID_CONTEXT:
                raise
            _cupy().cuda.runtime.setDevice(self.device)
            _driver_launch(self.fptr, grid, 1, 1, self.threads, 1, 1, smem, stream, argv, 0)


_CUDA_ERROR_INVALID_CONTEXT = 201


def _driver_launch(*args):
    from cupy.cuda import driver

    global _driver_launch
    _driver_launch = driver.launchKernel
    return driver.launchKernel(*args)


_FIELD_KINDS = {}


def _field_kinds(dtype: np.dtype):
    """(name, "ptr" | "int" | "other", min, max) of every field of a params dtype (cached)."""
    kinds = _FIELD_KINDS.get(dtype)
    if kinds is None:
        c_types = (dtype.metadata or {}).get("c_types", {})
        kinds = []
        for name in dtype.names or ():
            base = dtype.fields[name][0].base
            if c_types.get(name) == "ptr":
                kinds.append((name, "ptr", 0, 0))
            elif base.kind in "iu":
                info = np.iinfo(base)
                kinds.append((name, "int", int(info.min), int(info.max)))
            else:
                kinds.append((name, "other", 0, 0))
        kinds = _FIELD_KINDS[dtype] = tuple(kinds)
    return kinds


def params_bytes(dtype: np.dtype, **values) -> bytes:
    """The raw bytes of one params struct (see :func:`pack_params`)."""
    return pack_params(dtype, **values).tobytes()


def layout_static_asserts(struct_name: str, dtype: np.dtype) -> str:
    """C++ ``static_assert``s that a C struct has the layout of ``dtype``.

    Append the result to a source that defines ``struct_name`` and compile
    it (:func:`check_layout`): success proves that the struct's size and
    alignment, and every member's size, alignment and offset, agree with the
    NumPy dtype.

    Offsets are checked with ``__builtin_offsetof`` where the compiler has
    it (NVRTC 13.5 does, NVRTC 13.0 does not).  Without it they are checked
    through the ABI rule both sides follow (each member at the next offset
    aligned for its type, in declaration order): the asserts then check the
    member order (comparing member addresses of a ``constexpr`` instance,
    so the struct must be a literal type), each member's size and alignment,
    and the struct's size and alignment.

    Parameters
    ----------
    struct_name : str
        The C++ type name (may be qualified, e.g. ``"lc::ConvParams"``).
    dtype : numpy.dtype
        Structured dtype, e.g. from :func:`params_dtype`.

    Returns
    -------
    str
    """
    if not dtype.names:
        raise ValueError("layout_static_asserts: dtype has no fields")
    s = struct_name
    tag = "(NumPy params dtype)"
    probe = "lc_layout_probe_" + re.sub(r"\W", "_", s)

    def check(cond, what):
        return f'static_assert({cond}, "{what} {tag}");'

    lines = [
        "#if defined(__has_builtin)",
        "#if __has_builtin(__builtin_offsetof)",
        "#define LC_LAYOUT_HAS_OFFSETOF 1",
        "#endif",
        "#endif",
        check(f"sizeof({s}) == {dtype.itemsize}", f"sizeof({s}) != {dtype.itemsize}"),
        check(f"alignof({s}) == {dtype.alignment}", f"alignof({s}) != {dtype.alignment}"),
    ]
    offsets = ["#ifdef LC_LAYOUT_HAS_OFFSETOF"]
    order = ["#else", f"constexpr {s} {probe}{{}};"]
    previous = None
    for name in dtype.names:
        fdt, offset = dtype.fields[name][:2]
        align = fdt.base.alignment
        lines.append(check(f"sizeof({s}::{name}) == {fdt.itemsize}",
                           f"sizeof({s}::{name}) != {fdt.itemsize}"))
        lines.append(check(f"alignof(decltype({s}::{name})) == {align}",
                           f"alignof({s}::{name}) != {align}"))
        offsets.append(check(f"__builtin_offsetof({s}, {name}) == {offset}",
                             f"offsetof({s}, {name}) != {offset}"))
        if previous is not None:
            order.append(check(
                f"(const void*)&{probe}.{previous} < (const void*)&{probe}.{name}",
                f"{s}::{previous} must come before {s}::{name}",
            ))
        previous = name
    lines += offsets + order + ["#endif", "#undef LC_LAYOUT_HAS_OFFSETOF"]
    return "\n".join(lines) + "\n"


def check_layout(source: str, struct_name: str, dtype: np.dtype, *,
                 arch: str = "sm_80", options=()) -> None:
    """Prove with NVRTC that ``struct_name`` in ``source`` matches ``dtype``.

    Parameters
    ----------
    source : str
        A translation unit defining the struct, e.g. ``load_source(family)``.
    struct_name : str
    dtype : numpy.dtype
    arch : str, optional
        Real architecture to compile for.
    options : sequence of str, optional
        Extra options, e.g. ``defines(key)``.

    Raises
    ------
    KernelCompileError
        The layouts differ (the log names the member) or the source does not
        compile.
    """
    text = source + "\n" + layout_static_asserts(struct_name, dtype)
    opts = (*BASE_OPTIONS, f"--gpu-architecture={arch}", *options,
            *_CUPY_IMPLICIT_OPTIONS)
    nvrtc_compile(text, opts, name=f"layout_{struct_name.replace(':', '_')}.cu")


# --------------------------------------------------------------------------
# devices (CuPy)


class DeviceInfo(NamedTuple):
    """Attributes of a CUDA device used for kernel and tile selection."""

    name: str
    cc: tuple[int, int]
    sm_count: int
    smem_optin: int
    smem_per_sm: int
    l2_bytes: int


def arch_from_cc(major: int, minor: int) -> str:
    """Target architecture for a compute capability.

    ``(9, 0)`` maps to ``"sm_90a"`` (Hopper's architecture-specific
    features); every other capability maps to ``f"sm_{major}{minor}"``.
    """
    if (major, minor) == (9, 0):
        return "sm_90a"
    return f"sm_{major}{minor}"


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(
            "the GPU kernel path needs CuPy (pip install 'longconv[cuda13]')"
        ) from exc
    return cupy


_device_lock = threading.Lock()
_device_cache: dict[int, DeviceInfo] = {}


def device_info(device_id: int | None = None) -> DeviceInfo:
    """Attributes of a CUDA device, cached per device.

    Parameters
    ----------
    device_id : int, optional
        Default: CuPy's current device.

    Returns
    -------
    DeviceInfo
        ``(name, cc, sm_count, smem_optin, smem_per_sm, l2_bytes)``: name,
        compute capability ``(major, minor)``, SM count, opt-in shared memory
        per block, shared memory per SM and L2 size, all in bytes.
    """
    cupy = _cupy()
    if device_id is None:
        device_id = cupy.cuda.runtime.getDevice()
    with _device_lock:
        info = _device_cache.get(device_id)
    if info is not None:
        return info
    attrs = cupy.cuda.Device(device_id).attributes
    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    name = props["name"]
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    info = DeviceInfo(
        name=name,
        cc=(int(props["major"]), int(props["minor"])),
        sm_count=attrs["MultiProcessorCount"],
        smem_optin=attrs["MaxSharedMemoryPerBlockOptin"],
        smem_per_sm=attrs["MaxSharedMemoryPerMultiprocessor"],
        l2_bytes=attrs["L2CacheSize"],
    )
    with _device_lock:
        _device_cache[device_id] = info
    return info


def device_arch(device_id: int | None = None) -> str:
    """Target architecture of a device (see :func:`arch_from_cc`)."""
    return arch_from_cc(*device_info(device_id).cc)


def cache_dir() -> str | None:
    """Directory of CuPy's on-disk kernel cache, or None when it is off.

    Compiled modules are cached there keyed by source text and options
    (``CUPY_CACHE_DIR``, default ``~/.cupy/kernel_cache``); with
    ``CUPY_CACHE_IN_MEMORY=1`` CuPy keeps them in memory only.
    """
    if os.environ.get("CUPY_CACHE_IN_MEMORY", "0").strip().lower() in (
        "1", "true", "yes", "on"
    ):
        return None
    compiler = sys.modules.get("cupy.cuda.compiler")
    backend = getattr(compiler, "_kernel_cache_backend", None)
    path = getattr(backend, "_cache_dir", None)
    if isinstance(path, str):
        return path
    return os.environ.get(
        "CUPY_CACHE_DIR", os.path.expanduser(os.path.join("~", ".cupy", "kernel_cache"))
    )


_kernel_lock = threading.RLock()
_kernels: dict[tuple, Any] = {}


def get_kernel(key: KernelKey, name: str, *, root=None, lineinfo: bool = False):
    """Compiled kernel of a specialisation on the current device.

    Compiles ``cuda_src/<key.family>.cu`` (headers inlined) through
    ``cupy.RawModule`` with NVRTC, on first use per (key, device, name);
    CuPy's disk cache makes later processes skip NVRTC.

    Parameters
    ----------
    key : KernelKey
        If ``key.arch`` is empty, the current device's architecture is used
        (:func:`device_arch`).
    name : str
        Kernel name: an ``extern "C"`` symbol, or a C++ name expression such
        as ``"lc::conv<16>"`` (passed to NVRTC as a name expression).
    root : path-like, optional
        Source directory (see :func:`load_source`).
    lineinfo : bool, optional
        Add ``-lineinfo``.

    Returns
    -------
    cupy.RawKernel
        Call :func:`prepare` with the launch's dynamic shared memory before
        launching with more than 48 KiB.

    Raises
    ------
    KernelCompileError
        NVRTC rejected the source; the message names the key and the files
        and contains the NVRTC log.
    """
    cupy = _cupy()
    device_id = cupy.cuda.runtime.getDevice()
    if not key.arch:
        key = key.with_arch(device_arch(device_id))
    if root is not None and not hasattr(root, "joinpath"):
        root = Path(root)
    memo = (key, device_id, name, str(root) if root is not None else None, lineinfo)
    with _kernel_lock:
        kernel = _kernels.get(memo)
        if kernel is not None:
            return kernel
        source, files = _assemble(key.family, root)
        options = compile_options(key, lineinfo=lineinfo)
        templated = any(c in name for c in "<:")
        module = cupy.RawModule(
            code=source, options=options, backend="nvrtc",
            name_expressions=(name,) if templated else None,
        )
        try:
            kernel = module.get_function(name)
        except cupy.cuda.compiler.CompileException as exc:
            raise _compile_error(key, files, str(exc)) from None
        _kernels[memo] = kernel
        return kernel


def prepare(kernel, smem_bytes: int):
    """Allow a kernel to launch with ``smem_bytes`` of dynamic shared memory.

    Above the 48 KiB default, sets the kernel's
    ``max_dynamic_shared_size_bytes`` (per device) after checking the
    device's opt-in limit.

    Parameters
    ----------
    kernel : cupy.RawKernel
    smem_bytes : int
        Dynamic shared memory of the coming launch.

    Returns
    -------
    cupy.RawKernel
        ``kernel``.

    Raises
    ------
    NotImplementedError
        The request plus the kernel's static shared memory exceeds the
        device's ``MaxSharedMemoryPerBlockOptin``.
    """
    smem_bytes = operator.index(smem_bytes)
    if smem_bytes < 0:
        raise ValueError(f"smem_bytes must be >= 0, got {smem_bytes}")
    info = device_info()
    static = int(getattr(kernel, "shared_size_bytes", 0) or 0)
    if smem_bytes + static > info.smem_optin:
        raise NotImplementedError(
            f"kernel {getattr(kernel, 'name', '?')!r} needs {smem_bytes} bytes of "
            f"dynamic shared memory (+{static} static) but {info.name} allows at "
            f"most {info.smem_optin} bytes per block; choose a smaller tile"
        )
    # Without the opt-in a block's static and dynamic shared memory together stay within the
    # 48 KiB default.
    if smem_bytes + static > DEFAULT_DYNAMIC_SMEM and (
        kernel.max_dynamic_shared_size_bytes < smem_bytes
    ):
        kernel.max_dynamic_shared_size_bytes = smem_bytes
    return kernel
