// Token-level comparison of two models' (or two KV cache types') logits on the same token stream:
// KL divergence, top-1 agreement and the negative log-likelihood of the actual next token under
// each. Used by `qleap compare` to measure what a lossy KV cache costs against an f16 baseline.
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

namespace qleap {

class Tokenizer;

struct TokenCompare {
  double kld = 0;       // KL(P_base || P_test), nats
  double nll_base = 0;  // -log P_base(target); 0 when no target
  double nll_test = 0;
  int32_t top1_base = 0;
  int32_t top1_test = 0;
};

// P = softmax(base), Q = softmax(test), both over n_vocab logits, computed in double. target < 0:
// no next token (nll fields left 0).
TokenCompare compare_logits(const float* base, const float* test, int n_vocab, int32_t target);

// Accumulates TokenCompare results and summarizes them with standard errors.
class CompareStats {
 public:
  void add(const TokenCompare& t);
  int64_t count() const { return int64_t(kld_.size()); }
  double mean_kld() const;
  double se_kld() const;  // standard error of the mean
  double max_kld() const;
  double kld_quantile(double p) const;  // p in [0, 1], nearest rank
  double top1_agreement() const;        // fraction of tokens whose argmax agrees
  double ppl_base() const;
  double ppl_test() const;
  double se_ppl_base() const;  // delta method on the mean NLL
  double se_ppl_test() const;
  // PPL_test / PPL_base - 1 and its standard error from the paired per-token NLL differences (much
  // tighter than combining the two PPL errors, since both runs score the same tokens).
  double ppl_ratio_minus_1() const;
  double se_ppl_ratio() const;

 private:
  std::vector<double> kld_, nll_b_, nll_t_;
  int64_t agree_ = 0;
};

// The perplexity protocol's chunks, made as llama-perplexity makes them, so that both engines score
// the same tokens: the text tokenized with BOS where the model wants one, cut into chunks of n_ctx
// tokens (a partial last chunk dropped), the first token of every chunk replaced by BOS. At most
// max_chunks (<= 0: all). *n_tokens (if given): the length of the tokenized text.
std::vector<std::vector<int32_t>> perplexity_chunks(const Tokenizer& tok, std::string_view text, int n_ctx,
                                                    int max_chunks, size_t* n_tokens = nullptr);

}  // namespace qleap
