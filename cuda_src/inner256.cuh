// The 256-point complex FFT of one segment, forward, times the filter spectrum, and back, on the
// tensor cores of one warp, without leaving registers (Monarch 16 x 16, kernel_spec.py identity 1).
//
// A segment holds x[16 p + q] (p, q < 16) as two 16-bit planes in shared memory (see smem_index).
//   stage a:  C[k2][q] = W_256^(k2 q) * sum_p F[k2][p] x[p][q]         (F = DFT_16, scaled 1/4)
//   stage b:  D[k2][k3] = sum_q C[k2][q] F[q][k3] = X[k2 + 16 k3]       (unitary 256-point DFT)
//   product:  P = D * K                                                   (K in fragment order)
//   stage b': E[k2][q] = conj(W_256^(k2 q)) * sum_k3 P[k2][k3] G[k3][q]  (G = conj(F) * 4)
//   stage a': y[p][q] = sum_k2 G[p][k2] E[k2][q]
// with the neighbouring outer stage's twiddle folded into stages a and a' (seg_consts).
// Complex products use planar real/imaginary fragments: (a + ib)(c + id) = ac - bd + i(ad + bc).
#pragma once
#include "mma.cuh"

// Halfword index of position j inside a pair's plane. The 16 B chunk bits (3..5) are XORed with
// bits 6, 8..10 and 12..14 so that every access pattern is free of bank conflicts: ldmatrix rows
// 32 B apart (the 256-point segments: rows differ in bits 4..6), 512 B apart (outer stage at stride
// 256: bits 8..10), 8 KB apart (outer stage at stride 4096: bits 12..14), and runs of consecutive
// 16 B chunks (the load and store phases).
__device__ __forceinline__ int smem_index(int j) {
  const int s = (j >> 8) ^ (j >> 12);
  return j ^ (((((j >> 6) ^ s) & 1) | (s & 6)) << 3);
}

// Shared-memory positions of a 16 x 16 block split into a warp-uniform part (the block's base) and a
// lane part (row offsets and columns) with no bits in common, so base + off = base ^ off. smem_index
// is linear over GF(2) (shifts, masks and XORs of j), so smem_index(base + off) = smem_index(base) ^
// smem_index(off): each lane computes the byte offsets of its part once per stage (lane_idx), a
// block costs one smem_index of its base (blk_idx = 2 smem_index(base)), and an access one XOR and
// one add to the plane's shared address. Computing every address in full cost about 100 integer
// instructions per 16 x 16 block against its 8 HMMA.
struct lane_idx {
  u32 ld;     // ldmatrix row of this lane: tile m = lane / 8 is rows 8 (m & 1) .. +7, columns 8 (m >> 1)
  u32 st[4];  // accumulator pairs of this lane: [2 h + t] is row g + 8 h, columns 2 c + 8 t, +1
};

// row_off(r): offset of row r from the block's base (bits disjoint from every base).
template <class RowOff>
__device__ __forceinline__ lane_idx make_lane_idx(RowOff row_off, int lane) {
  const int m = lane >> 3, g = lane >> 2, c = lane & 3;
  lane_idx li;
  // tile m (k rows 8 (m & 1), n columns 8 (m >> 1)) lands in register m: fragB's order
  li.ld = 2 * smem_index(row_off((lane & 7) + 8 * (m & 1)) + 8 * (m >> 1));
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int t = 0; t < 2; ++t)
      li.st[2 * h + t] = 2 * smem_index(row_off(g + 8 * h) + 2 * c + 8 * t);
  return li;
}

// The lane part of a 256-point segment (row r at 16 r; bases are multiples of 256).
__device__ __forceinline__ lane_idx seg_lane_idx(int lane) {
  return make_lane_idx([](int r) { return 16 * r; }, lane);
}

// Byte offset of the block whose base is at position j.
__device__ __forceinline__ u32 blk_idx(int j) { return 2 * smem_index(j); }

// B operand of a 16 x 16 block x[r][q] (contracted over r) of the plane at shared address plane.
__device__ __forceinline__ fragB load_block_bt(u32 plane, u32 sb, const lane_idx& li) {
  return ldmatrix_x4_trans(plane + (sb ^ li.ld));
}

// Store a 16 x 16 accumulator y[r][q] to the block sb of the plane (pairs of adjacent q).
template <int T>
__device__ __forceinline__ void store_block(u32 plane, u32 sb, const lane_idx& li, const fragC& y) {
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int t = 0; t < 2; ++t)
      st_shared_u32(plane + (sb ^ li.st[2 * h + t]), pack2<T>(y.d[t][2 * h], y.d[t][2 * h + 1]));
}

// Per-block tables in shared memory, one row per lane (see block_tables::init):
//   fb, gb: F / 4 and G = conj(F) (stages b and b', as B operands in fragB order; packed
//           fp16: re, im, -im for each), fbase: F at this lane's A-fragment positions in fp32,
//   tw:     W_256^(k2 q) at this lane's accumulator positions.
// A fragments (real, imaginary, -imaginary) of a 16 x 16 complex matrix, element-major so a warp
// reads each part as 32 consecutive 16-byte words (no bank conflicts).
struct frag_table {
  uint4 v[3][32];
  __device__ __forceinline__ void set(int lane, int i, u32 re, u32 im, u32 nim) {
    reinterpret_cast<u32*>(&v[0][lane])[i] = re;
    reinterpret_cast<u32*>(&v[1][lane])[i] = im;
    reinterpret_cast<u32*>(&v[2][lane])[i] = nim;
  }
};

__device__ __forceinline__ void load_frags(const frag_table& t, int lane, fragA& r, fragA& i, fragA& ni) {
  const uint4 a = t.v[0][lane], b = t.v[1][lane], c = t.v[2][lane];
  r = fragA{{a.x, a.y, a.z, a.w}};
  i = fragA{{b.x, b.y, b.z, b.w}};
  ni = fragA{{c.x, c.y, c.z, c.w}};
}

// The same tables in fragB order (b0, b1 of n-tile 0, then of n-tile 1: A registers 0, 2, 1, 3),
// for matrices used as B operands; set() still takes the A register index. A distinct type (not
// a frag_table) so that no load can read it in the wrong order.
struct frag_table_b {
  frag_table t;
  __device__ __forceinline__ void set(int lane, int i, u32 re, u32 im, u32 nim) {
    t.set(lane, ((i & 1) << 1) | (i >> 1), re, im, nim);
  }
};

__device__ __forceinline__ void load_frags(const frag_table_b& tb, int lane, fragB& r, fragB& i,
                                           fragB& ni) {
  const frag_table& t = tb.t;
  const uint4 a = t.v[0][lane], b = t.v[1][lane], c = t.v[2][lane];
  r = fragB{{a.x, a.y, a.z, a.w}};
  i = fragB{{b.x, b.y, b.z, b.w}};
  ni = fragB{{c.x, c.y, c.z, c.w}};
}
// As A operands (the radix-16 outer stage): back to the A order.
__device__ __forceinline__ fragA a_order(const fragB& b) {
  return fragA{{b.r[0], b.r[2], b.r[1], b.r[3]}};
}
__device__ __forceinline__ void load_frags(const frag_table_b& tb, int lane, fragA& r, fragA& i,
                                           fragA& ni) {
  fragB br, bi, bni;
  load_frags(tb, lane, br, bi, bni);
  r = a_order(br);
  i = a_order(bi);
  ni = a_order(bni);
}

struct block_tables {
  frag_table_b fb, gb;  // B operands of stages b and b' (A operands of the radix-16 outer stage)
  frag_table ob;  // outer stage of radix R < 16: block-diagonal DFT_R / sqrt(R) (16 / R blocks)
  frag_table og;  // and its inverse, conj(DFT_R) blocks, unscaled
  // The first outer stage (radix R1) when the upper half of the input is zero and the last one
  // when only the lower half of the output is kept (causal convolutions; see outer_tc.cuh):
  //   hf: the 16 x 8 A fragment (a0, a1) of D = DFT_R1 / sqrt(R1) blocks restricted to the
  //       8 columns of nonzero input rows, real and imaginary parts;
  //   hv: the A fragment of conj(DFT_R1) blocks with the 8 kept output rows first and rows
  //       8..15 zero (a1 = a3 = 0: read from memory, the zeros take registers the compiler
  //       cannot rematerialise with moves before every HMMA).
  uint2 hf[2][32];
  uint4 hv[2][32];
  cf fbase[8][32];
  cf tw[8][32];
  u32 seg_idx[5][32];  // seg_lane_idx of each lane: reloading it costs one LDS per word where
                       // the register-starved segment loop recomputed it in about 25 instructions

  __device__ __forceinline__ lane_idx seg_li(int lane) const {
    lane_idx li;
    li.ld = seg_idx[0][lane];
#pragma unroll
    for (int i = 0; i < 4; ++i) li.st[i] = seg_idx[1 + i][lane];
    return li;
  }

  __device__ void init(int radix, int first_radix) {
    for (int lane = threadIdx.x; lane < 32; lane += blockDim.x) {
      const int g = lane >> 2, c = lane & 3;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float re[2], im[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = g + 8 * (i & 1), col = 2 * c + h + 8 * (i >> 1);
          const cf w = unit_root(row * col, 16, -1.f);
          fbase[2 * i + h][lane] = w;
          re[h] = w.re;
          im[h] = w.im;
        }
        fb.set(lane, i, pack2<LC_F16>(0.25f * re[0], 0.25f * re[1]),
               pack2<LC_F16>(0.25f * im[0], 0.25f * im[1]),
               pack2<LC_F16>(-0.25f * im[0], -0.25f * im[1]));
        gb.set(lane, i, pack2<LC_F16>(re[0], re[1]), pack2<LC_F16>(-im[0], -im[1]),
               pack2<LC_F16>(im[0], im[1]));
      }
#pragma unroll
      for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int d = 0; d < 4; ++d) {
          const int k2 = g + 8 * (d >> 1), q = 2 * c + (d & 1) + 8 * t;
          tw[4 * t + d][lane] = unit_root(k2 * q, 256, -1.f);
        }
      {
        const int R1 = first_radix, h1 = R1 >> 1;
        auto kept = [=](int r) { return (r / h1) * R1 + r % h1; };  // row of the r-th lower-half row
        auto entry = [=](int row, int col, float sign) {
          return row / R1 == col / R1 ? unit_root((row % R1) * (col % R1), R1, sign) : cf{0.f, 0.f};
        };
        const float s1 = rsqrtf((float)R1);
        u32 f[2][2], v[2][2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          // hf register i: row g + 8 i, columns kept(2c), kept(2c + 1)
          const cf a = entry(g + 8 * i, kept(2 * c), -1.f), b = entry(g + 8 * i, kept(2 * c + 1), -1.f);
          f[0][i] = pack2<LC_F16>(s1 * a.re, s1 * b.re);
          f[1][i] = pack2<LC_F16>(s1 * a.im, s1 * b.im);
          // hv register a0 / a2: row kept(g), columns 2c + 8 i, +1
          const cf d = entry(kept(g), 2 * c + 8 * i, 1.f), e = entry(kept(g), 2 * c + 8 * i + 1, 1.f);
          v[0][i] = pack2<LC_F16>(d.re, e.re);
          v[1][i] = pack2<LC_F16>(d.im, e.im);
        }
#pragma unroll
        for (int part = 0; part < 2; ++part) {
          hf[part][lane] = uint2{f[part][0], f[part][1]};
          hv[part][lane] = uint4{v[part][0], 0u, v[part][1], 0u};
        }
      }
      const lane_idx li = seg_lane_idx(lane);
      seg_idx[0][lane] = li.ld;
#pragma unroll
      for (int i = 0; i < 4; ++i) seg_idx[1 + i][lane] = li.st[i];
      const float s = rsqrtf((float)radix);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float re[2], im[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = g + 8 * (i & 1), col = 2 * c + h + 8 * (i >> 1);
          const bool on = row / radix == col / radix;
          const cf w = unit_root((row % radix) * (col % radix), radix, -1.f);
          re[h] = on ? w.re : 0.f;
          im[h] = on ? w.im : 0.f;
        }
        ob.set(lane, i, pack2<LC_F16>(s * re[0], s * re[1]), pack2<LC_F16>(s * im[0], s * im[1]),
               pack2<LC_F16>(-s * im[0], -s * im[1]));
        og.set(lane, i, pack2<LC_F16>(re[0], re[1]), pack2<LC_F16>(-im[0], -im[1]),
               pack2<LC_F16>(im[0], im[1]));
      }
    }
  }
};

// W_M^j for the twiddles folded into the tensor-core stages: from W_4096 (wtab) when M divides
// 4096, else from the two-level table of W_N (wtn: W_N^j for j < 64, then W_N^(64 j)).
struct wsource {
  const float2* __restrict__ wtab;
  const float2* __restrict__ wtn;
  int m, sh;  // sh = log2(4096 / m) when m <= 4096
  __device__ __forceinline__ wsource(const float2* tab, const float2* tn, int m_)
      : wtab(tab), wtn(tn), m(m_), sh(m_ <= 4096 ? 12 - (31 - __clz(m_)) : 0) {}
  __device__ __forceinline__ cf operator()(int j) const {
    j &= m - 1;
    if (m <= 4096) {
      const float2 v = __ldg(wtab + (j << sh));
      return cf{v.x, v.y};
    }
    const float2 a = __ldg(wtn + (j & 63)), b = __ldg(wtn + 64 + (j >> 6));
    return cmul(cf{a.x, a.y}, cf{b.x, b.y});
  }
};

// A fragments of s * F diag(w(16 kk p)): DFT_16 with its columns p scaled.
__device__ __forceinline__ void scaled_cols(const block_tables& bt, const wsource& w, int kk, float s,
                                            int lane, fragA& fr, fragA& fi, fragA& nfi) {
  const int c = lane & 3;
  cf wc[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) wc[i] = w(16 * kk * (2 * c + (i & 1) + 8 * (i >> 1)));
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const cf a0 = cmul(bt.fbase[2 * i][lane], wc[2 * (i >> 1)]);
    const cf a1 = cmul(bt.fbase[2 * i + 1][lane], wc[1 + 2 * (i >> 1)]);
    fr.r[i] = pack2<LC_F16>(s * a0.re, s * a1.re);
    fi.r[i] = pack2<LC_F16>(s * a0.im, s * a1.im);
    nfi.r[i] = pack2<LC_F16>(-s * a0.im, -s * a1.im);
  }
}

// A fragments of conj(diag(w(16 kk p)) F): conj(DFT_16) with its rows p scaled by conj(w).
__device__ __forceinline__ void scaled_rows_conj(const block_tables& bt, const wsource& w, int kk,
                                                 int lane, fragA& gr, fragA& gi, fragA& ngi) {
  const int g = lane >> 2;
  const cf wr[2] = {w(16 * kk * g), w(16 * kk * (g + 8))};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const cf b0 = cmul(bt.fbase[2 * i][lane], wr[i & 1]);
    const cf b1 = cmul(bt.fbase[2 * i + 1][lane], wr[i & 1]);
    gr.r[i] = pack2<LC_F16>(b0.re, b1.re);
    gi.r[i] = pack2<LC_F16>(-b0.im, -b1.im);
    ngi.r[i] = pack2<LC_F16>(b0.im, b1.im);
  }
}

// Constants of one segment. The twiddle of the outer stages before it, W_M^(k (16 p + q)) on
// element (p, q) of the segment (k and M from the decomposition, see inner_all), splits into
// W_M^(16 k p), a column scaling folded into stage a's matrix (a row scaling of stage a''s), and
// W_M^(k q), folded into the 256-point twiddle.
// -Im of the matrices is held (8 registers) rather than x's imaginary fragments negated before
// each product as the outer stages do: negating spared the spilling two-block backward no spills
// (ptxas: 196 bytes either way) and took the forward from 126 to 128 registers.
struct seg_consts {
  fragA fr, fi, nfi;  // stage a:  F[k2][p] W_M^(16 k p) / 4
  fragA gr, gi, ngi;  // stage a': conj(F[p][k2] W_M^(16 k p))
  cf tw[2][4];        // W_256^(k2 q) W_M^(k q)

  __device__ __forceinline__ void init(const block_tables& bt, const wsource& w, int k, int lane) {
    const int c = lane & 3;
    scaled_cols(bt, w, k, 0.25f, lane, fr, fi, nfi);
    scaled_rows_conj(bt, w, k, lane, gr, gi, ngi);
#pragma unroll
    for (int t = 0; t < 2; ++t)
#pragma unroll
      for (int d = 0; d < 4; ++d)
        tw[t][d] = cmul(bt.tw[4 * t + d][lane], w(k * (2 * c + (d & 1) + 8 * t)));
  }
};

// The filter spectrum of one segment at this lane: K[e], e = 4 t + d, as 8 complex fp32 values,
// stored as float4 groups i = e / 2 of all 32 lanes in turn (coalesced loads). src: the segment's
// spectrum plus lane, computed once per segment (the loads then take immediate offsets).
struct seg_spectrum {
  cf k[2][4];
  __device__ __forceinline__ void load(const float4* __restrict__ src) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 v = __ldg(src + 32 * i);
      k[i >> 1][(i & 1) * 2] = cf{v.x, v.y};
      k[i >> 1][(i & 1) * 2 + 1] = cf{v.z, v.w};
    }
  }
};

// P * W (CONJ: P * conj(W)) in place, W eight complex values at this lane's accumulator positions
// (the segment's filter spectrum, or its 256-point twiddles).
template <bool CONJ>
__device__ __forceinline__ void seg_product(fragC& cr, fragC& ci, const cf (&w)[2][4]) {
#pragma unroll
  for (int t = 0; t < 2; ++t)
#pragma unroll
    for (int d = 0; d < 4; ++d) {
      const cf a = cf{cr.d[t][d], ci.d[t][d]};
      const cf v = CONJ ? cmulc(a, w[t][d]) : cmul(a, w[t][d]);
      cr.d[t][d] = v.re;
      ci.d[t][d] = v.im;
    }
}

// Stage a of the segment at block offset sb of the planes re, im (shared addresses): C = F x, times
// the 256-point twiddle.
template <int T>
__device__ __forceinline__ void seg_stage_a(u32 re, u32 im, u32 sb, const lane_idx& li,
                                            const seg_consts& kc, fragC& cr, fragC& ci) {
  const fragB xr = load_block_bt(re, sb, li), xi = load_block_bt(im, sb, li);
  mma_ab0(cr, kc.fr, xr);
  mma_ab<T>(cr, kc.nfi, xi);
  mma_ab0(ci, kc.fr, xi);
  mma_ab<T>(ci, kc.fi, xr);
  seg_product<false>(cr, ci, kc.tw);
}

// Stage b: D = C F, the segment's spectrum in fragment order.
template <int T>
__device__ __forceinline__ void seg_stage_b(const block_tables& bt, int lane, fragC& cr, fragC& ci) {
  const fragA ar = to_a<T>(cr), ai = to_a<T>(ci);
  fragB mr, mi, mni;
  load_frags(bt.fb, lane, mr, mi, mni);
  mma_ab0(cr, ar, mr);
  mma_ab<T>(cr, ai, mni);
  mma_ab0(ci, ar, mi);
  mma_ab<T>(ci, ai, mr);
}

// Stage b': E = P G, times conj(W), of a product P held in (cr, ci).
template <int T>
__device__ __forceinline__ void seg_stage_b_inv(const seg_consts& kc, const block_tables& bt,
                                                int lane, fragC& cr, fragC& ci) {
  fragA ar = to_a<T>(cr), ai = to_a<T>(ci);
  fragB mr, mi, mni;
  load_frags(bt.gb, lane, mr, mi, mni);
  mma_ab0(cr, ar, mr);
  mma_ab<T>(cr, ai, mni);
  mma_ab0(ci, ar, mi);
  mma_ab<T>(ci, ai, mr);
  seg_product<true>(cr, ci, kc.tw);
}

// Stages b' and a' of a product P held in (cr, ci), stored in place over the segment.
template <int T>
__device__ __forceinline__ void seg_inverse_store(u32 re, u32 im, u32 sb, const lane_idx& li,
                                                  const seg_consts& kc, const block_tables& bt,
                                                  int lane, fragC& cr, fragC& ci) {
  seg_stage_b_inv<T>(kc, bt, lane, cr, ci);

  // stage a': y = G E  (E enters as its B operand: the A fragment of E^T)
  const fragA er = transpose(to_a<T>(cr)), ei = transpose(to_a<T>(ci));
  mma_ab0(cr, kc.gr, er);
  mma_ab<T>(cr, kc.ngi, ei);
  mma_ab0(ci, kc.gr, ei);
  mma_ab<T>(ci, kc.gi, er);

  // In place: every lane's reads of this segment precede any lane's writes (the mma.sync chain
  // already orders them; the barrier states it for the memory model and for racecheck).
  __syncwarp();
  store_block<T>(re, sb, li, cr);
  store_block<T>(im, sb, li, ci);
}

// Causal forms of a whole 256-point transform (N = 256: no outer stage), for an input zero from
// position 128 on and outputs kept below 128, i.e. rows p < 8 of x[p][q] and of y[p][q]:
//   stage a on the lower half: C = F[:, 0:8] x[0:8, :], an m16n8k8 product per n-tile (the A
//     fragment of F's first 8 columns is registers 0 and 1 of F's), half the loads and the tensor
//     work;
//   stage a' transposed: y^T = E^T G^T, whose columns p < 8 are one n-tile (half the tensor work),
//     back to y's rows by movmatrix and stored (half the stores).
// ldmatrix.x2 row of this lane for stage a: row lane % 8, columns 8 (lane / 8 % 2).
__device__ __forceinline__ u32 seg_half_ld(int lane) {
  return 2 * smem_index(16 * (lane & 7) + 8 * ((lane >> 3) & 1));
}

template <int T>
__device__ __forceinline__ void seg_stage_a_half(u32 re, u32 im, u32 sb, u32 ld2,
                                                 const seg_consts& kc, fragC& cr, fragC& ci) {
  u32 xr[2], xi[2];
  ldmatrix_x2_trans(re + (sb ^ ld2), xr[0], xr[1]);
  ldmatrix_x2_trans(im + (sb ^ ld2), xi[0], xi[1]);
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    mma1688_zc(cr.d[t], kc.fr.r[0], kc.fr.r[1], xr[t]);
    mma1688(cr.d[t], kc.nfi.r[0], kc.nfi.r[1], xi[t]);
    mma1688_zc(ci.d[t], kc.fr.r[0], kc.fr.r[1], xi[t]);
    mma1688(ci.d[t], kc.fi.r[0], kc.fi.r[1], xr[t]);
  }
  seg_product<false>(cr, ci, kc.tw);
}

// Stage b', then the transposed stage a' storing rows p < 8.
template <int T>
__device__ __forceinline__ void seg_inverse_store_half(u32 re, u32 im, u32 sb, const lane_idx& li,
                                                       const seg_consts& kc, const block_tables& bt,
                                                       int lane, fragC& cr, fragC& ci) {
  seg_stage_b_inv<T>(kc, bt, lane, cr, ci);
  // y^T[q][p] = sum_k2 E^T[q][k2] G^T[k2][p], p < 8: A = E^T (the A fragment of E^T), B = G^T's
  // first n-tile (its B registers are those of G's A fragment, bt0 / bt1)
  const fragA er = transpose(to_a<T>(cr)), ei = transpose(to_a<T>(ci));
  float yr[4], yi[4];
  mma16816_zc(yr, er.r, bt0(kc.gr, 0), bt1(kc.gr, 0));
  mma16816<T>(yr, ei.r, bt0(kc.ngi, 0), bt1(kc.ngi, 0));
  mma16816_zc(yi, er.r, bt0(kc.gi, 0), bt1(kc.gi, 0));
  mma16816<T>(yi, ei.r, bt0(kc.gr, 0), bt1(kc.gr, 0));
  // yr[0..1]: q = g, p = 2c, 2c + 1; yr[2..3]: q = g + 8. Each 8 x 8 tile transposed gives this
  // lane y[p = g][q = 2c, 2c + 1] (+ 8): the pairs store_block writes for row g.
  __syncwarp();  // in place: every lane's reads of the segment precede any lane's writes
  st_shared_u32(re + (sb ^ li.st[0]), movtrans(pack2<T>(yr[0], yr[1])));
  st_shared_u32(re + (sb ^ li.st[1]), movtrans(pack2<T>(yr[2], yr[3])));
  st_shared_u32(im + (sb ^ li.st[0]), movtrans(pack2<T>(yi[0], yi[1])));
  st_shared_u32(im + (sb ^ li.st[1]), movtrans(pack2<T>(yi[2], yi[3])));
}

// The segment at block offset sb of the planes re, im: forward, * K, inverse. HALF: the causal
// forms (N = 256 only; ld2 = seg_half_ld(lane)).
template <int T, bool HALF = false>
__device__ __forceinline__ void conv_segment(u32 re, u32 im, u32 sb, const lane_idx& li,
                                             const seg_consts& kc, const block_tables& bt,
                                             const float4* __restrict__ kseg, int lane,
                                             u32 ld2 = 0u) {
  // kseg: this lane's spectrum pointer of the segment (see seg_spectrum)
  fragC cr, ci;
  if (HALF) seg_stage_a_half<T>(re, im, sb, ld2, kc, cr, ci);
  else seg_stage_a<T>(re, im, sb, li, kc, cr, ci);
  // The spectrum is re-read per pair from L1: holding it across pairs costs 16 registers and
  // spills.
  seg_spectrum ks;
  ks.load(kseg);
  seg_stage_b<T>(bt, lane, cr, ci);
  seg_product<false>(cr, ci, ks.k);
  if (HALF) seg_inverse_store_half<T>(re, im, sb, li, kc, bt, lane, cr, ci);
  else seg_inverse_store<T>(re, im, sb, li, kc, bt, lane, cr, ci);
}
