// IQ4_XS (4.25 bits/weight): 256 weights in 8 sub-blocks of 32, each with a 6-bit scale (low 4
// bits in scales_l nibbles, high 2 in scales_h) and 4-bit codes into the IQ4_NL codebook, laid out
// per sub-block as IQ4_NL's nibbles. w = d * (ls - 32) * kIq4nlValues[q].
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"
#include "quant/block_iq4_nl.h"

namespace qleap {

struct BlockIq4Xs {
  uint16_t d;
  uint16_t scales_h;
  uint8_t scales_l[kQKK / 64];
  uint8_t qs[kQKK / 2];
};
static_assert(sizeof(BlockIq4Xs) == 136);

inline int iq4xs_scale(const BlockIq4Xs& b, int ib) {
  return int(((b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) | (((b.scales_h >> (2 * ib)) & 3) << 4)) - 32;
}

inline void dequantize_block_ref(const BlockIq4Xs& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  for (int ib = 0; ib < 8; ++ib) {
    const float dl = d * float(iq4xs_scale(b, ib));
    const uint8_t* q = b.qs + 16 * ib;
    for (int j = 0; j < 16; ++j) {
      y[32 * ib + j] = dl * float(kIq4nlValues[q[j] & 0xF]);
      y[32 * ib + 16 + j] = dl * float(kIq4nlValues[q[j] >> 4]);
    }
  }
}

}  // namespace qleap
