// IQ3_S (3.44 bits/weight): 256 weights; 64 codes of 9 bits (qs low 8 bits, one more from qh)
// indexing kIq3sGrid (4 magnitudes), one explicit sign bit per weight, a 4-bit scale s per 32
// weights. w = d * (1 + 2 * s) * grid * sign.
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"
#include "quant/iq_grids.h"

namespace qleap {

struct BlockIq3S {
  uint16_t d;
  uint8_t qs[kQKK / 4];
  uint8_t qh[kQKK / 32];
  uint8_t signs[kQKK / 8];
  uint8_t scales[kQKK / 64];
};
static_assert(sizeof(BlockIq3S) == 110);

inline void dequantize_block_ref(const BlockIq3S& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  for (int l = 0; l < 64; ++l) {
    const int ib = l / 8;
    const float db = d * float(1 + 2 * ((b.scales[ib / 2] >> (4 * (ib % 2))) & 0xF));
    const uint32_t g = kIq3sGrid[b.qs[l] | (((b.qh[l / 8] >> (l % 8)) & 1) << 8)];
    for (int j = 0; j < 4; ++j) {
      const int e = 4 * l + j;
      const float v = db * float(uint8_t(g >> (8 * j)));
      y[e] = (b.signs[e / 8] >> (e % 8)) & 1 ? -v : v;
    }
  }
}

}  // namespace qleap
