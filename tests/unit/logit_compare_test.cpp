// compare_logits / CompareStats (what `qleap compare` reports) against closed-form values.
#include "runtime/logit_compare.h"

#include <gtest/gtest.h>

#include <cmath>

namespace qleap {
namespace {

TEST(LogitCompare, IdenticalLogitsHaveZeroDivergence) {
  const float a[4] = {1.0f, -2.0f, 0.5f, 3.0f};
  const TokenCompare r = compare_logits(a, a, 4, 2);
  EXPECT_NEAR(r.kld, 0.0, 1e-12);
  EXPECT_EQ(r.top1_base, 3);
  EXPECT_EQ(r.top1_test, 3);
  const double lse = std::log(std::exp(1.0) + std::exp(-2.0) + std::exp(0.5) + std::exp(3.0));
  EXPECT_NEAR(r.nll_base, lse - 0.5, 1e-9);
  EXPECT_NEAR(r.nll_test, r.nll_base, 1e-12);
}

TEST(LogitCompare, TwoTokenKlMatchesClosedForm) {
  // P = (p, 1-p) with p = sigmoid(1), Q = (q, 1-q) with q = sigmoid(-1); a constant shift of the
  // logits must not matter.
  const float base[2] = {1.0f, 0.0f}, test[2] = {9.0f, 10.0f};
  const double p = 1 / (1 + std::exp(-1.0)), q = 1 / (1 + std::exp(1.0));
  const double kl = p * std::log(p / q) + (1 - p) * std::log((1 - p) / (1 - q));
  const TokenCompare r = compare_logits(base, test, 2, -1);
  EXPECT_NEAR(r.kld, kl, 1e-9);
  EXPECT_EQ(r.top1_base, 0);
  EXPECT_EQ(r.top1_test, 1);
  EXPECT_EQ(r.nll_base, 0.0);  // no target
}

TEST(LogitCompare, StatsSummarize) {
  CompareStats st;
  TokenCompare a, b;
  a.kld = 0.1;
  a.nll_base = 1.0;
  a.nll_test = 1.5;
  b.kld = 0.3;
  b.nll_base = 2.0;
  b.nll_test = 2.1;
  b.top1_test = 5;  // disagrees with top1_base = 0
  st.add(a);
  st.add(b);
  EXPECT_EQ(st.count(), 2);
  EXPECT_NEAR(st.mean_kld(), 0.2, 1e-12);
  EXPECT_NEAR(st.se_kld(), std::sqrt(0.02 / 2), 1e-12);  // sample var 0.02, n 2
  EXPECT_NEAR(st.max_kld(), 0.3, 1e-12);
  EXPECT_NEAR(st.top1_agreement(), 0.5, 1e-12);
  EXPECT_NEAR(st.ppl_base(), std::exp(1.5), 1e-9);
  EXPECT_NEAR(st.ppl_test(), std::exp(1.8), 1e-9);
  EXPECT_NEAR(st.ppl_ratio_minus_1(), std::exp(0.3) - 1, 1e-9);
  // Paired differences 0.5 and 0.1: mean 0.3, sample sd 0.2828, se 0.2.
  EXPECT_NEAR(st.se_ppl_ratio(), std::exp(0.3) * 0.2, 1e-9);
}

}  // namespace
}  // namespace qleap
