// The gated DeltaNet step (Backend::delta_net, backend/cpu/delta_net.h): the chunked form (prefill) and the
// recurrent form (decode) against each other at and around the chunk boundaries, and the whole step
// against a plain double-precision reference written from the definition; the per-sequence state
// (kv/recurrent_state.h): checkpoints, trim, reset.
#include "backend/cpu/delta_net.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "kv/recurrent_state.h"

namespace qleap {
namespace {

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

// Token rows of one head: q and k unit vectors (q / sqrt(dk)), v ~ N(0, 1), decays and strengths drawn
// like a trained layer's (exp(g) in (0.5, 1), beta in (0, 1)).
struct HeadData {
  int n, dk, dv;
  std::vector<float> q, k, v, g, beta, S0;
  HeadData(int n_, int dk_, int dv_, uint32_t seed) : n(n_), dk(dk_), dv(dv_) {
    std::mt19937 rng(seed);
    q = randn(size_t(n) * dk, rng);
    k = randn(size_t(n) * dk, rng);
    v = randn(size_t(n) * dv, rng);
    for (int t = 0; t < n; ++t) {
      for (auto* x : {&q, &k}) {
        double ss = 0;
        for (int i = 0; i < dk; ++i) ss += double((*x)[size_t(t) * dk + i]) * (*x)[size_t(t) * dk + i];
        const float s = float((x == &q ? 1.0 / std::sqrt(double(dk)) : 1.0) / std::sqrt(ss));
        for (int i = 0; i < dk; ++i) (*x)[size_t(t) * dk + i] *= s;
      }
    }
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (int t = 0; t < n; ++t) {
      g.push_back(std::log(0.5f + 0.5f * u(rng)));
      beta.push_back(u(rng));
    }
    S0 = randn(size_t(dk) * dv, rng, 0.3f);
  }
  DeltaHeadRows rows(int t0, float* o) const {
    DeltaHeadRows r;
    r.q = q.data() + size_t(t0) * dk;
    r.k = k.data() + size_t(t0) * dk;
    r.v = v.data() + size_t(t0) * dv;
    r.g = g.data() + t0;
    r.beta = beta.data() + t0;
    r.o = o + size_t(t0) * dv;
    r.ld_qk = dk;
    r.ld_v = r.ld_o = dv;
    r.dk = dk;
    r.dv = dv;
    return r;
  }
};

TEST(DeltaRule, ChunkedMatchesRecurrentAroundChunkBoundaries) {
  for (int n : {1, 2, 5, 63, 64, 65, 127, 128, 129, 200}) {
    const HeadData d(n, 16, 24, 7u + uint32_t(n));
    std::vector<float> o_rec(size_t(n) * d.dv), o_chk(size_t(n) * d.dv);
    std::vector<float> S_rec = d.S0, S_chk = d.S0;
    delta_rule_recurrent(d.rows(0, o_rec.data()), n, S_rec.data());
    delta_rule_chunked(d.rows(0, o_chk.data()), n, S_chk.data());
    EXPECT_LT(max_abs_diff(o_rec.data(), o_chk.data(), o_rec.size()), 2e-5) << "n=" << n;
    EXPECT_LT(max_abs_diff(S_rec.data(), S_chk.data(), S_rec.size()), 2e-5) << "n=" << n;
  }
}

TEST(DeltaRule, ChunkedCallsCarryTheState) {
  // The same 150 tokens in one call, in calls that split chunks (50 + 100), and in small chunks.
  const int n = 150;
  const HeadData d(n, 32, 32, 99u);
  std::vector<float> o1(size_t(n) * d.dv), o2(o1.size()), o3(o1.size());
  std::vector<float> S1 = d.S0, S2 = d.S0, S3 = d.S0;
  delta_rule_chunked(d.rows(0, o1.data()), n, S1.data());
  delta_rule_chunked(d.rows(0, o2.data()), 50, S2.data());
  delta_rule_chunked(d.rows(50, o2.data()), 100, S2.data());
  delta_rule_chunked(d.rows(0, o3.data()), n, S3.data(), /*chunk=*/7);
  EXPECT_LT(max_abs_diff(o1.data(), o2.data(), o1.size()), 2e-5);
  EXPECT_LT(max_abs_diff(S1.data(), S2.data(), S1.size()), 2e-5);
  EXPECT_LT(max_abs_diff(o1.data(), o3.data(), o1.size()), 2e-5);
  EXPECT_LT(max_abs_diff(S1.data(), S3.data(), S1.size()), 2e-5);
}

// ---- the whole step against a reference from the definition ----

struct StepShape {
  int nk = 2, nv = 4, dk = 16, dv = 24, kernel = 4;
  bool v_tiled = false, ba_grouped = false;
  int kd() const { return nk * dk; }
  int vd() const { return nv * dv; }
  int conv() const { return 2 * kd() + vd(); }
};

struct StepWeights {
  std::vector<float> conv_w, dt_bias, a, norm_w;
  explicit StepWeights(const StepShape& s, uint32_t seed) {
    std::mt19937 rng(seed);
    conv_w = randn(size_t(s.conv()) * s.kernel, rng, 0.5f);
    dt_bias = randn(size_t(s.nv), rng, 0.5f);
    for (int h = 0; h < s.nv; ++h) a.push_back(-std::exp(std::uniform_real_distribution<float>(-2, 1)(rng)));
    norm_w = randn(size_t(s.dv), rng, 0.2f);
    for (float& x : norm_w) x += 1.0f;
  }
};

// Inputs of m tokens: the projections (qkv, z, beta and alpha logits; the fused ba when ba_grouped).
struct StepInputs {
  std::vector<float> qkv, z, b, al, ba;
  StepInputs(const StepShape& s, int m, uint32_t seed) {
    std::mt19937 rng(seed);
    qkv = randn(size_t(m) * s.conv(), rng);
    z = randn(size_t(m) * s.vd(), rng);
    b = randn(size_t(m) * s.nv, rng);
    al = randn(size_t(m) * s.nv, rng);
    const int r = s.nv / s.nk;
    ba.resize(size_t(m) * 2 * s.nv);
    for (int t = 0; t < m; ++t) {
      for (int h = 0; h < s.nv; ++h) {
        const size_t base = size_t(t) * 2 * s.nv + size_t(h / r) * 2 * r;
        ba[base + h % r] = b[size_t(t) * s.nv + h];
        ba[base + r + h % r] = al[size_t(t) * s.nv + h];
      }
    }
  }
};

// Double precision, token by token, straight from the definition.
struct Reference {
  StepShape s;
  std::vector<double> conv_state, S;  // (kernel-1) x conv, nv x dk x dv
  explicit Reference(const StepShape& sh) : s(sh) {
    conv_state.assign(size_t(s.kernel - 1) * s.conv(), 0.0);
    S.assign(size_t(s.nv) * s.dk * s.dv, 0.0);
  }
  void step(const StepWeights& w, const float* qkv_in, const float* z, const float* b, const float* al,
            float* out) {
    const int C = s.conv(), K = s.kernel;
    std::vector<double> x(static_cast<size_t>(C));
    for (int c = 0; c < C; ++c) {
      double acc = w.conv_w[size_t(c) * K + K - 1] * double(qkv_in[c]);
      for (int k = 0; k < K - 1; ++k) acc += w.conv_w[size_t(c) * K + k] * conv_state[size_t(k) * C + c];
      x[size_t(c)] = acc / (1 + std::exp(-acc));
    }
    for (int k = 0; k + 1 < K - 1; ++k)
      for (int c = 0; c < C; ++c) conv_state[size_t(k) * C + c] = conv_state[size_t(k + 1) * C + c];
    for (int c = 0; c < C; ++c) conv_state[size_t(K - 2) * C + c] = qkv_in[c];
    for (int h = 0; h < 2 * s.nk; ++h) {  // q heads then k heads
      double ss = 0;
      for (int i = 0; i < s.dk; ++i) ss += x[size_t(h) * s.dk + i] * x[size_t(h) * s.dk + i];
      const double f = (h < s.nk ? 1.0 / std::sqrt(double(s.dk)) : 1.0) / std::sqrt(ss + 1e-6);
      for (int i = 0; i < s.dk; ++i) x[size_t(h) * s.dk + i] *= f;
    }
    for (int h = 0; h < s.nv; ++h) {
      const int kh = s.v_tiled ? h % s.nk : h / (s.nv / s.nk);
      const double* q = x.data() + size_t(kh) * s.dk;
      const double* k = x.data() + s.kd() + size_t(kh) * s.dk;
      const double* v = x.data() + 2 * s.kd() + size_t(h) * s.dv;
      const double beta = 1 / (1 + std::exp(-double(b[h])));
      const double sp = std::log1p(std::exp(double(al[h]) + w.dt_bias[size_t(h)]));
      const double decay = std::exp(w.a[size_t(h)] * sp);
      double* Sh = S.data() + size_t(h) * s.dk * s.dv;
      std::vector<double> o(size_t(s.dv), 0.0);
      for (int j = 0; j < s.dv; ++j) {
        double kv = 0;
        for (int i = 0; i < s.dk; ++i) kv += (Sh[size_t(i) * s.dv + j] *= decay) * k[i];
        const double delta = (v[j] - kv) * beta;
        for (int i = 0; i < s.dk; ++i) {
          Sh[size_t(i) * s.dv + j] += k[i] * delta;
          o[size_t(j)] += Sh[size_t(i) * s.dv + j] * q[i];
        }
      }
      double ms = 0;
      for (double y : o) ms += y * y;
      const double inv = 1 / std::sqrt(ms / s.dv + 1e-6);
      for (int j = 0; j < s.dv; ++j) {
        const double zz = z[size_t(h) * s.dv + j];
        out[size_t(h) * s.dv + j] =
            float(o[size_t(j)] * inv * w.norm_w[size_t(j)] * zz / (1 + std::exp(-zz)));
      }
    }
  }
};

DeltaNetArgs make_args(const StepShape& s, const StepWeights& w) {
  DeltaNetArgs a;
  a.conv_w = &w.conv_w;
  a.dt_bias = &w.dt_bias;
  a.a = &w.a;
  a.norm_w = &w.norm_w;
  a.n_k_heads = s.nk;
  a.n_v_heads = s.nv;
  a.head_k_dim = s.dk;
  a.head_v_dim = s.dv;
  a.kernel = s.kernel;
  a.v_tiled = s.v_tiled;
  a.ba_grouped = s.ba_grouped;
  return a;
}

// Runs tokens [t0, t0 + m) of `in` through one sequence-mode call.
void run_sequence(CpuBackend& be, const StepShape& s, const StepWeights& w, const StepInputs& in, int t0,
                  int m, DeltaStateRef st, float* out) {
  std::vector<float> qkv(in.qkv.begin() + size_t(t0) * s.conv(), in.qkv.begin() + size_t(t0 + m) * s.conv());
  std::vector<float> b(in.b.begin() + size_t(t0) * s.nv, in.b.begin() + size_t(t0 + m) * s.nv);
  std::vector<float> al(in.al.begin() + size_t(t0) * s.nv, in.al.begin() + size_t(t0 + m) * s.nv);
  std::vector<float> ba(in.ba.begin() + size_t(t0) * 2 * s.nv, in.ba.begin() + size_t(t0 + m) * 2 * s.nv);
  DeltaNetArgs a = make_args(s, w);
  a.qkv = qkv.data();
  a.z = in.z.data() + size_t(t0) * s.vd();
  a.beta = s.ba_grouped ? ba.data() : b.data();
  a.alpha = s.ba_grouped ? nullptr : al.data();
  a.out = out + size_t(t0) * s.vd();
  a.state = st;
  be.delta_net(a, m);
}

class DeltaNetStep : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(DeltaNetStep, SequenceAndRowsMatchTheReference) {
  StepShape s;
  s.v_tiled = std::get<0>(GetParam());
  s.ba_grouped = std::get<1>(GetParam());
  const StepWeights w(s, 11);
  const int n = 150;
  const StepInputs in(s, n, 12);
  ThreadPool pool(2);
  CpuBackend be(pool);

  std::vector<float> ref(size_t(n) * s.vd());
  Reference r(s);
  for (int t = 0; t < n; ++t)
    r.step(w, in.qkv.data() + size_t(t) * s.conv(), in.z.data() + size_t(t) * s.vd(),
           in.b.data() + size_t(t) * s.nv, in.al.data() + size_t(t) * s.nv, ref.data() + size_t(t) * s.vd());

  const size_t conv_n = size_t(s.kernel - 1) * s.conv(), ssm_n = size_t(s.nv) * s.dk * s.dv;
  // Prefill: 70 tokens (crossing a chunk), then 80 (two more boundaries), carrying the state.
  std::vector<float> conv(conv_n, 0.0f), ssm(ssm_n, 0.0f), out(size_t(n) * s.vd());
  run_sequence(be, s, w, in, 0, 70, {conv.data(), ssm.data()}, out.data());
  run_sequence(be, s, w, in, 70, 80, {conv.data(), ssm.data()}, out.data());
  EXPECT_LT(max_abs_diff(out.data(), ref.data(), out.size()), 1e-4);
  double max_s = 0;
  for (size_t i = 0; i < ssm_n; ++i) max_s = std::max(max_s, std::fabs(double(ssm[i]) - r.S[i]));
  EXPECT_LT(max_s, 1e-4);

  // Decode: two sequences as rows of one call, token by token; one of them is the reference sequence.
  std::vector<float> conv1(conv_n, 0.0f), ssm1(ssm_n, 0.0f), conv2(conv_n, 0.0f), ssm2(ssm_n, 0.0f);
  std::vector<float> out_rows(size_t(n) * s.vd());
  const StepInputs other(s, n, 13);
  for (int t = 0; t < n; ++t) {
    std::vector<float> qkv;
    for (const StepInputs* x : {&other, &in})
      qkv.insert(qkv.end(), x->qkv.begin() + size_t(t) * s.conv(), x->qkv.begin() + size_t(t + 1) * s.conv());
    std::vector<float> z, b, al, ba;
    for (const StepInputs* x : {&other, &in}) {
      z.insert(z.end(), x->z.begin() + size_t(t) * s.vd(), x->z.begin() + size_t(t + 1) * s.vd());
      b.insert(b.end(), x->b.begin() + size_t(t) * s.nv, x->b.begin() + size_t(t + 1) * s.nv);
      al.insert(al.end(), x->al.begin() + size_t(t) * s.nv, x->al.begin() + size_t(t + 1) * s.nv);
      ba.insert(ba.end(), x->ba.begin() + size_t(t) * 2 * s.nv, x->ba.begin() + size_t(t + 1) * 2 * s.nv);
    }
    std::vector<float> o(size_t(2) * s.vd());
    const DeltaStateRef rows[2] = {{conv1.data(), ssm1.data()}, {conv2.data(), ssm2.data()}};
    DeltaNetArgs a = make_args(s, w);
    a.qkv = qkv.data();
    a.z = z.data();
    a.beta = s.ba_grouped ? ba.data() : b.data();
    a.alpha = s.ba_grouped ? nullptr : al.data();
    a.out = o.data();
    a.rows = rows;
    be.delta_net(a, 2);
    std::copy(o.begin() + s.vd(), o.end(), out_rows.begin() + size_t(t) * s.vd());
  }
  EXPECT_LT(max_abs_diff(out_rows.data(), ref.data(), out.size()), 1e-4);
  // Decode and prefill agree with each other more closely than with the reference.
  EXPECT_LT(max_abs_diff(out_rows.data(), out.data(), out.size()), 5e-5);
  EXPECT_LT(max_abs_diff(ssm2.data(), ssm.data(), ssm_n), 5e-5);
  EXPECT_EQ(0, max_abs_diff(conv2.data(), conv.data(), conv_n));
}

INSTANTIATE_TEST_SUITE_P(Layouts, DeltaNetStep, ::testing::Combine(::testing::Bool(), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<bool, bool>>& i) {
                           return std::string(std::get<0>(i.param) ? "tiled" : "grouped") +
                                  (std::get<1>(i.param) ? "_fused_ba" : "_split_ba");
                         });

TEST(DeltaNetStep, BadArgumentsThrow) {
  StepShape s;
  const StepWeights w(s, 1);
  ThreadPool pool(1);
  CpuBackend be(pool);
  DeltaNetArgs a = make_args(s, w);
  EXPECT_THROW(be.delta_net(a, 1), InvalidArgument);  // no state
  a.n_v_heads = 3;                                    // not a multiple of the key heads
  EXPECT_THROW(be.delta_net(a, 1), InvalidArgument);
}

// ---- the per-sequence state ----

TEST(RecurrentState, CheckpointsTrimAndReset) {
  ThreadPool pool(1);
  CpuBackend be(pool);
  const RecurrentShape shape{2, 8, 4, 2, 3, 5};
  RecurrentState st(be, shape, 2);
  EXPECT_EQ(st.state_bytes(), shape.floats() * sizeof(float));
  const auto fill = [&](float v) {
    for (int l = 0; l < 2; ++l) {
      DeltaStateRef r = st.layer(l);
      std::fill(r.conv, r.conv + shape.conv_floats(), v);
      std::fill(r.ssm, r.ssm + shape.ssm_floats(), v + 0.5f);
    }
  };
  fill(1.0f);
  st.advance(10, true);
  fill(2.0f);
  st.advance(20, false);  // no checkpoint at 20
  fill(3.0f);
  st.advance(30, true);
  fill(4.0f);
  st.advance(40, true);  // at most 2 checkpoints: 10 is dropped
  EXPECT_EQ(st.n_checkpoints(), 2);
  EXPECT_EQ(st.restorable(45), 40);
  EXPECT_EQ(st.restorable(40), 40);
  EXPECT_EQ(st.restorable(39), 30);
  EXPECT_EQ(st.restorable(25), 0);  // never back to a state that has seen later tokens
  fill(5.0f);
  st.advance(41, false);
  EXPECT_EQ(st.restorable(41), 41);  // where it is
  EXPECT_EQ(st.restorable(40), 40);
  st.trim(30);
  EXPECT_EQ(st.n_past(), 30);
  EXPECT_EQ(st.layer(1).conv[0], 3.0f);
  EXPECT_EQ(st.layer(1).ssm[shape.ssm_floats() - 1], 3.5f);
  EXPECT_EQ(st.n_checkpoints(), 1);  // 40 came after 30
  EXPECT_THROW(st.trim(20), InvalidArgument);
  st.trim(0);
  EXPECT_EQ(st.n_past(), 0);
  EXPECT_EQ(st.layer(0).ssm[0], 0.0f);
  EXPECT_EQ(st.n_checkpoints(), 0);
  EXPECT_THROW(st.layer(2), InvalidArgument);
  EXPECT_THROW(RecurrentState(be, RecurrentShape{}, 1), InvalidArgument);
}

}  // namespace
}  // namespace qleap
