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
