// AMX helpers shared by the tile kernels (backend/cpu/matmul_amx.cpp, kv/flash_prefill_amx.cpp).
// Include only from translation units compiled with the AMX flags (files named *_amx.cpp).
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "backend/cpu/transpose_avx512.h"

namespace qleap::amx_tiles {

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tile configuration is per thread; every tile the kernels use is 16 rows x 64 bytes (one flag for
// all of them: they load the same configuration).
inline void ensure_tile_config() {
  thread_local bool configured = false;
  if (configured) return;
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  // GCC 12 does not see LDTILECFG read the struct and may drop the stores above (observed in a
  // test program: all-zero config, then SIGILL on the first tile instruction); the barrier keeps them.
  __asm__ volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
  configured = true;
}

// Grow-only, 64-byte aligned per-thread buffers.
struct AlignedBuf {
  struct Free {
    void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  std::unique_ptr<uint8_t[], Free> p;
  size_t n = 0;
  uint8_t* get(size_t bytes) {
    if (bytes > n) {
      p.reset(static_cast<uint8_t*>(::operator new[](bytes, std::align_val_t(64))));
      n = bytes;
    }
    return p.get();
  }
};

using simd::transpose16x16;

}  // namespace qleap::amx_tiles
