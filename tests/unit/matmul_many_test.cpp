// matmul_many (several weights on one input, the fused q/k/v and gate/up of decode) against separate
// matmul calls: bit-identical at every ISA level, thread count and token count, with formats of
// both activation layouts (sums per 32 and per 16 values) and an unpacked one in the same group.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/packed_weights.h"
#include "core/cpu_features.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "isa_test_util.h"
#include "quant/quant.h"
#include "random_weights.h"

namespace qleap {
namespace {
using testing_util::IsaGuard;
using testing_util::random_weights;
using testing_util::supported_levels;

struct Group {
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<WeightView> views;
  std::unique_ptr<PreparedWeights> prepared;
};

// rows per format: not multiples of 16 (partial last groups), so rows of one matrix never line up
// with the joint numbering of the groups.
Group make_group(const std::vector<std::pair<GgmlType, int64_t>>& spec, int64_t cols, std::mt19937& rng) {
  Group g;
  g.bytes.reserve(spec.size());
  for (const auto& [t, rows] : spec) {
    g.bytes.push_back(random_weights(t, rows, cols, rng));
    g.views.push_back(WeightView{t, g.bytes.back().data(), cols, rows, row_size(t, cols)});
  }
  std::vector<WeightView*> vp;
  for (auto& v : g.views) vp.push_back(&v);
  g.prepared = PreparedWeights::prepare(vp, false);
  // The shared path runs on the repacked copies: they must exist for the test to reach it.
  for (const auto& v : g.views) {
    if (repack_enabled() && packable(v.type)) {
      EXPECT_NE(v.packed, nullptr) << type_name(v.type);
    }
  }
  return g;
}

void expect_same_as_separate(const Group& g, int64_t m, ThreadPool& pool, std::mt19937& rng,
                             const std::string& what) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t cols = g.views[0].cols;
  std::vector<float> x(size_t(m * cols));
  for (auto& v : x) v = nd(rng);
  const size_t n = g.views.size();
  std::vector<std::vector<float>> sep(n), got(n);
  std::vector<const WeightView*> ws;
  std::vector<float*> ys;
  for (size_t i = 0; i < n; ++i) {
    sep[i].assign(size_t(m * g.views[i].rows), 0.0f);
    got[i].assign(size_t(m * g.views[i].rows), NAN);
    matmul(g.views[i], x.data(), m, sep[i].data(), pool);
    ws.push_back(&g.views[i]);
    ys.push_back(got[i].data());
  }
  matmul_many(ws.data(), ys.data(), int(n), x.data(), m, pool);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < sep[i].size(); ++j) {
      ASSERT_EQ(std::memcmp(&got[i][j], &sep[i][j], sizeof(float)), 0)
          << what << " weight " << i << " (" << type_name(g.views[i].type) << ") m=" << m << " at " << j
          << ": " << got[i][j] << " vs " << sep[i][j];
    }
  }
}

TEST(MatmulMany, BitIdenticalToSeparateMatmulsAtEveryIsaLevel) {
  IsaGuard guard;
  std::mt19937 rng(17);
  // Q4_K, Q6_K (sums per 16 and the decode offsets), Q8_0, Q5_0, IQ3_S (no repacked form: its own
  // call), Q5_1, IQ4_XS, Q5_K, MXFP4: one group; then Q6_K alone with Q8_0 (only the 16-value sums
  // derived); NVFP4 (sub-blocks of 16 without Q6_K's offsets) with Q4_0; Q3_K and Q2_K (the offsets
  // of Q6_K's kernels at AVX2) with Q8_0.
  const int64_t cols = 512;
  const Group mixed = make_group({{GgmlType::Q4_K, 37},
                                  {GgmlType::Q6_K, 50},
                                  {GgmlType::Q8_0, 24},
                                  {GgmlType::Q5_0, 19},
                                  {GgmlType::IQ3_S, 21},
                                  {GgmlType::Q5_1, 26},
                                  {GgmlType::IQ4_XS, 33},
                                  {GgmlType::Q5_K, 27},
                                  {GgmlType::MXFP4, 22}},
                                 cols, rng);
  const Group q6_first = make_group({{GgmlType::Q6_K, 21}, {GgmlType::Q8_0, 40}}, cols, rng);
  const Group q6_only = make_group({{GgmlType::Q6_K, 30}, {GgmlType::Q6_K, 17}}, cols, rng);
  const Group nv_q4 = make_group({{GgmlType::NVFP4, 23}, {GgmlType::Q4_0, 18}}, cols, rng);
  const Group k23 = make_group({{GgmlType::Q3_K, 29}, {GgmlType::Q8_0, 16}, {GgmlType::Q2_K, 35}}, cols, rng);
  ThreadPool pool1(1), pool3(3);
  for (IsaLevel lvl : supported_levels()) {
    set_isa_level(lvl);
    for (ThreadPool* pool : {&pool1, &pool3}) {
      // 1 and 3: decode kernels; 5: panels; 33: the AMX tiles where the CPU has them.
      for (int64_t m : {1, 3, 5, 33}) {
        const std::string what =
            std::string("isa=") + isa_name(lvl) + " threads=" + std::to_string(pool->size());
        expect_same_as_separate(mixed, m, *pool, rng, what + " mixed");
        expect_same_as_separate(q6_first, m, *pool, rng, what + " q6+q8");
        expect_same_as_separate(q6_only, m, *pool, rng, what + " q6");
        expect_same_as_separate(nv_q4, m, *pool, rng, what + " nvfp4+q4_0");
        expect_same_as_separate(k23, m, *pool, rng, what + " q3_k+q8_0+q2_k");
        if (m == 3) {
          RowExactMatmul exact;
          expect_same_as_separate(mixed, m, *pool, rng, what + " row-exact");
        }
      }
    }
  }
}

// More weights than one shared call takes (kMaxPackedMany = 8): split, still the same results.
TEST(MatmulMany, ManyWeightsAndTheBackendOp) {
  IsaGuard guard;
  std::mt19937 rng(23);
  std::vector<std::pair<GgmlType, int64_t>> spec;
  for (int i = 0; i < 11; ++i) spec.push_back({i % 2 ? GgmlType::Q4_0 : GgmlType::Q6_K, 16 + 3 * i});
  const Group g = make_group(spec, 256, rng);
  ThreadPool pool(2);
  CpuBackend be(pool);
  for (IsaLevel lvl : supported_levels()) {
    set_isa_level(lvl);
    expect_same_as_separate(g, 1, pool, rng, std::string("isa=") + isa_name(lvl));
    // Through the Backend op.
    std::vector<float> x(256);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto& v : x) v = nd(rng);
    std::vector<std::vector<float>> sep(g.views.size()), got(g.views.size());
    std::vector<MatmulOut> outs;
    for (size_t i = 0; i < g.views.size(); ++i) {
      sep[i].resize(size_t(g.views[i].rows));
      got[i].assign(size_t(g.views[i].rows), NAN);
      be.matmul(g.views[i], x.data(), 1, sep[i].data(), false);
      outs.push_back({&g.views[i], got[i].data()});
    }
    be.matmul_many(outs, x.data(), 1);
    for (size_t i = 0; i < g.views.size(); ++i)
      ASSERT_EQ(std::memcmp(got[i].data(), sep[i].data(), sep[i].size() * sizeof(float)), 0)
          << "isa=" << isa_name(lvl) << " weight " << i;
  }
}

// Weights without a repacked form share one quantization and one dispatch through the row dot
// products (per activation format, at most 8 at once): the same bits as separate matmul calls, and
// as one thread computing every row (the threads split the rows in shrinking chunks).
TEST(MatmulMany, UnpackedWeightsShareOneDispatch) {
  IsaGuard guard;
  std::mt19937 rng(29);
  std::vector<std::pair<GgmlType, int64_t>> spec;
  // 10 Q5_0 (more than one call takes), Q5_1, TQ2_0 (the other activation format), F16 (float
  // activations); row counts not multiples of 4.
  for (int i = 0; i < 10; ++i) spec.push_back({GgmlType::Q5_0, 13 + 7 * i});
  spec.push_back({GgmlType::Q5_1, 45});
  spec.push_back({GgmlType::TQ2_0, 30});
  spec.push_back({GgmlType::F16, 27});
  const Group g = make_group(spec, 512, rng);
  ThreadPool pool1(1), pool2(2), pool3(3);
  for (IsaLevel lvl : supported_levels()) {
    set_isa_level(lvl);
    for (int64_t m : {1, 2, 3, 5}) {
      const std::string what = std::string("isa=") + isa_name(lvl);
      for (ThreadPool* pool : {&pool1, &pool2, &pool3})
        expect_same_as_separate(g, m, *pool, rng, what + " threads=" + std::to_string(pool->size()));
      if (m == 3) {
        RowExactMatmul exact;
        expect_same_as_separate(g, m, pool2, rng, what + " row-exact");
      }
      std::normal_distribution<float> nd(0.0f, 1.0f);
      std::vector<float> x(size_t(m) * 512);
      for (auto& v : x) v = nd(rng);
      for (const WeightView& w : g.views) {
        std::vector<float> one(size_t(m * w.rows)), three(size_t(m * w.rows));
        matmul(w, x.data(), m, one.data(), pool1);
        matmul(w, x.data(), m, three.data(), pool3);
        ASSERT_EQ(std::memcmp(one.data(), three.data(), one.size() * sizeof(float)), 0)
            << what << " " << type_name(w.type) << " rows=" << w.rows << " m=" << m;
      }
    }
  }
}

TEST(MatmulMany, RejectsWeightsOfDifferentColumns) {
  std::mt19937 rng(5);
  const auto a = random_weights(GgmlType::Q4_0, 16, 64, rng);
  const auto b = random_weights(GgmlType::Q4_0, 16, 128, rng);
  const WeightView wa{GgmlType::Q4_0, a.data(), 64, 16, row_size(GgmlType::Q4_0, 64)};
  const WeightView wb{GgmlType::Q4_0, b.data(), 128, 16, row_size(GgmlType::Q4_0, 128)};
  std::vector<float> x(128), ya(16), yb(16);
  const WeightView* ws[] = {&wa, &wb};
  float* ys[] = {ya.data(), yb.data()};
  ThreadPool pool(1);
  EXPECT_THROW(matmul_many(ws, ys, 2, x.data(), 1, pool), InvalidArgument);
}

}  // namespace
}  // namespace qleap
