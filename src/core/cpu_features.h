// Run-time CPU feature detection: kernels are compiled per ISA and chosen here, so one binary runs
// on any x86-64 and uses AVX-512 where present. QLEAP_ISA=scalar|avx2|avx512 caps the level (tests,
// A/B benchmarks).
#pragma once
#include <string>

namespace qleap {

enum class IsaLevel { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false, avxvnni = false;
};

const CpuFeatures& cpu_features();
// Highest level the CPU supports, capped by QLEAP_ISA if set.
IsaLevel isa_level();
// Override for tests and benchmarks (clamped to what the CPU supports).
void set_isa_level(IsaLevel level);
const char* isa_name(IsaLevel level);
std::string cpu_model_name();

}  // namespace qleap
