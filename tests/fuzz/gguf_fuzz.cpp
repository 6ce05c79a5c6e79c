// libFuzzer target for the GGUF parser: any byte string must either parse or raise qleap::Error,
// and everything a successful parse exposes (metadata, tensor ranges) must be safe to read.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "gguf/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = qleap::GgufFile::parse(data, size);
    size_t sink = f->alignment() + f->data_offset() + f->version();
    for (const auto& [key, v] : f->metadata()) {
      sink += key.size() + v.to_display().size() + v.array_size();
      try {
        sink += size_t(v.as_int()) + size_t(v.as_double() > 0);
      } catch (const qleap::Error&) {
      }
    }
    (void)f->architecture();
    for (const auto& t : f->tensors()) {
      sink += size_t(t.n_elements());
      if (t.nbytes > 0) sink += t.data[0] + t.data[t.nbytes - 1];  // ASan checks the range
      if (f->find_tensor(t.name) != &t) __builtin_trap();
    }
    sink += f->tensor_bytes();
    volatile size_t keep = sink;
    (void)keep;
  } catch (const qleap::Error&) {
  }
  // The same bytes as the first part of a larger file (a ranged read of a remote header).
  try {
    auto h = qleap::GgufFile::parse_header(data, size, uint64_t(size) + (uint64_t(1) << 40));
    for (const auto& t : h->tensors()) {
      if (t.data != nullptr) __builtin_trap();
    }
  } catch (const qleap::Error&) {
  }
  return 0;
}
