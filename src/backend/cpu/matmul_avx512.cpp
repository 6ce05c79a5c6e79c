// AVX-512 (BW/VL/VNNI) build of the x86 kernels: the same 256-bit tiles with VPDPBUSD for the
// unsigned x signed byte dot products.
// GCC 12 reports the _mm512_undefined_*() inside the AVX-512 intrinsics as possibly uninitialized
// (a false positive of the header's `__m512 __Y = __Y;` idiom).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#define QLEAP_ISA_NS avx512
#define QLEAP_ISA_NAME "avx512"
#define QLEAP_USE_VNNI 1
#include "backend/cpu/matmul_x86_impl.h"
// The i-quant kernels reopen the namespace above and must follow it.
#include "backend/cpu/matmul_iq_x86_impl.h"

namespace qleap::kern {

const IsaKernels* kernels_avx512() {
  return avx512::kernels();
}

}  // namespace qleap::kern
