#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
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

inline uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

// 2^(j/32), correctly rounded (generated with Python's decimal module at 60 digits).
constexpr double kExp2Table[32] = {
    0x1.0000000000000p+0, 0x1.059b0d3158574p+0, 0x1.0b5586cf9890fp+0, 0x1.11301d0125b51p+0,
    0x1.172b83c7d517bp+0, 0x1.1d4873168b9aap+0, 0x1.2387a6e756238p+0, 0x1.29e9df51fdee1p+0,
    0x1.306fe0a31b715p+0, 0x1.371a7373aa9cbp+0, 0x1.3dea64c123422p+0, 0x1.44e086061892dp+0,
    0x1.4bfdad5362a27p+0, 0x1.5342b569d4f82p+0, 0x1.5ab07dd485429p+0, 0x1.6247eb03a5585p+0,
    0x1.6a09e667f3bcdp+0, 0x1.71f75e8ec5f74p+0, 0x1.7a11473eb0187p+0, 0x1.82589994cce13p+0,
    0x1.8ace5422aa0dbp+0, 0x1.93737b0cdc5e5p+0, 0x1.9c49182a3f090p+0, 0x1.a5503b23e255dp+0,
    0x1.ae89f995ad3adp+0, 0x1.b7f76f2fb5e47p+0, 0x1.c199bdd85529cp+0, 0x1.cb720dcef9069p+0,
    0x1.d5818dcfba487p+0, 0x1.dfc97337b9b5fp+0, 0x1.ea4afa2a490dap+0, 0x1.f50765b6e4540p+0,
};

}  // namespace

// exp() from IEEE +, * and exact scaling only, so sampling weights (and therefore the drawn
// tokens) are bit-identical on every libm. x = (32m + j) ln2/32 + r with |r| <= ln2/64;
// exp(x) = 2^m * 2^(j/32) * e^r, e^r by a degree-6 polynomial (error ~2e-17). Separate
// statements keep compilers from contracting into FMA, which would change the rounding.
double deterministic_exp(double x) {
  if (x != x) return x;
  if (x > 709.7) return std::numeric_limits<double>::infinity();
  if (x < -745.2) return 0.0;
  const double t = x * 46.166241308446828;                              // 32 / ln2
  const int64_t n = static_cast<int64_t>(t + (t >= 0.0 ? 0.5 : -0.5));  // round half away from zero
  const double dn = static_cast<double>(n);
  double r = x - dn * 0.02166084938653512;  // ln2/32 high part: exact product for |n| < 2^21
  r = r - dn * 5.9631716539705866e-12;      // ln2/32 low part
  double p = 1.0 / 720.0;
  p = p * r;
  p = p + 1.0 / 120.0;
  p = p * r;
  p = p + 1.0 / 24.0;
  p = p * r;
  p = p + 1.0 / 6.0;
  p = p * r;
  p = p + 0.5;
  p = p * r;
  p = p + 1.0;
  p = p * r;
  p = p + 1.0;
  p = p * kExp2Table[n & 31];
  const int64_t m = n >> 5;  // arithmetic shift: floor division by 32
  if (m < -1021 || m > 1023) return std::ldexp(p, static_cast<int>(m));
  const uint64_t bits = static_cast<uint64_t>(m + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

namespace {

inline double det_exp(double x) {
  return deterministic_exp(x);
}

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

size_t Sampler::top_p_sorted(size_t n) {
  const double max_l = cand_[0].first;
  probs_.resize(n);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += probs_[i] = det_exp(static_cast<double>(cand_[i].first) - max_l);
  const double target = static_cast<double>(params_.top_p) * sum;
  double cum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    cum += probs_[i];
    if (cum >= target) return i + 1;
  }
  return n;
}

// Top-p on a large unsorted set without sorting it: bucket the logits, find the bucket where the
// cumulative mass crosses top_p, and sort only that bucket. Everything in higher buckets is kept.
// The kept set equals the sorted algorithm's (ties broken by lower id); it is left unsorted.
size_t Sampler::top_p_bucketed(size_t n) {
  constexpr int kBuckets = 4096;
  float max_l = cand_[0].first, min_l = cand_[0].first;
  for (size_t i = 1; i < n; ++i) {
    max_l = std::max(max_l, cand_[i].first);
    min_l = std::min(min_l, cand_[i].first);
  }
  const double range = static_cast<double>(max_l) - static_cast<double>(min_l);
  if (!(range > 0.0) || !std::isfinite(range)) {  // all equal (or inf): sort the lot
    std::sort(cand_.begin(), cand_.begin() + n, by_logit_desc);
    return top_p_sorted(n);
  }
  const double scale = (kBuckets - 1) / range;
  auto bucket_of = [&](float l) {
    const int b = static_cast<int>((static_cast<double>(max_l) - l) * scale);
    return std::clamp(b, 0, kBuckets - 1);
  };
  bucket_mass_.assign(kBuckets, 0.0);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double w = det_exp(static_cast<double>(cand_[i].first) - max_l);
    bucket_mass_[bucket_of(cand_[i].first)] += w;
    sum += w;
  }
  const double target = static_cast<double>(params_.top_p) * sum;
  double cum = 0.0;
  int edge = kBuckets - 1;
  for (int b = 0; b < kBuckets; ++b) {
    if (cum + bucket_mass_[b] >= target) {
      edge = b;
      break;
    }
    cum += bucket_mass_[b];
  }
  // Move buckets < edge to the front, then the edge bucket; drop the rest.
  auto mid = std::partition(cand_.begin(), cand_.begin() + n,
                            [&](const auto& c) { return bucket_of(c.first) < edge; });
  auto end =
      std::partition(mid, cand_.begin() + n, [&](const auto& c) { return bucket_of(c.first) == edge; });
  std::sort(mid, end, by_logit_desc);
  size_t keep = static_cast<size_t>(mid - cand_.begin());
  for (auto it = mid; it != end; ++it) {
    cum += det_exp(static_cast<double>(it->first) - max_l);
    ++keep;
    if (cum >= target) break;
  }
  return std::max<size_t>(keep, 1);
}

int32_t Sampler::sample(const float* logits, int n_vocab) {
  if (n_vocab <= 0 || logits == nullptr) throw InvalidArgument("sample: empty logits");
  if (params_.temperature <= 0.0f) return greedy(logits, n_vocab);

  const bool penal = penalties_active();
  if (penal) count_window();
  size_t n;
  bool sorted = false;
  const bool top_k_on = params_.top_k > 0 && params_.top_k < n_vocab;
  if (top_k_on && static_cast<int64_t>(params_.top_k) * 16 <= n_vocab) {
    // Small k: heap selection in one pass. Most logits lose a single compare against the heap's
    // worst entry, which beats filling and partitioning a full candidate array.
    const size_t k = static_cast<size_t>(params_.top_k);
    cand_.clear();
    auto worse_first = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
      return by_logit_desc(a, b);  // heap top = worst kept candidate
    };
    size_t ci = 0;
    for (int i = 0; i < n_vocab; ++i) {
      float v = logits[i];
      if (penal) {
        while (ci < counts_.size() && counts_[ci].first < i) ++ci;
        if (ci < counts_.size() && counts_[ci].first == i) v = penalized(v, counts_[ci].second);
      }
      if (cand_.size() < k) {
        cand_.emplace_back(v, i);
        std::push_heap(cand_.begin(), cand_.end(), worse_first);
      } else if (v > cand_.front().first) {  // equal logits keep the earlier (lower) id
        std::pop_heap(cand_.begin(), cand_.end(), worse_first);
        cand_.back() = {v, i};
        std::push_heap(cand_.begin(), cand_.end(), worse_first);
      }
    }
    std::sort_heap(cand_.begin(), cand_.end(), worse_first);
    n = cand_.size();
    sorted = true;
  } else {
    cand_.resize(static_cast<size_t>(n_vocab));
    for (int i = 0; i < n_vocab; ++i) cand_[i] = {logits[i], i};
    if (penal) {
      for (const auto& [tok, cnt] : counts_) {
        if (tok >= 0 && tok < n_vocab) cand_[tok].first = penalized(cand_[tok].first, cnt);
      }
    }
    n = cand_.size();
    if (top_k_on) {  // large k: partition, then sort only the k survivors
      const size_t k = static_cast<size_t>(params_.top_k);
      std::nth_element(cand_.begin(), cand_.begin() + (k - 1), cand_.end(), by_logit_desc);
      n = k;
      std::sort(cand_.begin(), cand_.begin() + n, by_logit_desc);
      sorted = true;
    }
  }

  const bool top_p_on = params_.top_p < 1.0f;
  const bool min_p_on = params_.min_p > 0.0f;
  if (top_p_on && n > 1) {
    if (sorted || n <= kSmallSet) {
      if (!sorted) std::sort(cand_.begin(), cand_.begin() + n, by_logit_desc);
      sorted = true;
      n = top_p_sorted(n);
    } else {
      n = top_p_bucketed(n);
    }
  }
  if (min_p_on && n > 1) {
    // p_i >= min_p * p_max  <=>  exp(logit_i - logit_max) >= min_p (same softmax denominator).
    float max_l = cand_[0].first;
    if (!sorted) {
      for (size_t i = 1; i < n; ++i) max_l = std::max(max_l, cand_[i].first);
    }
    const double min_p = params_.min_p;
    size_t kept = 0;  // stable in-place compaction (std::stable_partition may allocate)
    for (size_t i = 0; i < n; ++i) {
      if (det_exp(static_cast<double>(cand_[i].first) - max_l) >= min_p) cand_[kept++] = cand_[i];
    }
    n = std::max<size_t>(1, kept);
  }

  // Temperature, softmax and the draw.
  const double inv_t = 1.0 / static_cast<double>(params_.temperature);
  double max_l = cand_[0].first;
  for (size_t i = 1; i < n; ++i) max_l = std::max(max_l, static_cast<double>(cand_[i].first));
  probs_.resize(n);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    sum += probs_[i] = det_exp((static_cast<double>(cand_[i].first) - max_l) * inv_t);
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
