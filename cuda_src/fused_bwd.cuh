// Fused backward of y = postgate * conv(u, k) + skip * x, u = pregate * x (FFT size N = 256 ..
// 16384), one launch for every gradient.
//
// With g = postgate * dy placed at the output window's circular positions (j + out_offset):
//   dx    = pregate * c_g + skip * dy,   c_g = corr(g, k) = IFFT(G * conj(K))
//   dpre  = x * c_g
//   dpost = dy * c_u (at the window),    c_u = conv(u, k)  = IFFT(U * K)
//   dk[s] = sum over the batch of corr(g, u)[s] = IFFT(sum conj(U) G)[s]
// Sequences travel in pairs as in the forward (z = u_b + i u_{b+1}, w = g_b + i g_{b+1}); for dk,
// the real part of corr(z, w) is corr(u_b, g_b) + corr(u_{b+1}, g_{b+1}), so the kernel sums
// conj(Z) W over the pairs (fp32) and the host takes the real part after its inverse FFT.
//
// A tile is one channel h and a run of pairs, processed in groups of `pairs` that fit shared
// memory: the group's u planes, then its g planes (8 N bytes per pair). Each group: load (u
// scaled like the forward; g always scaled by a power of two per group, since gradients are often
// far below fp16's normal range), the forward outer stages of u and g, the 256-point segments
// (forward both, accumulate conj(U) G, then the products with K and conj(K) back in place), the
// inverse outer stages of the planes still needed, the stores.
//
// dk partial sums: warp w owns segment (w mod S) + 8 m (S = min(N / 256, 8)) and, when fewer than
// 8 segments, the pairs i = slot (mod 8 / S), slot = w / S, so each (segment, slot) of a tile has
// one writer and no atomics are needed; the host sums the tiles and slots. A warp stores its sum
// of the tile's first group and adds those of the later groups (in L2, see flush_dk); holding the
// sums in registers across groups spilled.

// The g planes of fp16 or bf16 dy without a postgate (aligned window, vector I/O): dy's bits,
// unscaled and unconverted (with dup: at both halves, s1 not yet applied), so the group's scale
// needs no read of dy before the load (g is scaled by a power of two per group since gradients
// are often far below fp16's normal range; g_scale_pass applies it and converts bf16 to the fp16
// operands). Returns this thread's max |dy| as bits of dy's dtype (sign-magnitude: the order of
// the magnitudes' bit patterns is their numeric order; inf and NaN lie above every finite
// value). The caller reduces it over the block.
__device__ __forceinline__ u32 copy_in_g_raw(const BwdParams& p, const tile_ctx& tc, bool half,
                                             bool dup) {
  const int n = p.n, lout = (int)p.Lout, off = (int)p.out_offset;
  const int lg = 28 - __clz(n) - (half ? 1 : 0);  // log2(positions / 8), see copy_in
  u32 mx = 0u;                                     // two maxima, one per half-word
  for (int w = threadIdx.x; w < (2 * tc.npairs) << lg; w += LC_THREADS) {
    const int r = w >> lg, pos = (w & ((1 << lg) - 1)) << 3;
    const i64 b = 2 * tc.pair0 + r;
    const int j = pos - off;
    uint4 a = uint4{0u, 0u, 0u, 0u};
    if (b < p.B && j >= 0 && j < lout) {  // off and Lout multiples of 8: the whole chunk is inside
      a = __ldg(reinterpret_cast<const uint4*>(reinterpret_cast<const u16*>(p.dy) +
                                               (b * p.H + tc.h) * p.Lout + j));
      mx = __vmaxu2(mx, __vmaxu2(a.x & 0x7fff7fffu, a.y & 0x7fff7fffu));
      mx = __vmaxu2(mx, __vmaxu2(a.z & 0x7fff7fffu, a.w & 0x7fff7fffu));
    }
    u16* plane = tc.sm + n * r;
    if (dup) *reinterpret_cast<uint4*>(plane + smem_index(pos + n / 2)) = a;
    *reinterpret_cast<uint4*>(plane + smem_index(pos)) = a;
  }
  return max(mx & 0xffffu, mx >> 16);
}

// Every g plane of the group (dy's bits, IO) times f (the group's power of two, times s1 for dup)
// as fp16 operands, in place: the same values copy_in_g stores (it computes the same product of
// the same floats; for fp16 dy the scaling by a power of two into fp16's normal range is even
// exact). H100, causal fp16, B = 64, H = 768, forward + backward against the earlier read of dy
// for its maximum before the load: N = 256 0.176 -> 0.167 ms, 1024 0.466 -> 0.431, 4096 1.715 ->
// 1.650, 8192 4.28 -> 3.98, 16384 11.93 -> 11.47.
template <int IO>
__device__ __forceinline__ void g_scale_pass(const tile_ctx& tc, int n, float f) {
  uint4* q = reinterpret_cast<uint4*>(tc.sm);
  for (int w = threadIdx.x; w < (2 * tc.npairs * n) >> 3; w += LC_THREADS) {
    uint4 a = q[w];
    u32* e = reinterpret_cast<u32*>(&a);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      e[i] = pack2<LC_MT>(to_f32<IO>((u16)(e[i] & 0xffffu)) * f,
                          to_f32<IO>((u16)(e[i] >> 16)) * f);
    q[w] = a;
  }
}

// Load of the g planes of a group: g = postgate * dy * scale at circular position j + out_offset,
// zero elsewhere; eight positions per thread and step.
template <int IO>
__device__ __forceinline__ void copy_in_g(const BwdParams& p, const tile_ctx& tc, float scale,
                                          bool half, bool dup) {
  const int n = p.n, lout = (int)p.Lout, off = (int)p.out_offset;
  const int lg = 28 - __clz(n) - (half ? 1 : 0);  // log2(positions / 8), see copy_in
  const bool vec = p.vec_out && (off & 7) == 0;
  for (int w = threadIdx.x; w < (2 * tc.npairs) << lg; w += LC_THREADS) {
    const int r = w >> lg, pos = (w & ((1 << lg) - 1)) << 3;
    const i64 b = 2 * tc.pair0 + r;
    const bool live = b < p.B;
    const i64 row = (b * p.H + tc.h) * p.Lout;
    const int j = pos - off;
    float v[8];
    if (vec) {
      if (live && j >= 0 && j < lout) {
        load8<IO>(p.dy, row, j, lout, true, v);
        if (p.postgate) {
          float gt[8];
          load8<IO>(p.postgate, row, j, lout, true, gt);
#pragma unroll
          for (int e = 0; e < 8; ++e) v[e] *= gt[e];
        }
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = 0.f;
      }
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int jj = j + e;
        float a = 0.f;
        if (live && jj >= 0 && jj < lout) {
          a = load_io<IO>(p.dy, row + jj);
          if (p.postgate) a *= load_io<IO>(p.postgate, row + jj);
        }
        v[e] = a;
      }
    }
    const float m = dup ? scale * LC_DUP_S1 : scale;  // dup: see copy_in
    u32 q[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) q[e] = pack2<LC_MT>(v[2 * e] * m, v[2 * e + 1] * m);
    const uint4 a = uint4{q[0], q[1], q[2], q[3]};
    if (dup) *reinterpret_cast<uint4*>(tc.sm + n * r + smem_index(pos + n / 2)) = a;
    *reinterpret_cast<uint4*>(tc.sm + n * r + smem_index(pos)) = a;
  }
}

// Stores of a group: dx and dpre from the g planes (c_g at positions 0 .. L - 1), dpost from the
// u planes (c_u at the output window).
template <int IO>
__device__ __forceinline__ void store_bwd(const BwdParams& p, const tile_ctx& tu, const tile_ctx& tg,
                                          bool fold2) {
  const int n = p.n, L = (int)p.L, lout = (int)p.Lout, off = (int)p.out_offset;
  const int rows = (int)min((i64)2 * tu.npairs, p.B - 2 * tu.pair0);
  const float s = p.skip ? __ldg(p.skip + tu.h) : 0.f;
  if (p.dx || p.dpre) {
    const int groups = (L + 7) >> 3;
    const bool vec = p.vec_in, vdy = p.vec_in && p.vec_out;
    for (int w = threadIdx.x; w < rows * groups; w += LC_THREADS) {
      const int r = w / groups, t = (w - r * groups) << 3;
      const i64 b = 2 * tu.pair0 + r;
      const i64 xrow = (b * p.H + tu.h) * p.L, orow = (b * p.H + tu.h) * p.Lout;
      float c[8];
      plane8(tg.sm + n * r, t, n, true, tg.out_mult, fold2, c);
      if (p.dpre) {
        float v[8];
        load8<IO>(p.x, xrow, t, L, vec, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] *= c[e];
        store8<IO>(p.dpre, xrow, t, L, vec, v);
      }
      if (p.dx) {
        if (p.pregate) {
          float gt[8];
          load8<IO>(p.pregate, xrow, t, L, vec, gt);
#pragma unroll
          for (int e = 0; e < 8; ++e) c[e] *= gt[e];
        }
        if (p.skip) {
          float d[8];
          load8<IO>(p.dy, orow, t, L, vdy, d);
#pragma unroll
          for (int e = 0; e < 8; ++e) c[e] += s * d[e];
        }
        store8<IO>(p.dx, xrow, t, L, vec, c);
      }
    }
  }
  if (p.dpost) {
    const int groups = (lout + 7) >> 3;
    const bool vec = p.vec_out, aligned = (off & 7) == 0;
    for (int w = threadIdx.x; w < rows * groups; w += LC_THREADS) {
      const int r = w / groups, j = (w - r * groups) << 3;
      const i64 orow = ((2 * tu.pair0 + r) * p.H + tu.h) * p.Lout;
      float c[8], d[8];
      plane8(tu.sm + n * r, j + off, n, aligned, tu.out_mult, fold2, c);
      load8<IO>(p.dy, orow, j, lout, vec, d);
#pragma unroll
      for (int e = 0; e < 8; ++e) c[e] *= d[e];
      store8<IO>(p.dpost, orow, j, lout, vec, c);
    }
  }
}

// The tile's dk partial sums are re-read and added to once per group (8 N bytes each time against
// 12 N bytes per pair of input and output): they are kept in L2 with an evict_last policy, and on
// sm_90 the adds are fire-and-forget vector reductions done in L2 (red.add.f32 flushes subnormal
// sums below 1.2e-38 to zero). H100, causal fp16, B = 64, H = 768: against a load, add and store
// per group the backward kernel ran 7% faster at N = 4096 and 16384, 3% at 8192.
__device__ __forceinline__ unsigned long long dk_policy() {
  unsigned long long pol;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
  return pol;
}

// acc (fragment order, this lane's 8 values) to the tile's slot: stored, or added to what is there.
__device__ __forceinline__ void flush_dk(float4* dst, const fragC& ar, const fragC& ai, bool add,
                                         unsigned long long pol) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int t = q >> 1, d = 2 * (q & 1);
    float4 v = float4{ar.d[t][d], ai.d[t][d], ar.d[t][d + 1], ai.d[t][d + 1]};
    if (add) {
#if __CUDA_ARCH__ >= 900
      asm volatile("red.global.add.L2::cache_hint.v4.f32 [%0], {%1, %2, %3, %4}, %5;" ::"l"(dst + q),
                   "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "l"(pol)
                   : "memory");
      continue;
#else
      const float4 o = dst[q];
      v = float4{v.x + o.x, v.y + o.y, v.z + o.z, v.w + o.w};
#endif
    }
    asm volatile("st.global.L2::cache_hint.v4.f32 [%0], {%1, %2, %3, %4}, %5;" ::"l"(dst + q),
                 "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "l"(pol)
                 : "memory");
  }
}

// The segments of a group: forward 256-point DFTs of u and g, conj(U) G into (accr, acci) times
// acc_mult, and the products U K (when dpost is wanted) and G conj(K) (when dx or dpre is) back.
template <bool NEED_U, bool NEED_G, bool C256>
__device__ __forceinline__ void inner_bwd_seg(const BwdParams& p, const block_tables& bt,
                                              const seg_consts& sc, const lane_idx& li, u16* su,
                                              u16* sg, int np, int seg, int slot, int stride,
                                              float acc_mult, const float4* kseg, fragC& accr,
                                              fragC& acci, int lane) {
  const int n = p.n;
  const u32 sb = blk_idx(256 * seg);
  const u32 ld2 = C256 ? seg_half_ld(lane) : 0u;
  for (int i = slot; i < np; i += stride) {
    const u32 ur = smem_addr(su + 2 * n * i), gr = smem_addr(sg + 2 * n * i);
    fragC ar, ai, gr_, gi_;
    if (C256) seg_stage_a_half<LC_MT>(ur, ur + 2 * n, sb, ld2, sc, ar, ai);
    else seg_stage_a<LC_MT>(ur, ur + 2 * n, sb, li, sc, ar, ai);
    seg_stage_b<LC_MT>(bt, lane, ar, ai);
    if (C256) seg_stage_a_half<LC_MT>(gr, gr + 2 * n, sb, ld2, sc, gr_, gi_);
    else seg_stage_a<LC_MT>(gr, gr + 2 * n, sb, li, sc, gr_, gi_);
    seg_stage_b<LC_MT>(bt, lane, gr_, gi_);
#pragma unroll
    for (int t = 0; t < 2; ++t)
#pragma unroll
      for (int d = 0; d < 4; ++d) {
        // conj(U) G = (ur - i ui)(gr + i gi)
        const float re = ar.d[t][d] * gr_.d[t][d] + ai.d[t][d] * gi_.d[t][d];
        const float im = ar.d[t][d] * gi_.d[t][d] - ai.d[t][d] * gr_.d[t][d];
        accr.d[t][d] = fmaf(re, acc_mult, accr.d[t][d]);
        acci.d[t][d] = fmaf(im, acc_mult, acci.d[t][d]);
      }
    if (NEED_U || NEED_G) {
      seg_spectrum ks;
      ks.load(kseg);
      if (NEED_U) {
        seg_product<false>(ar, ai, ks.k);
        if (C256) seg_inverse_store_half<LC_MT>(ur, ur + 2 * n, sb, li, sc, bt, lane, ar, ai);
        else seg_inverse_store<LC_MT>(ur, ur + 2 * n, sb, li, sc, bt, lane, ar, ai);
      }
      if (NEED_G) {
        seg_product<true>(gr_, gi_, ks.k);
        if (C256) seg_inverse_store_half<LC_MT>(gr, gr + 2 * n, sb, li, sc, bt, lane, gr_, gi_);
        else seg_inverse_store<LC_MT>(gr, gr + 2 * n, sb, li, sc, bt, lane, gr_, gi_);
      }
    }
  }
}

template <bool NEED_U, bool NEED_G, bool C256>
__device__ __forceinline__ void inner_bwd(const BwdParams& p, const block_tables& bt, u16* su,
                                          u16* sg, int np, const float4* kh, float acc_mult,
                                          float4* dk_tile, bool first) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = p.n, nseg = n >> 8, s8 = min(nseg, 8), slot = warp / s8, stride = p.slots;
  const wsource w(p.wtab, p.wtn, n);
  const int r1 = nseg >> 4;
  const lane_idx li = seg_lane_idx(lane);
  seg_consts sc;
  const unsigned long long pol = dk_policy();
  for (int seg = warp % s8; seg < nseg; seg += 8) {
    sc.init(bt, w, nseg <= 16 ? seg : r1 * (seg & 15) + (seg >> 4), lane);
    fragC accr, acci;
    zero(accr);
    zero(acci);
    inner_bwd_seg<NEED_U, NEED_G, C256>(p, bt, sc, li, su, sg, np, seg, slot, stride, acc_mult,
                                  kh + seg * 32 * 4 + lane, accr, acci, lane);
    if (dk_tile && (first || slot < np))
      flush_dk(dk_tile + ((i64)slot * n + 256 * seg + 8 * lane) / 2, accr, acci, !first, pol);
  }
}

template <int IO, bool NEED_U, bool NEED_G, bool C256>
__device__ __forceinline__ void fused_bwd(const BwdParams& p) {
  extern __shared__ __align__(16) u16 smem[];
  __shared__ float red[2][LC_WARPS];
  __shared__ __align__(16) block_tables bt;
  const int n = p.n, nseg = n >> 8;
  const int lr_all = 31 - __clz(nseg);
  const bool two = nseg > 16;
  const int lr1 = two ? lr_all - 4 : lr_all;
  const i64 npairs = (p.B + 1) / 2;
  bt.init(1 << (lr1 > 0 && lr1 < 4 ? lr1 : 1), 1 << max(lr1, 1));
  __syncthreads();
  const float os = spectrum_scale(p);
  // causal forms of the first and last outer stages (outer_tc.cuh): u and g zero from n / 2 on;
  // dx and dpre read c_g below L, dpost c_u in the output window
  const bool window_low = p.out_offset + p.Lout <= n / 2, x_low = p.L <= n / 2;
  const bool half_in = nseg > 1 && window_low && x_low;
  const bool half_out = nseg > 1 && (!NEED_U || window_low) && (!NEED_G || x_low);
  // the radix-2 stages done by the load and store phases (N = 512, 8192; see copy_in)
  const bool dup = lr1 == 1 && half_in, fold2 = lr1 == 1 && half_out;
  // fp16 or bf16 dy without a postgate, aligned: loaded as it is, its scale found during the load
  const bool raw_g = (IO == LC_F16 || IO == LC_BF16) && !p.postgate && p.vec_out &&
                     (p.out_offset & 7) == 0;

  for (i64 tile = blockIdx.x; tile < p.n_tiles; tile += gridDim.x) {
    const i64 h = tile / p.splits, split = tile - h * p.splits;
    const i64 start = split * p.tile_pairs, end = min(npairs, start + p.tile_pairs);
    float4* dk_tile = p.dkspec ? p.dkspec + tile * p.slots * (i64)(n / 2) : nullptr;
    const float4* kh = p.kspec + h * p.k_hstride;
    for (i64 g0 = start; g0 < end || (g0 == start && start >= end); g0 += p.pairs) {
      const int np = (int)max((i64)0, min((i64)p.pairs, end - g0));
      tile_ctx tu;
      tu.h = h;
      tu.pair0 = g0;
      tu.npairs = np;
      tu.sm = smem;
      tu.bt = &bt;
      tu.in_scale = 1.f;
      tu.out_mult = os;
      tile_ctx tg = tu;
      tg.sm = smem + 2 * n * np;
      if (np > 0) {
        if (p.prescale)
          tu.in_scale = tile_scale(
              tile_max_abs_of<IO>(p.x, p.pregate, p.B, p.H, p.L, p.vec_in, n, tu, red[0]));
        if (raw_g) {
          const u32 m = copy_in_g_raw(p, tg, half_in || C256, dup);
          const u32 wm = __reduce_max_sync(0xffffffffu, m);
          if ((threadIdx.x & 31) == 0) red[1][threadIdx.x >> 5] = __uint_as_float(wm);
        } else {
          tg.in_scale = tile_scale(
              tile_max_abs_of<IO>(p.dy, p.postgate, p.B, p.H, p.Lout, p.vec_out, n, tg, red[1]));
          copy_in_g<IO>(p, tg, tg.in_scale, half_in || C256, dup);
        }
        copy_in<IO>(p, tu, half_in || C256, dup);
        __syncthreads();
        if (raw_g) {
          u32 m = 0u;
#pragma unroll
          for (int i = 0; i < LC_WARPS; ++i) m = max(m, __float_as_uint(red[1][i]));
          constexpr int RAW = IO == LC_BF16 ? LC_BF16 : LC_F16;  // (raw_g: IO is one of them)
          tg.in_scale = tile_scale(to_f32<RAW>((u16)m));
          const float f = dup ? tg.in_scale * LC_DUP_S1 : tg.in_scale;
          if (IO == LC_BF16 || f != 1.f) {  // (bf16 bits become fp16 operands in any case)
            g_scale_pass<RAW>(tg, n, f);
            __syncthreads();
          }
        }
        tu.out_mult = os / tu.in_scale;
        tg.out_mult = os / tg.in_scale;
        tile_ctx both = tu;
        both.npairs = 2 * np;
        if (two) {
          if (!dup) {
            outer_all<false, false>(p, both, lr1, 12, half_in);
            __syncthreads();
          }
          outer_all<false, true>(p, both, 4, 8);
          __syncthreads();
        } else if (nseg > 1 && !dup) {
          outer_all<false, false>(p, both, lr1, 8, half_in);
          __syncthreads();
        }
      }
      // conj(U) G / N in true units: the unitary spectra carry the scales of u and g.
      const float acc_mult = 1.f / (tu.in_scale * tg.in_scale);
      const bool first = g0 == start;
      inner_bwd<NEED_U, NEED_G, C256>(p, bt, tu.sm, tg.sm, np, kh, acc_mult, dk_tile, first);
      __syncthreads();
      if (np > 0 && (NEED_U || NEED_G)) {
        // Inverse outer stages of the planes still needed (u: dpost; g: dx, dpre).
        tile_ctx inv = NEED_U ? tu : tg;
        inv.npairs = NEED_U && NEED_G ? 2 * np : np;
        if (two) {
          outer_all<true, true>(p, inv, 4, 8);
          __syncthreads();
          if (!fold2) {
            outer_all<true, false>(p, inv, lr1, 12, half_out);
            __syncthreads();
          }
        } else if (nseg > 1 && !fold2) {
          outer_all<true, false>(p, inv, lr1, 8, half_out);
          __syncthreads();
        }
        store_bwd<IO>(p, tu, tg, fold2);
        __syncthreads();
      }
    }
  }
}

// One entry point per I/O dtype and set of wanted outputs (u: dpost; g: dx and/or dpre; k: dk
// only): one kernel serving every set held both spectra and spilled; apart, each fits. Each comes
// twice: for two blocks per SM (128 registers a thread), and "_1" for one block per SM (up to 255),
// which the host takes where shared memory allows only one block per SM anyway. At 128 registers the
// two-stage outer loops (N >= 8192) spilled their stage matrices and re-read them from local
// memory every block (ncu, H100, N = 8192: local loads 5.5x the kernel's own global traffic).
#define LC_BWD_ENTRY(NAME, IO, NU, NG)                                                        \
  extern "C" __global__ void __launch_bounds__(LC_THREADS, 2) NAME(const BwdParams p) {      \
    fused_bwd<IO, NU, NG, false>(p);                                                                 \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(LC_THREADS, 1) NAME##_1(const BwdParams p) {  \
    fused_bwd<IO, NU, NG, false>(p);                                                                 \
  }
LC_BWD_ENTRY(lc_fused_bwd_f16_k, LC_F16, false, false)
LC_BWD_ENTRY(lc_fused_bwd_f16_g, LC_F16, false, true)
LC_BWD_ENTRY(lc_fused_bwd_f16_u, LC_F16, true, false)
LC_BWD_ENTRY(lc_fused_bwd_f16_ug, LC_F16, true, true)
LC_BWD_ENTRY(lc_fused_bwd_bf16_k, LC_BF16, false, false)
LC_BWD_ENTRY(lc_fused_bwd_bf16_g, LC_BF16, false, true)
LC_BWD_ENTRY(lc_fused_bwd_bf16_u, LC_BF16, true, false)
LC_BWD_ENTRY(lc_fused_bwd_bf16_ug, LC_BF16, true, true)
LC_BWD_ENTRY(lc_fused_bwd_f32_k, LC_F32, false, false)
LC_BWD_ENTRY(lc_fused_bwd_f32_g, LC_F32, false, true)
LC_BWD_ENTRY(lc_fused_bwd_f32_u, LC_F32, true, false)
LC_BWD_ENTRY(lc_fused_bwd_f32_ug, LC_F32, true, true)
#undef LC_BWD_ENTRY
// The causal N = 256 forms (seg_stage_a_half, seg_inverse_store_half) of the training case,
// dx and dk.
#define LC_BWD_ENTRY_C(NAME, IO)                                                               \
  extern "C" __global__ void __launch_bounds__(LC_THREADS, 2) NAME##_c(const BwdParams p) {   \
    fused_bwd<IO, false, true, true>(p);                                                       \
  }
LC_BWD_ENTRY_C(lc_fused_bwd_f16_g, LC_F16)
LC_BWD_ENTRY_C(lc_fused_bwd_bf16_g, LC_BF16)
LC_BWD_ENTRY_C(lc_fused_bwd_f32_g, LC_F32)
#undef LC_BWD_ENTRY_C
