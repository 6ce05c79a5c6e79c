// Q4_0: 32 weights = fp16 scale d + 16 bytes of nibbles; element i < 16 is the low nibble of qs[i],
// element i + 16 its high nibble; w = d * (q - 8).
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"

namespace qleap {

struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_0) == 18);

inline void dequantize_block_ref(const BlockQ4_0& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  for (int i = 0; i < kQK / 2; ++i) {
    y[i] = float((b.qs[i] & 0xF) - 8) * d;
    y[i + kQK / 2] = float((b.qs[i] >> 4) - 8) * d;
  }
}

}  // namespace qleap
