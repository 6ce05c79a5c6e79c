// The generation loop shared by `qleap run` and the server: which cached prefix a new prompt can keep,
// and, token by token, sampling (optionally constrained by a filter such as the JSON grammar),
// detokenizing, stop strings and the length limit. The caller owns the Engine and feeds logits in;
// Generation says what text to emit and when to stop.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sampling/sampler.h"
#include "tokenizer/harmony.h"
#include "tokenizer/tokenizer.h"

namespace qleap {

// Restricts which tokens may come next (the server's JSON grammar). apply() sets forbidden logits to
// -inf.
class TokenFilter {
 public:
  virtual ~TokenFilter() = default;
  virtual void apply(float* logits, int n_vocab) = 0;
  virtual void accept(int32_t token) = 0;
  // The constrained text is complete: generation ends.
  virtual bool complete() const = 0;
};

// Holds back text that could be the start of a stop string, and cuts the output at the first one.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  // Appends generated text; returns the text that is now safe to send.
  std::string push(const std::string& text);
  // The held-back text once generation ends without a stop.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

// How many leading tokens of `prompt` a cache holding `cached` can keep: their common prefix, at most
// prompt.size() - 1 (the last prompt token is always evaluated, for its logits). With chunk > 0 the
// prefix is also cut to the first `limit` cached tokens and down to a whole number of chunks: the
// server reuses only whole chunks of an earlier prefill, which then match a prefill from scratch row
// for row, so output does not depend on which slot a request lands in.
size_t reusable_prefix(const std::vector<int32_t>& cached, const std::vector<int32_t>& prompt,
                       size_t limit = SIZE_MAX, int chunk = 0);

class Generation {
 public:
  // max_tokens < 0: no limit (the caller's context is the limit).
  Generation(const Tokenizer& tok, const SamplerParams& sampling, std::vector<std::string> stop,
             int max_tokens, std::unique_ptr<TokenFilter> filter = nullptr);

  // The prompt the first logits continue (repetition penalties see it).
  void accept_prompt(const std::vector<int32_t>& prompt);

  struct Step {
    int32_t token = -1;  // the sampled token (-1: none, generation had already ended)
    std::string text;    // text now safe to emit
    // Harmony models (gpt-oss): text of the analysis channel (the model's reasoning), which `text` leaves
    // out; callers may show it apart or drop it. Empty for other models.
    std::string reasoning;
    bool done = false;   // stop here: token is not to be evaluated
    std::string reason;  // when done: "stop" (end of generation, stop string, filter complete) or "length"
  };
  // Samples from logits (n_vocab floats; copied when a filter masks them).
  Step next(const float* logits, int n_vocab);
  // Text still held back (the detokenizer's partial character, a stop string's prefix); call once at
  // the end unless a stop string ended generation.
  std::string finish();

  int n_generated() const { return int(output_.size()); }
  const std::vector<int32_t>& output() const { return output_; }

 private:
  const Tokenizer& tok_;
  Sampler sampler_;
  StreamDecoder detok_;
  StreamDecoder reasoning_detok_;
  std::optional<HarmonyStream> harmony_;  // set when the vocabulary has harmony's tokens
  StopMatcher stops_;
  int max_tokens_;
  std::unique_ptr<TokenFilter> filter_;
  std::vector<float> masked_;
  std::vector<int32_t> output_;
  bool done_ = false;
};

}  // namespace qleap
