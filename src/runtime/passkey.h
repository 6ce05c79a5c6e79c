// Passkey retrieval ("needle in a haystack"): a random number is hidden at a chosen depth of N
// tokens of repetitive filler text, and the model is asked to repeat it. Whether a KV cache type
// still lets a model find the number at 8K-32K tokens is what long-context use needs (documents,
// code bases), and what perplexity over short chunks cannot show. Used by `qleap passkey`.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace qleap {

struct PasskeyPrompt {
  std::vector<int32_t> tokens;  // exactly the requested count, BOS included when the model wants one
  std::string key;              // the hidden number, as digits
  int filler_begin = 0;         // index in tokens of the first filler token (after the instruction)
  int needle_pos = 0;           // index in tokens of the needle sentence's first token
  int needle_len = 0;           // tokens of the needle sentence
  int filler_tokens = 0;        // haystack tokens (excluding the needle)
  double depth = 0;             // filler tokens before the needle / filler_tokens (as placed)
};

// The prompt: an instruction, filler with the needle sentence ("The pass key is K. Remember it. K is
// the pass key.") inserted at the filler sentence boundary nearest `depth` (0..1) of the filler,
// then the question, ending "The pass key is" so that base and instruct models alike continue with
// the number. Pieces are tokenized separately and the filler is cut at token granularity, so the
// prompt has exactly n_tokens tokens. Throws InvalidArgument when depth is outside [0, 1], the key
// is not a non-empty string of digits, or n_tokens leaves no room for at least two filler sentences.
PasskeyPrompt make_passkey_prompt(const Tokenizer& tok, int n_tokens, double depth, const std::string& key);

// A random number of `digits` digits (no leading zero) from a seed and a trial index: the same seed
// hides the same numbers, so several KV types see identical prompts.
std::string passkey_key(uint64_t seed, int trial, int digits = 5);

// Whether an answer retrieved the key: its first run of digits equals the key (" 71432." and
// "71432 is the pass key" are found; "7143", "714320" and an answer without digits are not).
bool passkey_found(std::string_view answer, std::string_view key);

struct PasskeyTrial {
  double depth = 0;  // as placed
  std::string key;
  std::string answer;  // the greedy continuation
  bool found = false;
  int n_tokens = 0;
  double prompt_s = 0;  // prefill wall time
};

// Evaluates the prompt from an empty cache (the session is reset first) and greedily generates up to
// max_answer_tokens tokens (stopping at an end-of-generation token or once a digit run has ended).
PasskeyTrial run_passkey(Session& s, const Tokenizer& tok, const PasskeyPrompt& p,
                         int max_answer_tokens = 10);

}  // namespace qleap
