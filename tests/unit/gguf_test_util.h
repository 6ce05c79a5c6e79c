// Helpers shared by the GGUF / convert tests.
#pragma once
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace qleap::testing {

inline std::string source_dir() {
  const char* e = std::getenv("QLEAP_SOURCE_DIR");
  return e && *e ? e : QLEAP_SOURCE_DIR;
}

// The small real model the repository carries (tests/fixtures/models; $QLEAP_TEST_MODELS overrides).
inline std::string stories_model() {
  const char* e = std::getenv("QLEAP_TEST_MODELS");
  return (e && *e ? std::string(e) : source_dir() + "/tests/fixtures/models") + "/stories260K.gguf";
}

inline std::string fixtures_dir() {
  return source_dir() + "/tests/golden/fixtures";
}

// A fresh directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    path_ = std::filesystem::temp_directory_path() / ("qleap_" + tag + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline uint64_t fnv1a64(const uint8_t* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

}  // namespace qleap::testing
