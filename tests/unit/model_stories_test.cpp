// End-to-end checks on the real stories260K model (llama arch, GQA 8/4 heads, head_dim 8): greedy
// decoding must reproduce the llama2.c reference text exactly; batched, chunked and incremental
// evaluation must agree; compressed KV caches must stay close to the f32 one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "model_test_util.h"
#include "runtime/session.h"

namespace qleap {
namespace {

using testing::decode_piece;

std::shared_ptr<const Model> stories() {
  static std::shared_ptr<const Model> m = [] {
    return load_model(testing::stories_path());
  }();
  return m;
}

#define REQUIRE_STORIES() \
  auto model = stories(); \
  ASSERT_TRUE(model) << testing::stories_path()

int argmax(const float* x, int n) {
  // First maximum, like llama2.c's sample_argmax.
  int best = 0;
  for (int i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return best;
}

// llama2.c's generate loop from BOS: up to `steps` forward passes, stop on BOS.
std::vector<int> greedy(const std::shared_ptr<const Model>& model, const SessionOptions& opt, int steps) {
  Session s(model, opt);
  std::vector<int> out;
  int tok = 1;
  for (int pos = 0; pos < steps; ++pos) {
    const auto& logits = s.eval({tok});
    const int next = argmax(logits.data(), s.n_vocab());
    if (next == 1) break;
    out.push_back(next);
    tok = next;
  }
  return out;
}

const std::vector<std::string>& vocab(const Model& m) {
  const GgufValue* v = m.file().find("tokenizer.ggml.tokens");
  EXPECT_NE(v, nullptr);
  return v->arr_s;
}

void expect_reference_text(const Model& model, const std::vector<int>& toks, bool prefix_only = false) {
  std::string expected = testing::read_text(testing::stories_expected_path());
  ASSERT_FALSE(expected.empty());
  if (expected.back() == '\n') expected.pop_back();  // llama2.c prints a final newline
  const auto& voc = vocab(model);
  std::string text;
  int prev = 1;
  for (size_t i = 0; i < toks.size(); ++i) {
    const std::string piece = decode_piece(voc, prev, toks[i]);
    if (expected.compare(text.size(), piece.size(), piece) != 0) {
      ADD_FAILURE() << "first divergence at generated token " << i << " (position " << i + 1 << "): got id "
                    << toks[i] << " '" << piece << "', expected text continues '"
                    << expected.substr(text.size(), 40) << "'";
      return;
    }
    text += piece;
    prev = toks[i];
  }
  if (!prefix_only) {
    EXPECT_EQ(text, expected) << "generated text is a strict prefix of the reference (" << toks.size()
                              << " tokens)";
  }
}

void expect_reference_text_prefix(const Model& model, const std::vector<int>& toks) {
  ASSERT_EQ(toks.size(), 100u);
  expect_reference_text(model, toks, true);
}

TEST(ModelStories, HyperParameters) {
  REQUIRE_STORIES();
  const HParams& hp = model->hparams();
  EXPECT_EQ(model->arch(), "llama");
  EXPECT_EQ(hp.n_layers, 5);
  EXPECT_EQ(hp.n_embd, 64);
  EXPECT_EQ(hp.n_ff, 172);
  EXPECT_EQ(hp.n_heads, 8);
  EXPECT_EQ(hp.n_kv_heads, 4);
  EXPECT_EQ(hp.head_dim, 8);
  EXPECT_EQ(hp.n_vocab, 512);
  EXPECT_EQ(hp.n_ctx_train, 2048);
  EXPECT_EQ(hp.rope.n_rot, 8);
  EXPECT_EQ(hp.rope.style, RopeStyle::kNormal);
  EXPECT_FALSE(model->weights().tied_embeddings);
}

TEST(ModelStories, GreedyMatchesLlama2cF32Kv) {
  REQUIRE_STORIES();
  SessionOptions opt;
  opt.kv_type = "f32";
  opt.n_threads = 1;
  const auto toks = greedy(model, opt, 200);
  EXPECT_EQ(toks.size(), 200u);
  expect_reference_text(*model, toks);
}

TEST(ModelStories, GreedyMatchesLlama2cF16Kv) {
  REQUIRE_STORIES();
  SessionOptions opt;
  opt.kv_type = "f16";
  opt.n_threads = 1;
  expect_reference_text(*model, greedy(model, opt, 200));
}

// 8-bit keys perturb this 260K-parameter toy enough to flip a near-tie late in the story (measured:
// first divergence at generated token 114; per-head instead of per-32 scales only moves it to 118),
// so the q8_0 cache is held to the reference for the first 100 tokens.
TEST(ModelStories, GreedyQ8KvMatchesLlama2cFirst100) {
  REQUIRE_STORIES();
  SessionOptions opt;
  opt.kv_type = "q8_0";
  opt.n_threads = 1;
  expect_reference_text_prefix(*model, greedy(model, opt, 100));
}

TEST(ModelStories, BatchEqualsIncrementalAndChunked) {
  REQUIRE_STORIES();
  SessionOptions opt;
  opt.kv_type = "f32";
  opt.n_threads = 1;  // the threaded paths are compared in ThreadedEqualsSingleThreaded
  std::vector<int32_t> seq = {1};
  for (int i = 0; i < 70; ++i) seq.push_back(int32_t((i * 37 + 11) % 509 + 3));
  const int nv = model->n_vocab();

  Session batch(model, opt);
  const std::vector<float> all = batch.eval(seq, true);
  ASSERT_EQ(all.size(), seq.size() * size_t(nv));
  EXPECT_EQ(batch.n_past(), int(seq.size()));

  Session inc(model, opt);
  for (size_t t = 0; t < seq.size(); ++t) {
    const auto& l = inc.eval({seq[t]});
    float max_diff = 0;
    for (int j = 0; j < nv; ++j) max_diff = std::max(max_diff, std::fabs(l[size_t(j)] - all[t * nv + j]));
    ASSERT_LT(max_diff, 1e-4f) << "token " << t;
  }

  for (int nb : {1, 7, 32}) {
    SessionOptions o = opt;
    o.n_batch = nb;
    Session chunked(model, o);
    const auto& c = chunked.eval(seq, true);
    ASSERT_EQ(c.size(), all.size());
    float max_diff = 0;
    for (size_t j = 0; j < c.size(); ++j) max_diff = std::max(max_diff, std::fabs(c[j] - all[j]));
    EXPECT_LT(max_diff, 1e-4f) << "n_batch " << nb;
    // Last-token-only logits equal the last row.
    Session last(model, o);
    const auto& l = last.eval(seq, false);
    ASSERT_EQ(l.size(), size_t(nv));
    for (int j = 0; j < nv; ++j) ASSERT_NEAR(l[size_t(j)], all[(seq.size() - 1) * nv + j], 1e-4f);
  }
}

// Threaded attention (incl. split keys), row-parallel norms/rope and matmul against one thread. Kept
// to a few evals: a spinning pool is slow when the machine is oversubscribed.
TEST(ModelStories, ThreadedEqualsSingleThreaded) {
  REQUIRE_STORIES();
  std::vector<int32_t> seq = {1};
  for (int i = 0; i < 299; ++i) seq.push_back(int32_t((i * 29 + 5) % 509 + 3));
  for (const char* kv : {"f32", "f16", "q8_0"}) {
    SessionOptions opt;
    opt.kv_type = kv;
    opt.n_threads = 1;
    Session one(model, opt);
    const std::vector<float> a = one.eval(seq, true);
    const std::vector<float> a_next = one.eval({77});
    opt.n_threads = 3;
    Session three(model, opt);
    const std::vector<float> b = three.eval(seq, true);
    const std::vector<float> b_next = three.eval({77});  // decode at 300 keys: split-key path
    float max_diff = 0;
    for (size_t j = 0; j < a.size(); ++j) max_diff = std::max(max_diff, std::fabs(a[j] - b[j]));
    for (size_t j = 0; j < a_next.size(); ++j)
      max_diff = std::max(max_diff, std::fabs(a_next[j] - b_next[j]));
    EXPECT_LT(max_diff, 1e-4f) << kv;
  }
}

TEST(ModelStories, CompressedKvCloseToF32) {
  REQUIRE_STORIES();
  std::vector<int32_t> seq = {1};
  for (int i = 0; i < 100; ++i) seq.push_back(int32_t((i * 53 + 7) % 509 + 3));
  SessionOptions opt;
  opt.n_threads = 1;
  opt.kv_type = "f32";
  Session ref(model, opt);
  const std::vector<float> r = ref.eval(seq, true);
  for (const auto& [kv, tol] : {std::pair{"f16", 0.05f}, std::pair{"q8_0", 1.5f}}) {
    opt.kv_type = kv;
    Session s(model, opt);
    const auto& l = s.eval(seq, true);
    float max_diff = 0, max_abs = 0;
    for (size_t j = 0; j < l.size(); ++j) {
      max_diff = std::max(max_diff, std::fabs(l[j] - r[j]));
      max_abs = std::max(max_abs, std::fabs(r[j]));
    }
    EXPECT_LT(max_diff, tol) << kv << " (max |logit| " << max_abs << ")";
    EXPECT_GT(max_diff, 0.0f) << kv << " cache should not be lossless";
    EXPECT_EQ(s.kv().allocated_bytes(), s.kv().bytes_per_token() * size_t(s.n_ctx()));
  }
}

TEST(ModelStories, TruncateAndResetReplay) {
  REQUIRE_STORIES();
  SessionOptions opt;
  opt.kv_type = "f32";
  opt.n_threads = 1;
  Session s(model, opt);
  const std::vector<int32_t> a = {1, 100, 200, 300}, b = {400, 50};
  s.eval(a);
  const std::vector<float> l1 = s.eval(b);
  s.truncate(4);
  EXPECT_EQ(s.n_past(), 4);
  const std::vector<float> l2 = s.eval(b);
  EXPECT_EQ(l1, l2);
  s.reset();
  EXPECT_EQ(s.n_past(), 0);
  s.eval(a);
  EXPECT_EQ(s.eval(b), l1);
  EXPECT_THROW(s.truncate(7), InvalidArgument);
}

}  // namespace
}  // namespace qleap
