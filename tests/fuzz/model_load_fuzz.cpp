// libFuzzer target for the model loader behind the GGUF parser: any byte string must either load as a
// model or raise qleap::Error, and a model that loads must evaluate a few tokens (a prefill of two,
// one decode step) without a crash, a sanitizer report or an exception of another kind. The seeds are
// tiny converted models of several architectures (tests/fuzz/corpus/model_load), so mutations reach
// the architecture readers: hyperparameters, tensor shapes and types, fused and scaled layouts; and the
// tokenizer the file describes (byte-level BPE in the models, SentencePiece in spm_tokenizer.gguf).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace {

// The file's tokenizer, when it has one: a text with special-token strings, bytes that are not UTF-8 and
// a long run, encoded and decoded; every id in range, every piece readable.
void tokenize(const qleap::GgufFile& f) {
  try {
    const qleap::Tokenizer tok = qleap::Tokenizer::from_gguf(f);
    static const std::string text =
        "Hello <s> world</s>\n\t  caf\xc3\xa9 \xff\xfe 12345 " + std::string(300, 'a');
    for (bool special : {false, true}) {
      const std::vector<int32_t> ids = tok.encode(text, true, special);
      for (int32_t id : ids)
        if (id < 0 || id >= tok.n_vocab()) __builtin_trap();
      volatile size_t keep =
          tok.decode(ids, special).size() + tok.token_to_piece(ids.empty() ? 0 : ids[0]).size();
      (void)keep;
    }
  } catch (const qleap::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    std::shared_ptr<qleap::GgufFile> f = qleap::GgufFile::parse(data, size);
    tokenize(*f);
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
