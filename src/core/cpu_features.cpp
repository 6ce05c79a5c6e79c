#include "core/cpu_features.h"

#include <cpuid.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace qleap {
namespace {

uint64_t xgetbv0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

struct Detected {
  CpuFeatures f;
  std::string amx_note;
};

// Linux (5.16+) keeps the 8 KiB tile data state off until a process asks for it; a tile instruction
// before that is a fault. The request is process-wide and covers threads started later.
bool request_amx_permission(std::string* note) {
#if defined(__linux__)
  constexpr int kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  // Test hook: behave as a kernel that refuses the state would (exercises the AVX-512 fallback).
  if (const char* e = std::getenv("QLEAP_AMX_DENY"); e != nullptr && e[0] == '1') {
    *note = "AMX present but refused (QLEAP_AMX_DENY=1); using AVX-512";
    return false;
  }
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) {
    *note = std::string("AMX present but the kernel refused the tile state (arch_prctl: ") +
            std::strerror(errno) + "); using AVX-512";
    return false;
  }
  return true;
#else
  *note = "AMX present but tile permission is only requested on Linux; using AVX-512";
  return false;
#endif
}

Detected detect() {
  Detected r;
  CpuFeatures& f = r.f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return r;
  // Vendor string "AuthenticAMD" in ebx, edx, ecx.
  const bool amd = b == 0x68747541 && d == 0x69746e65 && c == 0x444d4163;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return r;
  const bool osxsave = (c >> 27) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool ymm_ok = (xcr0 & 0x6) == 0x6;
  const bool zmm_ok = (xcr0 & 0xe6) == 0xe6;
  // XTILECFG (bit 17) and XTILEDATA (bit 18) enabled by the OS.
  const bool tile_ok = (xcr0 & (uint64_t(3) << 17)) == (uint64_t(3) << 17);
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = ymm_ok && ((b >> 5) & 1);
    f.avx512f = zmm_ok && ((b >> 16) & 1);
    f.avx512dq = zmm_ok && ((b >> 17) & 1);
    f.avx512bw = zmm_ok && ((b >> 30) & 1);
    f.avx512vl = zmm_ok && ((b >> 31) & 1);
    f.avx512vnni = zmm_ok && ((c >> 11) & 1);
    f.amx_bf16 = (d >> 22) & 1;
    f.amx_tile = (d >> 24) & 1;
    f.amx_int8 = (d >> 25) & 1;
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
    f.avxvnni = ymm_ok && ((a >> 4) & 1);
    f.avx512bf16 = zmm_ok && ((a >> 5) & 1);
  }
  f.fma = f.fma && ymm_ok;
  f.fast_gather = f.avx2 && !amd;
  f.f16c = f.f16c && ymm_ok;
  if (f.amx_tile && f.amx_int8 && f.amx_bf16 && f.avx512vnni && f.avx512bf16) {
    if (!tile_ok) {
      r.amx_note = "AMX present but the OS did not enable the tile state (XCR0); using AVX-512";
    } else {
      f.amx_usable = request_amx_permission(&r.amx_note);
    }
  }
  return r;
}

const Detected& detected() {
  static const Detected d = detect();
  return d;
}

IsaLevel supported_level(const CpuFeatures& f) {
  if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma && f.f16c) {
    return f.amx_usable ? IsaLevel::kAmx : IsaLevel::kAvx512;
  }
  if (f.avx2 && f.fma && f.f16c) return IsaLevel::kAvx2;
  return IsaLevel::kScalar;
}

IsaLevel initial_level() {
  IsaLevel lvl = supported_level(cpu_features());
  if (const char* env = std::getenv("QLEAP_ISA")) {
    IsaLevel want = lvl;
    if (std::strcmp(env, "scalar") == 0) want = IsaLevel::kScalar;
    if (std::strcmp(env, "avx2") == 0) want = IsaLevel::kAvx2;
    if (std::strcmp(env, "avx512") == 0) want = IsaLevel::kAvx512;
    if (std::strcmp(env, "amx") == 0) want = IsaLevel::kAmx;
    if (int(want) < int(lvl)) lvl = want;
  }
  return lvl;
}

std::atomic<int>& level_slot() {
  static std::atomic<int> slot{int(initial_level())};
  return slot;
}

}  // namespace

static std::atomic<int>& gather_slot() {
  static std::atomic<int> slot{[] {
    const char* e = std::getenv("QLEAP_GATHER");
    if (e != nullptr && (e[0] == '0' || e[0] == '1')) return e[0] - '0';
    return int(cpu_features().fast_gather);
  }()};
  return slot;
}

const CpuFeatures& cpu_features() {
  return detected().f;
}

const std::string& amx_note() {
  return detected().amx_note;
}

IsaLevel isa_level() {
  return IsaLevel(level_slot().load(std::memory_order_relaxed));
}

IsaLevel max_isa_level() {
  return supported_level(cpu_features());
}

void set_isa_level(IsaLevel level) {
  const IsaLevel max = supported_level(cpu_features());
  if (int(level) > int(max)) level = max;
  level_slot().store(int(level), std::memory_order_relaxed);
}

bool fast_gather() {
  return gather_slot().load(std::memory_order_relaxed) != 0;
}

void set_fast_gather(bool on) {
  gather_slot().store(int(on), std::memory_order_relaxed);
}

const char* isa_name(IsaLevel level) {
  switch (level) {
    case IsaLevel::kAmx:
      return "amx";
    case IsaLevel::kAvx512:
      return "avx512";
    case IsaLevel::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto p = line.find(':');
      if (p != std::string::npos) return line.substr(p + 2);
    }
  }
  return "unknown";
}

}  // namespace qleap
