"""Tests of the kernel loader (longconv._compile).

The NVRTC tests compile on the CPU (no GPU needed); the ``gpu`` tests compile
and launch through CuPy on a device.
"""

import concurrent.futures
import dataclasses
import os
import re
import struct
import sys

import numpy as np
import pytest

from longconv import _compile as lc
from longconv._compile import KernelCompileError, KernelKey, KernelSourceError

ON_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
needs_nvrtc = pytest.mark.skipif(
    not lc.nvrtc_available() and not ON_CI,
    reason="NVRTC library not found (install the 'nvidia-cuda-nvrtc' wheel)",
)
ARCHS = ("sm_80", "sm_90a")

TINY_KERNEL = """\
#pragma once
extern "C" __global__ void scale(float* x, float a, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= a * LC_FFT_SIZE;
}
"""


def write(root, name, text):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------
# KernelKey, defines, options


def test_key_is_frozen_and_hashable():
    a = KernelKey("conv", 4096, "bf16", flags=("gated", "causal"), params={"tile": 64})
    b = KernelKey("conv", 4096, "bf16", flags=frozenset({"causal", "gated"}),
                  params=(("tile", 64),))
    assert a == b and hash(a) == hash(b)
    assert a.flags == ("causal", "gated")
    assert a.params == (("tile", 64),)
    assert len({a, b, a.with_arch("sm_80")}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.fft_size = 8192
    assert a.with_arch("sm_90a").arch == "sm_90a" and a.arch == ""


@pytest.mark.parametrize(
    "kwargs",
    [
        {"family": "../etc"},
        {"family": "has space"},
        {"fft_size": 0},
        {"dtype": "b f16"},
        {"flags": ("causal", "not-ident")},
        {"arch": "compute_90"},
        {"arch": "sm90"},
        {"params": {"tile": "64"}},
        {"params": {"fft_size": 1}},
        {"params": {"tile": 1, "TILE": 2}},
    ],
)
def test_key_rejects_bad_fields(kwargs):
    base = {"family": "conv", "fft_size": 4096, "dtype": "fp16"}
    with pytest.raises((ValueError, TypeError)):
        KernelKey(**{**base, **kwargs})


def test_key_rejects_bool_and_str_flags():
    with pytest.raises(TypeError):
        KernelKey("conv", True, "fp16")
    with pytest.raises(TypeError):
        KernelKey("conv", 64, "fp16", flags="causal")


def test_defines_and_options():
    key = KernelKey("conv", 4096, "bf16", flags=("causal",), params={"seqs_per_block": 2})
    assert lc.defines(key) == (
        "-DLC_FFT_SIZE=4096",
        "-DLC_DTYPE_BF16=1",
        "-DLC_CAUSAL=1",
        "-DLC_SEQS_PER_BLOCK=2",
    )
    with pytest.raises(ValueError, match="architecture"):
        lc.compile_options(key)
    opts = lc.compile_options(key.with_arch("sm_90a"), lineinfo=True)
    assert opts[:3] == ("-std=c++17", "--gpu-architecture=sm_90a", "-lineinfo")
    assert opts[3:] == lc.defines(key)
    assert not any("fast_math" in o or "fast-math" in o for o in opts)


@pytest.mark.parametrize(
    ("cc", "arch"),
    [((8, 0), "sm_80"), ((8, 6), "sm_86"), ((8, 9), "sm_89"), ((9, 0), "sm_90a"),
     ((10, 0), "sm_100"), ((12, 0), "sm_120")],
)
def test_arch_from_cc(cc, arch):
    assert lc.arch_from_cc(*cc) == arch


def test_cache_dir_follows_cupy_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CUPY_CACHE_IN_MEMORY", "1")
    assert lc.cache_dir() is None
    monkeypatch.delenv("CUPY_CACHE_IN_MEMORY")
    monkeypatch.setitem(sys.modules, "cupy.cuda.compiler", None)
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path))
    assert lc.cache_dir() == str(tmp_path)


# --------------------------------------------------------------------------
# source assembly


def test_inlines_headers_once_with_line_directives(tmp_path):
    write(tmp_path, "common.cuh", "#pragma once\n#define COMMON 1\n")
    write(tmp_path, "sub/tile.cuh",
          '#pragma once\n#include "common.cuh"\nstruct Tile {};\n')
    write(tmp_path, "fam.cu",
          '// main\n#include "common.cuh"\n#include "sub/tile.cuh"\n'
          '#include "common.cuh"\nint main_line_5;\n')
    src = lc.load_source("fam", root=tmp_path)
    assert src.count("#define COMMON 1") == 1
    assert src.count("struct Tile {};") == 1
    assert "#pragma once" not in src
    assert "#include" not in src
    # Each line of output maps back to its origin through the #line directives.
    origin = {}
    current, lineno = None, 0
    for line in src.splitlines():
        m = re.match(r'#line (\d+) "([^"]+)"', line)
        if m:
            lineno, current = int(m.group(1)), m.group(2)
            continue
        if line.strip():
            origin[line] = (current, lineno)
        lineno += 1
    assert origin["// main"] == ("fam.cu", 1)
    assert origin["#define COMMON 1"] == ("common.cuh", 2)
    assert origin["struct Tile {};"] == ("sub/tile.cuh", 3)
    assert origin["int main_line_5;"] == ("fam.cu", 5)


def test_header_without_pragma_once_is_inlined_each_time(tmp_path):
    write(tmp_path, "twice.cuh", "TWICE\n")
    write(tmp_path, "fam.cu", '#include "twice.cuh"\n#include "twice.cuh"\n')
    assert lc.load_source("fam", root=tmp_path).count("TWICE") == 2


def test_include_cycle_without_pragma_once_is_an_error(tmp_path):
    write(tmp_path, "a.cuh", '#include "b.cuh"\n')
    write(tmp_path, "b.cuh", '#include "a.cuh"\n')
    write(tmp_path, "fam.cu", '#include "a.cuh"\n')
    with pytest.raises(KernelSourceError, match="cycle"):
        lc.load_source("fam", root=tmp_path)


def test_include_cycle_with_pragma_once_is_fine(tmp_path):
    write(tmp_path, "a.cuh", '#pragma once\n#include "b.cuh"\nA\n')
    write(tmp_path, "b.cuh", '#pragma once\n#include "a.cuh"\nB\n')
    write(tmp_path, "fam.cu", '#include "a.cuh"\n')
    src = lc.load_source("fam", root=tmp_path)
    assert src.count("\nA\n") == 1 and src.count("\nB\n") == 1


def test_missing_header_names_the_includer(tmp_path):
    write(tmp_path, "fam.cu", 'int x;\n#include "nope.cuh"\n')
    with pytest.raises(KernelSourceError, match=r"nope\.cuh.*fam\.cu:2"):
        lc.load_source("fam", root=tmp_path)


def test_missing_family(tmp_path):
    with pytest.raises(KernelSourceError, match="absent.cu"):
        lc.load_source("absent", root=tmp_path)


@pytest.mark.parametrize("line", ["#include <cuda_fp16.h>", "  #  include <cstdint>"])
def test_system_include_is_rejected(tmp_path, line):
    write(tmp_path, "hdr.cuh", f"#pragma once\n{line}\n")
    write(tmp_path, "fam.cu", '#include "hdr.cuh"\n')
    with pytest.raises(KernelSourceError, match=r"hdr\.cuh:2: system include"):
        lc.load_source("fam", root=tmp_path)


def test_include_may_not_leave_the_source_dir(tmp_path):
    write(tmp_path, "fam.cu", '#include "../secret.cuh"\n')
    with pytest.raises(KernelSourceError, match="relative"):
        lc.load_source("fam", root=tmp_path)


def test_load_a_header_by_file_name(tmp_path):
    write(tmp_path, "common.cuh", "#pragma once\nCOMMON\n")
    write(tmp_path, "params.cuh", '#pragma once\n#include "common.cuh"\nPARAMS\n')
    src = lc.load_source("params.cuh", root=tmp_path)
    assert "COMMON" in src and "PARAMS" in src
    for bad in ("params.h", "../params.cuh", "a.b.cu"):
        with pytest.raises(ValueError):
            lc.load_source(bad, root=tmp_path)


def test_default_root_is_the_project_cuda_src():
    root = lc._default_root()
    assert root.joinpath("__init__.py").is_file()


# --------------------------------------------------------------------------
# NVRTC on the CPU


def test_nvrtc_present_on_ci():
    """CI installs the 'test' extra (nvidia-cuda-nvrtc): NVRTC must load."""
    if not ON_CI and not lc.nvrtc_available():
        pytest.skip("NVRTC library not found; not on CI")
    assert lc.nvrtc_available(), "NVRTC not found although CI installs nvidia-cuda-nvrtc"
    major, minor = lc.nvrtc_version()
    assert major >= 12
    assert lc.nvrtc_path()


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
def test_compile_cubin_tiny_kernel(tmp_path, arch):
    write(tmp_path, "tiny.cuh", TINY_KERNEL)
    write(tmp_path, "tiny.cu", '#include "tiny.cuh"\n')
    cubin = lc.compile_cubin(KernelKey("tiny", 64, "fp32", arch=arch), root=tmp_path)
    assert cubin[:4] == b"\x7fELF"
    assert b"scale" in cubin


@needs_nvrtc
def test_defines_reach_the_compiler(tmp_path):
    write(tmp_path, "chk.cu",
          "static_assert(LC_FFT_SIZE == 256, \"size\");\n"
          "static_assert(LC_DTYPE_BF16 == 1, \"dtype\");\n"
          "static_assert(LC_CAUSAL == 1, \"flag\");\n"
          "static_assert(LC_TILE == 32, \"param\");\n"
          "#if __cplusplus < 201703L\n#error needs C++17\n#endif\n"
          'extern "C" __global__ void k(int* x) { x[0] = LC_TILE; }\n')
    key = KernelKey("chk", 256, "bf16", flags=("causal",), params={"tile": 32},
                    arch="sm_80")
    assert lc.compile_cubin(key, root=tmp_path)[:4] == b"\x7fELF"


@needs_nvrtc
def test_compile_error_names_key_file_and_line(tmp_path):
    write(tmp_path, "bad.cuh", '#pragma once\n__device__ int f() {\n  return undefined_name;\n}\n')
    write(tmp_path, "bad.cu", '#include "bad.cuh"\nextern "C" __global__ void k() {}\n')
    key = KernelKey("bad", 1024, "fp16", flags=("causal",), arch="sm_80")
    with pytest.raises(KernelCompileError) as info:
        lc.compile_cubin(key, root=tmp_path)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.key == key
    assert err.files == ("bad.cu", "bad.cuh")
    msg = str(err)
    assert "bad" in msg and "n=1024" in msg and "sm_80" in msg and "-DLC_CAUSAL=1" in msg
    assert "undefined_name" in msg
    assert re.search(r"bad\.cuh\(3\)", msg), msg  # the #line mapping points at the header


@needs_nvrtc
def test_nvrtc_compile_needs_a_real_arch():
    src = 'extern "C" __global__ void k() {}\n'
    with pytest.raises(RuntimeError, match="CUBIN"):
        lc.nvrtc_compile(src, ["--gpu-architecture=compute_80"])


# --------------------------------------------------------------------------
# params struct

FIELDS = [
    ("x", "ptr"),
    ("n", "i32"),
    ("batch", "i64"),
    ("scale", "f32"),
    ("stride", "u32"),
    ("dims", "i32", 3),
    ("y", "ptr"),
    ("eps", "f64"),
    ("tail", "u32"),
]
C_STRUCT = """\
struct Params {
    const float* x;
    int n;
    long long batch;
    float scale;
    unsigned int stride;
    int dims[3];
    float* y;
    double eps;
    unsigned int tail;
};
"""


def test_params_dtype_layout_is_natural_alignment():
    dt = lc.params_dtype(FIELDS)
    offsets = {name: dt.fields[name][1] for name in dt.names}
    assert offsets == {"x": 0, "n": 8, "batch": 16, "scale": 24, "stride": 28,
                       "dims": 32, "y": 48, "eps": 56, "tail": 64}
    assert dt.itemsize == 72 and dt.alignment == 8


@pytest.mark.parametrize(
    "fields",
    [[], [("a", "i8")], [("a", "i32"), ("a", "i32")], [("bad name", "i32")],
     [("a", "i32", 0)], [("a",)]],
)
def test_params_dtype_rejects_bad_fields(fields):
    with pytest.raises(ValueError):
        lc.params_dtype(fields)


@needs_nvrtc
def test_params_layout_matches_c_struct():
    lc.check_layout(C_STRUCT, "Params", lc.params_dtype(FIELDS))


@needs_nvrtc
def test_params_layout_mismatch_is_reported():
    swapped = [FIELDS[0], FIELDS[2], FIELDS[1], *FIELDS[3:]]
    with pytest.raises(KernelCompileError,
                       match=r"offsetof\(Params, n\)|Params::batch must come before Params::n"):
        lc.check_layout(C_STRUCT, "Params", lc.params_dtype(swapped))
    fewer = FIELDS[:-1]
    with pytest.raises(KernelCompileError, match=r"sizeof\(Params\)"):
        lc.check_layout(C_STRUCT, "Params", lc.params_dtype(fewer))
    wider = [*FIELDS[:1], ("n", "i64"), *FIELDS[2:]]
    with pytest.raises(KernelCompileError, match=r"sizeof\(Params::n\) != 8"):
        lc.check_layout(C_STRUCT, "Params", lc.params_dtype(wider))


def _without_offsetof(asserts):
    """The asserts as a compiler without __builtin_offsetof sees them."""
    return asserts.replace("#define LC_LAYOUT_HAS_OFFSETOF 1", "")


@needs_nvrtc
def test_params_layout_fallback_without_offsetof():
    opts = ["-std=c++17", "--gpu-architecture=sm_80"]
    good = lc.layout_static_asserts("Params", lc.params_dtype(FIELDS))
    assert "__builtin_offsetof" in good
    lc.nvrtc_compile(C_STRUCT + _without_offsetof(good), opts)
    # two members of the same type in the wrong order: only the order check sees it
    swapped = [*FIELDS[:4], ("tail", "u32"), *FIELDS[5:8], ("stride", "u32")]
    bad = _without_offsetof(lc.layout_static_asserts("Params", lc.params_dtype(swapped)))
    with pytest.raises(KernelCompileError, match="Params::tail must come before Params::dims"):
        lc.nvrtc_compile(C_STRUCT + bad, opts)


@needs_nvrtc
def test_layout_of_a_namespaced_struct_in_a_kernel_source(tmp_path):
    write(tmp_path, "params.cuh",
          "#pragma once\nnamespace lc {\nstruct P { void* a; int b; };\n}\n")
    write(tmp_path, "fam.cu", '#include "params.cuh"\n')
    src = lc.load_source("fam", root=tmp_path)
    lc.check_layout(src, "lc::P", lc.params_dtype([("a", "ptr"), ("b", "i32")]),
                    arch="sm_90a")


class FakeDeviceArray:
    __cuda_array_interface__ = {"data": (0xDEAD0000, False), "shape": (1,),
                                "typestr": "<f4", "version": 3}


def test_pack_params_values_and_bytes():
    dt = lc.params_dtype(FIELDS)
    p = lc.pack_params(dt, x=FakeDeviceArray(), n=7, batch=2**40, scale=0.5,
                       stride=2**32 - 1, dims=[1, 2, 3], y=None, eps=1e-9, tail=True)
    assert isinstance(p, np.ndarray) and p.shape == (1,) and p.dtype == dt
    assert p["x"][0] == 0xDEAD0000 and p["y"][0] == 0
    assert p["batch"][0] == 2**40 and list(p["dims"][0]) == [1, 2, 3]
    raw = lc.params_bytes(dt, x=1, n=-1, batch=0, scale=0, stride=0, dims=[0, 0, 0],
                          y=2, eps=0, tail=0)
    assert len(raw) == 72
    assert raw[8:12] == (-1).to_bytes(4, "little", signed=True)
    assert raw[48:56] == (2).to_bytes(8, "little")


def test_pack_params_rejects_bad_values():
    dt = lc.params_dtype([("p", "ptr"), ("n", "i32")])
    with pytest.raises(TypeError, match="missing"):
        lc.pack_params(dt, p=0)
    with pytest.raises(TypeError, match="unknown"):
        lc.pack_params(dt, p=0, n=1, m=2)
    with pytest.raises(ValueError, match="out of range"):
        lc.pack_params(dt, p=0, n=2**31)
    with pytest.raises(TypeError):
        lc.pack_params(dt, p=0, n=1.5)
    with pytest.raises(TypeError, match="pointer"):
        lc.pack_params(dt, p="0x10", n=1)
    with pytest.raises(ValueError, match="out of range"):
        lc.pack_params(dt, p=-1, n=1)


@needs_nvrtc
def test_shipped_params_struct_matches_its_dtype():
    """Hook: the fused kernels' ConvParams against longconv._fused.PARAMS_FIELDS."""
    fused = pytest.importorskip("longconv._fused")
    direct = pytest.importorskip("longconv._direct")
    fields = getattr(fused, "PARAMS_FIELDS", None)
    if fields is None:
        pytest.skip("longconv._fused.PARAMS_FIELDS not defined yet")
    for arch in ARCHS:
        lc.check_layout(lc.load_source("params.cuh"), "ConvParams", lc.params_dtype(fields),
                        arch=arch)
        lc.check_layout(lc.load_source("params.cuh"), "BwdParams",
                        lc.params_dtype(fused.BWD_PARAMS_FIELDS), arch=arch)
        lc.check_layout(lc.load_source("kspec.cuh"), "KspecParams",
                        lc.params_dtype(fused.KSPEC_PARAMS_FIELDS), arch=arch)
        lc.check_layout(lc.load_source("kspec.cuh"), "DkParams",
                        lc.params_dtype(fused.DK_PARAMS_FIELDS), arch=arch)
        lc.check_layout(lc.load_source("direct_conv"), "DirectParams",
                        lc.params_dtype(direct.DIRECT_PARAMS_FIELDS), arch=arch)


@pytest.mark.parametrize("fields", ["conv", "bwd", "kspec", "dk", "direct", "padded"])
def test_struct_for_packs_what_numpy_lays_out(fields):
    """The launch path's struct packer writes the bytes of the structured NumPy array."""
    fused = pytest.importorskip("longconv._fused")
    direct = pytest.importorskip("longconv._direct")
    fields = {"conv": fused.PARAMS_FIELDS, "bwd": fused.BWD_PARAMS_FIELDS,
              "kspec": fused.KSPEC_PARAMS_FIELDS, "dk": fused.DK_PARAMS_FIELDS,
              "direct": direct.DIRECT_PARAMS_FIELDS,
              "padded": [("a", "i32"), ("p", "ptr"), ("f", "f32"), ("u", "u32"),
                         ("d", "f64"), ("b", "i32")]}[fields]
    dt = lc.params_dtype(fields)
    rng = np.random.default_rng(len(fields))
    lim = {"ptr": (0, 2**64), "i64": (-2**63, 2**63), "u64": (0, 2**64), "i32": (-2**31, 2**31),
           "u32": (0, 2**32)}
    vals = {}
    for name, c_type in fields:
        if c_type in lim:
            lo, hi = lim[c_type]
            vals[name] = int(rng.integers(lo, hi, dtype=np.uint64 if lo == 0 else np.int64))
        else:
            vals[name] = float(np.float32(rng.standard_normal()))
    st = lc.struct_for(dt)
    assert st.size == dt.itemsize
    buf = bytearray(st.size + 8)
    st.pack_into(buf, 0, *(vals[name] for name, _ in fields))
    got = np.frombuffer(bytes(buf[: st.size]), dtype=dt)[0]
    want = lc.pack_params(dt, **vals)[0]  # (its padding bytes are whatever NumPy left there)
    for name, _ in fields:
        assert got[name] == want[name], name
    with pytest.raises(struct.error):  # out of range for every field kind
        st.pack_into(buf, 0, *([2**64] * len(fields)))


# --------------------------------------------------------------------------
# every shipped specialisation compiles for sm_80 and sm_90a (hook for the kernels)


@pytest.mark.slow
@needs_nvrtc
def test_all_shipped_specializations_compile():
    kernels = pytest.importorskip("longconv._kernels")
    keys = list(kernels.all_specializations())
    assert keys, "longconv._kernels.all_specializations() returned nothing"
    jobs = [key.with_arch(arch) for key in keys for arch in ARCHS]
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
        futures = {pool.submit(lc.compile_cubin, job): job for job in jobs}
        for future in concurrent.futures.as_completed(futures):
            try:
                assert future.result()[:4] == b"\x7fELF"
            except KernelCompileError as exc:
                failures.append(str(exc))
    assert not failures, "\n\n".join(failures)


# --------------------------------------------------------------------------
# GPU: compile through CuPy and launch


@pytest.fixture
def cupy():
    cp = pytest.importorskip("cupy")
    try:
        available = cp.is_available()
    except Exception:  # a broken driver install counts as "no device"
        available = False
    if not available:
        pytest.skip("no CUDA device")
    return cp


GPU_SRC = """\
#pragma once
struct Params {
    const float* x;
    float* y;
    long long n;
    float scale;
    int offset;
};

extern "C" __global__ void affine(Params p) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) p.y[i] = p.x[i] * p.scale + p.offset + LC_FFT_SIZE;
}

extern "C" __global__ void echo(Params p, long long* out) {
    out[0] = (long long)p.x;
    out[1] = (long long)p.y;
    out[2] = p.n;
    out[3] = (long long)(p.scale * 4.0f);
    out[4] = p.offset;
    out[5] = sizeof(Params);
}

extern "C" __global__ void reverse_smem(const float* x, float* y, int n) {
    extern __shared__ float buf[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = x[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = buf[n - 1 - i];
}

extern "C" __global__ void arch_features(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    out[0] = 1;
#else
    out[0] = 0;
#endif
    out[1] = __CUDA_ARCH__;
}
"""
GPU_FIELDS = [("x", "ptr"), ("y", "ptr"), ("n", "i64"), ("scale", "f32"), ("offset", "i32")]


@pytest.fixture
def gpu_root(tmp_path):
    write(tmp_path, "gpu_test.cuh", GPU_SRC)
    write(tmp_path, "gpu_test.cu", '#include "gpu_test.cuh"\n')
    return tmp_path


@pytest.mark.gpu
def test_gpu_struct_by_value_round_trip(cupy, gpu_root):
    key = KernelKey("gpu_test", 16, "fp32")
    echo = lc.get_kernel(key, "echo", root=gpu_root)
    assert lc.get_kernel(key, "echo", root=gpu_root) is echo  # memoised
    dt = lc.params_dtype(GPU_FIELDS)
    x = cupy.arange(5, dtype=cupy.float32)
    y = cupy.empty(5, dtype=cupy.float32)
    p = lc.pack_params(dt, x=x, y=y, n=2**33 + 5, scale=0.75, offset=-3)
    out = cupy.full(6, -1, dtype=cupy.int64)
    echo((1,), (1,), (p, out))
    got = out.get().tolist()
    assert got == [x.data.ptr, y.data.ptr, 2**33 + 5, 3, -3, dt.itemsize]

    affine = lc.get_kernel(key, "affine", root=gpu_root)
    affine((1,), (32,), (lc.pack_params(dt, x=x, y=y, n=5, scale=2.0, offset=1),))
    np.testing.assert_array_equal(y.get(), np.arange(5) * 2.0 + 1 + 16)


@pytest.mark.gpu
def test_gpu_large_dynamic_shared_memory(cupy, gpu_root):
    info = lc.device_info()
    assert info.smem_optin >= 48 * 1024 and info.sm_count > 0 and info.l2_bytes > 0
    kernel = lc.get_kernel(KernelKey("gpu_test", 16, "fp32"), "reverse_smem", root=gpu_root)
    smem = info.smem_optin - 1024  # well above 48 KiB on sm_80+
    assert smem > 48 * 1024
    n = smem // 4
    x = cupy.random.standard_normal(n, dtype=cupy.float32)
    y = cupy.full(n, cupy.nan, dtype=cupy.float32)
    assert lc.prepare(kernel, smem) is kernel
    assert kernel.max_dynamic_shared_size_bytes >= smem
    kernel((1,), (256,), (x, y, np.int32(n)), shared_mem=smem)
    np.testing.assert_array_equal(y.get(), x.get()[::-1])
    with pytest.raises(NotImplementedError, match="shared memory"):
        lc.prepare(kernel, info.smem_optin + 1)


@pytest.mark.gpu
def test_gpu_arch_comes_from_the_device(cupy, gpu_root):
    info = lc.device_info()
    assert lc.device_arch() == lc.arch_from_cc(*info.cc)
    kernel = lc.get_kernel(KernelKey("gpu_test", 16, "fp32"), "arch_features", root=gpu_root)
    out = cupy.zeros(2, dtype=cupy.int32)
    kernel((1,), (1,), (out,))
    feat, arch = out.get().tolist()
    assert arch == info.cc[0] * 100 + info.cc[1] * 10
    assert feat == (1 if info.cc == (9, 0) else 0)


@pytest.mark.gpu
def test_gpu_template_kernel_by_name_expression(cupy, tmp_path):
    write(tmp_path, "tmpl.cu",
          "namespace lc {\ntemplate <int K> __global__ void put(int* out) { out[0] = K; }\n}\n")
    key = KernelKey("tmpl", 8, "fp16")
    out = cupy.zeros(1, dtype=cupy.int32)
    for k in (3, 7):
        lc.get_kernel(key, f"lc::put<{k}>", root=tmp_path)((1,), (1,), (out,))
        assert int(out.get()[0]) == k


@pytest.mark.gpu
def test_gpu_compile_error(cupy, tmp_path):
    write(tmp_path, "broken.cu", 'extern "C" __global__ void k() { nope(); }\n')
    key = KernelKey("broken", 8, "fp16")
    with pytest.raises(KernelCompileError, match=r"broken\.cu") as info:
        lc.get_kernel(key, "k", root=tmp_path)
    assert "nope" in str(info.value)
    assert info.value.key.arch == lc.device_arch()


@needs_nvrtc
def test_compile_cubin_from_several_threads(tmp_path):
    write(tmp_path, "tiny.cu", TINY_KERNEL)
    keys = [KernelKey("tiny", 2**k, "fp32", arch=arch) for k in range(4) for arch in ARCHS]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        cubins = list(pool.map(lambda key: lc.compile_cubin(key, root=tmp_path), keys))
    assert all(c[:4] == b"\x7fELF" for c in cubins)
