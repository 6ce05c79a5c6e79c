// Q4_1: 32 weights = fp16 scale d, fp16 min m, 16 bytes of nibbles (layout as Q4_0); w = d * q + m.
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"

namespace qleap {

struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_1) == 20);

inline void dequantize_block_ref(const BlockQ4_1& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  const float m = fp16_to_fp32_ref(b.m);
  for (int i = 0; i < kQK / 2; ++i) {
    y[i] = float(b.qs[i] & 0xF) * d + m;
    y[i + kQK / 2] = float(b.qs[i] >> 4) * d + m;
  }
}

}  // namespace qleap
