// Q8_0: 32 weights = fp16 scale d + 32 int8; w = d * q.
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"

namespace qleap {

struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8_0) == 34);

inline void dequantize_block_ref(const BlockQ8_0& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  for (int i = 0; i < kQK; ++i) y[i] = float(b.qs[i]) * d;
}

}  // namespace qleap
