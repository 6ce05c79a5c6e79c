// IQ1_M (1.75 bits/weight): 256 weights; 32 codes of 11 bits (qs low 8 bits, 3 more from a qh
// nibble whose fourth bit is the delta sign of those 8 weights) indexing kIq1sGrid; a 3-bit scale
// per 16 weights in scales (four uint16, bits 3k..3k+2), and the fp16 super-block scale spread
// over the top nibbles of those four uint16. w = d * (2s + 1) * (grid + delta), delta = +-1/8.
#pragma once
#include <cstdint>
#include <cstring>

#include "core/fp16.h"
#include "quant/block_common.h"
#include "quant/block_iq1_s.h"
#include "quant/iq_grids.h"

namespace qleap {

struct BlockIq1M {
  uint8_t qs[kQKK / 8];
  uint8_t qh[kQKK / 16];
  uint8_t scales[kQKK / 32];
};
static_assert(sizeof(BlockIq1M) == 56);

// The fp16 super-block scale, assembled from the top nibbles of the four scale words.
inline uint16_t iq1m_scale_bits(const BlockIq1M& b) {
  uint16_t sc[4];
  std::memcpy(sc, b.scales, 8);
  return uint16_t((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000));
}

inline void dequantize_block_ref(const BlockIq1M& b, float* y) {
  const float d = fp16_to_fp32_ref(iq1m_scale_bits(b));
  uint16_t sc[4];
  std::memcpy(sc, b.scales, 8);
  for (int s = 0; s < 16; ++s) {
    const float dl = d * float(2 * ((sc[s / 4] >> (3 * (s % 4))) & 7) + 1);
    for (int k = 0; k < 2; ++k) {
      const int l = 2 * s + k;
      const int h = (b.qh[l / 2] >> (4 * (l % 2))) & 0xF;
      const float delta = (h & 8) ? -kIq1Delta : kIq1Delta;
      const uint64_t g = kIq1sGrid[b.qs[l] | ((h & 7) << 8)];
      for (int j = 0; j < 8; ++j) y[8 * l + j] = dl * (float(int8_t(g >> (8 * j))) + delta);
    }
  }
}

}  // namespace qleap
