#include "runtime/logit_compare.h"

#include <algorithm>
#include <cmath>

#include "tokenizer/tokenizer.h"

namespace qleap {

namespace {

// log sum exp of x (n entries) in double, and the argmax.
double log_sum_exp(const float* x, int n, int32_t* arg) {
  float mx = x[0];
  int32_t a = 0;
  for (int i = 1; i < n; ++i) {
    if (x[i] > mx) {
      mx = x[i];
      a = i;
    }
  }
  double z = 0;
  for (int i = 0; i < n; ++i) z += std::exp(double(x[i]) - mx);
  *arg = a;
  return double(mx) + std::log(z);
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / double(v.size());
}

double se_of_mean(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size() - 1) / double(v.size()));
}

}  // namespace

TokenCompare compare_logits(const float* base, const float* test, int n_vocab, int32_t target) {
  TokenCompare r;
  const double lb = log_sum_exp(base, n_vocab, &r.top1_base);
  const double lt = log_sum_exp(test, n_vocab, &r.top1_test);
  // KL(P||Q) = sum_i p_i (log p_i - log q_i), log p_i = base_i - lb.
  double kl = 0;
  for (int i = 0; i < n_vocab; ++i) {
    const double lp = double(base[i]) - lb;
    const double lq = double(test[i]) - lt;
    kl += std::exp(lp) * (lp - lq);
  }
  r.kld = std::max(0.0, kl);  // rounding can make a near-zero KL slightly negative
  if (target >= 0 && target < n_vocab) {
    r.nll_base = lb - double(base[target]);
    r.nll_test = lt - double(test[target]);
  }
  return r;
}

void CompareStats::add(const TokenCompare& t) {
  kld_.push_back(t.kld);
  nll_b_.push_back(t.nll_base);
  nll_t_.push_back(t.nll_test);
  agree_ += t.top1_base == t.top1_test ? 1 : 0;
}

double CompareStats::mean_kld() const {
  return mean(kld_);
}
double CompareStats::se_kld() const {
  return se_of_mean(kld_);
}
double CompareStats::max_kld() const {
  return kld_.empty() ? 0 : *std::max_element(kld_.begin(), kld_.end());
}

double CompareStats::kld_quantile(double p) const {
  if (kld_.empty()) return 0;
  std::vector<double> s = kld_;
  std::sort(s.begin(), s.end());
  const double r = std::clamp(p, 0.0, 1.0) * double(s.size() - 1);
  return s[size_t(std::lround(r))];
}

double CompareStats::top1_agreement() const {
  return kld_.empty() ? 0 : double(agree_) / double(kld_.size());
}
double CompareStats::ppl_base() const {
  return std::exp(mean(nll_b_));
}
double CompareStats::ppl_test() const {
  return std::exp(mean(nll_t_));
}
double CompareStats::se_ppl_base() const {
  return ppl_base() * se_of_mean(nll_b_);
}
double CompareStats::se_ppl_test() const {
  return ppl_test() * se_of_mean(nll_t_);
}

double CompareStats::ppl_ratio_minus_1() const {
  return std::exp(mean(nll_t_) - mean(nll_b_)) - 1.0;
}

double CompareStats::se_ppl_ratio() const {
  std::vector<double> d(nll_t_.size());
  for (size_t i = 0; i < d.size(); ++i) d[i] = nll_t_[i] - nll_b_[i];
  return std::exp(mean(d)) * se_of_mean(d);
}

std::vector<std::vector<int32_t>> perplexity_chunks(const Tokenizer& tok, std::string_view text, int n_ctx,
                                                    int max_chunks, size_t* n_tokens) {
  const std::vector<int32_t> ids = tok.encode(text, tok.wants_bos(), false);
  if (n_tokens != nullptr) *n_tokens = ids.size();
  std::vector<std::vector<int32_t>> chunks;
  if (n_ctx <= 0) return chunks;
  size_t n = ids.size() / size_t(n_ctx);
  if (max_chunks > 0) n = std::min(n, size_t(max_chunks));
  for (size_t c = 0; c < n; ++c) {
    chunks.emplace_back(ids.begin() + long(c * size_t(n_ctx)), ids.begin() + long((c + 1) * size_t(n_ctx)));
    if (tok.wants_bos()) chunks.back()[0] = tok.bos();
  }
  return chunks;
}

}  // namespace qleap
