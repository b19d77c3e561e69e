// Filter spectra in the fused kernels' layout, computed on the device in one to three launches.
//
// The fused kernels read each filter's spectrum K[f] = sum_t k[t] W_N^(f t) / sqrt(N), in the
// order their in-place transform leaves the signal's spectrum (pos[f]: storage slot of bin f,
// longconv/_fused.py spectrum_order), scaled by a power of two so that max |K| lies in (1/2, 1]
// (the fp16 range bound of the product); the power of two is the output multiplier, kept in
// device memory. Computing that took a float64 cuFFT transform and about fifteen small array
// operations per filter update; these kernels do it in one launch (small problems: one block
// that also scales) or two (and a cuFFT rfft before the gather for large ones):
//
//   lc_kspec_dft_{f32,f64,f16} / lc_kspec_gather: K[f] for f <= N / 2 of every filter, written to
//       pos[f] and (conjugated, k being real) pos[N - f]; each block's max |K| to partial[b].
//       dft: the direct sum over the taps (small problems: taps * (N / 2 + 1) * Hk below a
//       bound set on the host); gather: from a cuFFT rfft of the taps (natural order, complex
//       float64, unnormalised), for everything else.
//   lc_kspec_finalize: every block reduces partial[] to the peak, scales its slice of the
//       spectrum by 1 / 2^ceil(log2 peak) (exact: a power of two) and block 0 stores 2^ceil(..)
//       (1 when the peak is 0 or not finite, as the output multiplier has no use then).
#pragma once
#include "common.cuh"

struct KspecParams {
  const void* k;          // dft: (Hk, taps) real filters, row stride k_stride elements (fp32, fp64
                          // or fp16 by entry point)
  const void* rspec;      // gather: (Hk, N / 2 + 1) complex float64, rfft of the prepared taps
  const int* pos;         // (N,) storage slot of frequency f within a filter's N elements
  const float2* wtn;      // W_N^j, j < 64, then W_N^(64 j), j < N / 64
  float2* kspec;          // (Hk, N) complex fp32 out, storage order
  float* partial;         // (nparts,) per-block max |K| (dft/gather out, finalize in)
  float* out_scale;       // (1,) the output multiplier (finalize out)
  i64 Hk;
  i64 taps;               // dft: taps used, t < taps
  i64 k_stride;           // dft: elements between filters
  i64 wrap;               // dft: 0, or L: tap t sits at position t mod L (circular fold)
  int n;                  // FFT size N (power of two, 256 .. 32768)
  int keep;               // bins with min(f, N - f) >= keep are zero (keep = N: every bin kept)
  int nparts;             // blocks of the dft/gather launch (entries of partial)
  float norm;             // 1 / sqrt(N)
};

#define LC_KSPEC_THREADS 256
#define LC_KSPEC_TAPS 1024  // taps staged in shared memory per pass

__device__ void kspec_scale(const KspecParams& p, float v, bool bad);

__device__ __forceinline__ float lc_block_max(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int w = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) red[w] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < (LC_KSPEC_THREADS >> 5) ? red[threadIdx.x] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  }
  __syncthreads();
  return v;  // valid in warp 0
}

// Store bin f (0 <= f <= N / 2) of filter h and its mirror; returns |K| as stored (0 if masked).
__device__ __forceinline__ float lc_kspec_store(const KspecParams& p, i64 h, int f, float re, float im) {
  const int n = p.n;
  if (f >= p.keep) re = im = 0.f;
  re *= p.norm;
  im *= p.norm;
  float2* row = p.kspec + h * n;
  row[__ldg(p.pos + f)] = make_float2(re, im);
  if (f != 0 && f != n / 2) row[__ldg(p.pos + n - f)] = make_float2(re, -im);
  return sqrtf(re * re + im * im);
}

__device__ __forceinline__ float lc_tap(const float* k, i64 t) { return __ldg(k + t); }
__device__ __forceinline__ float lc_tap(const double* k, i64 t) { return (float)__ldg(k + t); }
__device__ __forceinline__ float lc_tap(const u16* k, i64 t) { return f16_to_f32(__ldg(k + t)); }

// Work items: (filter, chunk of LC_KSPEC_BINS bins f <= N / 2), grid-stride over blocks. The
// block's LC_KSPEC_SPLIT thread groups sum every LC_KSPEC_SPLIT-th tap of the item's bins, so a
// short filter still spreads over the whole block.
#define LC_KSPEC_BINS 64
#define LC_KSPEC_SPLIT (LC_KSPEC_THREADS / LC_KSPEC_BINS)
template <typename T>
__device__ void kspec_dft(const KspecParams& p) {
  __shared__ float kbuf[LC_KSPEC_TAPS];
  __shared__ float2 tw[64 + 512];
  __shared__ float2 part[LC_KSPEC_THREADS];
  __shared__ float red[LC_KSPEC_THREADS / 32];
  const int n = p.n;
  const int half = n / 2;
  const unsigned mask = (unsigned)n - 1u;
  const int wrap = (int)p.wrap;
  const int fi = threadIdx.x % LC_KSPEC_BINS, ts = threadIdx.x / LC_KSPEC_BINS;
  for (int j = threadIdx.x; j < 64 + n / 64; j += LC_KSPEC_THREADS) tw[j] = __ldg(p.wtn + j);
  const int chunks = (half + 1 + LC_KSPEC_BINS - 1) / LC_KSPEC_BINS;
  const i64 items = p.Hk * chunks;
  float peak = 0.f;
  for (i64 it = blockIdx.x; it < items; it += gridDim.x) {
    const i64 h = it / chunks;
    const int f = (int)(it % chunks) * LC_KSPEC_BINS + fi;
    const T* kr = reinterpret_cast<const T*>(p.k) + h * p.k_stride;
    float re = 0.f, im = 0.f;
    for (i64 t0 = 0; t0 < p.taps; t0 += LC_KSPEC_TAPS) {
      const int m = (int)min((i64)LC_KSPEC_TAPS, p.taps - t0);
      __syncthreads();  // tw written / previous pass read
      for (int j = threadIdx.x; j < m; j += LC_KSPEC_THREADS) kbuf[j] = lc_tap(kr, t0 + j);
      __syncthreads();
      if (f <= half) {
        // position of tap t0 + j on the circle (wrap) or the line
        int pos = wrap ? (int)((t0 + ts) % wrap) : (int)(t0 + ts);
        for (int j = ts; j < m; j += LC_KSPEC_SPLIT) {
          const unsigned a = ((unsigned)f * (unsigned)pos) & mask;
          const float2 w1 = tw[a & 63u], w2 = tw[64u + (a >> 6)];
          const float wr = w1.x * w2.x - w1.y * w2.y, wi = w1.x * w2.y + w1.y * w2.x;
          re = fmaf(kbuf[j], wr, re);
          im = fmaf(kbuf[j], wi, im);
          pos += LC_KSPEC_SPLIT;
          if (wrap)
            while (pos >= wrap) pos -= wrap;
        }
      }
    }
    part[threadIdx.x] = make_float2(re, im);
    __syncthreads();
    if (ts == 0 && f <= half) {
#pragma unroll
      for (int s = 1; s < LC_KSPEC_SPLIT; ++s) {
        const float2 q = part[threadIdx.x + s * LC_KSPEC_BINS];
        re += q.x;
        im += q.y;
      }
      peak = fmaxf(peak, lc_kspec_store(p, h, f, re, im));
    }
    __syncthreads();  // part read
  }
  peak = lc_block_max(peak, red);
  if (p.nparts == 0) {
    // a single block (small problems): no partial maxima, it scales the spectrum itself
    kspec_scale(p, peak, !(peak <= 3.402823466e38f));
    return;
  }
  if (threadIdx.x == 0) p.partial[blockIdx.x] = peak;
}

__device__ void kspec_gather(const KspecParams& p) {
  __shared__ float red[LC_KSPEC_THREADS / 32];
  const int half = p.n / 2;
  const i64 total = p.Hk * (half + 1);
  const double2* src = reinterpret_cast<const double2*>(p.rspec);
  float peak = 0.f;
  for (i64 i = (i64)blockIdx.x * LC_KSPEC_THREADS + threadIdx.x; i < total;
       i += (i64)gridDim.x * LC_KSPEC_THREADS) {
    const i64 h = i / (half + 1);
    const int f = (int)(i % (half + 1));
    const double2 v = src[i];
    peak = fmaxf(peak, lc_kspec_store(p, h, f, (float)v.x, (float)v.y));
  }
  peak = lc_block_max(peak, red);
  if (threadIdx.x == 0) p.partial[blockIdx.x] = peak;
}

// Scale this block's share of the spectrum by 1 / 2^ceil(log2 peak) (the peak from thread 0;
// 1 when it is 0 or ``bad``, not finite) and block 0 stores the multiplier. The block's earlier
// writes of the spectrum are visible to it after the barrier below.
__device__ void kspec_scale(const KspecParams& p, float v, bool bad) {
  __shared__ float s_scale;
  if (threadIdx.x == 0) {
    float scale = 1.f;
    if (!bad && v > 0.f) {
      int e;
      const float m = frexpf(v, &e);  // v = m 2^e, m in [1/2, 1)
      scale = ldexpf(1.f, m == 0.5f ? e - 1 : e);
    }
    s_scale = scale;
    if (blockIdx.x == 0) *p.out_scale = scale;
  }
  __syncthreads();
  const float inv = 1.f / s_scale;  // exact: a power of two
  float* s = reinterpret_cast<float*>(p.kspec);
  const i64 total = 2 * p.Hk * p.n;
  for (i64 i = (i64)blockIdx.x * LC_KSPEC_THREADS + threadIdx.x; i < total;
       i += (i64)gridDim.x * LC_KSPEC_THREADS)
    s[i] *= inv;
}

__device__ void kspec_finalize(const KspecParams& p) {
  __shared__ float red[LC_KSPEC_THREADS / 32];
  float v = 0.f;
  bool bad = false;
  for (int j = threadIdx.x; j < p.nparts; j += LC_KSPEC_THREADS) {
    const float q = p.partial[j];
    bad |= !(q <= 3.402823466e38f);  // inf or NaN
    v = fmaxf(v, q);
  }
  bad = __syncthreads_or(bad);
  v = lc_block_max(v, red);
  kspec_scale(p, v, bad);
}

// The fused backward's filter gradient from its partial spectra (fused_bwd.cuh). Per row h (a
// channel; the host sums the channels first when one filter serves them all), with
// A[f] = sum over the tile-slot partials s < S of dks[(h S + s) N + fpos[f]]
// (fpos[f]: the fragment slot of frequency f), dk[t] = sum_f Re(A[f] exp(+2 pi i f t / N)) for
// t < m (0 for m <= t < Lk). Pairing bin f with N - f, that is the inverse real transform of the
// Hermitian half spectrum X[f] = (A[f] + conj(A[N - f])) / 2, f <= N / 2:
//     dk[t] = sum_{f <= N/2} c_f Re(X[f] exp(+2 pi i f t / N)),  c_0 = c_{N/2} = 1, else 2.
// A block first sums its row's partials into shared memory (coalesced reads of the fragment
// order), then reads them there in frequency order.
//   lc_kspec_dk:   the direct sum above (small problems: Hk m N below a bound set on the host);
//   lc_dk_gather:  X to (Hk, N / 2 + 1) complex fp32, natural order, for an inverse real cuFFT
//                  (norm "forward": no 1 / N) on the host.
struct DkParams {
  const float2* dks;      // (Hk, S, N) complex fp32 partial sums in fragment order
  const int* fpos;        // (N,) fragment slot of frequency f
  const float2* wtn;      // W_N two-level table
  float* dk;              // direct: (Hk, Lk) fp32 out
  float2* half;           // gather: (Hk, N / 2 + 1) complex fp32 out
  i64 Hk;                 // rows of the partial sums and of the output
  i64 Lk;                 // taps of dk
  i64 m;                  // taps computed (the rest are zero)
  i64 S;                  // partial sums per channel
  int n;                  // FFT size N
  int circular;           // 1: tap t is lag t mod N
  int chunks_per_item;    // direct: tap chunks (LC_DK_TAPS) per work item
};

#define LC_DK_TAPS 64
#define LC_DK_SPLIT (LC_KSPEC_THREADS / LC_DK_TAPS)
// Steps of the angle recurrence between exact twiddles from the table: each step's rounding
// (~6e-8 relative) adds up linearly at worst, so 32 steps keep it under 2e-6.
#define LC_DK_RESEED 32

// row[j] = sum over the slots of dks[(ho S + s) N + j], j < N (dynamic shared memory, N float2);
// ends with a barrier.
__device__ __forceinline__ void dk_stage_row(const DkParams& p, i64 ho, float2* row) {
  const int n = p.n;  // a multiple of 256 = LC_KSPEC_THREADS
  const float2* src = p.dks + ho * p.S * n;
  __syncthreads();  // the previous item's reads of row are done
  // four positions of each slot in flight per thread (fewer below N = 1024)
  constexpr int U = 4;
  for (int j0 = 0; j0 < n; j0 += U * LC_KSPEC_THREADS) {
    float2 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = make_float2(0.f, 0.f);
#pragma unroll 2
    for (i64 q = 0; q < p.S; ++q) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int j = j0 + u * LC_KSPEC_THREADS + threadIdx.x;
        if (j < n) {
          const float2 a = __ldg(src + q * n + j);
          v[u].x += a.x;
          v[u].y += a.y;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * LC_KSPEC_THREADS + threadIdx.x;
      if (j < n) row[j] = v[u];
    }
  }
  __syncthreads();
}

// A[f] + conj(A[N - f]) from the staged row (2 Re A[f] at f = 0 and N / 2).
__device__ __forceinline__ float2 dk_pair(const DkParams& p, const float2* row, int f) {
  const float2 a = row[__ldg(p.fpos + f)], b = row[__ldg(p.fpos + ((p.n - f) & (p.n - 1)))];
  return make_float2(a.x + b.x, a.y - b.y);
}

// W_N^a from the two-level table (a < N).
__device__ __forceinline__ float2 dk_twiddle(const float2* tw, unsigned a) {
  const float2 w1 = tw[a & 63u], w2 = tw[64u + (a >> 6)];
  return make_float2(w1.x * w2.x - w1.y * w2.y, w1.x * w2.y + w1.y * w2.x);
}

// Work items: (output row, run of chunks_per_item chunks of LC_DK_TAPS taps). Thread (ti, fs)
// sums tap t = chunk * LC_DK_TAPS + ti over the bins f = fs, fs + LC_DK_SPLIT, ...; the twiddle
// W^(f t) advances by W^(LC_DK_SPLIT t) per bin and is taken exact from the table every
// LC_DK_RESEED bins, so a term costs a shared load (the same address across the warp) and six
// FMA-pipe instructions instead of three scattered table loads.
__device__ void kspec_dk(const DkParams& p) {
  extern __shared__ float2 lc_dk_smem[];
  __shared__ float2 tw[64 + 512];
  __shared__ float part[LC_KSPEC_THREADS];
  const int n = p.n, half = n / 2;
  float2* row = lc_dk_smem;            // N: the row's partial sums, fragment order
  float2* xs = lc_dk_smem + n;         // N / 2 + 1: c_f X[f]
  const unsigned mask = (unsigned)n - 1u;
  const int ti = threadIdx.x % LC_DK_TAPS, fs = threadIdx.x / LC_DK_TAPS;
  for (int j = threadIdx.x; j < 64 + n / 64; j += LC_KSPEC_THREADS) tw[j] = __ldg(p.wtn + j);
  const int cpi = p.chunks_per_item;
  const i64 chunks = (p.Lk + LC_DK_TAPS - 1) / LC_DK_TAPS;
  const i64 runs = (chunks + cpi - 1) / cpi;
  const i64 items = p.Hk * runs;
  for (i64 it = blockIdx.x; it < items; it += gridDim.x) {
    const i64 ho = it / runs;
    const i64 c0 = (it % runs) * cpi, c1 = min(chunks, c0 + cpi);
    if (c0 * LC_DK_TAPS < p.m) {
      dk_stage_row(p, ho, row);
      for (int f = threadIdx.x; f <= half; f += LC_KSPEC_THREADS) {
        const float2 v = dk_pair(p, row, f);
        const float c = (f == 0 || f == half) ? 0.5f : 1.f;
        xs[f] = make_float2(c * v.x, c * v.y);
      }
      __syncthreads();
    }
    for (i64 c = c0; c < c1; ++c) {
      const i64 t = c * LC_DK_TAPS + ti;
      float acc = 0.f;
      if (c * LC_DK_TAPS < p.m) {
        const unsigned lag = (unsigned)(p.circular ? t % n : t) & mask;
        const float2 step = dk_twiddle(tw, ((unsigned)LC_DK_SPLIT * lag) & mask);
        for (int f0 = fs; f0 <= half; f0 += LC_DK_SPLIT * LC_DK_RESEED) {
          float2 w = dk_twiddle(tw, ((unsigned)f0 * lag) & mask);
          const int f1 = min(half + 1, f0 + LC_DK_SPLIT * LC_DK_RESEED);
          for (int f = f0; f < f1; f += LC_DK_SPLIT) {
            // Re(X conj(W^(f t))) = Re(X exp(+2 pi i f t / N))
            const float2 x = xs[f];
            acc = fmaf(x.x, w.x, fmaf(x.y, w.y, acc));
            w = make_float2(w.x * step.x - w.y * step.y, w.x * step.y + w.y * step.x);
          }
        }
      }
      part[threadIdx.x] = acc;
      __syncthreads();
      if (fs == 0 && t < p.Lk) {
#pragma unroll
        for (int q = 1; q < LC_DK_SPLIT; ++q) acc += part[threadIdx.x + q * LC_DK_TAPS];
        p.dk[ho * p.Lk + t] = t < p.m ? acc : 0.f;
      }
      __syncthreads();  // part read
    }
  }
}

// One block per output row: X[f] for f <= N / 2, natural order.
__device__ void dk_gather(const DkParams& p) {
  extern __shared__ float2 lc_dk_smem[];
  const int half = p.n / 2;
  for (i64 ho = blockIdx.x; ho < p.Hk; ho += gridDim.x) {
    dk_stage_row(p, ho, lc_dk_smem);
    for (int f = threadIdx.x; f <= half; f += LC_KSPEC_THREADS) {
      const float2 v = dk_pair(p, lc_dk_smem, f);
      p.half[ho * (half + 1) + f] = make_float2(0.5f * v.x, 0.5f * v.y);
    }
  }
}

extern "C" __global__ void __launch_bounds__(LC_KSPEC_THREADS) lc_dk_gather(const DkParams p) {
  dk_gather(p);
}

// At most 32 registers (no spills): eight blocks per SM, so the 768 rows of N = 256, H = 768 run in
// one wave (48 registers allowed five blocks per SM, two waves).
extern "C" __global__ void __launch_bounds__(LC_KSPEC_THREADS, 8) lc_kspec_dk(const DkParams p) {
  kspec_dk(p);
}

extern "C" __global__ void __launch_bounds__(LC_KSPEC_THREADS) lc_kspec_dft_f32(const KspecParams p) {
  kspec_dft<float>(p);
}
extern "C" __global__ void __launch_bounds__(LC_KSPEC_THREADS) lc_kspec_dft_f64(const KspecParams p) {
  kspec_dft<double>(p);
}
extern "C" __global__ void __launch_bounds__(LC_KSPEC_THREADS) lc_kspec_dft_f16(const KspecParams p) {
  kspec_dft<u16>(p);
}
extern "C" __global__ void __launch_bounds__(LC_KSPEC_THREADS) lc_kspec_gather(const KspecParams p) {
  kspec_gather(p);
}
extern "C" __global__ void __launch_bounds__(LC_KSPEC_THREADS) lc_kspec_finalize(const KspecParams p) {
  kspec_finalize(p);
}
