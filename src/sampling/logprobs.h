// Log-probabilities of generated tokens, as the APIs report them (OpenAI `logprobs` /
// `top_logprobs`, Ollama's `logprobs`): the log-softmax of the model's raw logits, before any
// penalty, temperature, truncation or grammar mask changes what is sampled.
#pragma once
#include <cstdint>
#include <vector>

namespace qleap {

struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0;
};

struct LogprobEntry {
  int32_t token = -1;  // the generated token
  float logprob = 0;
  std::vector<TokenLogprob> top;  // the top_n most likely tokens, most likely first (ties: lower id)
};

// One pass for the normaliser (in double) and a bounded selection for the top tokens.
LogprobEntry token_logprobs(const float* logits, int n_vocab, int32_t chosen, int top_n);

}  // namespace qleap
