// ISA levels for kernel tests: which levels this CPU can run, and a guard that restores the level a
// test changed (QLEAP_ISA may have capped it).
#pragma once
#include <vector>

#include "core/cpu_features.h"

namespace qleap::testing_util {

inline std::vector<IsaLevel> supported_levels() {
  std::vector<IsaLevel> out;
  const IsaLevel saved = isa_level();
  for (IsaLevel l : {IsaLevel::kScalar, IsaLevel::kAvx2, IsaLevel::kAvx512, IsaLevel::kAmx}) {
    set_isa_level(l);
    if (isa_level() == l) out.push_back(l);
  }
  set_isa_level(saved);
  return out;
}

struct IsaGuard {
  IsaLevel saved = isa_level();
  ~IsaGuard() { set_isa_level(saved); }
};

}  // namespace qleap::testing_util
