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
// The twiddle between the first of two outer stages (radix r1, stride 4096) and the second is
// applied as a post-multiplication of the first stage's forward output and of the second stage's
// inverse output: W_N^(q k) (conjugated for the inverse) at position 4096 k + q.
#pragma once
#include "inner256.cuh"

// W_N^j from a two-level table: w[j & 63] * w[64 + (j >> 6)], w[i] = W_N^i, w[64 + i] = W_N^(64 i).
__device__ __forceinline__ cf twiddle_n(const float2* __restrict__ w, int j) {
  const float2 a = __ldg(w + (j & 63)), b = __ldg(w + 64 + (j >> 6));
  return cmul(cf{a.x, a.y}, cf{b.x, b.y});
}

// lr = log2 R, ls = log2 S.
template <int T, bool INV, bool POSTTW>
__device__ __forceinline__ void outer_stage(u16* re, u16* im, int blk, int lr, int ls,
                                            const frag_table& mat, const float2* __restrict__ wtn,
                                            int n, int lane) {
  const int R = 1 << lr, S = 1 << ls;
  const int lps = lr + ls - 8;  // log2 of the blocks per segment of length R S
  const int seg = blk >> lps, bb = blk & ((1 << lps) - 1);
  const int base = (seg << (lr + ls)) + ((bb >> (lr - 1)) << 7) + ((bb & ((R >> 1) - 1)) << 4);
  auto row_pos = [=](int r) { return base + 8 * R * (r >> lr) + S * (r & (R - 1)); };
  const fragA xr = load_block_bt(re, row_pos, lane), xi = load_block_bt(im, row_pos, lane);
  fragA mr, mi, mni;
  load_frags(mat, lane, mr, mi, mni);
  fragC cr, ci;
  mma_ab0(cr, mr, xr);
  mma_ab<T>(cr, mni, xi);
  mma_ab0(ci, mr, xi);
  mma_ab<T>(ci, mi, xr);
  if (POSTTW) {
    const int g = lane >> 2, c = lane & 3;
#pragma unroll
    for (int t = 0; t < 2; ++t)
#pragma unroll
      for (int d = 0; d < 4; ++d) {
        const int pos = row_pos(g + 8 * (d >> 1)) + 2 * c + (d & 1) + 8 * t;
        const cf w = twiddle_n(wtn, ((pos & 4095) * (pos >> 12)) & (n - 1));
        const cf v = INV ? cmulc(cf{cr.d[t][d], ci.d[t][d]}, w) : cmul(cf{cr.d[t][d], ci.d[t][d]}, w);
        cr.d[t][d] = v.re;
        ci.d[t][d] = v.im;
      }
  }
  store_block<T>(re, row_pos, cr, lane);
  store_block<T>(im, row_pos, ci, lane);
}
