// BatchDecoder (continuous batching): a decode step of several slots must give each slot exactly
// (bit for bit) the logits it gets alone and the same as a Session, so that concurrent greedy
// requests produce the same text as sequential ones.
#include "runtime/batch_decoder.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "core/error.h"
#include "model_test_util.h"
#include "quant/quant.h"
#include "runtime/session.h"

namespace qleap {
namespace {

void check_model(const std::string& path, int n_threads) {
  auto model = load_model(path);
  BatchOptions opt;
  opt.n_ctx = 64;
  opt.n_threads = n_threads;
  opt.n_slots = 4;
  BatchDecoder bd(model, opt);
  BatchDecoder single(model, opt);
  const int nv = bd.n_vocab();
  const std::vector<std::vector<int32_t>> prompts = {{1, 5, 9, 13}, {1, 7}, {1, 2, 3, 4, 5, 6, 7}, {1, 30}};
  for (int s = 0; s < 4; ++s) {
    bd.prefill(s, prompts[size_t(s)].data(), int(prompts[size_t(s)].size()));
    single.prefill(s, prompts[size_t(s)].data(), int(prompts[size_t(s)].size()));
  }
  // Reference: a Session fed the same tokens one at a time after the same prefill.
  SessionOptions so;
  so.n_ctx = 64;
  so.n_threads = n_threads;
  for (int step = 0; step < 3; ++step) {
    const int slots[4] = {2, 0, 3, 1};
    const int32_t toks[4] = {int32_t(10 + step), int32_t(20 + step), int32_t(30 + step), int32_t(40 + step)};
    const float* batched = bd.decode(slots, toks, 4);
    std::vector<float> b(batched, batched + size_t(4) * nv);
    for (int i = 0; i < 4; ++i) {
      const float* alone = single.decode(&slots[i], &toks[i], 1);
      ASSERT_EQ(0, std::memcmp(alone, b.data() + size_t(i) * nv, sizeof(float) * size_t(nv)))
          << "slot " << slots[i] << " step " << step;
    }
  }
  for (int s = 0; s < 4; ++s) EXPECT_EQ(bd.n_past(s), int(prompts[size_t(s)].size()) + 3);

  // Session agreement for slot 0 (same kernels; prefill then single-token steps).
  Session sess(model, so);
  sess.eval(prompts[0]);
  for (int step = 0; step < 3; ++step) sess.eval({int32_t(20 + step)});
  const float* last = single.decode(std::vector<int>{0}.data(), std::vector<int32_t>{50}.data(), 1);
  const auto& ref = sess.eval({50});
  for (int j = 0; j < nv; ++j) ASSERT_EQ(ref[size_t(j)], last[j]) << j;

  // Errors instead of crashes.
  const int dup[2] = {1, 1};
  const int32_t t2[2] = {1, 1};
  EXPECT_THROW(bd.decode(dup, t2, 2), InvalidArgument);
  const int32_t bad = -1;
  EXPECT_THROW(bd.prefill(0, &bad, 1), InvalidArgument);

  // Embeddings are unit vectors and do not depend on the slot's previous contents.
  auto e1 = bd.embed(0, {1, 5, 9});
  auto e2 = bd.embed(1, {1, 5, 9});
  EXPECT_EQ(e1, e2);
  double n2 = 0;
  for (float v : e1) n2 += double(v) * v;
  EXPECT_NEAR(n2, 1.0, 1e-4);
}

TEST(BatchDecoder, RowsIndependentOfBatchStories) {
  check_model(testing::stories_path(), 2);
}

TEST(BatchDecoder, RowsIndependentOfBatchSmolLM) {
  const std::string p = testing::default_model_path();
  if (p.empty()) GTEST_SKIP() << "$QLEAP_DEFAULT_MODEL (SmolLM2-135M-Instruct.Q4_1.gguf) not set";
  check_model(p, 2);
}

}  // namespace
}  // namespace qleap

namespace qleap {
namespace {

// RowExactMatmul: with the guard, a multi-row matmul gives every row bit for bit what a call with
// that row alone gives, for every weight format with a SIMD kernel.
TEST(BatchDecoder, RowExactMatmulMatchesSingleRows) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  ThreadPool pool(2);
  const int64_t rows = 300, cols = 512;
  const int m = 7;
  std::vector<float> x(size_t(m * cols));
  for (auto& v : x) v = u(rng);
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1,
                     GgmlType::Q5_1, GgmlType::Q4_K, GgmlType::Q6_K}) {
    std::vector<float> f(size_t(rows * cols));
    for (auto& v : f) v = u(rng);
    std::vector<uint8_t> w(row_size(t, cols) * size_t(rows));
    quantize_row_ref(t, f.data(), w.data(), rows * cols);
    WeightView wv{t, w.data(), cols, rows, row_size(t, cols)};
    std::vector<float> alone(size_t(m * rows)), batched(size_t(m * rows));
    for (int i = 0; i < m; ++i)
      matmul(wv, x.data() + size_t(i) * cols, 1, alone.data() + size_t(i) * rows, pool);
    {
      const RowExactMatmul exact;
      matmul(wv, x.data(), m, batched.data(), pool);
    }
    EXPECT_EQ(0, std::memcmp(alone.data(), batched.data(), alone.size() * sizeof(float))) << type_name(t);
  }
}

}  // namespace
}  // namespace qleap
