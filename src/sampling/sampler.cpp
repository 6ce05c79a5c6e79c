#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "core/error.h"

namespace qleap {

namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

bool by_logit_desc(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  // Ties keep the lower id first so results do not depend on the sort implementation.
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

}  // namespace

void Rng::seed(uint64_t seed) {
  uint64_t x = seed;
  for (auto& s : s_) s = splitmix64(x);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

Sampler::Sampler(const SamplerParams& params) : params_(params) {
  if (params_.repeat_penalty <= 0.0f) throw InvalidArgument("repeat_penalty must be > 0");
  if (params_.seed == 0xFFFFFFFFull) {
    std::random_device rd;
    seed_ = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  } else {
    seed_ = params_.seed;
  }
  if (params_.repeat_last_n > 0) history_.reserve(static_cast<size_t>(params_.repeat_last_n));
  reset();
}

void Sampler::reset() {
  rng_.seed(seed_);
  history_.clear();
  history_pos_ = 0;
}

void Sampler::accept(int32_t token) {
  const int n = params_.repeat_last_n;
  if (n == 0) return;
  if (n < 0 || history_.size() < static_cast<size_t>(n)) {
    history_.push_back(token);
    return;
  }
  history_[history_pos_] = token;
  history_pos_ = (history_pos_ + 1) % history_.size();
}

bool Sampler::penalties_active() const {
  return params_.repeat_last_n != 0 && !history_.empty() &&
         (params_.repeat_penalty != 1.0f || params_.presence_penalty != 0.0f ||
          params_.frequency_penalty != 0.0f);
}

void Sampler::count_window() {
  scratch_.assign(history_.begin(), history_.end());
  std::sort(scratch_.begin(), scratch_.end());
  counts_.clear();
  for (size_t i = 0; i < scratch_.size();) {
    size_t j = i;
    while (j < scratch_.size() && scratch_[j] == scratch_[i]) ++j;
    counts_.emplace_back(scratch_[i], static_cast<int>(j - i));
    i = j;
  }
}

float Sampler::penalized(float logit, int count) const {
  if (params_.repeat_penalty != 1.0f) {
    logit = logit > 0.0f ? logit / params_.repeat_penalty : logit * params_.repeat_penalty;
  }
  logit -= static_cast<float>(count) * params_.frequency_penalty;
  logit -= params_.presence_penalty;  // count > 0 for every token in the window
  return logit;
}

void Sampler::apply_penalties(float* logits, int n_vocab) {
  if (!penalties_active()) return;
  count_window();
  for (const auto& [tok, cnt] : counts_) {
    if (tok >= 0 && tok < n_vocab) logits[tok] = penalized(logits[tok], cnt);
  }
}

int32_t Sampler::greedy(const float* logits, int n_vocab) {
  if (!penalties_active()) {
    int32_t best = 0;
    float best_v = logits[0];
    for (int i = 1; i < n_vocab; ++i) {
      if (logits[i] > best_v) {
        best_v = logits[i];
        best = i;
      }
    }
    return best;
  }
  // Penalized tokens are few: take the argmax over the rest, then compare their adjusted values.
  count_window();
  int32_t best = -1;
  float best_v = -std::numeric_limits<float>::infinity();
  size_t ci = 0;
  for (int i = 0; i < n_vocab; ++i) {
    float v = logits[i];
    while (ci < counts_.size() && counts_[ci].first < i) ++ci;
    if (ci < counts_.size() && counts_[ci].first == i) v = penalized(v, counts_[ci].second);
    if (best < 0 || v > best_v) {
      best_v = v;
      best = i;
    }
  }
  return best;
}

int32_t Sampler::sample(const float* logits, int n_vocab) {
  if (n_vocab <= 0 || logits == nullptr) throw InvalidArgument("sample: empty logits");
  if (params_.temperature <= 0.0f) return greedy(logits, n_vocab);

  cand_.resize(static_cast<size_t>(n_vocab));
  for (int i = 0; i < n_vocab; ++i) cand_[i] = {logits[i], i};
  if (penalties_active()) {
    count_window();
    for (const auto& [tok, cnt] : counts_) {
      if (tok >= 0 && tok < n_vocab) cand_[tok].first = penalized(cand_[tok].first, cnt);
    }
  }

  size_t n = cand_.size();
  bool sorted = false;
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n) {
    // Partial selection: O(V) to find the k best, then sort only those k.
    const size_t k = static_cast<size_t>(params_.top_k);
    std::nth_element(cand_.begin(), cand_.begin() + (k - 1), cand_.end(), by_logit_desc);
    n = k;
    std::sort(cand_.begin(), cand_.begin() + n, by_logit_desc);
    sorted = true;
  }

  const bool top_p_on = params_.top_p < 1.0f;
  const bool min_p_on = params_.min_p > 0.0f;
  if (top_p_on && n > 1) {
    if (!sorted) {
      std::sort(cand_.begin(), cand_.begin() + n, by_logit_desc);
      sorted = true;
    }
    const double max_l = cand_[0].first;
    double sum = 0.0;
    probs_.resize(n);
    for (size_t i = 0; i < n; ++i) sum += probs_[i] = std::exp(static_cast<double>(cand_[i].first) - max_l);
    double cum = 0.0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      cum += probs_[i] / sum;
      if (cum >= static_cast<double>(params_.top_p)) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
  }
  if (min_p_on && n > 1) {
    // p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p) (same softmax denominator).
    float max_l = cand_[0].first;
    if (!sorted) {
      for (size_t i = 1; i < n; ++i) max_l = std::max(max_l, cand_[i].first);
    }
    const double thr = static_cast<double>(max_l) + std::log(static_cast<double>(params_.min_p));
    auto end = std::stable_partition(cand_.begin(), cand_.begin() + n, [thr](const auto& c) {
      return static_cast<double>(c.first) >= thr;
    });
    n = std::max<size_t>(1, static_cast<size_t>(end - cand_.begin()));
  }

  // Temperature, softmax and the draw.
  const double inv_t = 1.0 / static_cast<double>(params_.temperature);
  double max_l = cand_[0].first;
  for (size_t i = 1; i < n; ++i) max_l = std::max(max_l, static_cast<double>(cand_[i].first));
  probs_.resize(n);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    sum += probs_[i] = std::exp((static_cast<double>(cand_[i].first) - max_l) * inv_t);
  }
  const double r = rng_.uniform() * sum;
  double cum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    cum += probs_[i];
    if (r < cum) return cand_[i].second;
  }
  // Rounding left r at the very top: the last token with non-zero mass.
  for (size_t i = n; i-- > 0;) {
    if (probs_[i] > 0.0) return cand_[i].second;
  }
  return cand_[0].second;
}

}  // namespace qleap
