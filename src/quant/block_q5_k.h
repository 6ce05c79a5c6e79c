// Q5_K: Q4_K plus a fifth bit: sub-block s takes bit s of qh[l] as bit 4 of element l.
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"

namespace qleap {

struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
static_assert(sizeof(BlockQ5_K) == 176);

inline void dequantize_block_ref(const BlockQ5_K& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  const float dmin = fp16_to_fp32_ref(b.dmin);
  for (int s = 0; s < 8; ++s) {
    uint8_t sc, m;
    get_scale_min_k4(s, b.scales, &sc, &m);
    const float d1 = d * float(sc), m1 = dmin * float(m);
    const uint8_t* q = b.qs + 32 * (s / 2);
    const int shift = 4 * (s % 2);
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0xF) | (((b.qh[l] >> s) & 1) << 4);
      y[s * 32 + l] = d1 * float(v) - m1;
    }
  }
}

}  // namespace qleap
