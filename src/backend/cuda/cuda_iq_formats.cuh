// Mat-vec / dequantize format traits (Fmt<T>, see cuda_matmul.cu) for the i-quants, the ternary
// formats and the FP4 formats. Included by cuda_matmul.cu after its Fmt template and decoders; it
// reopens that file's anonymous namespace.
//
// These formats keep their GGUF layout on the device (no re-layout at upload): a chunk is the 32
// weights of one sub-block, read with byte loads because the blocks (66, 74, 82, 98, 110, 50, 56,
// 136, 54, 17, 36 bytes) are not 16-byte multiples. The decoders repeat the scalar reference
// decoders' operations in the same order, so the host run of the same code (decode_gpu_layout_host)
// is bit-exact with them. The codebooks live in device globals filled from the host tables
// (quant/iq_grids.h) by ensure_iq_tables() before the first upload of such a weight.
#pragma once
#include <mutex>

#include "quant/block_iq1_m.h"
#include "quant/block_iq1_s.h"
#include "quant/block_iq2_s.h"
#include "quant/block_iq2_xs.h"
#include "quant/block_iq2_xxs.h"
#include "quant/block_iq3_s.h"
#include "quant/block_iq3_xxs.h"
#include "quant/block_iq4_xs.h"
#include "quant/block_mxfp4.h"
#include "quant/block_nvfp4.h"
#include "quant/block_tq1_0.h"
#include "quant/block_tq2_0.h"
#include "quant/iq_grids.h"

namespace qleap::cuda {
namespace {

__device__ uint8_t d_kIqKsigns[128];
__device__ int8_t d_kFp4Values[16];
__device__ int8_t d_kIq4nlValues[16];
__device__ uint64_t d_kIq2xxsGrid[256];
__device__ uint64_t d_kIq2xsGrid[512];
__device__ uint64_t d_kIq2sGrid[1024];
__device__ uint32_t d_kIq3xxsGrid[256];
__device__ uint32_t d_kIq3sGrid[512];
__device__ uint64_t d_kIq1sGrid[2048];

// The device copy in device code, the host table on the host.
#ifdef __CUDA_ARCH__
#define QL_IQ_TABLE(name) d_##name
#else
#define QL_IQ_TABLE(name) name
#endif

void ensure_iq_tables() {
  static std::once_flag once;
  std::call_once(once, [] {
    QL_CUDA(cudaMemcpyToSymbol(d_kIqKsigns, kIqKsigns, sizeof(kIqKsigns)));
    QL_CUDA(cudaMemcpyToSymbol(d_kFp4Values, kFp4Values, sizeof(kFp4Values)));
    QL_CUDA(cudaMemcpyToSymbol(d_kIq4nlValues, kIq4nlValues, sizeof(kIq4nlValues)));
    QL_CUDA(cudaMemcpyToSymbol(d_kIq2xxsGrid, kIq2xxsGrid, sizeof(kIq2xxsGrid)));
    QL_CUDA(cudaMemcpyToSymbol(d_kIq2xsGrid, kIq2xsGrid, sizeof(kIq2xsGrid)));
    QL_CUDA(cudaMemcpyToSymbol(d_kIq2sGrid, kIq2sGrid, sizeof(kIq2sGrid)));
    QL_CUDA(cudaMemcpyToSymbol(d_kIq3xxsGrid, kIq3xxsGrid, sizeof(kIq3xxsGrid)));
    QL_CUDA(cudaMemcpyToSymbol(d_kIq3sGrid, kIq3sGrid, sizeof(kIq3sGrid)));
    QL_CUDA(cudaMemcpyToSymbol(d_kIq1sGrid, kIq1sGrid, sizeof(kIq1sGrid)));
  });
}

__host__ __device__ __forceinline__ uint32_t ld16(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8);
}
__host__ __device__ __forceinline__ uint32_t ld32(const uint8_t* p) {
  return ld16(p) | (ld16(p + 2) << 16);
}
__host__ __device__ __forceinline__ float signed_val(float v, uint32_t neg) {
  return neg ? -v : v;
}
// ue4m3_to_fp32_half (quant/block_nvfp4.h) for device code: the same exact operations.
__host__ __device__ __forceinline__ float ue4m3_half(uint32_t x) {
  if (x == 0 || x == 0x7F) return 0.0f;
  const int exp = (x >> 3) & 0xF, man = x & 7;
  const float v = exp == 0 ? float(man) * (1.0f / 512.0f)
                           : (1.0f + float(man) / 8.0f) * float(1 << exp) * (1.0f / 128.0f);
  return v * 0.5f;
}

// Shared shape of every format here: 32 weights per chunk, one run.
struct IqFmtBase {
  static constexpr int kVals = 32, kRun = 32, kRuns = 1;
  static constexpr bool kPad = false;
  __host__ __device__ static int chunks(int cols) { return cols / 32; }
};

template <>
struct Fmt<GgmlType::IQ2_XXS> : IqFmtBase {
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint8_t* b = r + 66 * size_t(c >> 3);
    const int ib = c & 7;
    const float d = h2f(uint16_t(ld16(b)));
    const uint32_t a0 = ld32(b + 2 + 8 * ib), a1 = ld32(b + 6 + 8 * ib);
    const float db = d * (0.5f + float(a1 >> 28)) * 0.25f;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint64_t g = QL_IQ_TABLE(kIq2xxsGrid)[(a0 >> (8 * k)) & 0xFF];
      const uint32_t s = QL_IQ_TABLE(kIqKsigns)[(a1 >> (7 * k)) & 0x7F];
#pragma unroll
      for (int j = 0; j < 8; ++j) v[8 * k + j] = signed_val(db * float(uint8_t(g >> (8 * j))), (s >> j) & 1);
    }
    col0[0] = 32 * c;
  }
};

template <>
struct Fmt<GgmlType::IQ2_XS> : IqFmtBase {
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint8_t* b = r + 74 * size_t(c >> 3);
    const int ib = c & 7;
    const float d = h2f(uint16_t(ld16(b)));
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int l = 4 * ib + k;
      const uint32_t q = ld16(b + 2 + 2 * l);
      const float db = d * (0.5f + float((b[66 + l / 4] >> (4 * ((l / 2) % 2))) & 0xF)) * 0.25f;
      const uint64_t g = QL_IQ_TABLE(kIq2xsGrid)[q & 511];
      const uint32_t s = QL_IQ_TABLE(kIqKsigns)[q >> 9];
#pragma unroll
      for (int j = 0; j < 8; ++j) v[8 * k + j] = signed_val(db * float(uint8_t(g >> (8 * j))), (s >> j) & 1);
    }
    col0[0] = 32 * c;
  }
};

template <>
struct Fmt<GgmlType::IQ2_S> : IqFmtBase {
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint8_t* b = r + 82 * size_t(c >> 3);
    const int ib = c & 7;
    const float d = h2f(uint16_t(ld16(b)));
    const uint32_t qh = b[66 + ib];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int l = 4 * ib + k;
      const float db = d * (0.5f + float((b[74 + l / 4] >> (4 * ((l / 2) % 2))) & 0xF)) * 0.25f;
      const uint64_t g = QL_IQ_TABLE(kIq2sGrid)[b[2 + l] | (((qh >> (2 * k)) & 3) << 8)];
      const uint32_t s = b[34 + l];
#pragma unroll
      for (int j = 0; j < 8; ++j) v[8 * k + j] = signed_val(db * float(uint8_t(g >> (8 * j))), (s >> j) & 1);
    }
    col0[0] = 32 * c;
  }
};

template <>
struct Fmt<GgmlType::IQ3_XXS> : IqFmtBase {
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint8_t* b = r + 98 * size_t(c >> 3);
    const int ib = c & 7;
    const float d = h2f(uint16_t(ld16(b)));
    const uint32_t a = ld32(b + 66 + 4 * ib);
    const float db = d * (0.5f + float(a >> 28)) * 0.5f;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint32_t s = QL_IQ_TABLE(kIqKsigns)[(a >> (7 * k)) & 0x7F];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint32_t g = QL_IQ_TABLE(kIq3xxsGrid)[b[2 + 8 * ib + 2 * k + j / 4]];
        v[8 * k + j] = signed_val(db * float(uint8_t(g >> (8 * (j % 4)))), (s >> j) & 1);
      }
    }
    col0[0] = 32 * c;
  }
};

template <>
struct Fmt<GgmlType::IQ3_S> : IqFmtBase {
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint8_t* b = r + 110 * size_t(c >> 3);
    const int ib = c & 7;
    const float d = h2f(uint16_t(ld16(b)));
    const float db = d * float(1 + 2 * ((b[106 + ib / 2] >> (4 * (ib % 2))) & 0xF));
    const uint32_t qh = b[66 + ib];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const uint32_t g = QL_IQ_TABLE(kIq3sGrid)[b[2 + 8 * ib + k] | (((qh >> k) & 1) << 8)];
      const uint32_t s = b[74 + 4 * ib + k / 2];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        v[4 * k + j] = signed_val(db * float(uint8_t(g >> (8 * j))), (s >> (4 * (k % 2) + j)) & 1);
      }
    }
    col0[0] = 32 * c;
  }
};

template <>
struct Fmt<GgmlType::IQ1_S> : IqFmtBase {
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint8_t* b = r + 50 * size_t(c >> 3);
    const int ib = c & 7;
    const float d = h2f(uint16_t(ld16(b)));
    const uint32_t h = ld16(b + 34 + 2 * ib);
    const float dl = d * float(2 * ((h >> 12) & 7) + 1);
    const float delta = (h & 0x8000) ? -kIq1Delta : kIq1Delta;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint64_t g = QL_IQ_TABLE(kIq1sGrid)[b[2 + 4 * ib + k] | (((h >> (3 * k)) & 7) << 8)];
#pragma unroll
      for (int j = 0; j < 8; ++j) v[8 * k + j] = dl * (float(int8_t(g >> (8 * j))) + delta);
    }
    col0[0] = 32 * c;
  }
};

template <>
struct Fmt<GgmlType::IQ1_M> : IqFmtBase {
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint8_t* b = r + 56 * size_t(c >> 3);
    const int ib = c & 7;
    const uint32_t s0 = ld16(b + 48), s1 = ld16(b + 50), s2 = ld16(b + 52), s3 = ld16(b + 54);
    const float d = h2f(uint16_t((s0 >> 12) | ((s1 >> 8) & 0x00F0) | ((s2 >> 4) & 0x0F00) | (s3 & 0xF000)));
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int s = 2 * ib + half;
      const uint32_t w = s / 4 == 0 ? s0 : s / 4 == 1 ? s1 : s / 4 == 2 ? s2 : s3;
      const float dl = d * float(2 * ((w >> (3 * (s % 4))) & 7) + 1);
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int l = 2 * s + k;
        const uint32_t h = (b[32 + l / 2] >> (4 * (l % 2))) & 0xF;
        const float delta = (h & 8) ? -kIq1Delta : kIq1Delta;
        const uint64_t g = QL_IQ_TABLE(kIq1sGrid)[b[l] | ((h & 7) << 8)];
#pragma unroll
        for (int j = 0; j < 8; ++j) v[16 * half + 8 * k + j] = dl * (float(int8_t(g >> (8 * j))) + delta);
      }
    }
    col0[0] = 32 * c;
  }
};

template <>
struct Fmt<GgmlType::IQ4_XS> : IqFmtBase {
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint8_t* b = r + 136 * size_t(c >> 3);
    const int ib = c & 7;
    const float d = h2f(uint16_t(ld16(b)));
    const int ls =
        int(((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | (((ld16(b + 2) >> (2 * ib)) & 3) << 4)) - 32;
    const float dl = d * float(ls);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const uint32_t q = b[8 + 16 * ib + j];
      v[j] = dl * float(QL_IQ_TABLE(kIq4nlValues)[q & 0xF]);
      v[16 + j] = dl * float(QL_IQ_TABLE(kIq4nlValues)[q >> 4]);
    }
    col0[0] = 32 * c;
  }
};

template <>
struct Fmt<GgmlType::TQ1_0> : IqFmtBase {
  __host__ __device__ static int trit(uint32_t byte, int k) {
    const uint32_t p = k == 0 ? 1 : k == 1 ? 3 : k == 2 ? 9 : k == 3 ? 27 : 81;
    return int(((byte * p) & 0xFF) * 3) >> 8;
  }
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint8_t* b = r + 54 * size_t(c >> 3);
    const int ib = c & 7;
    const float d = h2f(uint16_t(ld16(b + 52)));
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int e = 32 * ib + j;
      int t;
      if (e < 160) {
        t = trit(b[e % 32], e / 32);
      } else if (e < 240) {
        t = trit(b[32 + (e - 160) % 16], (e - 160) / 16);
      } else {
        t = trit(b[48 + (e - 240) % 4], (e - 240) / 4);
      }
      v[j] = d * float(t - 1);
    }
    col0[0] = 32 * c;
  }
};

template <>
struct Fmt<GgmlType::TQ2_0> : IqFmtBase {
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint8_t* b = r + 66 * size_t(c >> 3);
    const int ib = c & 7;
    const float d = h2f(uint16_t(ld16(b + 64)));
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int q = (b[32 * (ib / 4) + j] >> (2 * (ib % 4))) & 3;
      v[j] = d * float(q - 1);
    }
    col0[0] = 32 * c;
  }
};

template <>
struct Fmt<GgmlType::MXFP4> : IqFmtBase {
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint8_t* b = r + 17 * size_t(c);
    const uint32_t e = b[0];
    const float d = u2f(e < 2 ? uint32_t(0x00200000) << e : (e - 1) << 23);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const uint32_t q = b[1 + j];
      v[j] = d * float(QL_IQ_TABLE(kFp4Values)[q & 0xF]);
      v[16 + j] = d * float(QL_IQ_TABLE(kFp4Values)[q >> 4]);
    }
    col0[0] = 32 * c;
  }
};

template <>
struct Fmt<GgmlType::NVFP4> : IqFmtBase {
  __host__ __device__ static void decode(const uint8_t* r, int, int c, float* v, int* col0) {
    const uint8_t* b = r + 36 * size_t(c >> 1);
    const int h = c & 1;
#pragma unroll
    for (int g = 0; g < 2; ++g) {
      const int s = 2 * h + g;
      const float d = ue4m3_half(b[s]);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint32_t q = b[4 + 8 * s + j];
        v[16 * g + j] = d * float(QL_IQ_TABLE(kFp4Values)[q & 0xF]);
        v[16 * g + 8 + j] = d * float(QL_IQ_TABLE(kFp4Values)[q >> 4]);
      }
    }
    col0[0] = 32 * c;
  }
};

#undef QL_IQ_TABLE

// Cases for cuda_matmul.cu's QL_DISPATCH.
#define QL_IQ_CASES(FN, ...)            \
  case GgmlType::IQ2_XXS:               \
    FN<GgmlType::IQ2_XXS>(__VA_ARGS__); \
    break;                              \
  case GgmlType::IQ2_XS:                \
    FN<GgmlType::IQ2_XS>(__VA_ARGS__);  \
    break;                              \
  case GgmlType::IQ2_S:                 \
    FN<GgmlType::IQ2_S>(__VA_ARGS__);   \
    break;                              \
  case GgmlType::IQ3_XXS:               \
    FN<GgmlType::IQ3_XXS>(__VA_ARGS__); \
    break;                              \
  case GgmlType::IQ3_S:                 \
    FN<GgmlType::IQ3_S>(__VA_ARGS__);   \
    break;                              \
  case GgmlType::IQ1_S:                 \
    FN<GgmlType::IQ1_S>(__VA_ARGS__);   \
    break;                              \
  case GgmlType::IQ1_M:                 \
    FN<GgmlType::IQ1_M>(__VA_ARGS__);   \
    break;                              \
  case GgmlType::IQ4_XS:                \
    FN<GgmlType::IQ4_XS>(__VA_ARGS__);  \
    break;                              \
  case GgmlType::TQ1_0:                 \
    FN<GgmlType::TQ1_0>(__VA_ARGS__);   \
    break;                              \
  case GgmlType::TQ2_0:                 \
    FN<GgmlType::TQ2_0>(__VA_ARGS__);   \
    break;                              \
  case GgmlType::MXFP4:                 \
    FN<GgmlType::MXFP4>(__VA_ARGS__);   \
    break;                              \
  case GgmlType::NVFP4:                 \
    FN<GgmlType::NVFP4>(__VA_ARGS__);   \
    break;

bool is_iq_format(GgmlType t) {
  switch (t) {
    case GgmlType::IQ2_XXS:
    case GgmlType::IQ2_XS:
    case GgmlType::IQ2_S:
    case GgmlType::IQ3_XXS:
    case GgmlType::IQ3_S:
    case GgmlType::IQ1_S:
    case GgmlType::IQ1_M:
    case GgmlType::IQ4_XS:
    case GgmlType::TQ1_0:
    case GgmlType::TQ2_0:
    case GgmlType::MXFP4:
    case GgmlType::NVFP4:
      return true;
    default:
      return false;
  }
}

}  // namespace
}  // namespace qleap::cuda
