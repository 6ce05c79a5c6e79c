#include "autoconf/readiness.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace qleap {
namespace {

std::string gib(uint64_t b) {
  return fmt::format("{:.2f} GiB", double(b) / double(uint64_t(1) << 30));
}

}  // namespace

std::vector<std::string> readiness_warnings(const ReadinessInput& in) {
  std::vector<std::string> w;
  const HardwareInfo& hw = *in.hw;
  if (hw.isa == "scalar") {
    w.push_back(
        "this CPU has no AVX2: every kernel runs its scalar fallback, about 10x slower; use a machine with "
        "AVX2 (x86-64 since 2013) for real use");
  }
  // Weights are mmapped, so they need page cache, plus the KV cache and ~25% for activations and
  // the runtime.
  const uint64_t need = (in.default_model_bytes + in.default_kv_bytes) * 5 / 4;
  if (need > 0 && hw.ram_available > 0 && hw.ram_available < need) {
    w.push_back(fmt::format(
        "{} of memory available, the default model needs about {}: close other programs or give this "
        "machine (or container) more memory",
        gib(hw.ram_available), gib(need)));
  }
  if (in.port_in_use) {
    w.push_back(
        fmt::format("{} is already in use (another `qleap serve`?): stop it, or run `qleap serve --host "
                    "127.0.0.1:PORT` with a free port (env QLEAP_HOST)",
                    in.serve_addr));
  }
  return w;
}

bool tcp_port_in_use(const std::string& host, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) return false;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  const bool in_use = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno == EADDRINUSE;
  ::close(fd);
  return in_use;
}

}  // namespace qleap
