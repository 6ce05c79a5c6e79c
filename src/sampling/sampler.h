// Token sampling: penalties, truncation (top-k, top-p, min-p), temperature and a seeded draw.
//
// The chain runs in the same order as llama.cpp's default sampler chain:
//   1. penalties (repeat, frequency, presence) over the last repeat_last_n accepted tokens
//   2. top_k        keep the k highest logits
//   3. top_p        keep the smallest prefix (by probability) whose mass is >= top_p
//   4. min_p        keep tokens whose probability is >= min_p * p_max
//   5. temperature  divide the surviving logits by T
//   6. draw         one uniform double in [0, 1) from the sampler's own xoshiro256** stream
// top_p and min_p therefore see the probabilities *before* temperature, as in llama.cpp.
// temperature <= 0 means greedy: penalties still apply, then a plain argmax (ties -> lowest id).
//
// The RNG and the uniform double are our own so a fixed seed gives the same tokens on every
// platform and standard library.
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace qleap {

struct SamplerParams {
  float temperature = 0.8f;  // <= 0: greedy
  int top_k = 40;            // <= 0: off
  float top_p = 0.95f;       // >= 1: off
  float min_p = 0.05f;       // <= 0: off
  // llama.cpp / CTRL repeat penalty: a positive logit is divided by it, a negative one multiplied.
  float repeat_penalty = 1.0f;  // 1: off
  // Window of accepted tokens the three penalties look at; 0 disables them, < 0 means all tokens.
  int repeat_last_n = 64;
  float presence_penalty = 0.0f;   // OpenAI: logit -= presence_penalty if count > 0
  float frequency_penalty = 0.0f;  // OpenAI: logit -= count * frequency_penalty
  uint64_t seed = 0xFFFFFFFF;      // 0xFFFFFFFF: seed from std::random_device
};

// xoshiro256** seeded through splitmix64; uniform() has 53 random bits.
class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { this->seed(seed); }
  void seed(uint64_t seed);
  uint64_t next();
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t s_[4];
};

// exp() built from IEEE basic operations only: identical results on every platform and libm.
double deterministic_exp(double x);

class Sampler {
 public:
  explicit Sampler(const SamplerParams& params);

  // Picks the next token from raw logits (n_vocab floats). Does not record it: call accept().
  int32_t sample(const float* logits, int n_vocab);
  // Records a token (prompt or generated) in the penalty window.
  void accept(int32_t token);
  // Forgets the penalty window and restarts the random stream from the seed.
  void reset();
  const SamplerParams& params() const { return params_; }

  // Applies the three penalties in place to a full logit vector (exposed for tests and for
  // callers that want penalized logits, e.g. to report log-probabilities).
  void apply_penalties(float* logits, int n_vocab);

 private:
  bool penalties_active() const;
  // Fills counts_ with (token, occurrences) pairs of the penalty window, sorted by token.
  void count_window();
  float penalized(float logit, int count) const;
  int32_t greedy(const float* logits, int n_vocab);
  size_t top_p_sorted(size_t n);    // cand_[0, n) sorted: returns the nucleus size
  size_t top_p_bucketed(size_t n);  // cand_[0, n) unsorted: moves the nucleus to the front
  static constexpr size_t kSmallSet = 2048;

  SamplerParams params_;
  uint64_t seed_;
  Rng rng_;
  std::vector<int32_t> history_;  // ring buffer when repeat_last_n > 0
  size_t history_pos_ = 0;
  std::vector<int32_t> scratch_;
  std::vector<std::pair<int32_t, int>> counts_;
  std::vector<std::pair<float, int32_t>> cand_;  // (logit, token)
  std::vector<double> probs_;
  std::vector<double> bucket_mass_;
};

}  // namespace qleap
