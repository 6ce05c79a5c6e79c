// Q4_K: 256 weights in 8 sub-blocks of 32, each with a 6-bit scale and 6-bit min (12 packed bytes);
// sub-block 2g is the low nibbles of qs[32g .. 32g+31], 2g+1 the high nibbles.
// w = d * sc * q - dmin * m.
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"

namespace qleap {

struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qs[kQKK / 2];
};
static_assert(sizeof(BlockQ4_K) == 144);

inline void dequantize_block_ref(const BlockQ4_K& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  const float dmin = fp16_to_fp32_ref(b.dmin);
  for (int s = 0; s < 8; ++s) {
    uint8_t sc, m;
    get_scale_min_k4(s, b.scales, &sc, &m);
    const float d1 = d * float(sc), m1 = dmin * float(m);
    const uint8_t* q = b.qs + 32 * (s / 2);
    const int shift = 4 * (s % 2);
    for (int l = 0; l < 32; ++l) y[s * 32 + l] = d1 * float((q[l] >> shift) & 0xF) - m1;
  }
}

}  // namespace qleap
