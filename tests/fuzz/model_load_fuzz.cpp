// libFuzzer target for the model loader behind the GGUF parser: any byte string must either load as a
// model or raise qleap::Error, and a model that loads must evaluate a few tokens (a prefill of two,
// one decode step) without a crash, a sanitizer report or an exception of another kind. The seeds are
// tiny converted models of several architectures (tests/fuzz/corpus/model_load), so mutations reach
// the architecture readers: hyperparameters, tensor shapes and types, fused and scaled layouts.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "runtime/session.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    std::shared_ptr<qleap::GgufFile> f = qleap::GgufFile::parse(data, size);
    std::shared_ptr<const qleap::Model> model = qleap::load_model(f);
    qleap::SessionOptions so;
    so.n_ctx = 16;
    so.n_threads = 1;
    so.n_batch = 8;
    so.kv_type = "f32";
    so.calibrate_kv = false;
    qleap::Session s(model, so);
    const int32_t last = std::max(0, s.n_vocab() - 1);
    // eval's result is valid until the next eval.
    float sum = 0;
    for (float x : s.eval({0, last}, true)) sum += x;
    for (float x : s.eval({std::min<int32_t>(1, last)})) sum += x;
    volatile float keep = sum;
    (void)keep;
  } catch (const qleap::Error&) {
  }
  return 0;
}
