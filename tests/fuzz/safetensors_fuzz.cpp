// libFuzzer target for the safetensors header parser: bytes either parse or raise qleap::Error.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "gguf/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = qleap::SafetensorsFile::parse(data, size);
    size_t sink = 0;
    for (const auto& t : f->tensors()) {
      if (t.nbytes > 0) sink += t.data[0] + t.data[t.nbytes - 1];
      try {
        if (t.n_elements() <= 4096) sink += t.to_f32().size();
      } catch (const qleap::Error&) {
      }
    }
    volatile size_t keep = sink;
    (void)keep;
  } catch (const qleap::Error&) {
  }
  return 0;
}
