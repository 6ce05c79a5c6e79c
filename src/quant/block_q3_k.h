// Q3_K: 256 weights in 16 groups of 16 with signed 6-bit scales (offset 32) packed in 12 bytes.
// Element h*128 + j*32 + l takes 2 low bits from qs[h*32 + l] >> 2j and its high bit from
// hmask[l] bit (e / 32); the value is low - 4 when that bit is clear. w = d * (sc - 32) * q.
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"

namespace qleap {

struct BlockQ3_K {
  uint8_t hmask[kQKK / 8];
  uint8_t qs[kQKK / 4];
  uint8_t scales[12];
  uint16_t d;
};
static_assert(sizeof(BlockQ3_K) == 110);

// The 16 signed scales of a Q3_K block.
inline void q3_k_scales(const uint8_t* s, int8_t* out) {
  for (int g = 0; g < 16; ++g) {
    const int lo = (s[g % 8] >> (4 * (g / 8))) & 0xF;
    const int hi = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
    out[g] = int8_t((lo | (hi << 4)) - 32);
  }
}

inline void dequantize_block_ref(const BlockQ3_K& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  int8_t sc[16];
  q3_k_scales(b.scales, sc);
  for (int e = 0; e < kQKK; ++e) {
    const int h = e / 128, j = (e / 32) % 4, l = e % 32;
    const int lo = (b.qs[h * 32 + l] >> (2 * j)) & 3;
    const int hbit = (b.hmask[l] >> (e / 32)) & 1;
    const int q = lo - (hbit ? 0 : 4);
    const float dl = d * float(sc[e / 16]);
    y[e] = dl * float(q);
  }
}

}  // namespace qleap
