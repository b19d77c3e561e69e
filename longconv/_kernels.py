"""Every kernel specialisation longconv ships, for compile checks without a GPU.

The fused convolution kernel is one translation unit with one entry point per I/O dtype (its
tensor-core operands are fp16 for all of them); the FFT size, gating and the output window are
run-time arguments, so one compilation per architecture serves every fused problem.
"""

from __future__ import annotations

from ._compile import KernelKey

#: Largest FFT size of the fused kernels (one sequence pair in shared memory: 4 N bytes).
FUSED_MAX_N = 32768
#: Smallest FFT size of the fused kernels (one 256-point tensor-core segment).
FUSED_MIN_N = 256

#: Entry points of ``cuda_src/fused_conv.cu`` by I/O dtype.
FUSED_ENTRY = {"float16": "lc_fused_conv_f16", "bfloat16": "lc_fused_conv_bf16",
               "float32": "lc_fused_conv_f32"}


#: Largest FFT size of the fused backward (u and g of one pair in shared memory: 8 N bytes).
BWD_MAX_N = 16384

#: Entry points of the fused backward (``cuda_src/fused_bwd.cuh``) by I/O dtype and the set of
#: wanted outputs: "k" dk only, "g" dx and/or dpregate (and dk), "u" dpostgate (and dk), "ug" all.
BWD_ENTRY = {io: {want: f"lc_fused_bwd_{tag}_{want}" for want in ("k", "g", "u", "ug")}
             for io, tag in (("float16", "f16"), ("bfloat16", "bf16"), ("float32", "f32"))}
#: The same entry points built for one block per SM (up to 255 registers a thread).
BWD_ENTRY_1 = {io: {want: name + "_1" for want, name in wants.items()}
               for io, wants in BWD_ENTRY.items()}

#: The causal forms at N = 256 (input and output window below 128): the forward, and the
#: backward for dx and/or dpregate with dk ("g").
FUSED_ENTRY_C = {io: name + "_c" for io, name in FUSED_ENTRY.items()}
BWD_ENTRY_C = {io: wants["g"] + "_c" for io, wants in BWD_ENTRY.items()}


def fused_key(arch: str = "") -> KernelKey:
    """Key of the fused convolution module (``arch`` empty: the current device's)."""
    return KernelKey("fused_conv", FUSED_MAX_N, "fp16", arch=arch)


def direct_key(arch: str = "") -> KernelKey:
    """Key of the direct (time-domain) convolution module, ``cuda_src/direct_conv.cu``: one
    entry point per dtype (float32, float64); every size is a run-time argument."""
    return KernelKey("direct_conv", 1, "fp32", arch=arch)


def all_specializations() -> list[KernelKey]:
    """Keys of every shipped specialisation, without an architecture."""
    return [fused_key(), direct_key()]
