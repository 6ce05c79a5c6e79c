// IQ2_S (2.56 bits/weight): 256 weights; 32 codes of 10 bits (qs low 8 bits, 2 more from qh)
// indexing kIq2sGrid (8 magnitudes), one explicit sign bit per weight, a 4-bit scale per 16 weights.
// w = d * (0.5 + ls) * 0.25 * grid * sign.
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"
#include "quant/iq_grids.h"

namespace qleap {

struct BlockIq2S {
  uint16_t d;
  uint8_t qs[kQKK / 8];
  uint8_t signs[kQKK / 8];
  uint8_t qh[kQKK / 32];
  uint8_t scales[kQKK / 32];
};
static_assert(sizeof(BlockIq2S) == 82);

inline void dequantize_block_ref(const BlockIq2S& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  for (int l = 0; l < 32; ++l) {
    const int ls = (b.scales[l / 4] >> (4 * ((l / 2) % 2))) & 0xF;
    const float db = d * (0.5f + float(ls)) * 0.25f;
    const uint64_t g = kIq2sGrid[b.qs[l] | (((b.qh[l / 4] >> (2 * (l % 4))) & 3) << 8)];
    for (int j = 0; j < 8; ++j) {
      const float v = db * float(uint8_t(g >> (8 * j)));
      y[8 * l + j] = (b.signs[l] >> j) & 1 ? -v : v;
    }
  }
}

}  // namespace qleap
