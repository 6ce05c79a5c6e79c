// Run-time CPU feature detection: kernels are compiled per ISA and chosen here, so one binary runs
// on any x86-64 and uses AVX-512 or AMX where present. QLEAP_ISA=scalar|avx2|avx512|amx caps the
// level (tests, A/B benchmarks).
#pragma once
#include <string>

namespace qleap {

// kAmx: AVX-512 (with VNNI) plus AMX tiles (INT8 and BF16) that the OS lets this process use.
enum class IsaLevel { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAmx = 3 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false, avxvnni = false;
  // The CPU reports AMX (CPUID) ...
  bool amx_tile = false, amx_int8 = false, amx_bf16 = false;
  // ... and Linux granted this process the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM): tile
  // instructions are only legal after that.
  bool amx_usable = false;
  // AVX2 gathers (vpgatherdd / vpgatherdq) beat broadcast loads and blends for the i-quant grid
  // lookups: measured so on Intel Sapphire Rapids; not on AMD Zen 3, which microcodes them, so
  // off on AMD (docs/formats.md).
  bool fast_gather = false;
};

const CpuFeatures& cpu_features();
// Why AMX is not used although the CPU has it (the OS refused the tile state, or the XCR0 bits are
// off); empty when AMX is usable or absent.
const std::string& amx_note();
// Highest level the CPU supports, capped by QLEAP_ISA if set.
IsaLevel isa_level();
// Highest level the CPU (and OS) support, ignoring QLEAP_ISA and set_isa_level.
IsaLevel max_isa_level();
// Override for tests and benchmarks (clamped to what the CPU supports).
void set_isa_level(IsaLevel level);
const char* isa_name(IsaLevel level);
std::string cpu_model_name();
// Whether kernels with a gather and a load-and-blend form take the gather: CpuFeatures::fast_gather
// unless QLEAP_GATHER=0|1 or set_fast_gather (tests, A/B benchmarks) says otherwise.
bool fast_gather();
void set_fast_gather(bool on);

}  // namespace qleap
