// Q8_K: the activation format the K-quant dot products run against: 256 values = f32 scale d,
// 256 int8, and the sums of each group of 16 (bsums) so weight minimums cost no extra pass.
#pragma once
#include <cstdint>

#include "quant/block_common.h"

namespace qleap {

struct BlockQ8_K {
  float d;
  int8_t qs[kQKK];
  int16_t bsums[kQKK / 16];
};
static_assert(sizeof(BlockQ8_K) == 292);

inline void dequantize_block_ref(const BlockQ8_K& b, float* y) {
  for (int i = 0; i < kQKK; ++i) y[i] = b.d * float(b.qs[i]);
}

}  // namespace qleap
