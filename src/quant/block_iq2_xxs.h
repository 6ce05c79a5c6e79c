// IQ2_XXS (2.06 bits/weight): 256 weights in 8 sub-blocks of 32. Each sub-block is two uint32:
// the first holds four 8-bit indices into kIq2xxsGrid (8 magnitudes each), the second four 7-bit
// sign indices into kIqKsigns (bits 7k..7k+6) and a 4-bit scale ls in its top bits.
// w = d * (0.5 + ls) * 0.25 * grid * sign.
#pragma once
#include <cstdint>
#include <cstring>

#include "core/fp16.h"
#include "quant/block_common.h"
#include "quant/iq_grids.h"

namespace qleap {

struct BlockIq2Xxs {
  uint16_t d;
  uint16_t qs[kQKK / 8];
};
static_assert(sizeof(BlockIq2Xxs) == 66);

inline void dequantize_block_ref(const BlockIq2Xxs& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  for (int ib = 0; ib < 8; ++ib) {
    uint32_t aux[2];
    std::memcpy(aux, b.qs + 4 * ib, 8);
    const float db = d * (0.5f + float(aux[1] >> 28)) * 0.25f;
    for (int k = 0; k < 4; ++k) {
      const uint64_t g = kIq2xxsGrid[(aux[0] >> (8 * k)) & 0xFF];
      const uint8_t signs = kIqKsigns[(aux[1] >> (7 * k)) & 0x7F];
      for (int j = 0; j < 8; ++j) {
        const float v = db * float(uint8_t(g >> (8 * j)));
        y[32 * ib + 8 * k + j] = (signs >> j) & 1 ? -v : v;
      }
    }
  }
}

}  // namespace qleap
