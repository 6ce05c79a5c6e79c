// Every CUDA kernel against the CPU reference: mat-vec and dequantize + cuBLAS for each weight
// format, RMSNorm, SwiGLU, RoPE (both styles, scaled, partial rotation) and split attention with
// GQA. Without a CUDA device (CI) the GPU tests skip; the placement tests always run.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_api.h"
#include "core/error.h"
#include "core/fp16.h"
#include "placement/placement.h"
#include "quant/quant.h"
#include "random_weights.h"

namespace qleap {
namespace {
using testing_util::random_weights;

#define REQUIRE_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device (GPU kernel tests run on a GPU machine)"

double rel_err(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Double-precision reference of y = W x from the scalar decoders.
std::vector<double> ref_matmul(const WeightView& w, const std::vector<float>& x, int m) {
  std::vector<double> y(size_t(m) * w.rows);
  std::vector<float> row(size_t(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + size_t(r) * w.row_bytes, row.data(), w.cols);
    for (int t = 0; t < m; ++t) {
      double s = 0;
      for (int64_t c = 0; c < w.cols; ++c) s += double(row[size_t(c)]) * x[size_t(t * w.cols + c)];
      y[size_t(t * w.rows + r)] = s;
    }
  }
  return y;
}

// Needs nvcc at build time but no device: the kernels' decoders, run on the CPU over the re-laid
// out weights, must reproduce the scalar reference decoders exactly.
TEST(CudaLayout, KernelDecodersMatchScalarReferenceOnHost) {
  if (!cuda::compiled()) GTEST_SKIP() << "built without the CUDA backend";
  std::mt19937 rng(99);
  for (GgmlType t :
       {GgmlType::F32,    GgmlType::F16,    GgmlType::BF16,    GgmlType::Q8_0,  GgmlType::Q4_0,
        GgmlType::Q4_1,   GgmlType::Q4_K,   GgmlType::Q5_K,    GgmlType::Q6_K,  GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS, GgmlType::IQ2_S,  GgmlType::IQ3_XXS, GgmlType::IQ3_S, GgmlType::IQ1_S,
        GgmlType::IQ1_M,  GgmlType::IQ4_XS, GgmlType::TQ1_0,   GgmlType::TQ2_0, GgmlType::MXFP4,
        GgmlType::NVFP4}) {
    const bool is_float = t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16;
    const int64_t rows = 7, cols = is_float ? 172 : 768;
    const auto bytes = random_weights(t, rows, cols, rng);
    const WeightView w{t, bytes.data(), cols, rows, row_size(t, cols)};
    std::vector<float> got(size_t(rows * cols), NAN), ref(got.size());
    cuda::decode_gpu_layout_host(w, got.data());
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row_ref(t, bytes.data() + size_t(r) * w.row_bytes, ref.data() + size_t(r * cols), cols);
    }
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_EQ(got[i], ref[i]) << type_name(t) << " element " << i;
    }
  }
}

class CudaMatmul : public ::testing::TestWithParam<GgmlType> {};

TEST_P(CudaMatmul, MatVecAndGemmMatchScalarReference) {
  REQUIRE_GPU();
  const GgmlType t = GetParam();
  const bool is_float = t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16;
  std::mt19937 rng(1234 + int(t));
  // Odd row counts; float formats get a column count that is not a multiple of 8 (rows padded).
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{67, 512}, {301, 1024}, {5, 256}}) {
    if (is_float && cols == 256) cols = 172;
    const auto bytes = random_weights(t, rows, cols, rng);
    const WeightView w{t, bytes.data(), cols, rows, row_size(t, cols)};
    for (int m : {1, 5}) {
      std::vector<float> x(size_t(m * cols));
      std::normal_distribution<float> nd(0.0f, 1.0f);
      for (auto& v : x) v = nd(rng);
      const auto ref = ref_matmul(w, x, m);
      for (bool gemm : {false, true}) {
        if (m > 1 && !gemm) continue;
        std::vector<float> y(size_t(m * rows), NAN);
        cuda::matmul_host(w, x.data(), m, y.data(), gemm);
        // The mat-vec kernel accumulates in fp32; the GEMM path rounds weights and activations to
        // fp16 (F32 weights use SGEMM).
        const double tol = (gemm && t != GgmlType::F32) ? 3e-3 : 2e-5;
        EXPECT_LT(rel_err(y, ref), tol) << type_name(t) << " rows " << rows << " cols " << cols << " m " << m
                                        << (gemm ? " gemm" : " matvec");
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, CudaMatmul,
                         ::testing::Values(GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0,
                                           GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K, GgmlType::Q5_K,
                                           GgmlType::Q6_K, GgmlType::IQ2_XXS, GgmlType::IQ2_XS,
                                           GgmlType::IQ2_S, GgmlType::IQ3_XXS, GgmlType::IQ3_S,
                                           GgmlType::IQ1_S, GgmlType::IQ1_M, GgmlType::IQ4_XS,
                                           GgmlType::TQ1_0, GgmlType::TQ2_0, GgmlType::MXFP4,
                                           GgmlType::NVFP4),
                         [](const auto& info) { return std::string(type_name(info.param)); });

TEST(CudaOps, RmsNormAndSiluMul) {
  REQUIRE_GPU();
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (int n : {64, 1000, 4096}) {
    const int m = 3;
    std::vector<float> x(size_t(m) * n), w(static_cast<size_t>(n)), y(x.size(), NAN);
    for (auto& v : x) v = nd(rng);
    for (auto& v : w) v = nd(rng);
    cuda::rms_norm_host(x.data(), w.data(), y.data(), m, n, 1e-5f);
    std::vector<double> ref(x.size());
    std::vector<float> r(static_cast<size_t>(n));
    for (int t = 0; t < m; ++t) {
      rms_norm_ref(x.data() + size_t(t) * n, w.data(), r.data(), n, 1e-5f);
      for (int i = 0; i < n; ++i) ref[size_t(t) * n + i] = r[size_t(i)];
    }
    EXPECT_LT(rel_err(y, ref), 1e-5) << n;

    std::vector<float> g(x), u(x.size());
    for (auto& v : u) v = nd(rng);
    std::vector<double> sref(g.size());
    for (size_t i = 0; i < g.size(); ++i) sref[i] = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i];
    cuda::silu_mul_host(g.data(), u.data(), int64_t(g.size()));
    EXPECT_LT(rel_err(g, sref), 1e-5) << n;
  }
}

TEST(CudaOps, RopeMatchesCpuBothStylesScaledAndPartial) {
  REQUIRE_GPU();
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Case {
    RopeStyle style;
    int n_rot, head_dim;
    RopeScaling scaling;
  };
  for (const Case& c : {Case{RopeStyle::kNormal, 128, 128, RopeScaling::kNone},
                        Case{RopeStyle::kNeox, 128, 128, RopeScaling::kYarn},
                        Case{RopeStyle::kNeox, 32, 64, RopeScaling::kLinear},
                        Case{RopeStyle::kNormal, 8, 8, RopeScaling::kNone}}) {
    RopeParams p;
    p.n_rot = c.n_rot;
    p.style = c.style;
    p.freq_base = 500000.0f;
    p.scaling = c.scaling;
    p.factor = 4.0f;
    p.orig_ctx = 256;
    const RopeTable tab(p, 1024);
    const int m = 4, heads = 6, pos0 = 900;
    std::vector<float> x(size_t(m) * heads * c.head_dim);
    for (auto& v : x) v = nd(rng);
    std::vector<float> cpu(x), gpu(x);
    for (int t = 0; t < m; ++t) {
      rope_apply(tab.at(pos0 + t), tab.n_rot(), tab.style(), cpu.data() + size_t(t) * heads * c.head_dim,
                 heads, c.head_dim);
    }
    cuda::rope_host(tab, gpu.data(), m, heads, c.head_dim, pos0);
    std::vector<double> ref(cpu.begin(), cpu.end());
    EXPECT_LT(rel_err(gpu, ref), 1e-5) << "n_rot " << c.n_rot;
  }
}

// Causal GQA attention in double over fp16-rounded keys / values.
std::vector<double> ref_attention(const std::vector<float>& q, const std::vector<float>& k,
                                  const std::vector<float>& v, int m, int pos0, int nh, int nkv, int hd,
                                  float scale) {
  const int kvd = nkv * hd, qd = nh * hd;
  std::vector<double> out(size_t(m) * qd);
  for (int t = 0; t < m; ++t) {
    for (int h = 0; h < nh; ++h) {
      const int kh = h / (nh / nkv), n = pos0 + t + 1;
      std::vector<double> s(static_cast<size_t>(n));
      double mx = -1e300;
      for (int p = 0; p < n; ++p) {
        double d = 0;
        for (int i = 0; i < hd; ++i) {
          d += double(q[size_t(t) * qd + h * hd + i]) *
               fp16_to_fp32_ref(fp32_to_fp16_ref(k[size_t(p) * kvd + kh * hd + i]));
        }
        s[size_t(p)] = d * scale;
        mx = std::max(mx, s[size_t(p)]);
      }
      double sum = 0;
      for (auto& e : s) sum += (e = std::exp(e - mx));
      for (int i = 0; i < hd; ++i) {
        double a = 0;
        for (int p = 0; p < n; ++p) {
          a += s[size_t(p)] * fp16_to_fp32_ref(fp32_to_fp16_ref(v[size_t(p) * kvd + kh * hd + i]));
        }
        out[size_t(t) * qd + h * hd + i] = a / sum;
      }
    }
  }
  return out;
}

TEST(CudaAttention, SplitAttentionMatchesReference) {
  REQUIRE_GPU();
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Case {
    int nh, nkv, hd, m, pos0;
  };
  // Decode after a long prefix (many splits), prefill chunks, GQA groups of 1..16, head dims 8..256.
  for (const Case& c : {Case{32, 8, 128, 1, 700}, Case{8, 4, 8, 7, 0}, Case{14, 2, 64, 5, 130},
                        Case{16, 1, 256, 2, 65}, Case{4, 4, 96, 3, 200}, Case{32, 8, 128, 33, 40}}) {
    const int n_kv = c.pos0 + c.m, kvd = c.nkv * c.hd, qd = c.nh * c.hd;
    std::vector<float> q(size_t(c.m) * qd), k(size_t(n_kv) * kvd), v(k.size()), out(q.size(), NAN);
    for (auto& x : q) x = nd(rng);
    for (auto& x : k) x = nd(rng);
    for (auto& x : v) x = nd(rng);
    const float scale = 1.0f / std::sqrt(float(c.hd));
    cuda::attention_host(q.data(), k.data(), v.data(), out.data(), c.m, c.pos0, n_kv, c.nh, c.nkv, c.hd,
                         scale);
    const auto ref = ref_attention(q, k, v, c.m, c.pos0, c.nh, c.nkv, c.hd, scale);
    EXPECT_LT(rel_err(out, ref), 1e-4) << "heads " << c.nh << "/" << c.nkv << " hd " << c.hd << " m " << c.m;
  }
}

TEST(CudaDevice, QueryIsConsistent) {
  const int n = cuda::device_count();
  const auto devs = cuda::devices();
  EXPECT_EQ(int(devs.size()), n);
  for (const auto& d : devs) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GE(d.cc_major, 5);
    EXPECT_GT(d.total_bytes, size_t(0));
    EXPECT_LE(d.free_bytes, d.total_bytes);
  }
  if (n == 0) {
    std::vector<float> y(1);
    const float x = 1.0f;
    const WeightView w{GgmlType::F32, &x, 1, 1, 4};
    EXPECT_THROW(cuda::matmul_host(w, &x, 1, y.data()), Error);
  }
}

TEST(Placement, SplitsLayersLikeNgl) {
  auto p = plan_placement(32, 0, 1);
  EXPECT_FALSE(p.any_gpu());
  EXPECT_EQ(p.first_gpu_layer(), 32);
  p = plan_placement(32, 10, 1);
  EXPECT_EQ(p.n_gpu_layers, 10);
  EXPECT_EQ(p.first_gpu_layer(), 22);
  EXPECT_FALSE(p.output_on_gpu);
  p = plan_placement(32, 32, 1);
  EXPECT_TRUE(p.output_on_gpu);
  p = plan_placement(32, -1, 1);
  EXPECT_EQ(p.n_gpu_layers, 32);
  EXPECT_TRUE(p.output_on_gpu);
  p = plan_placement(32, 99, 0);  // no device: CPU only, with a note
  EXPECT_FALSE(p.any_gpu());
  EXPECT_FALSE(p.note.empty());
  EXPECT_NE(p.describe().find("CPU"), std::string::npos);
}

}  // namespace
}  // namespace qleap
