// Scalar types, 16-bit conversions and complex helpers shared by every kernel.
// The kernels are header-free (no CUDA headers): 16-bit values travel as raw bits.
#pragma once

typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

// 16-bit element kinds used for I/O and for the tensor-core operands.
#define LC_F16 0
#define LC_BF16 1
#define LC_F32 2

__device__ __forceinline__ float f16_to_f32(u16 h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ u16 f32_to_f16(float f) {
  u16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }
__device__ __forceinline__ u16 f32_to_bf16(float f) {
  u16 h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}

__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
  u32 r;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// Two floats -> one register of two 16-bit values of kind T (lo in bits 0..15).
template <int T> __device__ __forceinline__ u32 pack2(float lo, float hi);
template <> __device__ __forceinline__ u32 pack2<LC_F16>(float lo, float hi) {
  u32 r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

template <int T> __device__ __forceinline__ u16 from_f32(float f);
template <> __device__ __forceinline__ u16 from_f32<LC_F16>(float f) { return f32_to_f16(f); }
template <> __device__ __forceinline__ u16 from_f32<LC_BF16>(float f) { return f32_to_bf16(f); }
template <int T> __device__ __forceinline__ float to_f32(u16 h);
template <> __device__ __forceinline__ float to_f32<LC_F16>(u16 h) { return f16_to_f32(h); }
template <> __device__ __forceinline__ float to_f32<LC_BF16>(u16 h) { return bf16_to_f32(h); }

// Element I/O for the caller's dtype: 16-bit kinds are u16 bits, LC_F32 is float.
template <int IO> struct io_type { typedef u16 type; };
template <> struct io_type<LC_F32> { typedef float type; };

template <int IO> __device__ __forceinline__ float load_io(const void* p, i64 i) {
  return to_f32<IO>(__ldg(reinterpret_cast<const u16*>(p) + i));
}
template <> __device__ __forceinline__ float load_io<LC_F32>(const void* p, i64 i) {
  return __ldg(reinterpret_cast<const float*>(p) + i);
}
template <int IO> __device__ __forceinline__ void store_io(void* p, i64 i, float v) {
  reinterpret_cast<u16*>(p)[i] = from_f32<IO>(v);
}
template <> __device__ __forceinline__ void store_io<LC_F32>(void* p, i64 i, float v) {
  reinterpret_cast<float*>(p)[i] = v;
}

// Complex arithmetic on (re, im) float pairs.
struct cf {
  float re, im;
};
__device__ __forceinline__ cf cmul(cf a, cf b) {
  return cf{a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
}
__device__ __forceinline__ cf cmulc(cf a, cf b) {  // a * conj(b)
  return cf{a.re * b.re + a.im * b.im, a.im * b.re - a.re * b.im};
}

// exp(sign * 2 pi i * num / den) with an accurate sine/cosine (num/den reduced in float64-free form).
__device__ __forceinline__ cf unit_root(int num, int den, float sign) {
  // sincospif is exact at multiples of 1/2 and accurate to ~1 ulp elsewhere.
  const int m = num % den;
  float s, c;
  sincospif(2.0f * (float)m / (float)den, &s, &c);
  return cf{c, sign * s};
}

// Eight consecutive elements of an I/O array as fp32: one or two 16-byte loads when vec is set
// (the caller guarantees alignment and i + 8 <= n), else guarded scalar loads (zero past n).
template <int IO>
__device__ __forceinline__ void load8(const void* p, i64 row, int i, int n, bool vec, float (&v)[8]) {
  if (vec) {
    if (IO == LC_F32) {
      const float4* q = reinterpret_cast<const float4*>(reinterpret_cast<const float*>(p) + row + i);
      const float4 a = __ldg(q), b = __ldg(q + 1);
      v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
      v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
      const uint4 a = __ldg(reinterpret_cast<const uint4*>(reinterpret_cast<const u16*>(p) + row + i));
      const u32 w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        v[2 * e] = to_f32<IO == LC_F32 ? LC_F16 : IO>((u16)(w[e] & 0xffffu));
        v[2 * e + 1] = to_f32<IO == LC_F32 ? LC_F16 : IO>((u16)(w[e] >> 16));
      }
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) v[e] = i + e < n ? load_io<IO>(p, row + i + e) : 0.f;
}

template <int IO>
__device__ __forceinline__ void store8(void* p, i64 row, int i, int n, bool vec, const float (&v)[8]) {
  if (vec) {
    if (IO == LC_F32) {
      float4* q = reinterpret_cast<float4*>(reinterpret_cast<float*>(p) + row + i);
      q[0] = float4{v[0], v[1], v[2], v[3]};
      q[1] = float4{v[4], v[5], v[6], v[7]};
    } else {
      u32 w[4];
#pragma unroll
      for (int e = 0; e < 4; ++e)
        w[e] = (u32)from_f32<IO == LC_F32 ? LC_F16 : IO>(v[2 * e]) |
               ((u32)from_f32<IO == LC_F32 ? LC_F16 : IO>(v[2 * e + 1]) << 16);
      *reinterpret_cast<uint4*>(reinterpret_cast<u16*>(p) + row + i) = uint4{w[0], w[1], w[2], w[3]};
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < 8; ++e)
    if (i + e < n) store_io<IO>(p, row + i + e, v[e]);
}
