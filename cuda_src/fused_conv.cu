// Fused FFT convolution of whole sequences in shared memory (FFT size N = 256 .. 32768).
//
// Two sequences that share a filter (batch b, b + 1 of channel h) travel as one complex signal
// z = x_b + i x_{b+1}; since the filter is real, conv(z, k) = conv(x_b, k) + i conv(x_{b+1}, k), so
// one complex FFT serves two real sequences (the real-input saving, without an untangling step).
//
// N = R * 256.  Monarch decomposition (kernel_spec.py identity 1), positions in place, every
// stage a 16 x 16 complex product per 256 points on the tensor cores:
//   load phase: x (times pregate and the tile scale) into shared memory, zero past L
//   outer stages (outer_tc.cuh): R <= 16: radix R at stride 256; R > 16: radix r1 = R / 16 at
//     stride 4096 (twiddle W_N applied after it), then radix 16 at stride 256. The twiddle of the
//     stage next to the 256-point segments is folded into those (seg_consts).
//   inner stage: every contiguous 256-point segment, forward, * K, inverse (inner256.cuh), in
//     registers of one warp
//   inverse outer stages mirrored, then the store phase (postgate, skip, output window)
// The spectrum therefore sits in a permuted order; K is stored in that order by the host, scaled so
// the unitary forward and unnormalised inverse give irfft(rfft(x) * rfft(k)).
// Zero-skip: positions >= L are never loaded (the padding of a causal convolution) and only the
// output window [out_offset, out_offset + Lout) is stored.
//
// Range: the tensor-core operands are fp16 for every I/O dtype (bf16 operands measured 5.0e-3
// relative error on bf16 data; fp16 operands 1.7e-3). The forward stages are unitary and the host
// stores the spectrum with max |K| <= 1 (the power of two returns in out_scale), so with max |x| ~ 1
// every intermediate is bounded by sqrt(L) sqrt(N) <= 2^15 (Cauchy-Schwarz) and fits fp16. With
// prescale, each tile's input is multiplied by 2^-e so its largest magnitude lies in [1, 2); fp16
// inputs (|x| <= 65504, usually O(1)) skip that extra read.
#include "params.cuh"
#include "outer_tc.cuh"

#define LC_MT LC_F16
#define LC_THREADS 256
#define LC_WARPS (LC_THREADS / 32)

struct tile_ctx {
  i64 h, pair0;
  int npairs;       // sequence pairs in this tile; pair i is batch rows 2 (pair0 + i) and +1
  float in_scale;   // input multiplier (a power of two)
  float out_mult;   // output multiplier: out_scale / in_scale
  u16* sm;          // pair i: real plane at sm + 2 N i, imaginary plane at sm + 2 N i + N
  const block_tables* bt;
};

// Epilogue of output j of one batch row: postgate, skip, store.
template <int IO>
__device__ __forceinline__ void emit(const ConvParams& p, i64 orow, i64 xrow, i64 h, i64 j, float v) {
  if (p.postgate) v *= load_io<IO>(p.postgate, orow + j);
  if (p.skip) v += __ldg(p.skip + h) * load_io<IO>(p.x, xrow + j);
  store_io<IO>(p.y, orow + j, v);
}

// Items [begin, end) of `items` split evenly over the warps, consecutive items to one warp (so a
// warp's segments repeat across pairs and their constants are computed once).
__device__ __forceinline__ void warp_range(int items, int& begin, int& end) {
  const int warp = threadIdx.x >> 5, per = (items + LC_WARPS - 1) / LC_WARPS;
  begin = warp * per;
  end = min(items, begin + per);
}

// Outer stage over every pair of the tile: radix 2^lr at stride 2^ls (see outer_tc.cuh). SCALED:
// the radix-16 stage after a radix-r1 one, whose matrix carries W_N^(256 k p) for segment k. HALF
// (the first stage with a zero upper half of the input, or the last inverse stage with only the
// lower half of the output kept): the causal forms of outer_tc.cuh.
template <bool INV, bool SCALED, class P>
__device__ __forceinline__ void outer_all(const P& p, const tile_ctx& tc, int lr, int ls,
                                          bool half = false) {
  const int lane = threadIdx.x & 31, n = p.n, lb = 31 - __clz(n >> 8);  // log2 blocks per pair
  const block_tables& bt = *tc.bt;
  if (!SCALED && half) {
    const uint2 hr = bt.hf[0][lane], hi = bt.hf[1][lane];
    const uint4 vr = bt.hv[0][lane], vi = bt.hv[1][lane];
    const fragA ar = fragA{{vr.x, vr.y, vr.z, vr.w}}, ai = fragA{{vi.x, vi.y, vi.z, vi.w}};
    const lane_idx li = outer_lane_idx(lr, ls, lane);
    const half_idx hx = outer_half_idx(lr, ls, lane);
    int it, end;
    warp_range(tc.npairs << lb, it, end);
    for (; it < end; ++it) {
      const u32 re = smem_addr(tc.sm + 2 * n * (it >> lb));
      const u32 sb = outer_block_index(it & ((1 << lb) - 1), lr, ls);
      if (INV) outer_stage_half_out<LC_MT>(re, re + 2 * n, sb, li, hx, ar, ai);
      else outer_stage_half_in<LC_MT>(re, re + 2 * n, sb, li, hx, hr, hi);
    }
    return;
  }
  fragA mr, mi, mni;  // (mni unused: outer_stage negates x instead)
  if (!SCALED) {
    // (fb and gb are stored in fragB order: their own overload reorders them)
    if (lr == 4) load_frags(INV ? bt.gb : bt.fb, lane, mr, mi, mni);
    else load_frags(INV ? bt.og : bt.ob, lane, mr, mi, mni);
  }
  const wsource w(p.wtab, p.wtn, n);
  const lane_idx li = outer_lane_idx(lr, ls, lane);
  int cur = -1;
  int it, end;
  warp_range(tc.npairs << lb, it, end);
  for (; it < end; ++it) {
    const int b = it & ((1 << lb) - 1);
    if (SCALED && (b >> 4) != cur) {
      cur = b >> 4;
      if (INV) scaled_rows_conj(bt, w, 16 * cur, lane, mr, mi, mni);
      else scaled_cols(bt, w, 16 * cur, 0.25f, lane, mr, mi, mni);
    }
    const u32 re = smem_addr(tc.sm + 2 * n * (it >> lb));
    outer_stage<LC_MT>(re, re + 2 * n, outer_block_index(b, lr, ls), li, mr, mi);
  }
}

// The first outer stage at N = 512 and 8192 is radix 2 at stride N / 2, (a, b) -> s1 (a + b, a - b)
// with s1 = 1/sqrt(2) rounded to fp16 as in the block tables (181 / 256). With a zero upper half of
// the input both outputs are s1 a: the load phase writes them itself ("dup") and the stage is
// skipped. Mirrored, the last inverse stage keeps only y = a + b below N / 2, which the store phase
// sums from the two halves ("fold2"). H100, causal fp16, B = 64, H = 768, N = 8192: forward 1.395
// -> 1.269 ms, forward + backward 4.63 -> 4.28 ms.
#define LC_DUP_S1 0.70703125f
#define LC_DUP_S1X2 0x39a839a8u  // (s1, s1) in f16x2

// Plain load of the tile into shared memory: x * pregate * in_scale, zero past L, eight elements
// per thread. Row r of the tile is pair r / 2, plane r % 2 (batch row 2 pair0 + r).
// half: only positions below n / 2 (the first outer stage reads no others; see outer_tc.cuh).
// dup (with half): s1 times those values, at their positions and n / 2 higher.
template <int IO, class P>
__device__ __forceinline__ void copy_in(const P& p, const tile_ctx& tc, bool half = false,
                                        bool dup = false) {
  const int n = p.n, L = (int)p.L, lg = 28 - __clz(n) - (half ? 1 : 0);  // log2(positions / 8)
  const bool vec = p.vec_in;
  for (int w = threadIdx.x; w < (2 * tc.npairs) << lg; w += LC_THREADS) {
    const int r = w >> lg, t = (w & ((1 << lg) - 1)) << 3;
    const i64 b = 2 * tc.pair0 + r;
    const bool live = b < p.B;
    const i64 row = (b * p.H + tc.h) * p.L;
    u16* plane = tc.sm + n * r;
    if (IO == LC_F16 && vec) {
      // fp16 in, fp16 operands, unit scale (fp16 inputs are never prescaled): copy the bits;
      // the pregate product in f16x2 rounds exactly like fp32 multiply-then-round.
      uint4 a = uint4{0u, 0u, 0u, 0u};
      if (live && t < L) {
        a = __ldg(reinterpret_cast<const uint4*>(reinterpret_cast<const u16*>(p.x) + row + t));
        if (p.pregate) {
          const uint4 g =
              __ldg(reinterpret_cast<const uint4*>(reinterpret_cast<const u16*>(p.pregate) + row + t));
          a = uint4{hmul2(a.x, g.x), hmul2(a.y, g.y), hmul2(a.z, g.z), hmul2(a.w, g.w)};
        }
      }
      if (dup) {
        a = uint4{hmul2(a.x, LC_DUP_S1X2), hmul2(a.y, LC_DUP_S1X2), hmul2(a.z, LC_DUP_S1X2),
                  hmul2(a.w, LC_DUP_S1X2)};
        *reinterpret_cast<uint4*>(plane + smem_index(t + n / 2)) = a;
      }
      *reinterpret_cast<uint4*>(plane + smem_index(t)) = a;
    } else {
      float v[8];
      if (live && t < L) {
        load8<IO>(p.x, row, t, L, vec, v);
        if (p.pregate) {
          float g[8];
          load8<IO>(p.pregate, row, t, L, vec, g);
#pragma unroll
          for (int e = 0; e < 8; ++e) v[e] *= g[e];
        }
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = 0.f;
      }
      const float m = dup ? tc.in_scale * LC_DUP_S1 : tc.in_scale;
      u32 q[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) q[e] = pack2<LC_MT>(v[2 * e] * m, v[2 * e + 1] * m);
      const uint4 a = uint4{q[0], q[1], q[2], q[3]};
      if (dup) *reinterpret_cast<uint4*>(plane + smem_index(t + n / 2)) = a;
      *reinterpret_cast<uint4*>(plane + smem_index(t)) = a;
    }
  }
}

// Eight values of a plane from position pos on, times mult (pos a multiple of 8 when aligned);
// fold2: each the sum of the values at pos + e and pos + e + n / 2. Positions wrap around the
// plane: the last group of an unaligned window reads up to 7 positions past it, whose values the
// caller drops.
__device__ __forceinline__ void plane8(const u16* plane, int pos, int n, bool aligned, float mult,
                                       bool fold2, float (&v)[8]) {
  if (aligned) {
    const uint4 a = *reinterpret_cast<const uint4*>(plane + smem_index(pos));
    const u32 q[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      v[2 * e] = to_f32<LC_MT>((u16)(q[e] & 0xffffu));
      v[2 * e + 1] = to_f32<LC_MT>((u16)(q[e] >> 16));
    }
    if (fold2) {
      const uint4 b = *reinterpret_cast<const uint4*>(plane + smem_index(pos + n / 2));
      const u32 r[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        v[2 * e] += to_f32<LC_MT>((u16)(r[e] & 0xffffu));
        v[2 * e + 1] += to_f32<LC_MT>((u16)(r[e] >> 16));
      }
    }
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      v[e] = to_f32<LC_MT>(plane[smem_index((pos + e) & (n - 1))]);
      if (fold2) v[e] += to_f32<LC_MT>(plane[smem_index((pos + e + n / 2) & (n - 1))]);
    }
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) v[e] *= mult;
}

// Plain store of the output window from shared memory: times out_mult, postgate, skip.
template <int IO>
__device__ __forceinline__ void copy_out(const ConvParams& p, const tile_ctx& tc, bool fold2) {
  const int n = p.n, lout = (int)p.Lout, off = (int)p.out_offset;
  const int groups = (lout + 7) >> 3;
  const bool vec = p.vec_out, aligned = (off & 7) == 0;
  const float s = p.skip ? __ldg(p.skip + tc.h) : 0.f;
  const int rows = (int)min((i64)2 * tc.npairs, p.B - 2 * tc.pair0);
  for (int w = threadIdx.x; w < rows * groups; w += LC_THREADS) {
    const int r = w / groups, j = (w - r * groups) << 3;
    const i64 b = 2 * tc.pair0 + r;
    const i64 orow = (b * p.H + tc.h) * p.Lout, xrow = (b * p.H + tc.h) * p.L;
    const u16* plane = tc.sm + n * r;
    {
      float v[8];
      plane8(plane, j + off, n, aligned, tc.out_mult, fold2, v);
      if (p.postgate) {
        float g[8];
        load8<IO>(p.postgate, orow, j, lout, vec, g);
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] *= g[e];
      }
      if (p.skip) {
        float xs[8];
        load8<IO>(p.x, xrow, j, lout, vec, xs);
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] += s * xs[e];
      }
      store8<IO>(p.y, orow, j, lout, vec, v);
    }
  }
}

// Circular fold for a circular length that is not an FFT size: y[j] = z[j] + z[j + fold].
template <int IO>
__device__ __forceinline__ void fold_store(const ConvParams& p, const tile_ctx& tc, float mult) {
  const int n = p.n, L = (int)p.fold;
  for (int i = 0; i < tc.npairs; ++i) {
    const u16* pr = tc.sm + 2 * n * i;
    const u16* pi = pr + n;
    const i64 b0 = 2 * (tc.pair0 + i);
    const bool has1 = b0 + 1 < p.B;
    const i64 row0 = (b0 * p.H + tc.h) * p.L, row1 = row0 + p.H * p.L;
    for (int j = threadIdx.x; j < L; j += LC_THREADS) {
      const int j0 = smem_index(j), j1 = smem_index(j + L);
      emit<IO>(p, row0, row0, tc.h, j, (to_f32<LC_MT>(pr[j0]) + to_f32<LC_MT>(pr[j1])) * mult);
      if (has1)
        emit<IO>(p, row1, row1, tc.h, j, (to_f32<LC_MT>(pi[j0]) + to_f32<LC_MT>(pi[j1])) * mult);
    }
  }
}

// Largest |gate * a| over the tile's rows (length len, row b of channel h at (b H + h) len),
// reduced over the block (every thread gets it); eight elements per thread and step, as the load
// phases read them. red: LC_WARPS floats of shared memory not in use by another reduction.
template <int IO>
__device__ float tile_max_abs_of(const void* a, const void* gate, i64 B, i64 H, i64 len, bool vec,
                                 int n, const tile_ctx& tc, float* red) {
  float m = 0.f;
  const int L = (int)len, lg = 28 - __clz(n);  // log2(n / 8)
  const int rows = (int)min((i64)2 * tc.npairs, B - 2 * tc.pair0);
  for (int w = threadIdx.x; w < rows << lg; w += LC_THREADS) {
    const int r = w >> lg, t = (w & ((1 << lg) - 1)) << 3;
    if (t >= L) continue;
    const i64 row = ((2 * tc.pair0 + r) * H + tc.h) * len;
    float v[8];
    load8<IO>(a, row, t, L, vec, v);
    if (gate) {
      float g[8];
      load8<IO>(gate, row, t, L, vec, g);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] *= g[e];
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) m = fmaxf(m, fabsf(v[e]));
  }
#pragma unroll
  for (int s = 16; s > 0; s >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, s));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  m = red[0];
#pragma unroll
  for (int i = 1; i < LC_WARPS; ++i) m = fmaxf(m, red[i]);
  return m;
}

// The power of two 2^-e that brings a tile maximum m into [1, 2) (1 for zero or non-finite m).
__device__ __forceinline__ float tile_scale(float m) {
  return m > 0.f && m <= 3.0e38f ? exp2f((float)-max(-100, min(100, ilogbf(m)))) : 1.f;
}

// The output multiplier of the spectrum: from device memory when the host left it there.
template <class P> __device__ __forceinline__ float spectrum_scale(const P& p) {
  return p.out_scale_ptr ? __ldg(p.out_scale_ptr) : p.out_scale;
}

// The 256-point segments of the tile: items (segment, pair), segment-major so a warp reuses its
// segment constants and spectrum across the pairs. C256: N = 256 in the causal forms
// (conv_segment's HALF forms).
template <bool C256>
__device__ __forceinline__ void inner_all(const ConvParams& p, const tile_ctx& tc, const float4* kh) {
  const block_tables& bt = *tc.bt;
  const int lane = threadIdx.x & 31;
  const int n = p.n, nseg = n >> 8;
  // Folded twiddle W_N^(k (16 p + q)) of segment s: k = s with one outer stage; with two
  // (radix r1 = nseg / 16, then 16), segment s = 16 k1 + k2 of 4096-segment k1 gets
  // W_4096^(k2 j) W_N^(k1 j) = W_N^((r1 k2 + k1) j).
  const wsource w(p.wtab, p.wtn, n);
  const int r1 = nseg >> 4;
  seg_consts sc;
  const float4* kl = kh;
  u32 sb = 0;
  int cur = -1;
  int it, end;
  warp_range(nseg * tc.npairs, it, end);
  int seg = it / tc.npairs, i = it - seg * tc.npairs;
  for (; it < end; ++it, ++i) {
    if (i == tc.npairs) {
      i = 0;
      ++seg;
    }
    if (seg != cur) {
      sc.init(bt, w, nseg <= 16 ? seg : r1 * (seg & 15) + (seg >> 4), lane);
      kl = kh + seg * 32 * 4 + lane;
      sb = blk_idx(256 * seg);
      cur = seg;
    }
    const u32 re = smem_addr(tc.sm + 2 * n * i);
    conv_segment<LC_MT, C256>(re, re + 2 * n, sb, bt.seg_li(lane), sc, bt, kl, lane,
                              C256 ? seg_half_ld(lane) : 0u);
  }
}

// C256: the entry for N = 256 with the input below 128 and the output window below 128 (the host
// picks it; see conv_segment's HALF forms).
template <int IO, bool C256> __device__ __forceinline__ void fused_conv(const ConvParams& p) {
  extern __shared__ __align__(16) u16 smem[];
  __shared__ float red[LC_WARPS];
  __shared__ __align__(16) block_tables bt;
  const int n = p.n, nseg = n >> 8;
  const int lr_all = 31 - __clz(nseg);             // log2 R
  const bool two = nseg > 16;                       // radix r1 at stride 4096, then 16 at 256
  const int lr1 = two ? lr_all - 4 : lr_all;        // the first (or only) outer stage
  const i64 npairs = (p.B + 1) / 2;
  bt.init(1 << (lr1 > 0 && lr1 < 4 ? lr1 : 1), 1 << max(lr1, 1));
  __syncthreads();
  // causal forms of the first and last outer stages (outer_tc.cuh): input zero from n / 2 on,
  // output window below n / 2
  const bool half_in = nseg > 1 && !p.fold && p.L <= n / 2;
  const bool half_out = nseg > 1 && !p.fold && p.out_offset + p.Lout <= n / 2;
  // the radix-2 stages done by the load and store phases (N = 512, 8192)
  const bool dup = lr1 == 1 && half_in, fold2 = lr1 == 1 && half_out;

  for (i64 tile = blockIdx.x; tile < p.n_tiles; tile += gridDim.x) {
    tile_ctx tc;
    tc.h = tile / p.tiles_per_h;
    tc.pair0 = (tile - tc.h * p.tiles_per_h) * p.pairs;
    tc.npairs = (int)(npairs - tc.pair0 < p.pairs ? npairs - tc.pair0 : p.pairs);
    tc.sm = smem;
    tc.bt = &bt;
    tc.in_scale = 1.f;
    if (p.prescale)
      tc.in_scale = tile_scale(tile_max_abs_of<IO>(p.x, p.pregate, p.B, p.H, p.L, p.vec_in, n, tc, red));
    tc.out_mult = spectrum_scale(p) / tc.in_scale;

    copy_in<IO>(p, tc, half_in || C256, dup);
    __syncthreads();
    if (two) {
      if (!dup) {
        outer_all<false, false>(p, tc, lr1, 12, half_in);
        __syncthreads();
      }
      outer_all<false, true>(p, tc, 4, 8);
      __syncthreads();
    } else if (nseg > 1 && !dup) {
      outer_all<false, false>(p, tc, lr1, 8, half_in);
      __syncthreads();
    }
    inner_all<C256>(p, tc, p.kspec + tc.h * p.k_hstride);
    __syncthreads();
    if (two) {
      outer_all<true, true>(p, tc, 4, 8);
      __syncthreads();
      if (!fold2) {
        outer_all<true, false>(p, tc, lr1, 12, half_out);
        __syncthreads();
      }
    } else if (nseg > 1 && !fold2) {
      outer_all<true, false>(p, tc, lr1, 8, half_out);
      __syncthreads();
    }
    if (p.fold) fold_store<IO>(p, tc, tc.out_mult);
    else copy_out<IO>(p, tc, fold2);
    __syncthreads();
  }
}

#include "fused_bwd.cuh"
#include "kspec.cuh"

// One entry point per I/O dtype, and its causal N = 256 form ("_c").
#define LC_FWD_ENTRY(NAME, IO)                                                                   \
  extern "C" __global__ void __launch_bounds__(LC_THREADS, 2) NAME(const ConvParams p) {        \
    fused_conv<IO, false>(p);                                                                    \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(LC_THREADS, 2) NAME##_c(const ConvParams p) {    \
    fused_conv<IO, true>(p);                                                                     \
  }
LC_FWD_ENTRY(lc_fused_conv_f16, LC_F16)
LC_FWD_ENTRY(lc_fused_conv_bf16, LC_BF16)
LC_FWD_ENTRY(lc_fused_conv_f32, LC_F32)
#undef LC_FWD_ENTRY
