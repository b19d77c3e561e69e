// Kernel arguments: one struct passed by value, mirrored on the host by a NumPy structured dtype
// (longconv/_fused.py, PARAMS_FIELDS). Keep the two in the same order.
#pragma once
#include "common.cuh"

struct ConvParams {
  const void* x;         // (B, H, L) input, I/O dtype
  const void* pregate;   // (B, H, L) or null
  const void* postgate;  // (B, H, Lout) or null
  const float* skip;     // (H,) fp32 or null: y += skip[h] * x
  const float4* kspec;   // filter spectra in fragment order: (Hk, N / 256, 32 lanes, 8 complex)
  const float2* wtab;    // W_4096^j = exp(-2 pi i j / 4096), j < 4096, complex fp32
  const float2* wtn;     // W_N^j, j < 64, then W_N^(64 j), j < N / 64 (two-level table)
  const float* out_scale_ptr;  // the spectrum's output multiplier in device memory, or null:
                               // out_scale (kept on the device so no launch reads it back)
  void* y;               // (B, H, Lout) output, I/O dtype
  i64 B, H, L, Lout;
  i64 out_offset;        // output j is circular position j + out_offset of the length-N product
  i64 fold;              // 0, or the circular length: output j = position j + position j + fold
  i64 k_hstride;         // float4 elements between filters (0: one filter for every channel)
  i64 n_tiles;           // H * tiles_per_h
  i64 tiles_per_h;       // ceil(ceil(B / 2) / pairs)
  int n;                 // FFT size N (power of two, 256 .. 32768)
  int pairs;             // sequence pairs held in shared memory at once
  int prescale;          // 1: scale each tile's input by a power of two so max |pregate * x| is ~1
  int vec_in;            // 1: rows of x and pregate are 16-byte aligned runs of whole 8-element groups
  int vec_out;           // 1: the same for y, postgate and the skip's x at the output window
  float out_scale;       // the spectrum was stored times 1 / out_scale (a power of two)
};

// Arguments of the fused backward (fused_bwd.cuh), mirrored by BWD_PARAMS_FIELDS in
// longconv/_fused.py. For y = postgate * conv(u, k) + skip * x with u = pregate * x and
// g = postgate * dy: dx = pregate * corr(g, k) + skip * dy, dpregate = x * corr(g, k),
// dpostgate = dy * conv(u, k), and partial sums of the spectrum conj(U) G for dk.
struct BwdParams {
  const void* x;         // (B, H, L), I/O dtype
  const void* pregate;   // (B, H, L) or null
  const void* dy;        // (B, H, Lout) gradient of y
  const void* postgate;  // (B, H, Lout) or null
  const float* skip;     // (H,) fp32 or null
  const float4* kspec;   // filter spectra, as ConvParams::kspec
  const float2* wtab;    // as ConvParams
  const float2* wtn;
  const float* out_scale_ptr;  // as ConvParams
  void* dx;              // (B, H, L) or null (not wanted)
  void* dpre;            // (B, H, L) or null: x * corr(g, k) (reduced over broadcast axes by the host)
  void* dpost;           // (B, H, Lout) or null: dy * conv(u, k)
  float4* dkspec;        // (n_tiles, slots, N) complex fp32 in fragment order, or null
  i64 B, H, L, Lout;
  i64 out_offset;        // output j of y is circular position j + out_offset
  i64 k_hstride;         // float4 elements between filters (0: one filter for every channel)
  i64 n_tiles;           // H * splits
  i64 splits;            // tiles per channel: split s holds pairs [s tile_pairs, (s + 1) tile_pairs)
  i64 tile_pairs;        // sequence pairs per tile (a multiple of pairs)
  int n;                 // FFT size N (power of two, 256 .. 16384)
  int pairs;             // sequence pairs in shared memory at once (each: 8 N bytes, u and g)
  int prescale;          // 1: scale each group's u by a power of two (g is always scaled)
  int vec_in;            // 1: rows of x, pregate, dx, dpre are 16-byte aligned whole 8-element groups
  int vec_out;           // 1: the same for dy, postgate and dpost
  int slots;             // dk partial sums per tile: max(1, 8 / (N / 256))
  float out_scale;       // as ConvParams
};
