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

// Storage of one operand: float, double, or 16-bit (float16, bfloat16) bits read as float.
struct F16 {};
struct BF16 {};
template <typename S> struct st;
template <> struct st<float> {
  __device__ static float ld(const void* p, i64 i) { return __ldg(static_cast<const float*>(p) + i); }
  __device__ static void put(void* p, i64 i, float v) { static_cast<float*>(p)[i] = v; }
};
template <> struct st<double> {
  __device__ static double ld(const void* p, i64 i) { return __ldg(static_cast<const double*>(p) + i); }
  __device__ static void put(void* p, i64 i, double v) { static_cast<double*>(p)[i] = v; }
};
template <> struct st<F16> {
  __device__ static float ld(const void* p, i64 i) { return f16_to_f32(__ldg(static_cast<const u16*>(p) + i)); }
  __device__ static void put(void* p, i64 i, float v) { static_cast<u16*>(p)[i] = f32_to_f16(v); }
};
template <> struct st<BF16> {
  __device__ static float ld(const void* p, i64 i) { return bf16_to_f32(__ldg(static_cast<const u16*>(p) + i)); }
  __device__ static void put(void* p, i64 i, float v) { static_cast<u16*>(p)[i] = f32_to_bf16(v); }
};

// IO: x, the gates and y; K: the filters; SK: skip; A: the arithmetic (float or double).
template <typename IO, typename K, typename SK, typename A>
__device__ void direct_conv(const DirectParams& p) {
  __shared__ A ks[LC_DIRECT_TAPS];
  __shared__ A us[LC_DIRECT_TAPS + LC_DIRECT_TILE];
  const int i = threadIdx.x;
  const i64 items = p.rows * p.tiles;
  for (i64 item = blockIdx.x; item < items; item += gridDim.x) {
    const i64 r = item / p.tiles;
    const i64 h = r % p.H;
    const i64 t0 = (item % p.tiles) * LC_DIRECT_TILE;
    const i64 j0 = p.start + t0;  // full-convolution index of the tile's first output
    const i64 xr = r * p.L;
    const i64 kr = h * p.k_stride;
    A acc = 0;
    for (i64 c0 = 0; c0 < p.taps; c0 += LC_DIRECT_TAPS) {
      const int m = (int)min((i64)LC_DIRECT_TAPS, p.taps - c0);
      // output j0 + i meets taps c0 .. c0 + m - 1 at inputs j0 + i - c0 - m + 1 .. j0 + i - c0
      const i64 base = j0 - c0 - (m - 1);
      const int cnt = m - 1 + LC_DIRECT_TILE;
      // linear modes: a chunk whose inputs all lie outside [0, L) adds nothing (the same for
      // every thread of the block, so the barrier below stays uniform)
      if (!p.wrap && (base + cnt <= 0 || base >= p.L)) continue;
      __syncthreads();  // the previous chunk's values are read
      for (int q = i; q < m; q += LC_DIRECT_TILE) ks[q] = st<K>::ld(p.k, kr + c0 + q);
      for (int q = i; q < cnt; q += LC_DIRECT_TILE) {
        i64 idx = base + q;
        A v = 0;
        if (p.wrap) {
          idx %= p.wrap;
          if (idx < 0) idx += p.wrap;
        }
        if (idx >= 0 && idx < p.L) {
          v = st<IO>::ld(p.x, xr + idx);
          if (p.pregate) v *= st<IO>::ld(p.pregate, xr + idx);
        }
        us[q] = v;
      }
      __syncthreads();
      // four partial sums: four independent chains of multiply-adds instead of one (a long
      // filter over few rows is latency-bound: one chain costs taps x the FMA latency)
      const A* u = us + (m - 1) + i;
      A a0 = 0, a1 = 0, a2 = 0, a3 = 0;
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
      A v = acc;
      if (p.postgate) v *= st<IO>::ld(p.postgate, r * p.Lout + t);
      if (p.skip && t < p.L) v = fma((A)st<SK>::ld(p.skip, h), st<IO>::ld(p.x, xr + t), v);
      st<IO>::put(p.y, r * p.Lout + t, v);
    }
  }
}

#define LC_DIRECT_ENTRY(name, IO, K, SK, A)                                                  \
  extern "C" __global__ void __launch_bounds__(LC_DIRECT_TILE) name(DirectParams p) {       \
    direct_conv<IO, K, SK, A>(p);                                                           \
  }
LC_DIRECT_ENTRY(lc_direct_conv_f32, float, float, float, float)
LC_DIRECT_ENTRY(lc_direct_conv_f64, double, double, double, double)
// 16-bit data (skip in float32, as the fused kernels take it), filters of any float dtype
LC_DIRECT_ENTRY(lc_direct_conv_f16_f16, F16, F16, float, float)
LC_DIRECT_ENTRY(lc_direct_conv_f16_f32, F16, float, float, float)
LC_DIRECT_ENTRY(lc_direct_conv_f16_f64, F16, double, float, float)
LC_DIRECT_ENTRY(lc_direct_conv_bf16_f16, BF16, F16, float, float)
LC_DIRECT_ENTRY(lc_direct_conv_bf16_f32, BF16, float, float, float)
LC_DIRECT_ENTRY(lc_direct_conv_bf16_f64, BF16, double, float, float)
