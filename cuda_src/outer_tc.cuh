// Outer Monarch stages on the tensor cores: radix R (2 .. 16) along stride S, in place.
//
// 16 / R independent DFT_R's sit side by side in one 16 x 16 block-diagonal matrix, each acting on
// 16 columns, so every stage is one 16 x 16 complex product per 256 points whatever R is.
// Row r of a block is sub-block b = r / R, element p = r % R; its columns are chosen so that the 8
// rows of every ldmatrix tile fall in 8 different banks under smem_index:
//   block blk (of a segment of length R S) starts at column (blk / (R/2)) * 128 + (blk % (R/2)) * 16,
//   sub-block b adds 8 R b.
//   forward: X'[S k + q] = sum_p D[k][p] X[S p + q]          (D = DFT_R / sqrt(R))
//   inverse: X[S p + q]  = sum_k conj(D)[p][k] X'[S k + q]   (unnormalised)
// With two outer stages (radix r1 at stride 4096, then 16 at stride 256) the twiddle between them,
// W_N^(k (256 p + q)) on row p, column q of the 4096-point segment k, splits into W_N^(256 k p),
// folded into the second stage's matrix (inner_all's caller builds it per segment), and
// W_N^(k q), which commutes with that stage and is folded into the 256-point segments.
#pragma once
#include "inner256.cuh"

// The lane part of a block's positions (row r at 8 R (r / R) + S (r % R); see lane_idx).
__device__ __forceinline__ lane_idx outer_lane_idx(int lr, int ls, int lane) {
  return make_lane_idx([=](int r) { return (8 << lr) * (r >> lr) + ((r & ((1 << lr) - 1)) << ls); },
                       lane);
}

// Byte offset (blk_idx) of the base of block blk (lr = log2 R, ls = log2 S).
__device__ __forceinline__ u32 outer_block_index(int blk, int lr, int ls) {
  const int lps = lr + ls - 8;  // log2 of the blocks per segment of length R S
  const int seg = blk >> lps, bb = blk & ((1 << lps) - 1);
  return blk_idx((seg << (lr + ls)) + ((bb >> (lr - 1)) << 7) + ((bb & ((1 << (lr - 1)) - 1)) << 4));
}

// Re(M x) = Re(M) Re(x) + Im(M) (-Im(x)): negating x's imaginary fragment (four sign flips) spares
// holding -Im(M) in four more registers across the stage; in the backward's register-starved
// two-stage outer loops those matrices spilled and were re-read from local memory every block.
// (cr, ci) = M x for the block at sb, then a barrier: the block is read before any lane writes it.
template <int T>
__device__ __forceinline__ void outer_product(u32 re, u32 im, u32 sb, const lane_idx& li,
                                              const fragA& mr, const fragA& mi, fragC& cr,
                                              fragC& ci) {
  const fragB xr = load_block_bt(re, sb, li), xi = load_block_bt(im, sb, li);
  mma_ab0(cr, mr, xr);
  mma_ab<T>(cr, mi, negate(xi));
  mma_ab0(ci, mr, xi);
  mma_ab<T>(ci, mi, xr);
  __syncwarp();  // in place: all reads of the block before any write
}

template <int T>
__device__ __forceinline__ void outer_stage(u32 re, u32 im, u32 sb, const lane_idx& li,
                                            const fragA& mr, const fragA& mi) {
  fragC cr, ci;
  outer_product<T>(re, im, sb, li, mr, mi, cr, ci);
  store_block<T>(re, sb, li, cr);
  store_block<T>(im, sb, li, ci);
}

// Causal convolutions: the input is zero from N / 2 on and only outputs below N / 2 are kept. In
// the first outer stage (radix R1 at stride S, rows r = R1 b + p at positions 8 R1 b + S p) the
// rows p >= R1 / 2 of every block hold zeros, so the block is an m16n8k8 product with the 8
// lower rows (half the tensor work and the loads, and the load phase never writes the zero half);
// in the last inverse stage only the rows p < R1 / 2 are stored (half the stores), computed as the
// first 8 rows of a product whose matrix lists them first.
struct half_idx {
  u32 ld2;    // ldmatrix.x2 row of this lane: lower-half row lane % 8, columns 8 (lane / 8 % 2)
  u32 st[2];  // the kept row g of this lane, columns 2 c + 8 t, +1
};
__device__ __forceinline__ half_idx outer_half_idx(int lr, int ls, int lane) {
  const int R = 1 << lr, h = R >> 1, g = lane >> 2, c = lane & 3;
  auto pos = [=](int r) {  // r-th lower-half row of a block
    const int b = r / h, q = r % h;
    return (8 << lr) * b + (q << ls);
  };
  half_idx hx;
  hx.ld2 = 2 * smem_index(pos(lane & 7) + 8 * ((lane >> 3) & 1));
#pragma unroll
  for (int t = 0; t < 2; ++t) hx.st[t] = 2 * smem_index(pos(g) + 2 * c + 8 * t);
  return hx;
}

template <int T>
__device__ __forceinline__ void outer_stage_half_in(u32 re, u32 im, u32 sb, const lane_idx& li,
                                                    const half_idx& hx, uint2 mr, uint2 mi) {
  u32 xr[2], xi[2];
  ldmatrix_x2_trans(re + (sb ^ hx.ld2), xr[0], xr[1]);
  ldmatrix_x2_trans(im + (sb ^ hx.ld2), xi[0], xi[1]);
  fragC cr, ci;
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    mma1688_zc(cr.d[t], mr.x, mr.y, xr[t]);
    mma1688(cr.d[t], mi.x, mi.y, xi[t] ^ 0x80008000u);
    mma1688_zc(ci.d[t], mr.x, mr.y, xi[t]);
    mma1688(ci.d[t], mi.x, mi.y, xr[t]);
  }
  __syncwarp();  // in place: all reads of the block before any write
  store_block<T>(re, sb, li, cr);
  store_block<T>(im, sb, li, ci);
}

// ar, ai: the A fragments of the matrix (hv: rows 8..15 zero).
template <int T>
__device__ __forceinline__ void outer_stage_half_out(u32 re, u32 im, u32 sb, const lane_idx& li,
                                                     const half_idx& hx, const fragA& ar,
                                                     const fragA& ai) {
  fragC cr, ci;
  outer_product<T>(re, im, sb, li, ar, ai, cr, ci);
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    st_shared_u32(re + (sb ^ hx.st[t]), pack2<T>(cr.d[t][0], cr.d[t][1]));
    st_shared_u32(im + (sb ^ hx.st[t]), pack2<T>(ci.d[t][0], ci.d[t][1]));
  }
}
