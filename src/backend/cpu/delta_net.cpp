#include "backend/cpu/delta_net.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/ops.h"
#include "core/error.h"

namespace qleap {
namespace {

float softplus(float x) {
  return x > 20.0f ? x : std::log1p(std::exp(x));  // torch's threshold: linear above 20
}

float sigmoid(float x) {
  return 1.0f / (1.0f + std::exp(-x));
}

// y[0..n) += a * x
inline void axpy(float a, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

inline float dot(const float* a, const float* b, int n) {
  float s = 0;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// x / sqrt(sum x^2 + eps) * scale, in place (fla's and transformers' l2norm, eps 1e-6).
void l2_normalize(float* x, int n, float scale) {
  const float s = scale / std::sqrt(dot(x, x, n) + 1e-6f);
  for (int i = 0; i < n; ++i) x[i] *= s;
}

// Causal depthwise conv of m consecutive tokens of one sequence, then silu, in place (x: m x C), with
// the (K - 1) x C state of the inputs before them; the state becomes the last K - 1 inputs. Channels
// run in blocks over the pool; within a block tokens go last to first, so each output overwrites an
// input no later token needs.
void conv_sequence(float* x, int m, int C, int K, const float* w, float* state, ThreadPool& pool) {
  constexpr int kBlock = 64;
  const int n_blocks = (C + kBlock - 1) / kBlock;
  const int hist = K - 1;
  pool.parallel_for(n_blocks, 1, [&](int64_t b, int64_t e, int) {
    thread_local std::vector<float> next;
    next.resize(size_t(std::max(hist, 1)) * kBlock);
    for (int64_t bi = b; bi < e; ++bi) {
      const int c0 = int(bi) * kBlock, c1 = std::min(C, c0 + kBlock), nc = c1 - c0;
      // Input row i of the window (i < 0: from the state).
      const auto row = [&](int i) -> const float* {
        return i >= 0 ? x + size_t(i) * C : state + size_t(hist + i) * C;
      };
      for (int i = 0; i < hist; ++i) {
        const float* src = row(m - hist + i);
        std::copy(src + c0, src + c1, next.data() + size_t(i) * kBlock);
      }
      for (int t = m - 1; t >= 0; --t) {
        float* out = x + size_t(t) * C;
        for (int c = c0; c < c1; ++c) {
          const float* wc = w + size_t(c) * K;
          float acc = 0;
          for (int k = 0; k < K; ++k) acc += wc[k] * row(t - hist + k)[c];
          out[c] = silu(acc);
        }
      }
      for (int i = 0; i < hist; ++i)
        std::copy(next.data() + size_t(i) * kBlock, next.data() + size_t(i) * kBlock + nc,
                  state + size_t(i) * C + c0);
    }
  });
}

// One token with its own conv state (decode rows).
void conv_token(float* x, int C, int K, const float* w, float* state) {
  const int hist = K - 1;
  for (int c = 0; c < C; ++c) {
    const float* wc = w + size_t(c) * K;
    float acc = wc[hist] * x[c];
    for (int k = 0; k < hist; ++k) acc += wc[k] * state[size_t(k) * C + c];
    for (int k = 0; k + 1 < hist; ++k) state[size_t(k) * C + c] = state[size_t(k + 1) * C + c];
    if (hist > 0) state[size_t(hist - 1) * C + c] = x[c];
    x[c] = silu(acc);
  }
}

void check_args(const DeltaNetArgs& a, int m) {
  if (m <= 0 || a.n_k_heads <= 0 || a.n_v_heads <= 0 || a.head_k_dim <= 0 || a.head_v_dim <= 0 ||
      a.kernel <= 0 || a.n_v_heads % a.n_k_heads != 0)
    throw InvalidArgument(fmt::format("delta_net: bad shape (m {}, heads {}/{}, dims {}/{}, kernel {})", m,
                                      a.n_k_heads, a.n_v_heads, a.head_k_dim, a.head_v_dim, a.kernel));
  if (a.conv_w == nullptr || a.conv_w->size() != size_t(a.conv_dim()) * size_t(a.kernel) ||
      a.dt_bias == nullptr || int(a.dt_bias->size()) != a.n_v_heads || a.a == nullptr ||
      int(a.a->size()) != a.n_v_heads || a.norm_w == nullptr || int(a.norm_w->size()) != a.head_v_dim)
    throw InvalidArgument("delta_net: weights do not match the shape");
  if (a.rows == nullptr && (a.state.conv == nullptr || a.state.ssm == nullptr))
    throw InvalidArgument("delta_net: no state");
}

}  // namespace

void delta_rule_recurrent(const DeltaHeadRows& r, int n, float* S) {
  const int dk = r.dk, dv = r.dv;
  thread_local std::vector<float> mem;
  mem.resize(size_t(dv));
  float* kv = mem.data();
  for (int t = 0; t < n; ++t) {
    const float* q = r.q + t * r.ld_qk;
    const float* k = r.k + t * r.ld_qk;
    const float* v = r.v + t * r.ld_v;
    float* o = r.o + t * r.ld_o;
    const float decay = std::exp(r.g[t]), beta = r.beta[t];
    // Decay the state and read what it predicts for k.
    std::fill(kv, kv + dv, 0.0f);
    for (int i = 0; i < dk; ++i) {
      float* row = S + size_t(i) * dv;
      for (int j = 0; j < dv; ++j) row[j] *= decay;
      axpy(k[i], row, kv, dv);
    }
    for (int j = 0; j < dv; ++j) kv[j] = (v[j] - kv[j]) * beta;  // the correction to write
    std::fill(o, o + dv, 0.0f);
    for (int i = 0; i < dk; ++i) {
      float* row = S + size_t(i) * dv;
      axpy(k[i], kv, row, dv);
      axpy(q[i], row, o, dv);
    }
  }
}

// Per block of c tokens with cumulative log decay G_i (from the block start) and the state S before it,
// the corrections Vn_i = beta_i (v_i - (exp(g_i) S_{i-1})^T k_i) that the tokens write solve a unit
// lower-triangular system:
//   Vn_i + sum_{j < i} L_ij Vn_j = beta_i (v_i - exp(G_i) S^T k_i),  L_ij = beta_i (k_i . k_j) exp(G_i -
//   G_j),
// (transformers' and fla's UT transform, with the state's term on the right-hand side), then
//   o_i = exp(G_i) S^T q_i + sum_{j <= i} (q_i . k_j) exp(G_i - G_j) Vn_j,
//   S' = exp(G_last) S + sum_j exp(G_last - G_j) k_j Vn_j^T.
void delta_rule_chunked(const DeltaHeadRows& r, int n, float* S, int chunk) {
  const int dk = r.dk, dv = r.dv, C = std::max(1, chunk);
  thread_local std::vector<float> buf;
  buf.resize(size_t(C) * (1 + 2 * C + dv));
  float* G = buf.data();
  float* L = G + C;
  float* A = L + size_t(C) * C;
  float* U = A + size_t(C) * C;
  for (int t0 = 0; t0 < n; t0 += C) {
    const int c = std::min(C, n - t0);
    const auto q = [&](int i) { return r.q + (t0 + i) * r.ld_qk; };
    const auto k = [&](int i) { return r.k + (t0 + i) * r.ld_qk; };
    float acc = 0;
    for (int i = 0; i < c; ++i) G[i] = acc += r.g[t0 + i];
    for (int i = 0; i < c; ++i) {
      const float bi = r.beta[t0 + i];
      for (int j = 0; j <= i; ++j) {
        const float dec = std::exp(G[i] - G[j]);
        if (j < i) L[size_t(i) * C + j] = bi * dot(k(i), k(j), dk) * dec;
        A[size_t(i) * C + j] = dot(q(i), k(j), dk) * dec;
      }
    }
    for (int i = 0; i < c; ++i) {
      float* Ui = U + size_t(i) * dv;
      const float* vi = r.v + (t0 + i) * r.ld_v;
      const float* ki = k(i);
      const float e = std::exp(G[i]), bi = r.beta[t0 + i];
      std::copy(vi, vi + dv, Ui);
      for (int a = 0; a < dk; ++a) axpy(-e * ki[a], S + size_t(a) * dv, Ui, dv);
      for (int j = 0; j < dv; ++j) Ui[j] *= bi;
      for (int j = 0; j < i; ++j) axpy(-L[size_t(i) * C + j], U + size_t(j) * dv, Ui, dv);
    }
    for (int i = 0; i < c; ++i) {
      float* o = r.o + (t0 + i) * r.ld_o;
      const float e = std::exp(G[i]);
      std::fill(o, o + dv, 0.0f);
      const float* qi = q(i);
      for (int a = 0; a < dk; ++a) axpy(e * qi[a], S + size_t(a) * dv, o, dv);
      for (int j = 0; j <= i; ++j) axpy(A[size_t(i) * C + j], U + size_t(j) * dv, o, dv);
    }
    const float e_last = std::exp(G[c - 1]);
    for (size_t i = 0; i < size_t(dk) * dv; ++i) S[i] *= e_last;
    for (int j = 0; j < c; ++j) {
      const float f = std::exp(G[c - 1] - G[j]);
      const float* kj = k(j);
      const float* Uj = U + size_t(j) * dv;
      for (int a = 0; a < dk; ++a) axpy(f * kj[a], Uj, S + size_t(a) * dv, dv);
    }
  }
}

void delta_net_cpu(const DeltaNetArgs& a, int m, ThreadPool& pool) {
  check_args(a, m);
  const int C = a.conv_dim(), K = a.kernel, nk = a.n_k_heads, nv = a.n_v_heads, dk = a.head_k_dim,
            dv = a.head_v_dim, kd = a.key_dim(), vd = a.value_dim();
  const float* cw = a.conv_w->data();
  if (a.rows == nullptr) {
    conv_sequence(a.qkv, m, C, K, cw, a.state.conv, pool);
  } else {
    pool.parallel_for(m, 1, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) conv_token(a.qkv + size_t(t) * C, C, K, cw, a.rows[t].conv);
    });
  }

  // Normalized queries and keys, and per value head the write strength and log decay (nv x m).
  std::vector<float> gb(size_t(2) * nv * m);
  float* g = gb.data();
  float* beta = g + size_t(nv) * m;
  const float q_scale = 1.0f / std::sqrt(float(dk));
  const int r = nv / nk;
  for (int t = 0; t < m; ++t) {
    float* row = a.qkv + size_t(t) * C;
    for (int h = 0; h < nk; ++h) {
      l2_normalize(row + size_t(h) * dk, dk, q_scale);
      l2_normalize(row + kd + size_t(h) * dk, dk, 1.0f);
    }
    for (int h = 0; h < nv; ++h) {
      float b, al;
      if (a.ba_grouped) {
        const float* ba = a.beta + size_t(t) * 2 * nv + size_t(h / r) * 2 * r;
        b = ba[h % r];
        al = ba[r + h % r];
      } else {
        b = a.beta[size_t(t) * nv + h];
        al = a.alpha[size_t(t) * nv + h];
      }
      beta[size_t(h) * m + t] = sigmoid(b);
      g[size_t(h) * m + t] = (*a.a)[size_t(h)] * softplus(al + (*a.dt_bias)[size_t(h)]);
    }
  }

  const auto head_rows = [&](int h, int t0) {
    const int kh = a.k_head_of(h);
    DeltaHeadRows hr;
    hr.q = a.qkv + size_t(t0) * C + size_t(kh) * dk;
    hr.k = a.qkv + size_t(t0) * C + kd + size_t(kh) * dk;
    hr.v = a.qkv + size_t(t0) * C + 2 * kd + size_t(h) * dv;
    hr.g = g + size_t(h) * m + t0;
    hr.beta = beta + size_t(h) * m + t0;
    hr.o = a.out + size_t(t0) * vd + size_t(h) * dv;
    hr.ld_qk = hr.ld_v = C;
    hr.ld_o = vd;
    hr.dk = dk;
    hr.dv = dv;
    return hr;
  };
  const size_t s_head = size_t(dk) * dv;
  if (a.rows == nullptr) {
    pool.parallel_for(nv, 1, [&](int64_t b, int64_t e, int) {
      for (int64_t h = b; h < e; ++h) {
        float* S = a.state.ssm + size_t(h) * s_head;
        if (m == 1) {
          delta_rule_recurrent(head_rows(int(h), 0), 1, S);
        } else {
          delta_rule_chunked(head_rows(int(h), 0), m, S);
        }
      }
    });
  } else {
    pool.parallel_for(int64_t(m) * nv, 1, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) {
        const int t = int(i / nv), h = int(i % nv);
        delta_rule_recurrent(head_rows(h, t), 1, a.rows[t].ssm + size_t(h) * s_head);
      }
    });
  }

  // Gated RMSNorm of every head's output.
  const float* nw = a.norm_w->data();
  for (int t = 0; t < m; ++t) {
    for (int h = 0; h < nv; ++h) {
      float* o = a.out + size_t(t) * vd + size_t(h) * dv;
      const float* z = a.z + size_t(t) * vd + size_t(h) * dv;
      rms_norm_ref(o, nw, o, dv, a.eps);
      for (int j = 0; j < dv; ++j) o[j] *= silu(z[j]);
    }
  }
}

}  // namespace qleap
