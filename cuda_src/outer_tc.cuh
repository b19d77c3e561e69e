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

// lr = log2 R, ls = log2 S.
template <int T>
__device__ __forceinline__ void outer_stage(u16* re, u16* im, int blk, int lr, int ls,
                                            const fragA& mr, const fragA& mi, const fragA& mni,
                                            int lane) {
  const int R = 1 << lr, S = 1 << ls;
  const int lps = lr + ls - 8;  // log2 of the blocks per segment of length R S
  const int seg = blk >> lps, bb = blk & ((1 << lps) - 1);
  const int base = (seg << (lr + ls)) + ((bb >> (lr - 1)) << 7) + ((bb & ((R >> 1) - 1)) << 4);
  auto row_pos = [=](int r) { return base + 8 * R * (r >> lr) + S * (r & (R - 1)); };
  const fragA xr = load_block_bt(re, row_pos, lane), xi = load_block_bt(im, row_pos, lane);
  fragC cr, ci;
  mma_ab0(cr, mr, xr);
  mma_ab<T>(cr, mni, xi);
  mma_ab0(ci, mr, xi);
  mma_ab<T>(ci, mi, xr);
  __syncwarp();  // in place: all reads of the block before any write
  store_block<T>(re, row_pos, cr, lane);
  store_block<T>(im, row_pos, ci, lane);
}
