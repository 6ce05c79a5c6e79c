// Weight upload and matrix products on the GPU.
//
// Decode (one activation row) is bound by reading the weights once, so every format is re-laid out
// at upload time such that each thread reads whole, 16-byte aligned vectors ("chunks"):
//   F32 / F16 / BF16  rows padded to 16 bytes; a chunk is 16 bytes (4 or 8 values).
//   Q8_0  per row: all int8 quants (cols bytes), then the fp16 scales; a chunk is one block.
//   Q4_0  per row: the 16-byte nibble arrays of all blocks, then the scales; chunk = one block.
//   Q4_1  like Q4_0, then the fp16 mins after the scales.
//   Q4_K / Q5_K  unchanged (144 / 176-byte super-blocks are multiples of 16); a chunk is 16 bytes
//         of nibbles (32 values of two sub-blocks) plus the 16-byte block header, which the eight
//         threads of one super-block share through L1.
//   Q6_K  per row: each super-block's ql, qh and scales (208 bytes), then all fp16 scales d.
//         A chunk is 16 values of each of the four 32-value groups of one 128-value half.
//   IQ*, TQ*, MXFP4, NVFP4  unchanged (cuda_iq_formats.cuh); a chunk is one 32-weight sub-block.
// A warp reduces one output row; lanes take chunks round robin so that a warp's loads are
// contiguous. Prefill (many rows) dequantizes slices of the weight to fp16 and calls cublasGemmEx.
#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cuda/cuda_blas.cuh"
#include "backend/cuda/cuda_common.cuh"
#include "core/error.h"
#include "core/fp16.h"
#include "quant/block_q4_0.h"
#include "quant/block_q4_1.h"
#include "quant/block_q6_k.h"
#include "quant/block_q8_0.h"

namespace qleap::cuda {
namespace {

size_t round16(size_t n) {
  return (n + 15) & ~size_t(15);
}

// The decoders below are __host__ __device__: the CPU runs the very same code in
// decode_gpu_layout_host() so that layouts and bit fiddling are tested without a GPU.
__host__ __device__ __forceinline__ float h2f(uint16_t b) {
#ifdef __CUDA_ARCH__
  return __half2float(__ushort_as_half(b));
#else
  return fp16_to_fp32_ref(b);
#endif
}
__host__ __device__ __forceinline__ float u2f(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  return bits_to_f32(u);
#endif
}
__host__ __device__ __forceinline__ float ldh(const uint8_t* p) {
  return h2f(*reinterpret_cast<const uint16_t*>(p));
}
__host__ __device__ __forceinline__ uint32_t byte_of(const uint4& v,
                                                     int i) {  // i: compile-time after unrolling
  const uint32_t w = i < 4 ? v.x : i < 8 ? v.y : i < 12 ? v.z : v.w;
  return (w >> (8 * (i & 3))) & 0xFFu;
}
__host__ __device__ __forceinline__ uint32_t byte_rt(uint32_t w0, uint32_t w1, uint32_t w2,
                                                     int k) {  // run-time k
  const uint32_t w = k < 4 ? w0 : k < 8 ? w1 : w2;
  return (w >> (8 * (k & 3))) & 0xFFu;
}
// The 6-bit scale and min of sub-block j from the 12 packed bytes (words y, z, w of the header).
__host__ __device__ __forceinline__ void scale_min_k4(int j, uint32_t y, uint32_t z, uint32_t w, float* sc,
                                                      float* m) {
  if (j < 4) {
    *sc = float(byte_rt(y, z, w, j) & 63);
    *m = float(byte_rt(y, z, w, j + 4) & 63);
  } else {
    const uint32_t a = byte_rt(y, z, w, j + 4), lo = byte_rt(y, z, w, j - 4), mm = byte_rt(y, z, w, j);
    *sc = float((a & 0xF) | ((lo >> 6) << 4));
    *m = float((a >> 4) | ((mm >> 6) << 4));
  }
}

// Format traits: kVals values per chunk in kRuns runs of kRun consecutive columns.
template <GgmlType T>
struct Fmt;

template <>
struct Fmt<GgmlType::F32> {
  static constexpr int kVals = 4, kRun = 4, kRuns = 1;
  static constexpr bool kPad = true;
  __host__ __device__ static int chunks(int cols) { return (cols + 3) / 4; }
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const float4 a = *reinterpret_cast<const float4*>(r + 16 * size_t(c));
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
    col0[0] = 4 * c;
  }
};
template <>
struct Fmt<GgmlType::F16> {
  static constexpr int kVals = 8, kRun = 8, kRuns = 1;
  static constexpr bool kPad = true;
  __host__ __device__ static int chunks(int cols) { return (cols + 7) / 8; }
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint4 a = *reinterpret_cast<const uint4*>(r + 16 * size_t(c));
    const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = h2f(uint16_t(w[i] & 0xFFFF));
      v[2 * i + 1] = h2f(uint16_t(w[i] >> 16));
    }
    col0[0] = 8 * c;
  }
};
template <>
struct Fmt<GgmlType::BF16> {
  static constexpr int kVals = 8, kRun = 8, kRuns = 1;
  static constexpr bool kPad = true;
  __host__ __device__ static int chunks(int cols) { return (cols + 7) / 8; }
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint4 a = *reinterpret_cast<const uint4*>(r + 16 * size_t(c));
    const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = u2f(w[i] << 16);
      v[2 * i + 1] = u2f(w[i] & 0xFFFF0000u);
    }
    col0[0] = 8 * c;
  }
};
template <>
struct Fmt<GgmlType::Q8_0> {
  static constexpr int kVals = 32, kRun = 32, kRuns = 1;
  static constexpr bool kPad = false;
  __host__ __device__ static int chunks(int cols) { return cols / 32; }
  __host__ __device__ static void decode(const uint8_t* r, int cols, int c, float* v, int* col0) {
    const uint4 a = *reinterpret_cast<const uint4*>(r + 32 * size_t(c));
    const uint4 b = *reinterpret_cast<const uint4*>(r + 32 * size_t(c) + 16);
    const float d = ldh(r + cols + 2 * size_t(c));
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      v[i] = d * float(int8_t(byte_of(a, i)));
      v[16 + i] = d * float(int8_t(byte_of(b, i)));
    }
    col0[0] = 32 * c;
  }
};
template <>
struct Fmt<GgmlType::Q4_0> {
  static constexpr int kVals = 32, kRun = 16, kRuns = 2;
  static constexpr bool kPad = false;
  __host__ __device__ static int chunks(int cols) { return cols / 32; }
  __host__ __device__ static void decode(const uint8_t* r, int cols, int c, float* v, int* col0) {
    const uint4 a = *reinterpret_cast<const uint4*>(r + 16 * size_t(c));
    const float d = ldh(r + cols / 2 + 2 * size_t(c));
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t q = byte_of(a, i);
      v[i] = d * float(int(q & 0xF) - 8);
      v[16 + i] = d * float(int(q >> 4) - 8);
    }
    col0[0] = 32 * c, col0[1] = 32 * c + 16;
  }
};
template <>
struct Fmt<GgmlType::Q4_1> {
  static constexpr int kVals = 32, kRun = 16, kRuns = 2;
  static constexpr bool kPad = false;
  __host__ __device__ static int chunks(int cols) { return cols / 32; }
  __host__ __device__ static void decode(const uint8_t* r, int cols, int c, float* v, int* col0) {
    const uint4 a = *reinterpret_cast<const uint4*>(r + 16 * size_t(c));
    const float d = ldh(r + cols / 2 + 2 * size_t(c));
    const float m = ldh(r + cols / 2 + cols / 16 + 2 * size_t(c));
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t q = byte_of(a, i);
      v[i] = d * float(q & 0xF) + m;
      v[16 + i] = d * float(q >> 4) + m;
    }
    col0[0] = 32 * c, col0[1] = 32 * c + 16;
  }
};
template <>
struct Fmt<GgmlType::Q4_K> {
  static constexpr int kVals = 32, kRun = 16, kRuns = 2;
  static constexpr bool kPad = false;
  __host__ __device__ static int chunks(int cols) { return cols / 32; }
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const int sb = c >> 3, g = (c & 7) >> 1, h = c & 1;
    const uint8_t* b = r + 144 * size_t(sb);
    const uint4 hdr = *reinterpret_cast<const uint4*>(b);
    const uint4 q = *reinterpret_cast<const uint4*>(b + 16 + 32 * g + 16 * h);
    const float d = h2f(uint16_t(hdr.x & 0xFFFF));
    const float dmin = h2f(uint16_t(hdr.x >> 16));
    float s0, m0, s1, m1;
    scale_min_k4(2 * g, hdr.y, hdr.z, hdr.w, &s0, &m0);
    scale_min_k4(2 * g + 1, hdr.y, hdr.z, hdr.w, &s1, &m1);
    const float d0 = d * s0, o0 = dmin * m0, d1 = d * s1, o1 = dmin * m1;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t x = byte_of(q, i);
      v[i] = d0 * float(x & 0xF) - o0;
      v[16 + i] = d1 * float(x >> 4) - o1;
    }
    col0[0] = 256 * sb + 64 * g + 16 * h, col0[1] = col0[0] + 32;
  }
};
template <>
struct Fmt<GgmlType::Q5_K> {
  static constexpr int kVals = 32, kRun = 16, kRuns = 2;
  static constexpr bool kPad = false;
  __host__ __device__ static int chunks(int cols) { return cols / 32; }
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const int sb = c >> 3, g = (c & 7) >> 1, h = c & 1;
    const uint8_t* b = r + 176 * size_t(sb);
    const uint4 hdr = *reinterpret_cast<const uint4*>(b);
    const uint4 qh = *reinterpret_cast<const uint4*>(b + 16 + 16 * h);
    const uint4 q = *reinterpret_cast<const uint4*>(b + 48 + 32 * g + 16 * h);
    const float d = h2f(uint16_t(hdr.x & 0xFFFF));
    const float dmin = h2f(uint16_t(hdr.x >> 16));
    float s0, m0, s1, m1;
    scale_min_k4(2 * g, hdr.y, hdr.z, hdr.w, &s0, &m0);
    scale_min_k4(2 * g + 1, hdr.y, hdr.z, hdr.w, &s1, &m1);
    const float d0 = d * s0, o0 = dmin * m0, d1 = d * s1, o1 = dmin * m1;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t x = byte_of(q, i), hb = byte_of(qh, i);
      v[i] = d0 * float((x & 0xF) | (((hb >> (2 * g)) & 1) << 4)) - o0;
      v[16 + i] = d1 * float((x >> 4) | (((hb >> (2 * g + 1)) & 1) << 4)) - o1;
    }
    col0[0] = 256 * sb + 64 * g + 16 * h, col0[1] = col0[0] + 32;
  }
};
template <>
struct Fmt<GgmlType::Q6_K> {
  static constexpr int kVals = 64, kRun = 16, kRuns = 4;
  static constexpr bool kPad = false;
  __host__ __device__ static int chunks(int cols) { return cols / 64; }
  __host__ __device__ static void decode(const uint8_t* r, int cols, int c, float* v, int* col0) {
    const int sb = c >> 2, h = (c & 3) >> 1, half = c & 1, l0 = 16 * half;
    const uint8_t* b = r + 208 * size_t(sb);
    const uint4 ql0 = *reinterpret_cast<const uint4*>(b + 64 * h + l0);
    const uint4 ql1 = *reinterpret_cast<const uint4*>(b + 64 * h + 32 + l0);
    const uint4 qh = *reinterpret_cast<const uint4*>(b + 128 + 32 * h + l0);
    const float d = ldh(r + 208 * size_t(cols / 256) + 2 * size_t(sb));
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192 + 8 * h + half);
    const float d0 = d * sc[0], d1 = d * sc[2], d2 = d * sc[4], d3 = d * sc[6];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t a = byte_of(ql0, i), bb = byte_of(ql1, i), hh = byte_of(qh, i);
      v[i] = d0 * float(int((a & 0xF) | ((hh & 3) << 4)) - 32);
      v[16 + i] = d1 * float(int((bb & 0xF) | (((hh >> 2) & 3) << 4)) - 32);
      v[32 + i] = d2 * float(int((a >> 4) | (((hh >> 4) & 3) << 4)) - 32);
      v[48 + i] = d3 * float(int((bb >> 4) | (((hh >> 6) & 3) << 4)) - 32);
    }
    const int base = 256 * sb + 128 * h + l0;
    col0[0] = base, col0[1] = base + 32, col0[2] = base + 64, col0[3] = base + 96;
  }
};

constexpr int kMvWarps = 4;

template <GgmlType T>
__global__ void __launch_bounds__(kMvWarps * 32)
    matvec_kernel(const uint8_t* __restrict__ w, size_t rb, int rows, int cols, const float* __restrict__ x,
                  float* __restrict__ y, int accumulate) {
  using F = Fmt<T>;
  const int row = blockIdx.x * kMvWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const uint8_t* r = w + size_t(row) * rb;
  const int nc = F::chunks(cols);
  float sum = 0.0f;
#pragma unroll 2
  for (int c = lane; c < nc; c += 32) {
    float v[F::kVals];
    int col0[F::kRuns];
    F::decode(r, cols, c, v, col0);
#pragma unroll
    for (int j = 0; j < F::kRuns; ++j) {
      if constexpr (F::kPad) {
#pragma unroll
        for (int i = 0; i < F::kRun; ++i) {
          const int col = col0[j] + i;
          if (col < cols) sum += v[j * F::kRun + i] * x[col];
        }
      } else {
        const float4* xv = reinterpret_cast<const float4*>(x + col0[j]);
#pragma unroll
        for (int i = 0; i < F::kRun / 4; ++i) {
          const float4 a = xv[i];
          const float* vv = v + j * F::kRun + 4 * i;
          sum += vv[0] * a.x + vv[1] * a.y + vv[2] * a.z + vv[3] * a.w;
        }
      }
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
  if (lane == 0) y[row] = accumulate ? y[row] + sum : sum;
}

template <GgmlType T>
__global__ void dequant_kernel(const uint8_t* __restrict__ w, size_t rb, int rows, int cols,
                               __half* __restrict__ out) {
  using F = Fmt<T>;
  const int nc = F::chunks(cols);
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= int64_t(rows) * nc) return;
  const int r = int(idx / nc), c = int(idx % nc);
  float v[F::kVals];
  int col0[F::kRuns];
  F::decode(w + size_t(r) * rb, cols, c, v, col0);
  __half* o = out + size_t(r) * cols;
#pragma unroll
  for (int j = 0; j < F::kRuns; ++j) {
#pragma unroll
    for (int i = 0; i < F::kRun; ++i) {
      const int col = col0[j] + i;
      if (!F::kPad || col < cols) o[col] = __float2half(v[j * F::kRun + i]);
    }
  }
}

__global__ void f32_to_f16_kernel(const float* __restrict__ x, __half* __restrict__ y, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = __float2half(x[i]);
}

template <GgmlType T>
void launch_matvec(const DevWeight& w, const float* x, float* y, bool acc, cudaStream_t st) {
  const int blocks = int((w.rows + kMvWarps - 1) / kMvWarps);
  matvec_kernel<T><<<blocks, kMvWarps * 32, 0, st>>>(w.data.get(), w.row_bytes, int(w.rows), int(w.cols), x,
                                                     y, acc ? 1 : 0);
  QL_CHECK_LAUNCH();
}

template <GgmlType T>
void launch_dequant(const DevWeight& w, int64_t r0, int64_t n, __half* out, cudaStream_t st) {
  const int64_t total = n * Fmt<T>::chunks(int(w.cols));
  const int threads = 256;
  dequant_kernel<T><<<unsigned((total + threads - 1) / threads), threads, 0, st>>>(
      w.data.get() + size_t(r0) * w.row_bytes, w.row_bytes, int(n), int(w.cols), out);
  QL_CHECK_LAUNCH();
}

#define QL_DISPATCH(type, FN, ...)                                             \
  switch (type) {                                                              \
    case GgmlType::F32:                                                        \
      FN<GgmlType::F32>(__VA_ARGS__);                                          \
      break;                                                                   \
    case GgmlType::F16:                                                        \
      FN<GgmlType::F16>(__VA_ARGS__);                                          \
      break;                                                                   \
    case GgmlType::BF16:                                                       \
      FN<GgmlType::BF16>(__VA_ARGS__);                                         \
      break;                                                                   \
    case GgmlType::Q8_0:                                                       \
      FN<GgmlType::Q8_0>(__VA_ARGS__);                                         \
      break;                                                                   \
    case GgmlType::Q4_0:                                                       \
      FN<GgmlType::Q4_0>(__VA_ARGS__);                                         \
      break;                                                                   \
    case GgmlType::Q4_1:                                                       \
      FN<GgmlType::Q4_1>(__VA_ARGS__);                                         \
      break;                                                                   \
    case GgmlType::Q4_K:                                                       \
      FN<GgmlType::Q4_K>(__VA_ARGS__);                                         \
      break;                                                                   \
    case GgmlType::Q5_K:                                                       \
      FN<GgmlType::Q5_K>(__VA_ARGS__);                                         \
      break;                                                                   \
    case GgmlType::Q6_K:                                                       \
      FN<GgmlType::Q6_K>(__VA_ARGS__);                                         \
      break;                                                                   \
      QL_IQ_CASES(FN, __VA_ARGS__)                                             \
    default:                                                                   \
      throw Unsupported(std::string("no CUDA kernel for ") + type_name(type)); \
  }

}  // namespace
}  // namespace qleap::cuda

#include "backend/cuda/cuda_iq_formats.cuh"

namespace qleap::cuda {

// Host-side re-layout of one row (see the file comment).
void repack_row(GgmlType t, const uint8_t* src, int64_t cols, uint8_t* dst) {
  const int64_t nb = cols / 32;
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, src, size_t(cols) * 4);
      break;
    case GgmlType::F16:
    case GgmlType::BF16:
      std::memcpy(dst, src, size_t(cols) * 2);
      break;
    case GgmlType::Q4_K:
      std::memcpy(dst, src, size_t(cols / 256) * 144);
      break;
    case GgmlType::Q5_K:
      std::memcpy(dst, src, size_t(cols / 256) * 176);
      break;
    case GgmlType::Q8_0: {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < nb; ++i) {
        std::memcpy(dst + 32 * i, b[i].qs, 32);
        std::memcpy(dst + cols + 2 * i, &b[i].d, 2);
      }
      break;
    }
    case GgmlType::Q4_0: {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(src);
      for (int64_t i = 0; i < nb; ++i) {
        std::memcpy(dst + 16 * i, b[i].qs, 16);
        std::memcpy(dst + cols / 2 + 2 * i, &b[i].d, 2);
      }
      break;
    }
    case GgmlType::Q4_1: {
      const auto* b = reinterpret_cast<const BlockQ4_1*>(src);
      for (int64_t i = 0; i < nb; ++i) {
        std::memcpy(dst + 16 * i, b[i].qs, 16);
        std::memcpy(dst + cols / 2 + 2 * i, &b[i].d, 2);
        std::memcpy(dst + cols / 2 + cols / 16 + 2 * i, &b[i].m, 2);
      }
      break;
    }
    case GgmlType::Q6_K: {
      const auto* b = reinterpret_cast<const BlockQ6_K*>(src);
      const int64_t ns = cols / 256;
      for (int64_t i = 0; i < ns; ++i) {
        std::memcpy(dst + 208 * i, b[i].ql, 128);
        std::memcpy(dst + 208 * i + 128, b[i].qh, 64);
        std::memcpy(dst + 208 * i + 192, b[i].scales, 16);
        std::memcpy(dst + 208 * ns + 2 * i, &b[i].d, 2);
      }
      break;
    }
    default:
      if (!is_iq_format(t)) throw Unsupported(std::string("no CUDA kernel for ") + type_name(t));
      std::memcpy(dst, src, row_size(t, cols));  // kept in the GGUF layout
  }
}

size_t gpu_row_bytes(GgmlType t, int64_t cols) {
  switch (t) {
    case GgmlType::F32:
      return round16(size_t(cols) * 4);
    case GgmlType::F16:
    case GgmlType::BF16:
      return round16(size_t(cols) * 2);
    case GgmlType::Q8_0:
      return round16(size_t(cols) + size_t(cols / 32) * 2);
    case GgmlType::Q4_0:
      return round16(size_t(cols / 2) + size_t(cols / 32) * 2);
    case GgmlType::Q4_1:
      return round16(size_t(cols / 2) + size_t(cols / 32) * 4);
    case GgmlType::Q4_K:
      return size_t(cols / 256) * 144;
    case GgmlType::Q5_K:
      return size_t(cols / 256) * 176;
    case GgmlType::Q6_K:
      return round16(size_t(cols / 256) * 210);
    default:
      if (!is_iq_format(t)) throw Unsupported(std::string("no CUDA kernel for ") + type_name(t));
      return row_size(t, cols);
  }
}

namespace {

template <GgmlType T>
void decode_rows_host(const uint8_t* dev_layout, size_t rb, int64_t rows, int64_t cols, float* out) {
  using F = Fmt<T>;
  float v[F::kVals];
  int col0[F::kRuns];
  for (int64_t r = 0; r < rows; ++r) {
    for (int c = 0; c < F::chunks(int(cols)); ++c) {
      F::decode(dev_layout + size_t(r) * rb, int(cols), c, v, col0);
      for (int j = 0; j < F::kRuns; ++j) {
        for (int i = 0; i < F::kRun; ++i) {
          if (col0[j] + i < cols) out[size_t(r) * cols + size_t(col0[j] + i)] = v[j * F::kRun + i];
        }
      }
    }
  }
}

}  // namespace

void decode_gpu_layout_host(const WeightView& w, float* out) {
  const size_t rb = gpu_row_bytes(w.type, w.cols);
  std::vector<uint8_t> buf(rb * size_t(w.rows), 0);
  for (int64_t r = 0; r < w.rows; ++r) {
    repack_row(w.type, static_cast<const uint8_t*>(w.data) + size_t(r) * w.row_bytes, w.cols,
               buf.data() + size_t(r) * rb);
  }
  QL_DISPATCH(w.type, decode_rows_host, buf.data(), rb, w.rows, w.cols, out);
}

bool gpu_supports(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
      return true;
    default:
      return is_iq_format(t);
  }
}

size_t device_weight_bytes(const WeightView& w) {
  return gpu_supports(w.type) ? gpu_row_bytes(w.type, w.cols) * size_t(w.rows) : 0;
}

DevWeight upload_weight(const WeightView& w) {
  if (!gpu_supports(w.type)) throw Unsupported(std::string("no CUDA kernel for ") + type_name(w.type));
  // The CUDA kernels do not apply WeightView::scale (NVFP4 checkpoints' per-tensor factor): such
  // weights stay on the CPU rather than give unscaled products.
  if (w.scale != 1.0f)
    throw Unsupported(std::string("no CUDA kernel for ") + type_name(w.type) +
                      " weights with a per-tensor scale (<name>.scale); they run on the CPU");
  if (is_iq_format(w.type)) ensure_iq_tables();
  DevWeight d;
  d.type = w.type;
  d.rows = w.rows;
  d.cols = w.cols;
  d.row_bytes = gpu_row_bytes(w.type, w.cols);
  d.data.alloc(d.row_bytes * size_t(w.rows));
  // Re-lay out and copy in slices of about 32 MiB to bound the host staging buffer.
  const int64_t per = std::max<int64_t>(1, int64_t((size_t(32) << 20) / d.row_bytes));
  std::vector<uint8_t> buf;
  for (int64_t r0 = 0; r0 < w.rows; r0 += per) {
    const int64_t n = std::min(per, w.rows - r0);
    buf.assign(size_t(n) * d.row_bytes, 0);
    for (int64_t r = 0; r < n; ++r) {
      repack_row(w.type, static_cast<const uint8_t*>(w.data) + size_t(r0 + r) * w.row_bytes, w.cols,
                 buf.data() + size_t(r) * d.row_bytes);
    }
    d.data.upload(buf.data(), buf.size(), size_t(r0) * d.row_bytes);
  }
  return d;
}

void GemmScratch::reserve(size_t x_elems, size_t w_elems) {
  if (xh.size() < x_elems) xh.alloc(x_elems);
  if (wtmp.size() < w_elems) {
    wtmp.alloc(w_elems);
    wtmp_elems = w_elems;
  }
}

void matmul(const DevWeight& w, const float* x, int m, float* y, bool accumulate, cudaStream_t st,
            cublasHandle_t blas, GemmScratch& gs, bool force_gemm) {
  if (m == 1 && !force_gemm) {
    QL_DISPATCH(w.type, launch_matvec, w, x, y, accumulate, st);
    return;
  }
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const int rows = int(w.rows), cols = int(w.cols);
  if (w.type == GgmlType::F32) {
    // Rows are padded to 16 bytes: the leading dimension is the padded row length.
    QL_CUBLAS(blas::sgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, m, cols, &alpha,
                          reinterpret_cast<const float*>(w.data.get()), int(w.row_bytes / 4), x, cols, &beta,
                          y, rows));
    return;
  }
  if (gs.xh.size() < size_t(m) * cols)
    throw InvalidArgument("CUDA GEMM scratch too small for the activations");
  const int64_t nx = int64_t(m) * cols;
  f32_to_f16_kernel<<<unsigned((nx + 255) / 256), 256, 0, st>>>(x, gs.xh.get(), nx);
  QL_CHECK_LAUNCH();
  const int64_t per = std::max<int64_t>(1, std::min<int64_t>(rows, int64_t(gs.wtmp_elems / size_t(cols))));
  if (gs.wtmp_elems < size_t(cols)) throw InvalidArgument("CUDA GEMM weight scratch too small");
  for (int64_t r0 = 0; r0 < rows; r0 += per) {
    const int64_t n = std::min<int64_t>(per, rows - r0);
    QL_DISPATCH(w.type, launch_dequant, w, r0, n, gs.wtmp.get(), st);
    QL_CUBLAS(blas::gemm_ex(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(n), m, cols, &alpha, gs.wtmp.get(),
                            CUDA_R_16F, cols, gs.xh.get(), CUDA_R_16F, cols, &beta, y + r0, CUDA_R_32F, rows,
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace qleap::cuda
