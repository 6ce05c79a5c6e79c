// MXFP4 (4.25 bits/weight, OCP microscaling): 32 E2M1 weights (4-bit codes, layout as IQ4_NL:
// low nibbles weights 0..15, high nibbles 16..31) sharing an E8M0 exponent e.
// w = 2^(e - 127) * e2m1(q) = 2^(e - 128) * kFp4Values[q] (the table holds doubled values).
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"
#include "quant/iq_grids.h"

namespace qleap {

struct BlockMxfp4 {
  uint8_t e;
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockMxfp4) == 17);

// 2^(e - 128) exactly, subnormal for e < 2.
inline float e8m0_to_fp32_half(uint8_t e) {
  return bits_to_f32(e < 2 ? uint32_t(0x00200000) << e : uint32_t(e - 1) << 23);
}

inline void dequantize_block_ref(const BlockMxfp4& b, float* y) {
  const float d = e8m0_to_fp32_half(b.e);
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = d * float(kFp4Values[b.qs[j] & 0xF]);
    y[j + kQK / 2] = d * float(kFp4Values[b.qs[j] >> 4]);
  }
}

}  // namespace qleap
