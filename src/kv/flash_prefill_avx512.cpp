// AVX-512 build of the tiled prefill attention (16 floats per vector).
// GCC 12 reports the _mm512_undefined_*() inside many AVX-512 intrinsics as possibly uninitialized
// (a false positive of the header's `__m512 __Y = __Y;` idiom).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define QLEAP_FLASH_NS avx512
#define QLEAP_FLASH_W 16
#include "kv/flash_prefill_impl.h"

namespace qleap::flash_detail {

ItemFn item_avx512() {
  return &avx512::item;
}

}  // namespace qleap::flash_detail
