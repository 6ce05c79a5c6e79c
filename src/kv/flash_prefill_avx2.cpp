// AVX2 + FMA + F16C build of the tiled prefill attention (8 floats per vector).
#define QLEAP_FLASH_NS avx2
#define QLEAP_FLASH_W 8
#include "kv/flash_prefill_impl.h"

namespace qleap::flash_detail {

ItemFn item_avx2() {
  return &avx2::item;
}

}  // namespace qleap::flash_detail
