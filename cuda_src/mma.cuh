// Warp-level tensor-core building blocks (sm_80+): m16n8k16 MMA with fp32 accumulators,
// ldmatrix / movmatrix for fragment movement.
//
// Fragment conventions (g = lane / 4, c = lane % 4), all from the PTX ISA:
//   A 16x16 (row): a0 = (g, 2c..2c+1), a1 = (g+8, 2c..), a2 = (g, 2c+8..), a3 = (g+8, 2c+8..)
//   B 16x8  (col): b0 = (k = 2c..2c+1, n = g), b1 = (k = 2c+8.., n = g)
//   C 16x8  (f32): d0 = (g, 2c), d1 = (g, 2c+1), d2 = (g+8, 2c), d3 = (g+8, 2c+1)
// Facts the FFT relies on: the C fragments of a 16x16 matrix M (two n-tiles) packed to 16 bits ARE
// the A fragment of M; and the B fragments of M (two n-tiles) are the A fragment of M^T, i.e.
// b0(t0) = a0(M^T), b1(t0) = a2(M^T), b0(t1) = a1(M^T), b1(t1) = a3(M^T).
#pragma once
#include "common.cuh"

struct fragA {  // a 16x16 16-bit A operand
  u32 r[4];
};
struct fragC {  // a 16x16 fp32 accumulator: two 16x8 n-tiles
  float d[2][4];
};

template <int T> __device__ __forceinline__ void mma16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1);
template <> __device__ __forceinline__ void mma16816<LC_F16>(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// d = a b (no accumulator input: the zero C operand needs no register moves).
__device__ __forceinline__ void mma16816_zc(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  const float z = 0.f;
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(z));
}

// The B operands of a 16x16 matrix loaded from shared memory, ordered so that each n-tile's two
// registers are adjacent (r[2 t], r[2 t + 1] = b0, b1 of n-tile t): HMMA takes B as an aligned
// register pair, and the order of fragA (b0 and b1 two registers apart) cost two moves per n-tile.
struct fragB {
  u32 r[4];
};

// -m (16-bit sign flips, exact).
__device__ __forceinline__ fragB negate(const fragB& m) {
  return fragB{{m.r[0] ^ 0x80008000u, m.r[1] ^ 0x80008000u, m.r[2] ^ 0x80008000u,
                m.r[3] ^ 0x80008000u}};
}

// B operand (n-tile t) of a matrix whose transpose's A fragment is m.
__device__ __forceinline__ u32 bt0(const fragA& m, int t) { return t ? m.r[1] : m.r[0]; }
__device__ __forceinline__ u32 bt1(const fragA& m, int t) { return t ? m.r[3] : m.r[2]; }

__device__ __forceinline__ void zero(fragC& c) {
#pragma unroll
  for (int t = 0; t < 2; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) c.d[t][i] = 0.f;
}

// C = A (16x16) * M (16x16), M given as the A fragment of M^T (its B operand).
__device__ __forceinline__ void mma_ab0(fragC& c, const fragA& a, const fragA& mT) {
  mma16816_zc(c.d[0], a.r, bt0(mT, 0), bt1(mT, 0));
  mma16816_zc(c.d[1], a.r, bt0(mT, 1), bt1(mT, 1));
}

// C += A (16x16) * M (16x16), M given as the A fragment of M^T (its B operand).
template <int T> __device__ __forceinline__ void mma_ab(fragC& c, const fragA& a, const fragA& mT) {
  mma16816<T>(c.d[0], a.r, bt0(mT, 0), bt1(mT, 0));
  mma16816<T>(c.d[1], a.r, bt0(mT, 1), bt1(mT, 1));
}

__device__ __forceinline__ void mma_ab0(fragC& c, const fragA& a, const fragB& m) {
  mma16816_zc(c.d[0], a.r, m.r[0], m.r[1]);
  mma16816_zc(c.d[1], a.r, m.r[2], m.r[3]);
}
template <int T> __device__ __forceinline__ void mma_ab(fragC& c, const fragA& a, const fragB& m) {
  mma16816<T>(c.d[0], a.r, m.r[0], m.r[1]);
  mma16816<T>(c.d[1], a.r, m.r[2], m.r[3]);
}

// m16n8k8 (fp16 operands, fp32 accumulators): A 16x8 is two registers (a0 = (g, 2c..2c+1),
// a1 = (g+8, 2c..)), B 8x8 one (b0 = (k = 2c..2c+1, n = g)). d = a b, and d += a b.
__device__ __forceinline__ void mma1688_zc(float (&d)[4], u32 a0, u32 a1, u32 b) {
  const float z = 0.f;
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
      "{%7,%7,%7,%7};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a0), "r"(a1), "r"(b), "f"(z));
}
__device__ __forceinline__ void mma1688(float (&d)[4], u32 a0, u32 a1, u32 b) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(b));
}

// Pack a 16x16 fp32 accumulator into the A fragment of the same matrix.
template <int T> __device__ __forceinline__ fragA to_a(const fragC& c) {
  fragA a;
  a.r[0] = pack2<T>(c.d[0][0], c.d[0][1]);
  a.r[1] = pack2<T>(c.d[0][2], c.d[0][3]);
  a.r[2] = pack2<T>(c.d[1][0], c.d[1][1]);
  a.r[3] = pack2<T>(c.d[1][2], c.d[1][3]);
  return a;
}

__device__ __forceinline__ u32 movtrans(u32 x) {
  u32 y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}
// A fragment of M  ->  A fragment of M^T (transpose each 8x8 block and swap the off-diagonal ones).
__device__ __forceinline__ fragA transpose(const fragA& a) {
  fragA t;
  t.r[0] = movtrans(a.r[0]);
  t.r[1] = movtrans(a.r[2]);
  t.r[2] = movtrans(a.r[1]);
  t.r[3] = movtrans(a.r[3]);
  return t;
}

__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// Four transposed 8x8 tiles; lane l supplies the row address for tile l / 8.
__device__ __forceinline__ fragB ldmatrix_x4_trans(u32 addr) {
  fragB a;
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(a.r[0]), "=r"(a.r[1]), "=r"(a.r[2]), "=r"(a.r[3])
               : "r"(addr));
  return a;
}

// Two transposed 8x8 tiles (lanes 0..15 supply the row addresses, tile = lane / 8).
__device__ __forceinline__ void ldmatrix_x2_trans(u32 addr, u32& a, u32& b) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];"
               : "=r"(a), "=r"(b)
               : "r"(addr));
}

// 32-bit store to a shared-memory byte address.
__device__ __forceinline__ void st_shared_u32(u32 addr, u32 v) {
  asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}
