// What a user must fix before qleap runs well on this machine, for `qleap info` without a model:
// a CPU without AVX2 (the kernels fall back to scalar code, ~10x slower), too little free memory
// for the default model, the server's port already taken.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "autoconf/hardware.h"

namespace qleap {

struct ReadinessInput {
  const HardwareInfo* hw = nullptr;
  uint64_t default_model_bytes = 0;  // file size of the default model (or its download size)
  uint64_t default_kv_bytes = 0;     // its KV cache at the default context
  std::string serve_addr;            // "127.0.0.1:11435"
  bool port_in_use = false;
};

// One line per problem, each saying what to do; empty when nothing needs fixing.
std::vector<std::string> readiness_warnings(const ReadinessInput& in);

// True when nothing can listen on host:port because something else already does (EADDRINUSE).
bool tcp_port_in_use(const std::string& host, int port);

}  // namespace qleap
