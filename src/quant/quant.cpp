#include "quant/quant.h"

#include <fmt/format.h>

#include <cstring>

#include "core/error.h"
#include "core/fp16.h"

namespace qleap {

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
    default:
      throw Unsupported(fmt::format("no decoder for tensor type {}", type_name(t)));
  }
}

void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n) { dequantize_row_ref(t, src, dst, n); }

bool can_quantize(GgmlType t) { return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16; }

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
      throw Unsupported(fmt::format("no encoder for tensor type {}", type_name(t)));
  }
}

}  // namespace qleap
