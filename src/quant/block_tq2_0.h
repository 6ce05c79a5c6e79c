// TQ2_0 (2.06 bits/weight): ternary weights as 2-bit codes q in {0, 1, 2}; weight
// 128h + 32k + j is bits 2k of qs[32h + j]. w = d * (q - 1).
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"

namespace qleap {

struct BlockTq2_0 {
  uint8_t qs[kQKK / 4];
  uint16_t d;
};
static_assert(sizeof(BlockTq2_0) == 66);

inline void dequantize_block_ref(const BlockTq2_0& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  for (int e = 0; e < kQKK; ++e) {
    const int q = (b.qs[32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
    y[e] = d * float(q - 1);
  }
}

}  // namespace qleap
