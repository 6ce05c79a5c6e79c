// Q5_1: 32 weights = fp16 scale d, fp16 min m, 32 high bits, 16 bytes of low nibbles; w = d * q + m.
#pragma once
#include <cstdint>
#include <cstring>

#include "core/fp16.h"
#include "quant/block_common.h"

namespace qleap {

struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5_1) == 24);

inline void dequantize_block_ref(const BlockQ5_1& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  const float m = fp16_to_fp32_ref(b.m);
  uint32_t qh;
  std::memcpy(&qh, b.qh, 4);
  for (int i = 0; i < kQK / 2; ++i) {
    const int lo = (b.qs[i] & 0xF) | int(((qh >> i) & 1) << 4);
    const int hi = (b.qs[i] >> 4) | int(((qh >> (i + 16)) & 1) << 4);
    y[i] = float(lo) * d + m;
    y[i + kQK / 2] = float(hi) * d + m;
  }
}

}  // namespace qleap
