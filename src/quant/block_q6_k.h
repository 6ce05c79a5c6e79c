// Q6_K: 256 weights in 16 groups of 16 with int8 scales; 6-bit quants offset by 32.
// Element h*128 + k*32 + l: low 4 bits from ql[h*64 + (k%2)*32 + l] (nibble k/2), high 2 bits
// from qh[h*32 + l] >> 2k. w = d * sc * (q - 32).
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"

namespace qleap {

struct BlockQ6_K {
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  uint16_t d;
};
static_assert(sizeof(BlockQ6_K) == 210);

inline int q6_k_value(const BlockQ6_K& b, int e) {
  const int h = e / 128, k = (e / 32) % 4, l = e % 32;
  const int lo = (b.ql[h * 64 + (k % 2) * 32 + l] >> (4 * (k / 2))) & 0xF;
  const int hi = (b.qh[h * 32 + l] >> (2 * k)) & 3;
  return (lo | (hi << 4)) - 32;
}

inline void dequantize_block_ref(const BlockQ6_K& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  for (int e = 0; e < kQKK; ++e) {
    const float dl = d * float(b.scales[e / 16]);
    y[e] = dl * float(q6_k_value(b, e));
  }
}

}  // namespace qleap
