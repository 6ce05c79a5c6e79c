// Hand-written equivalents of the pre-tokenizer regexes used by byte-level BPE models. Each splits
// UTF-8 text into pieces that BPE then encodes independently.
#pragma once
#include <string_view>
#include <vector>

namespace qleap {

enum class PreTokenizer {
  // GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
  //          ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kLlama3,
  // Qwen2: the Llama 3 regex with \p{N} (single digits) instead of \p{N}{1,3}.
  kQwen2,
  // SmolLM / StarCoder: every \p{N} isolated first, then the GPT-2 regex on the stretches between.
  kDigitsGpt2,
  // DeepSeek LLM: a sequence of isolating splits, each applied to the pieces of the previous one:
  // [\r\n], \s?[cased letters]+, \s?[ASCII/full-width punctuation]+, \s+$, [CJK/Hangul]+, \p{N}+
  kDeepseekLlm,
};

// Appends the pieces of `text` (views into it, in order, covering it exactly) to `out`.
void pretokenize(PreTokenizer kind, std::string_view text, std::vector<std::string_view>& out);

}  // namespace qleap
