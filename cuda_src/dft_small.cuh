// Small complex DFTs (radix 1, 2, 4, 8, 16) in fp32 registers, natural order in and out.
// Used for the outer Monarch stages, which run on the CUDA cores in full fp32.
#pragma once
#include "common.cuh"

// cos and sin of 2*pi*k/16, k = 0..15, exact decimal expansions rounded to fp32.
__device__ __forceinline__ float cos16(int k) {
  switch (k & 15) {
    case 0: return 1.f;
    case 1: return 0.92387953251128674f;
    case 2: return 0.70710678118654752f;
    case 3: return 0.38268343236508977f;
    case 4: return 0.f;
    case 5: return -0.38268343236508977f;
    case 6: return -0.70710678118654752f;
    case 7: return -0.92387953251128674f;
    case 8: return -1.f;
    case 9: return -0.92387953251128674f;
    case 10: return -0.70710678118654752f;
    case 11: return -0.38268343236508977f;
    case 12: return 0.f;
    case 13: return 0.38268343236508977f;
    case 14: return 0.70710678118654752f;
    default: return 0.92387953251128674f;
  }
}
__device__ __forceinline__ float sin16(int k) { return cos16(k - 4); }

// x *= exp(-+2 pi i k / 16) (minus for the forward transform), with the trivial angles free.
template <bool INV> __device__ __forceinline__ void rotate16(float& xr, float& xi, int k) {
  k &= 15;
  if (k == 0) return;
  if (k == 4 || k == 12) {  // -i or +i
    const bool minus_i = (k == 4) != INV;
    const float r = xr;
    xr = minus_i ? xi : -xi;
    xi = minus_i ? -r : r;
    return;
  }
  const float c = cos16(k), s = INV ? sin16(k) : -sin16(k);
  const float r = xr;
  xr = r * c - xi * s;
  xi = r * s + xi * c;
}

template <int R> __device__ __forceinline__ constexpr int bitrev(int i) {
  int r = 0;
  for (int b = 1; b < R; b <<= 1) {
    r = (r << 1) | (i & 1);
    i >>= 1;
  }
  return r;
}

// One radix-2 decimation-in-time layer with half-size M, then the next layer.
template <int R, int M, bool INV> struct dit_layer {
  static __device__ __forceinline__ void run(float (&ar)[R], float (&ai)[R]) {
#pragma unroll
    for (int base = 0; base < R; base += 2 * M) {
#pragma unroll
      for (int j = 0; j < M; ++j) {
        float tr = ar[base + j + M], ti = ai[base + j + M];
        rotate16<INV>(tr, ti, j * (16 / (2 * M)));
        ar[base + j + M] = ar[base + j] - tr;
        ai[base + j + M] = ai[base + j] - ti;
        ar[base + j] += tr;
        ai[base + j] += ti;
      }
    }
    dit_layer<R, 2 * M, INV>::run(ar, ai);
  }
};
template <int R, bool INV> struct dit_layer<R, R, INV> {
  static __device__ __forceinline__ void run(float (&)[R], float (&)[R]) {}
};

// X[k] = sum_p x[p] exp(-+2 pi i p k / R), unnormalised, in place.
template <int R, bool INV> __device__ __forceinline__ void dft(float (&re)[R], float (&im)[R]) {
  float ar[R], ai[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    ar[i] = re[bitrev<R>(i)];
    ai[i] = im[bitrev<R>(i)];
  }
  dit_layer<R, 1, INV>::run(ar, ai);
#pragma unroll
  for (int i = 0; i < R; ++i) {
    re[i] = ar[i];
    im[i] = ai[i];
  }
}
