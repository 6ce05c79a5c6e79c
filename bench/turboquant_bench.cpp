// TurboQuant attention kernels vs plain fp16 keys/values: scoring n keys of d = 128 for one query
// (or a GQA group), and accumulating n values. Counters: ns_per_key (per key and query head) and
// bytes_per_key (storage of one key vector).
//
//   ./build/qleap_kernel_bench --benchmark_filter='Tq|F16'
//
// The fp16 baselines and the gather-LUT alternative are compiled for AVX2 + F16C with a target
// attribute (bench sources get no ISA flags) and run only where the CPU has them.
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "core/cpu_features.h"
#include "core/fp16.h"
#include "turboquant/tq_attention.h"
#include "turboquant/tq_kernels.h"

namespace qleap {
namespace {

constexpr int kDim = 128;

bool have_avx2() {
  return cpu_features().avx2 && cpu_features().fma && cpu_features().f16c;
}

std::vector<float> gaussian(size_t n, uint64_t seed) {
  TqRng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(rng.next_gaussian());
  return v;
}

struct TqFixture {
  TqState st;
  std::vector<uint8_t> recs;
  std::vector<float> q_rot;
  TqFixture(float bits, int64_t n, int n_q) : st(tq_make_state({kDim, bits}, 0, 0)) {
    const auto x = gaussian(size_t(n) * kDim, 1);
    recs.resize(size_t(n) * st.layout.bytes);
    tq_quantize_rows(st, n, x.data(), kDim, recs.data(), st.layout.bytes);
    const auto q = gaussian(size_t(n_q) * kDim, 2);
    q_rot.resize(q.size());
    for (int qi = 0; qi < n_q; ++qi) tq_rotate_query(st, &q[size_t(qi) * kDim], &q_rot[size_t(qi) * kDim]);
  }
};

void set_counters(benchmark::State& state, int64_t n, int n_q, size_t bytes_per_key) {
  state.counters["ns_per_key"] =
      benchmark::Counter(double(n) * n_q * double(state.iterations()),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["bytes_per_key"] = double(bytes_per_key);
  state.SetBytesProcessed(int64_t(state.iterations()) * n * int64_t(bytes_per_key));
}

// args: bits x 2, n, n_q
void BM_TqScores(benchmark::State& state) {
  const float bits = float(state.range(0)) / 2;
  const int64_t n = state.range(1);
  const int n_q = int(state.range(2));
  TqFixture f(bits, n, n_q);
  std::vector<float> scores(size_t(n) * n_q);
  for (auto _ : state) {
    tq_scores(f.st, f.q_rot.data(), n_q, f.recs.data(), f.st.layout.bytes, n, scores.data(), size_t(n));
    benchmark::DoNotOptimize(scores.data());
  }
  state.SetLabel(tq_kernel_name(f.st.layout));
  set_counters(state, n, n_q, f.st.layout.bytes);
}

void BM_TqScoresScalar(benchmark::State& state) {
  const float bits = float(state.range(0)) / 2;
  const int64_t n = state.range(1);
  TqFixture f(bits, n, 1);
  std::vector<float> scores(n);
  const auto args = tq_detail::kernel_args(f.st);
  for (auto _ : state) {
    tq_detail::scores_scalar(args, f.q_rot.data(), 1, f.recs.data(), f.st.layout.bytes, n, scores.data(),
                             size_t(n));
    benchmark::DoNotOptimize(scores.data());
  }
  set_counters(state, n, 1, f.st.layout.bytes);
}

void BM_TqAccumValues(benchmark::State& state) {
  const float bits = float(state.range(0)) / 2;
  const int64_t n = state.range(1);
  const int n_q = int(state.range(2));
  TqFixture f(bits, n, n_q);
  const auto w = gaussian(size_t(n) * n_q, 3);
  std::vector<float> acc(size_t(n_q) * kDim);
  for (auto _ : state) {
    std::memset(acc.data(), 0, acc.size() * sizeof(float));
    tq_accumulate_values(f.st, w.data(), size_t(n), n_q, f.recs.data(), f.st.layout.bytes, n, acc.data());
    benchmark::DoNotOptimize(acc.data());
  }
  set_counters(state, n, n_q, f.st.layout.bytes);
}

// ---- baselines: fp16 keys / values, AVX2 + F16C ----

__attribute__((target("avx2,fma,f16c"))) void f16_scores(const uint16_t* k, const float* q, int n_q,
                                                         int64_t n, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* kj = k + size_t(j) * kDim;
    for (int qi = 0; qi < n_q; ++qi) {
      const float* qq = q + size_t(qi) * kDim;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      for (int i = 0; i < kDim; i += 16) {
        const __m256 k0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kj + i)));
        const __m256 k1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kj + i + 8)));
        a0 = _mm256_fmadd_ps(k0, _mm256_loadu_ps(qq + i), a0);
        a1 = _mm256_fmadd_ps(k1, _mm256_loadu_ps(qq + i + 8), a1);
      }
      const __m256 s = _mm256_add_ps(a0, a1);
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      out[size_t(qi) * n + j] = _mm_cvtss_f32(h);
    }
  }
}

__attribute__((target("avx2,fma,f16c"))) void f16_accum(const uint16_t* v, const float* w, int64_t n,
                                                        float* acc) {
  for (int64_t j = 0; j < n; ++j) {
    const __m256 c = _mm256_set1_ps(w[j]);
    const uint16_t* vj = v + size_t(j) * kDim;
    for (int i = 0; i < kDim; i += 8) {
      const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(vj + i)));
      _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(c, x, _mm256_loadu_ps(acc + i)));
    }
  }
}

std::vector<uint16_t> f16_keys(int64_t n) {
  const auto x = gaussian(size_t(n) * kDim, 1);
  std::vector<uint16_t> k(x.size());
  for (size_t i = 0; i < x.size(); ++i) k[i] = fp32_to_fp16_ref(x[i]);
  return k;
}

void BM_F16Scores(benchmark::State& state) {
  if (!have_avx2()) {
    state.SkipWithError("needs AVX2+F16C");
    return;
  }
  const int64_t n = state.range(0);
  const int n_q = int(state.range(1));
  const auto k = f16_keys(n);
  const auto q = gaussian(size_t(n_q) * kDim, 2);
  std::vector<float> out(size_t(n) * n_q);
  for (auto _ : state) {
    f16_scores(k.data(), q.data(), n_q, n, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, n, n_q, kDim * 2);
}

void BM_F16AccumValues(benchmark::State& state) {
  if (!have_avx2()) {
    state.SkipWithError("needs AVX2+F16C");
    return;
  }
  const int64_t n = state.range(0);
  const auto v = f16_keys(n);
  const auto w = gaussian(size_t(n), 3);
  std::vector<float> acc(kDim);
  for (auto _ : state) {
    std::memset(acc.data(), 0, acc.size() * sizeof(float));
    f16_accum(v.data(), w.data(), n, acc.data());
    benchmark::DoNotOptimize(acc.data());
  }
  set_counters(state, n, 1, kDim * 2);
}

// ---- the alternative scoring scheme: per-query lookup table T[i][k] = q'_i * c_k, then per key a
// sum of d gathered table entries (vpgatherdd). Measured to pick the shipped kernel. 4-bit only.
__attribute__((target("avx2,fma"))) void lut_scores4(const float* table, const uint8_t* recs, size_t stride,
                                                     size_t norm_off, int64_t n, float* out) {
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i lane_base = _mm256_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112);
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* rec = recs + size_t(j) * stride;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int g = 0; g < kDim / 8; g += 2) {
      uint32_t v0, v1;
      std::memcpy(&v0, rec + g * 4, 4);
      std::memcpy(&v1, rec + g * 4 + 4, 4);
      const __m256i i0 =
          _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(v0)), shifts), _mm256_set1_epi32(15));
      const __m256i i1 =
          _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(v1)), shifts), _mm256_set1_epi32(15));
      a0 = _mm256_add_ps(a0, _mm256_i32gather_ps(table + g * 128, _mm256_add_epi32(i0, lane_base), 4));
      a1 = _mm256_add_ps(a1, _mm256_i32gather_ps(table + g * 128 + 128, _mm256_add_epi32(i1, lane_base), 4));
    }
    const __m256 s = _mm256_add_ps(a0, a1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    uint16_t nh;
    std::memcpy(&nh, rec + norm_off, 2);
    out[j] = fp16_to_fp32_ref(nh) * _mm_cvtss_f32(h);
  }
}

void BM_TqScoresGatherLut4(benchmark::State& state) {
  if (!have_avx2()) {
    state.SkipWithError("needs AVX2");
    return;
  }
  const int64_t n = state.range(0);
  TqFixture f(4.0f, n, 1);
  std::vector<float> table(size_t(kDim) * 16), out(n);
  const float* c = f.st.cb_hi->centroids_f.data();
  for (auto _ : state) {
    for (int i = 0; i < kDim; ++i)  // per query: part of the cost
      for (int k = 0; k < 16; ++k) table[size_t(i) * 16 + k] = f.q_rot[i] * c[k];
    lut_scores4(table.data(), f.recs.data(), f.st.layout.bytes, f.st.layout.norm_offset, n, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, n, 1, f.st.layout.bytes);
}

// The append path: quantizing one K or V vector (per token, layer and KV head), cycling over 256.
void run_quantize(benchmark::State& state, const TqConfig& cfg) {
  const TqState st = tq_make_state(cfg, 0, 0);
  const auto x = gaussian(size_t(256) * cfg.dim, 5);
  std::vector<uint8_t> rec(st.layout.bytes);
  int64_t i = 0;
  for (auto _ : state) {
    tq_quantize(st, &x[size_t(i++ & 255) * cfg.dim], rec.data());
    benchmark::DoNotOptimize(rec.data());
  }
}

// Plain cells, unit norm. args: bits x 2, dense?
void BM_TqQuantize(benchmark::State& state) {
  run_quantize(state, {kDim, float(state.range(0)) / 2,
                       state.range(1) ? TqRotationKind::kDense : TqRotationKind::kHadamard});
}
BENCHMARK(BM_TqQuantize)->Args({6, 0})->Args({7, 0})->Args({8, 0})->Args({6, 1});

// As KV caches quantize: least-squares norm with the assignment scale search (the exact sweep of
// tq_assign_cells). args: bits x 2, dim (Hadamard where dim is a power of two, else dense).
void BM_TqQuantizeSearch(benchmark::State& state) {
  TqConfig cfg{int(state.range(1)), float(state.range(0)) / 2};
  cfg.ls_norm = cfg.scale_search = true;
  run_quantize(state, cfg);
}
BENCHMARK(BM_TqQuantizeSearch)
    ->ArgsProduct({{4, 5, 6, 7, 8}, {128}})
    ->Args({6, 64})
    ->Args({8, 64})
    ->Args({6, 80});

void tq_args(benchmark::internal::Benchmark* b) {
  for (int64_t n : {4096, 65536})
    for (int twice : {4, 5, 6, 7, 8})
      for (int n_q : {1, 4}) b->Args({twice, n, n_q});
}

BENCHMARK(BM_TqScores)->Apply(tq_args);
BENCHMARK(BM_TqScoresScalar)->Args({6, 4096})->Args({8, 4096});
BENCHMARK(BM_TqScoresGatherLut4)->Arg(4096)->Arg(65536);
BENCHMARK(BM_F16Scores)->Args({4096, 1})->Args({4096, 4})->Args({65536, 1})->Args({65536, 4});
BENCHMARK(BM_TqAccumValues)->Args({6, 4096, 1})->Args({8, 4096, 1})->Args({6, 4096, 4})->Args({6, 65536, 1});
BENCHMARK(BM_F16AccumValues)->Arg(4096)->Arg(65536);

}  // namespace
}  // namespace qleap

// Weak: bench/kernels_bench.cpp (another branch) defines the strong main of qleap_kernel_bench;
// this one only serves when this file is the only benchmark source. Benchmarks above register
// statically, so either main runs them.
__attribute__((weak)) int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
