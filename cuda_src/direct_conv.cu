// Direct (time-domain) convolution of small problems in float32 or float64, one launch.
//
// For a call whose work rows * Lout * taps is small, summing the products directly beats any
// FFT route: no filter spectrum, no padded intermediates, one launch instead of cuFFT's five or
// more (a small call's cost is its host time). The sums run in the I/O precision (float32 with
// float32 data, float64 with float64), the error of a direct sum (~sqrt(taps) eps relative),
// below the FFT's at these sizes.
//
// Output t of row r (t < Lout) is the full linear convolution at index j = start + t:
//   y[r, t] = postgate[r, t] * sum_{s < taps} k[h, s] * u[r, j - s] + skip[h] * x[r, t]
// with u = pregate * x, zero outside [0, L) (linear modes), or read modulo wrap = L (circular
// mode, the filter already folded onto the circle by the host). Filters are rows of contiguous
// taps k_stride elements apart (0: one filter for every channel).
//
// A block takes one tile of LC_DIRECT_TILE outputs of one row at a time (one output a thread);
// the taps pass through shared memory LC_DIRECT_TAPS at a time with the inputs they meet.
#include "common.cuh"

#define LC_DIRECT_TILE 256
#define LC_DIRECT_TAPS 1024

struct DirectParams {
  const void* x;         // (rows, L), rows = B * H, channel h = row % H
  const void* k;         // filters: row h at k + h * k_stride, taps contiguous
  const void* pregate;   // (rows, L) or null
  const void* postgate;  // (rows, Lout) or null
  const void* skip;      // (H,) or null; read at x[r, t] (outputs t < L)
  void* y;               // (rows, Lout)
  i64 rows;
  i64 H;
  i64 L;
  i64 Lout;
  i64 start;     // full-convolution index of output 0
  i64 taps;
  i64 k_stride;  // elements between filter rows; 0: one filter
  i64 wrap;      // circular: L (input indices modulo L); 0: linear
  i64 tiles;     // output tiles per row
};

template <typename T>
__device__ void direct_conv(const DirectParams& p) {
  __shared__ T ks[LC_DIRECT_TAPS];
  __shared__ T us[LC_DIRECT_TAPS + LC_DIRECT_TILE];
  const T* x = static_cast<const T*>(p.x);
  const T* k = static_cast<const T*>(p.k);
  const T* pre = static_cast<const T*>(p.pregate);
  const T* post = static_cast<const T*>(p.postgate);
  const T* skip = static_cast<const T*>(p.skip);
  T* y = static_cast<T*>(p.y);
  const int i = threadIdx.x;
  const i64 items = p.rows * p.tiles;
  for (i64 item = blockIdx.x; item < items; item += gridDim.x) {
    const i64 r = item / p.tiles;
    const i64 h = r % p.H;
    const i64 t0 = (item % p.tiles) * LC_DIRECT_TILE;
    const i64 j0 = p.start + t0;  // full-convolution index of the tile's first output
    const T* xr = x + r * p.L;
    const T* kr = k + h * p.k_stride;
    T acc = 0;
    for (i64 c0 = 0; c0 < p.taps; c0 += LC_DIRECT_TAPS) {
      const int m = (int)min((i64)LC_DIRECT_TAPS, p.taps - c0);
      // output j0 + i meets taps c0 .. c0 + m - 1 at inputs j0 + i - c0 - m + 1 .. j0 + i - c0
      const i64 base = j0 - c0 - (m - 1);
      const int cnt = m - 1 + LC_DIRECT_TILE;
      // linear modes: a chunk whose inputs all lie outside [0, L) adds nothing (the same for
      // every thread of the block, so the barrier below stays uniform)
      if (!p.wrap && (base + cnt <= 0 || base >= p.L)) continue;
      __syncthreads();  // the previous chunk's values are read
      for (int q = i; q < m; q += LC_DIRECT_TILE) ks[q] = __ldg(kr + c0 + q);
      for (int q = i; q < cnt; q += LC_DIRECT_TILE) {
        i64 idx = base + q;
        T v = 0;
        if (p.wrap) {
          idx %= p.wrap;
          if (idx < 0) idx += p.wrap;
        }
        if (idx >= 0 && idx < p.L) {
          v = __ldg(xr + idx);
          if (pre) v *= __ldg(pre + r * p.L + idx);
        }
        us[q] = v;
      }
      __syncthreads();
      // four partial sums: four independent chains of multiply-adds instead of one (a long
      // filter over few rows is latency-bound: one chain costs taps x the FMA latency)
      const T* u = us + (m - 1) + i;
      T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      int s = 0;
#pragma unroll 2
      for (; s + 4 <= m; s += 4) {
        a0 = fma(ks[s], u[-s], a0);
        a1 = fma(ks[s + 1], u[-s - 1], a1);
        a2 = fma(ks[s + 2], u[-s - 2], a2);
        a3 = fma(ks[s + 3], u[-s - 3], a3);
      }
      for (; s < m; ++s) a0 = fma(ks[s], u[-s], a0);
      acc += (a0 + a1) + (a2 + a3);
    }
    const i64 t = t0 + i;
    if (t < p.Lout) {
      T v = acc;
      if (post) v *= __ldg(post + r * p.Lout + t);
      if (skip && t < p.L) v = fma(__ldg(skip + h), __ldg(xr + t), v);
      y[r * p.Lout + t] = v;
    }
  }
}

extern "C" __global__ void __launch_bounds__(LC_DIRECT_TILE) lc_direct_conv_f32(DirectParams p) {
  direct_conv<float>(p);
}
extern "C" __global__ void __launch_bounds__(LC_DIRECT_TILE) lc_direct_conv_f64(DirectParams p) {
  direct_conv<double>(p);
}
