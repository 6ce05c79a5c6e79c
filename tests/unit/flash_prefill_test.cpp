// Tiled prefill attention against the double-precision reference, at every ISA level this CPU has.
#include "kv/flash_prefill.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/cpu_features.h"
#include "core/fp16.h"
#include "isa_test_util.h"

namespace qleap {
namespace {
using testing_util::IsaGuard;

struct Case {
  int n_heads, n_kv_heads, head_dim, pos0, n_q;
};

template <class T>
void check_case(const Case& c, int threads) {
  const int n_ctx = c.pos0 + c.n_q + 3;
  std::mt19937 rng(uint32_t(c.head_dim * 131 + c.pos0 * 7 + c.n_q + c.n_heads));
  std::normal_distribution<float> nd;
  // Head-major storage like the caches: [head][position][dim], with a gap between heads.
  const size_t pos_stride = size_t(c.head_dim), head_stride = size_t(n_ctx + 5) * pos_stride;
  std::vector<T> k(head_stride * size_t(c.n_kv_heads)), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    // A few large scores so the running maximum moves between key blocks.
    const float kx = nd(rng) * (i % 97 == 0 ? 4.0f : 1.0f), vx = nd(rng);
    if constexpr (sizeof(T) == 2) {
      k[i] = fp32_to_fp16(kx);
      v[i] = fp32_to_fp16(vx);
    } else {
      k[i] = kx;
      v[i] = vx;
    }
  }
  std::vector<float> q(size_t(c.n_q) * c.n_heads * c.head_dim);
  for (auto& x : q) x = nd(rng);
  const FlashShape s{c.n_q, c.pos0, c.n_heads, c.n_kv_heads, c.head_dim, 1.0f / std::sqrt(float(c.head_dim))};
  const KvRowsView<T> kv{k.data(), v.data(), head_stride, pos_stride};
  std::vector<float> ref(q.size()), got(q.size(), NAN);
  attention_prefill_ref(s, kv, q.data(), ref.data());
  ASSERT_TRUE(flash_prefill_supported(s));
  ThreadPool pool(threads);
  flash_prefill(s, kv, q.data(), got.data(), pool);
  // AMX (32 queries and up, head_dim a multiple of 32) multiplies split bf16 parts (hi*hi + hi*lo +
  // lo*hi): f16 keys and values exactly, queries and probabilities to 16 bits; its error must stay
  // near fp32 rounding (plain bf16 products missed this by two orders of magnitude).
  // The f32 cache keeps fp32 products at every level.
  const bool amx = sizeof(T) == 2 && isa_level() == IsaLevel::kAmx && c.n_q >= 32 && c.head_dim % 32 == 0 &&
                   flash_prefill_amx_enabled();
  for (size_t i = 0; i < ref.size(); ++i) {
    const double tol = amx ? 1e-4 + 1e-4 * std::fabs(ref[i]) : 2e-5 + 2e-5 * std::fabs(ref[i]);
    ASSERT_NEAR(got[i], ref[i], tol) << "isa=" << isa_name(isa_level()) << " hd=" << c.head_dim
                                     << " heads=" << c.n_heads << "/" << c.n_kv_heads << " pos0=" << c.pos0
                                     << " n_q=" << c.n_q << " i=" << i;
  }
}

TEST(FlashPrefill, MatchesReferenceAtEveryIsaLevel) {
  IsaGuard guard;
  const Case cases[] = {
      {6, 2, 64, 0, 67},  {9, 3, 64, 37, 5},    {12, 2, 128, 0, 40}, {8, 8, 64, 130, 4},
      {4, 1, 80, 10, 33}, {16, 2, 128, 300, 9}, {3, 3, 32, 0, 100},
  };
  int ran = 0;
  const bool saved_amx = flash_prefill_amx_enabled();
  for (IsaLevel lvl : {IsaLevel::kAvx2, IsaLevel::kAvx512, IsaLevel::kAmx}) {
    set_isa_level(lvl);
    if (isa_level() != lvl) continue;
    ++ran;
    // At the AMX level, both with the tile kernel and without it.
    for (bool amx : {false, true}) {
      if (amx && lvl != IsaLevel::kAmx) continue;
      set_flash_prefill_amx(amx);
      for (const Case& c : cases) {
        check_case<uint16_t>(c, 1);
        check_case<float>(c, 3);
      }
    }
  }
  set_flash_prefill_amx(saved_amx);
  if (ran == 0) GTEST_SKIP() << "no AVX2 on this CPU";
}

// A prompt block deep into a long context (SmolLM2- and Qwen2.5-like heads): thousands of keys per
// row, so the online softmax's running maximum, lazy rescaling and fp32 sums run over many key blocks.
TEST(FlashPrefill, LongCausalPrefillMatchesReference) {
  IsaGuard guard;
  const Case cases[] = {{9, 3, 64, 4000, 48}, {12, 2, 128, 2100, 33}};
  int ran = 0;
  const bool saved_amx = flash_prefill_amx_enabled();
  for (IsaLevel lvl : {IsaLevel::kAvx2, IsaLevel::kAvx512, IsaLevel::kAmx}) {
    set_isa_level(lvl);
    if (isa_level() != lvl) continue;
    ++ran;
    set_flash_prefill_amx(lvl == IsaLevel::kAmx);
    for (const Case& c : cases) {
      check_case<uint16_t>(c, 2);
      check_case<float>(c, 2);
    }
  }
  set_flash_prefill_amx(saved_amx);
  if (ran == 0) GTEST_SKIP() << "no AVX2 on this CPU";
}

TEST(FlashPrefill, ScalarLevelAndSingleQueriesAreLeftToTheCaches) {
  IsaGuard guard;
  set_isa_level(IsaLevel::kScalar);
  EXPECT_FALSE(flash_prefill_supported(FlashShape{64, 0, 4, 2, 64, 1.0f}));
  set_isa_level(guard.saved);
  EXPECT_FALSE(flash_prefill_supported(FlashShape{1, 100, 4, 2, 64, 1.0f}));
  EXPECT_FALSE(flash_prefill_supported(FlashShape{64, 0, 4, 2, 60, 1.0f}));  // head_dim not a multiple of 8
}

}  // namespace
}  // namespace qleap
