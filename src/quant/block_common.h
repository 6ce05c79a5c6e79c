// Shared constants for the GGUF block formats.
#pragma once
#include <cstdint>

namespace qleap {

constexpr int kQK = 32;    // elements per block of the legacy formats (Q4_0 .. Q8_0, IQ4_NL)
constexpr int kQKK = 256;  // elements per super-block of the K-quants

// Q4_K / Q5_K pack eight 6-bit scales and eight 6-bit mins into 12 bytes.
inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

}  // namespace qleap
