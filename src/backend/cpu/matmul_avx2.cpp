// AVX2 + FMA + F16C build of the x86 kernels.
#define QLEAP_ISA_NS avx2
#define QLEAP_ISA_NAME "avx2"
#define QLEAP_USE_VNNI 0
#include "backend/cpu/matmul_x86_impl.h"
// The i-quant kernels reopen the namespace above and must follow it.
#include "backend/cpu/matmul_iq_x86_impl.h"

namespace qleap::kern {

const IsaKernels* kernels_avx2() {
  return avx2::kernels();
}

}  // namespace qleap::kern
