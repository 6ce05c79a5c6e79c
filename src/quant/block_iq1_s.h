// IQ1_S (1.56 bits/weight): 256 weights; 32 codes of 11 bits (qs low 8 bits, 3 more from qh)
// indexing kIq1sGrid (8 values in {-1, 0, 1}); per 32 weights a uint16 qh with the four 3-bit code
// extensions, a 3-bit scale s (bits 12..14) and the sign of a shift delta (bit 15).
// w = d * (2s + 1) * (grid + delta), delta = +-1/8.
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"
#include "quant/iq_grids.h"

namespace qleap {

inline constexpr float kIq1Delta = 0.125f;

struct BlockIq1S {
  uint16_t d;
  uint8_t qs[kQKK / 8];
  uint16_t qh[kQKK / 32];
};
static_assert(sizeof(BlockIq1S) == 50);

inline void dequantize_block_ref(const BlockIq1S& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  for (int ib = 0; ib < 8; ++ib) {
    const uint16_t h = b.qh[ib];
    const float dl = d * float(2 * ((h >> 12) & 7) + 1);
    const float delta = (h & 0x8000) ? -kIq1Delta : kIq1Delta;
    for (int k = 0; k < 4; ++k) {
      const uint64_t g = kIq1sGrid[b.qs[4 * ib + k] | (((h >> (3 * k)) & 7) << 8)];
      for (int j = 0; j < 8; ++j) y[32 * ib + 8 * k + j] = dl * (float(int8_t(g >> (8 * j))) + delta);
    }
  }
}

}  // namespace qleap
