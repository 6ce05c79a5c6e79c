#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include "core/fp16.h"
#include "core/guided_for.h"
#include "core/thread_pool.h"

namespace qleap {

TEST(Fp16, RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_fp32_ref(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(fp32_to_fp16_ref(f), h) << h;
  }
}

TEST(Fp16, RoundsToNearestEven) {
  EXPECT_EQ(fp32_to_fp16_ref(1.0f), 0x3c00);
  EXPECT_EQ(fp32_to_fp16_ref(65504.0f), 0x7bff);
  EXPECT_EQ(fp32_to_fp16_ref(1e6f), 0x7c00);
  // 1 + 2^-11 is halfway between 1 and the next half: ties to even (1.0).
  EXPECT_EQ(fp32_to_fp16_ref(1.0f + 1.0f / 2048), 0x3c00);
  EXPECT_EQ(fp32_to_fp16_ref(1.0f + 3.0f / 2048), 0x3c02);
  EXPECT_EQ(fp32_to_fp16_ref(5.96046448e-08f), 0x0001);  // smallest subnormal
}

TEST(Bf16, Rounds) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_FLOAT_EQ(bf16_to_fp32(0x3f80), 1.0f);
  EXPECT_EQ(fp32_to_bf16(bits_to_f32(0x3f808000)), 0x3f80);  // tie to even
  EXPECT_EQ(fp32_to_bf16(bits_to_f32(0x3f818000)), 0x3f82);
}

TEST(ThreadPool, ParallelForCoversRangeOnce) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(1000);
  for (int rep = 0; rep < 50; ++rep) {
    pool.parallel_for(1000, 7, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
    });
  }
  for (auto& h : hits) EXPECT_EQ(h.load(), 50);
}

// Guided chunks: every index once, each chunk starting at a multiple of the grain and a whole number
// of grains long except the last.
TEST(ThreadPool, GuidedForCoversRangeInAlignedChunks) {
  for (int nth : {1, 2, 3}) {
    ThreadPool pool(nth);
    for (int64_t n : {int64_t(1), int64_t(7), int64_t(64), int64_t(1001)}) {
      for (int64_t grain : {int64_t(1), int64_t(4)}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::atomic<int> bad{0};
        for (int rep = 0; rep < 20; ++rep) {
          parallel_for_guided(pool, n, grain, [&](int64_t b, int64_t e, int ith) {
            if (b % grain != 0 || e <= b || ((e - b) % grain != 0 && e != n) || ith < 0 || ith >= nth)
              bad.fetch_add(1);
            for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
          });
        }
        EXPECT_EQ(bad.load(), 0) << "nth=" << nth << " n=" << n << " grain=" << grain;
        for (auto& h : hits) ASSERT_EQ(h.load(), 20) << "nth=" << nth << " n=" << n << " grain=" << grain;
      }
    }
  }
}

// run() jobs (every thread must run once, with its own ith) interleaved with run_shared() jobs
// (whoever joins shares the work; late workers skip) and parallel_for, many times over: a worker
// that wakes late for a shared job must neither run a later job's function under the old
// generation nor miss a run() job. More threads than cores makes late wake-ups common.
TEST(ThreadPool, SharedAndFullJobsInterleave) {
  const int n_threads = 2 * int(std::max(2u, std::thread::hardware_concurrency()));
  ThreadPool pool(n_threads);
  std::vector<std::atomic<int>> hits(257);
  for (int rep = 0; rep < 500; ++rep) {
    std::vector<std::atomic<int>> per_thread(static_cast<size_t>(n_threads));
    pool.run([&](int ith, int nth) {
      EXPECT_EQ(nth, n_threads);
      per_thread[size_t(ith)].fetch_add(1);
    });
    for (auto& c : per_thread) ASSERT_EQ(c.load(), 1) << "rep " << rep;
    std::atomic<int64_t> next{0};
    std::atomic<int> callers{0};
    pool.run_shared([&](int ith) {
      if (ith == 0) callers.fetch_add(1);
      for (int64_t i; (i = next.fetch_add(1)) < 257;) hits[size_t(i)].fetch_add(1);
    });
    ASSERT_EQ(callers.load(), 1);
    pool.parallel_for(257, 5, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
    });
  }
  for (auto& h : hits) EXPECT_EQ(h.load(), 1000);
}

}  // namespace qleap
