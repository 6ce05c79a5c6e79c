// IQ4_NL: 32 weights = fp16 scale d + 16 bytes of nibbles (layout as Q4_0) indexing a fixed
// non-linear codebook; w = d * kIq4nlValues[q].
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"

namespace qleap {

inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

struct BlockIq4Nl {
  uint16_t d;
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockIq4Nl) == 18);

inline void dequantize_block_ref(const BlockIq4Nl& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  for (int i = 0; i < kQK / 2; ++i) {
    y[i] = d * float(kIq4nlValues[b.qs[i] & 0xF]);
    y[i + kQK / 2] = d * float(kIq4nlValues[b.qs[i] >> 4]);
  }
}

}  // namespace qleap
