// Q5_0: 32 weights = fp16 scale d, 32 high bits qh (bit i -> element i, little-endian u32), 16 bytes
// of low nibbles (layout as Q4_0); w = d * (q - 16).
#pragma once
#include <cstdint>
#include <cstring>

#include "core/fp16.h"
#include "quant/block_common.h"

namespace qleap {

struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5_0) == 22);

inline void dequantize_block_ref(const BlockQ5_0& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  uint32_t qh;
  std::memcpy(&qh, b.qh, 4);
  for (int i = 0; i < kQK / 2; ++i) {
    const int lo = (b.qs[i] & 0xF) | int(((qh >> i) & 1) << 4);
    const int hi = (b.qs[i] >> 4) | int(((qh >> (i + 16)) & 1) << 4);
    y[i] = float(lo - 16) * d;
    y[i + kQK / 2] = float(hi - 16) * d;
  }
}

}  // namespace qleap
