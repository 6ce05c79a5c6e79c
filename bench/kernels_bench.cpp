// Kernel benchmarks: matvec (decode, m = 1; parallel slots, m = 4) and matmul (prefill, m = 64 / 512)
// per weight format, with 1 and 2 threads, reporting weight bytes streamed per second; plus a plain
// streaming read of a large buffer as the machine's memory-bandwidth ceiling.
//   ./qleap_kernel_bench --benchmark_filter='Matvec/Q4_0'   (QLEAP_ISA=amx|avx512|avx2|scalar caps
//   the ISA; QLEAP_REPACK=0 keeps the GGUF layout)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "autoconf/memory_bandwidth.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/packed_weights.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "quant/quant.h"

namespace qleap {
namespace {

// Decode benchmarks cycle through enough weight copies to exceed the last-level cache, so they
// measure DRAM streaming like a real model does (some VMs report a last-level cache of hundreds
// of MiB).
size_t cold_bytes() {
  static const size_t n = std::max(size_t(160) << 20, 2 * last_level_cache_bytes());
  return n;
}

ThreadPool& pool_for(int n) {
  static std::unique_ptr<ThreadPool> pools[9];
  if (!pools[n]) pools[n] = std::make_unique<ThreadPool>(n);
  return *pools[n];
}

std::vector<uint8_t> make_weights(GgmlType t, int64_t rows, int64_t cols) {
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> f(static_cast<size_t>(cols));
  const size_t rb = row_size(t, cols);
  std::vector<uint8_t> w(rb * size_t(rows));
  // Encode at most 64 distinct rows (the K-quant encoders are slow) and repeat them.
  constexpr int64_t kDistinct = 64;
  for (int64_t r = 0; r < rows; ++r) {
    if (r >= kDistinct) {
      std::memcpy(w.data() + size_t(r) * rb, w.data() + size_t(r % kDistinct) * rb, rb);
      continue;
    }
    for (auto& v : f) v = nd(rng);
    if (can_quantize(t)) {
      quantize_row_ref(t, f.data(), w.data() + size_t(r) * rb, cols);
    } else {
      // No encoder (Q2_K, Q3_K, most i-quants): random bits with a small fp16 scale in the first
      // two bytes (the i-quants' d) and the last four (Q2_K's / Q3_K's d, dmin).
      for (size_t i = 0; i < rb; ++i) w[size_t(r) * rb + i] = uint8_t(rng());
      const size_t ts = type_traits(t).type_size;
      for (size_t o = 0; o < rb; o += ts) {
        const uint16_t h = fp32_to_fp16_ref(0.001f);
        std::memcpy(&w[size_t(r) * rb + o + ts - 2], &h, 2);
        std::memcpy(&w[size_t(r) * rb + o + ts - 4], &h, 2);
        std::memcpy(&w[size_t(r) * rb + o], &h, 2);
      }
    }
  }
  return w;
}

void bm_matmul(benchmark::State& state, GgmlType t, int64_t rows, int64_t cols, int64_t m, int threads,
               bool hot = false, bool row_exact = false) {
  const auto base = make_weights(t, rows, cols);
  size_t bytes = base.size();
  // Decode sizes (a lone token, or the server's parallel slots) stream the weights from memory.
  const size_t copies = m <= 4 && !hot ? std::max<size_t>(1, cold_bytes() / bytes) : 1;
  std::vector<std::vector<uint8_t>> w(copies, base);
  // The model's path: packable formats are repacked at load (QLEAP_REPACK=0 measures GGUF layout).
  std::vector<WeightView> views;
  for (auto& c : w) views.push_back(WeightView{t, c.data(), cols, rows, row_size(t, cols)});
  std::vector<WeightView*> vp;
  for (auto& v : views) vp.push_back(&v);
  const auto prepared = PreparedWeights::prepare(vp, false);
  if (prepared->matrices() > 0) {
    // Decode then streams the repacked copy: count its bytes.
    state.SetLabel("repacked");
    bytes = prepared->bytes() / copies;
  }
  std::vector<float> x(size_t(m * cols)), y(size_t(m * rows));
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(rng);
  ThreadPool& pool = pool_for(threads);
  size_t i = 0;
  // The server's batched decode: every token computed as if alone (the decode kernels, not panels).
  std::optional<RowExactMatmul> exact;
  if (row_exact) exact.emplace();
  for (auto _ : state) {
    matmul(views[i], x.data(), m, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
    i = (i + 1) % copies;
  }
  state.counters["wGB/s"] =
      benchmark::Counter(double(bytes) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOPS"] = benchmark::Counter(
      2.0 * double(rows * cols * m) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

// Streaming read of a buffer much larger than the caches: the bandwidth ceiling for decode.
void bm_mem_read(benchmark::State& state, int threads) {
  const size_t n = std::max(size_t(512) << 20, 2 * last_level_cache_bytes()) / sizeof(uint64_t);
  static std::vector<uint64_t> buf(n, 1);
  ThreadPool& pool = pool_for(threads);
  std::vector<uint64_t> sums(size_t(threads) * 8);
  for (auto _ : state) {
    pool.run([&](int ith, int nth) {
      const size_t b = n * size_t(ith) / size_t(nth), e = n * size_t(ith + 1) / size_t(nth);
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (size_t k = b; k + 4 <= e; k += 4) {
        s0 += buf[k];
        s1 += buf[k + 1];
        s2 += buf[k + 2];
        s3 += buf[k + 3];
      }
      sums[size_t(ith) * 8] = s0 + s1 + s2 + s3;
    });
    benchmark::DoNotOptimize(sums.data());
  }
  state.counters["GB/s"] =
      benchmark::Counter(double(n * 8) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

void register_all() {
  for (int th : {1, 2}) {
    benchmark::RegisterBenchmark(("MemRead/threads:" + std::to_string(th)).c_str(),
                                 [th](benchmark::State& s) { bm_mem_read(s, th); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  const GgmlType types[] = {GgmlType::Q4_0,  GgmlType::Q4_1,    GgmlType::Q8_0,    GgmlType::Q5_0,
                            GgmlType::Q5_1,  GgmlType::IQ4_NL,  GgmlType::Q2_K,    GgmlType::Q3_K,
                            GgmlType::Q4_K,  GgmlType::Q5_K,    GgmlType::Q6_K,    GgmlType::F16,
                            GgmlType::BF16,  GgmlType::F32,     GgmlType::IQ2_XXS, GgmlType::IQ2_XS,
                            GgmlType::IQ2_S, GgmlType::IQ3_XXS, GgmlType::IQ3_S,   GgmlType::IQ1_S,
                            GgmlType::IQ1_M, GgmlType::IQ4_XS,  GgmlType::TQ1_0,   GgmlType::TQ2_0,
                            GgmlType::MXFP4, GgmlType::NVFP4};
  // Cache-resident matvec (L2): isolates kernel compute from DRAM for A/B comparisons of kernels.
  for (GgmlType t : types) {
    const std::string name = std::string("MatvecHot/") + type_name(t) + "/256x2048/threads:1";
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) {
      bm_matmul(s, t, 256, 2048, 1, 1, true);
    })->Unit(benchmark::kMicrosecond);
    // Four tokens per pass over the weights: the parallel slots' decode path (row-exact) and the
    // prefill panels a 4-token prompt takes.
    for (bool ex : {true, false}) {
      const std::string name4 =
          std::string("MatvecHot/") + type_name(t) + "/256x2048/m:4" + (ex ? "/exact" : "") + "/threads:1";
      benchmark::RegisterBenchmark(name4.c_str(), [=](benchmark::State& s) {
        bm_matmul(s, t, 256, 2048, 4, 1, true, ex);
      })->Unit(benchmark::kMicrosecond);
    }
  }
  const std::pair<int64_t, int64_t> shapes[] = {{768, 2048}, {2048, 768}, {4096, 4096}};  // rows x cols
  for (int64_t m : {1, 4, 64, 512}) {
    for (GgmlType t : types) {
      for (auto [rows, cols] : shapes) {
        if (m == 512 && rows * cols > 2048 * 768) continue;  // keep the full run in minutes
        for (int th : {1, 2}) {
          // m = 4: the server's batched decode (row-exact), streaming from memory like m = 1.
          const std::string name = std::string(m == 1 ? "Matvec/" : "Matmul/") + type_name(t) + "/" +
                                   std::to_string(rows) + "x" + std::to_string(cols) +
                                   "/m:" + std::to_string(m) + (m == 4 ? "/exact" : "") +
                                   "/threads:" + std::to_string(th);
          benchmark::RegisterBenchmark(
              name.c_str(), [=](benchmark::State& s) { bm_matmul(s, t, rows, cols, m, th, false, m == 4); })
              ->UseRealTime()
              ->Unit(benchmark::kMicrosecond);
        }
      }
    }
  }
}

}  // namespace
}  // namespace qleap

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  qleap::register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
