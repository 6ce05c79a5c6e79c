#include "quant/quant.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "quant/block_iq1_m.h"
#include "quant/block_iq1_s.h"
#include "quant/block_iq2_s.h"
#include "quant/block_iq2_xs.h"
#include "quant/block_iq2_xxs.h"
#include "quant/block_iq3_s.h"
#include "quant/block_iq3_xxs.h"
#include "quant/block_iq4_nl.h"
#include "quant/block_iq4_xs.h"
#include "quant/block_mxfp4.h"
#include "quant/block_nvfp4.h"
#include "quant/block_q2_k.h"
#include "quant/block_q3_k.h"
#include "quant/block_q4_0.h"
#include "quant/block_q4_1.h"
#include "quant/block_q4_k.h"
#include "quant/block_q5_0.h"
#include "quant/block_q5_1.h"
#include "quant/block_q5_k.h"
#include "quant/block_q6_k.h"
#include "quant/block_q8_0.h"
#include "quant/block_q8_k.h"
#include "quant/block_tq1_0.h"
#include "quant/block_tq2_0.h"
#include "quant/quant_encode.h"

namespace qleap {
namespace {

template <typename Block, int kBlockElems>
void dequant_blocks(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const Block*>(src);
  for (int64_t i = 0; i < n / kBlockElems; ++i) dequantize_block_ref(b[i], dst + i * kBlockElems);
}

// Integer and F64 tensors: a plain conversion (round to nearest even), as numpy's astype(float32).
template <typename T>
void convert_elems(const void* src, float* dst, int64_t n) {
  const auto* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, p + size_t(i) * sizeof(T), sizeof(T));
    dst[i] = float(v);
  }
}

void check_multiple(GgmlType t, int64_t n) {
  const auto& tr = type_traits(t);
  if (tr.block_size <= 0 || n % tr.block_size != 0) {
    throw InvalidArgument(
        fmt::format("row of {} elements is not a whole number of {} blocks", n, type_name(t)));
  }
}

}  // namespace

void dequantize_row_ref(GgmlType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case GgmlType::F16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32_ref(s[i]);
      return;
    }
    case GgmlType::BF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
      return;
    }
    case GgmlType::I8:
      return convert_elems<int8_t>(src, dst, n);
    case GgmlType::I16:
      return convert_elems<int16_t>(src, dst, n);
    case GgmlType::I32:
      return convert_elems<int32_t>(src, dst, n);
    case GgmlType::I64:
      return convert_elems<int64_t>(src, dst, n);
    case GgmlType::F64:
      return convert_elems<double>(src, dst, n);
    default:
      break;
  }
  check_multiple(t, n);
  switch (t) {
    case GgmlType::Q8_0:
      return dequant_blocks<BlockQ8_0, kQK>(src, dst, n);
    case GgmlType::Q4_0:
      return dequant_blocks<BlockQ4_0, kQK>(src, dst, n);
    case GgmlType::Q4_1:
      return dequant_blocks<BlockQ4_1, kQK>(src, dst, n);
    case GgmlType::Q5_0:
      return dequant_blocks<BlockQ5_0, kQK>(src, dst, n);
    case GgmlType::Q5_1:
      return dequant_blocks<BlockQ5_1, kQK>(src, dst, n);
    case GgmlType::IQ4_NL:
      return dequant_blocks<BlockIq4Nl, kQK>(src, dst, n);
    case GgmlType::Q8_K:
      return dequant_blocks<BlockQ8_K, kQKK>(src, dst, n);
    case GgmlType::Q2_K:
      return dequant_blocks<BlockQ2_K, kQKK>(src, dst, n);
    case GgmlType::Q3_K:
      return dequant_blocks<BlockQ3_K, kQKK>(src, dst, n);
    case GgmlType::Q4_K:
      return dequant_blocks<BlockQ4_K, kQKK>(src, dst, n);
    case GgmlType::Q5_K:
      return dequant_blocks<BlockQ5_K, kQKK>(src, dst, n);
    case GgmlType::Q6_K:
      return dequant_blocks<BlockQ6_K, kQKK>(src, dst, n);
    case GgmlType::IQ2_XXS:
      return dequant_blocks<BlockIq2Xxs, kQKK>(src, dst, n);
    case GgmlType::IQ2_XS:
      return dequant_blocks<BlockIq2Xs, kQKK>(src, dst, n);
    case GgmlType::IQ2_S:
      return dequant_blocks<BlockIq2S, kQKK>(src, dst, n);
    case GgmlType::IQ3_XXS:
      return dequant_blocks<BlockIq3Xxs, kQKK>(src, dst, n);
    case GgmlType::IQ3_S:
      return dequant_blocks<BlockIq3S, kQKK>(src, dst, n);
    case GgmlType::IQ1_S:
      return dequant_blocks<BlockIq1S, kQKK>(src, dst, n);
    case GgmlType::IQ1_M:
      return dequant_blocks<BlockIq1M, kQKK>(src, dst, n);
    case GgmlType::IQ4_XS:
      return dequant_blocks<BlockIq4Xs, kQKK>(src, dst, n);
    case GgmlType::TQ1_0:
      return dequant_blocks<BlockTq1_0, kQKK>(src, dst, n);
    case GgmlType::TQ2_0:
      return dequant_blocks<BlockTq2_0, kQKK>(src, dst, n);
    case GgmlType::MXFP4:
      return dequant_blocks<BlockMxfp4, kQK>(src, dst, n);
    case GgmlType::NVFP4:
      return dequant_blocks<BlockNvfp4, kQKNv>(src, dst, n);
    default:
      throw Unsupported(fmt::format("no decoder for tensor type {}", type_name(t)));
  }
}

bool can_quantize(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::IQ4_NL:
    case GgmlType::Q8_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::TQ1_0:
    case GgmlType::TQ2_0:
    case GgmlType::MXFP4:
    case GgmlType::NVFP4:
    case GgmlType::IQ4_XS:
      return true;
    default:
      return false;
  }
}

void quantize_row_ref(GgmlType t, const float* src, void* dst, int64_t n) {
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case GgmlType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_fp16_ref(src[i]);
      return;
    }
    case GgmlType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_bf16(src[i]);
      return;
    }
    default:
      break;
  }
  if (!can_quantize(t)) throw Unsupported(fmt::format("no encoder for tensor type {}", type_name(t)));
  check_multiple(t, n);
  // Block scales are derived from the values; NaN or inf would poison whole blocks (and the
  // float-to-int rounding would be undefined), so refuse them at this boundary.
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(src[i])) {
      throw InvalidArgument(
          fmt::format("cannot quantize non-finite value at element {} to {}", i, type_name(t)));
    }
  }
  const int64_t bs = type_traits(t).block_size;
  const size_t ts = type_traits(t).type_size;
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n / bs; ++i) {
    const float* x = src + i * bs;
    void* b = out + size_t(i) * ts;
    switch (t) {
      case GgmlType::Q8_0:
        quantize_block_ref(x, static_cast<BlockQ8_0*>(b));
        break;
      case GgmlType::Q4_0:
        quantize_block_ref(x, static_cast<BlockQ4_0*>(b));
        break;
      case GgmlType::Q4_1:
        quantize_block_ref(x, static_cast<BlockQ4_1*>(b));
        break;
      case GgmlType::Q5_0:
        quantize_block_ref(x, static_cast<BlockQ5_0*>(b));
        break;
      case GgmlType::Q5_1:
        quantize_block_ref(x, static_cast<BlockQ5_1*>(b));
        break;
      case GgmlType::IQ4_NL:
        quantize_block_ref(x, static_cast<BlockIq4Nl*>(b));
        break;
      case GgmlType::Q8_K:
        quantize_block_ref(x, static_cast<BlockQ8_K*>(b));
        break;
      case GgmlType::Q4_K:
        quantize_block_ref(x, static_cast<BlockQ4_K*>(b));
        break;
      case GgmlType::Q5_K:
        quantize_block_ref(x, static_cast<BlockQ5_K*>(b));
        break;
      case GgmlType::Q6_K:
        quantize_block_ref(x, static_cast<BlockQ6_K*>(b));
        break;
      case GgmlType::TQ1_0:
        quantize_block_ref(x, static_cast<BlockTq1_0*>(b));
        break;
      case GgmlType::TQ2_0:
        quantize_block_ref(x, static_cast<BlockTq2_0*>(b));
        break;
      case GgmlType::MXFP4:
        quantize_block_ref(x, static_cast<BlockMxfp4*>(b));
        break;
      case GgmlType::NVFP4:
        quantize_block_ref(x, static_cast<BlockNvfp4*>(b));
        break;
      case GgmlType::IQ4_XS:
        quantize_block_ref(x, static_cast<BlockIq4Xs*>(b));
        break;
      default:
        throw Unsupported(fmt::format("no encoder for tensor type {}", type_name(t)));
    }
  }
}

}  // namespace qleap
