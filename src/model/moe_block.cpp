#include "model/moe_block.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "core/error.h"
#include "quant/quant.h"

namespace qleap {

std::vector<WeightView> load_expert_matrices(const GgufFile& f, const std::string& name, int64_t cols,
                                             int64_t rows, int64_t n) {
  const GgufTensor& t = f.tensor(name);
  if (t.shape.size() != 3 || t.ne(0) != cols || t.ne(1) != rows || t.ne(2) != n) {
    std::string shape;
    for (int64_t d : t.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    throw FormatError(
        fmt::format("tensor '{}' has shape [{}], expected [{}, {}, {}]", name, shape, cols, rows, n));
  }
  const TypeTraits& tr = type_traits(t.type);
  if (tr.name == nullptr || !tr.can_compute || tr.block_size <= 0) {
    throw Unsupported(fmt::format("tensor '{}' has type {}, which this build cannot compute with", name,
                                  type_name(t.type)));
  }
  if (cols % tr.block_size != 0) {
    throw FormatError(
        fmt::format("tensor '{}': row of {} elements is not whole {} blocks", name, cols, tr.name));
  }
  const size_t rb = row_size(t.type, cols);
  const size_t slice = rb * size_t(rows);
  if (t.nbytes < slice * size_t(n)) {
    throw FormatError(
        fmt::format("tensor '{}' holds {} bytes, expected {}", name, t.nbytes, slice * size_t(n)));
  }
  const std::vector<float> scales = load_weight_scales(f, name, n);
  std::vector<WeightView> out(static_cast<size_t>(n));
  for (int64_t e = 0; e < n; ++e) {
    WeightView& v = out[size_t(e)];
    v.scale = scales[size_t(e)];
    v.type = t.type;
    v.data = t.data + slice * size_t(e);
    v.cols = cols;
    v.rows = rows;
    v.row_bytes = rb;
  }
  return out;
}

void load_gate_up_experts(const GgufFile& f, int il, int64_t n_embd, int64_t n_ff, int64_t n, MoeWeights& m) {
  const std::string fused = blk_name(il, "ffn_gate_up_exps.weight");
  if (f.find_tensor(fused) == nullptr) {
    m.gate = load_expert_matrices(f, blk_name(il, "ffn_gate_exps.weight"), n_embd, n_ff, n);
    m.up = load_expert_matrices(f, blk_name(il, "ffn_up_exps.weight"), n_embd, n_ff, n);
    return;
  }
  // Each expert's slice holds its n_ff gate rows, then its n_ff up rows (llama.cpp's views of the
  // fused product): two views into the same bytes, no copy.
  const std::vector<WeightView> both = load_expert_matrices(f, fused, n_embd, 2 * n_ff, n);
  m.gate = both;
  m.up = both;
  for (size_t e = 0; e < both.size(); ++e) {
    m.gate[e].rows = m.up[e].rows = n_ff;
    m.up[e].data = static_cast<const uint8_t*>(both[e].data) + both[e].row_bytes * size_t(n_ff);
  }
}

void load_ffn_or_moe(const GgufFile& f, const HParams& hp, int il, LayerWeights& w, std::string_view norm) {
  if (f.find_tensor(blk_name(il, "ffn_gate_inp.weight")) == nullptr) {
    load_swiglu_ffn(f, hp, il, w, norm);
    return;
  }
  if (hp.n_expert <= 0) {
    throw FormatError(
        fmt::format("tensor '{}' present but expert_count is missing", blk_name(il, "ffn_gate_inp.weight")));
  }
  const int64_t n = hp.n_embd, ne = hp.n_expert, nf = hp.n_ff_exp;
  w.ffn_norm = load_vector(f, blk_name(il, norm), n, true);
  MoeWeights& m = w.moe;
  m.router = load_matrix(f, blk_name(il, "ffn_gate_inp.weight"), n, ne);
  load_gate_up_experts(f, il, n, nf, ne, m);
  m.down = load_expert_matrices(f, blk_name(il, "ffn_down_exps.weight"), nf, n, ne);
  if (f.find_tensor(blk_name(il, "ffn_gate_shexp.weight")) != nullptr) {
    if (hp.n_ff_shexp <= 0)
      throw FormatError("shared expert present but expert_shared_feed_forward_length missing");
    m.gate_shexp = load_matrix(f, blk_name(il, "ffn_gate_shexp.weight"), n, hp.n_ff_shexp);
    m.up_shexp = load_matrix(f, blk_name(il, "ffn_up_shexp.weight"), n, hp.n_ff_shexp);
    m.down_shexp = load_matrix(f, blk_name(il, "ffn_down_shexp.weight"), hp.n_ff_shexp, n);
    m.shexp_gate = load_vector(f, blk_name(il, "ffn_gate_inp_shexp.weight"), n, false);
  }
  m.probs_bias = load_vector(f, blk_name(il, "exp_probs_b.bias"), ne, false);
}

void moe_route(float* logits, int n, int k, bool norm, int32_t* ids, float* weights) {
  softmax(logits, n);
  // Partial selection sort: k is small (2..8) next to n (8..128).
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int e = 0; e < n; ++e) {
      bool taken = false;
      for (int i = 0; i < j; ++i) taken |= ids[i] == e;
      if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
    }
    ids[j] = best;
    weights[j] = logits[best];
  }
  if (norm) {
    float sum = 0;
    for (int j = 0; j < k; ++j) sum += weights[j];
    if (sum > 0) {
      for (int j = 0; j < k; ++j) weights[j] /= sum;
    }
  }
}

void moe_route_grouped(float* logits, int n, int k, const HParams& hp, const float* bias, int32_t* ids,
                       float* weights) {
  const bool sigmoid = hp.expert_gating == ExpertGating::kSigmoid;
  if (sigmoid) {
    for (int e = 0; e < n; ++e) logits[e] = 1.0f / (1.0f + std::exp(-logits[e]));
  } else {
    softmax(logits, n);
  }
  thread_local std::vector<float> choice;
  choice.assign(logits, logits + n);
  if (bias != nullptr)
    for (int e = 0; e < n; ++e) choice[size_t(e)] += bias[e];
  const int ng = hp.n_expert_group, used = hp.n_expert_group_used;
  if (ng > 1 && used > 0 && used < ng && n % ng == 0) {
    const int per = n / ng;
    thread_local std::vector<float> gscore;
    thread_local std::vector<uint8_t> keep;
    gscore.assign(size_t(ng), 0.0f);
    for (int g = 0; g < ng; ++g) {
      const float* c = choice.data() + size_t(g) * per;
      float best = -INFINITY, second = -INFINITY;
      for (int i = 0; i < per; ++i) {
        if (c[i] > best) {
          second = best;
          best = c[i];
        } else if (c[i] > second) {
          second = c[i];
        }
      }
      gscore[size_t(g)] = sigmoid && per > 1 ? best + second : best;
    }
    keep.assign(size_t(ng), 0);
    for (int j = 0; j < used; ++j) {
      int bg = -1;
      for (int g = 0; g < ng; ++g)
        if (!keep[size_t(g)] && (bg < 0 || gscore[size_t(g)] > gscore[size_t(bg)])) bg = g;
      keep[size_t(bg)] = 1;
    }
    for (int e = 0; e < n; ++e)
      if (!keep[size_t(e / per)]) choice[size_t(e)] = -INFINITY;
  }
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int e = 0; e < n; ++e) {
      bool taken = false;
      for (int i = 0; i < j; ++i) taken |= ids[i] == e;
      if (!taken && (best < 0 || choice[size_t(e)] > choice[size_t(best)])) best = e;
    }
    ids[j] = best;
    weights[j] = logits[best];
  }
  if (hp.expert_weights_norm) {
    float sum = 0;
    for (int j = 0; j < k; ++j) sum += weights[j];
    for (int j = 0; j < k; ++j) weights[j] /= sum + 1e-20f;
  }
  for (int j = 0; j < k; ++j) weights[j] *= hp.expert_weights_scale;
}

namespace {

// gpt-oss's clamped SwiGLU: g = (clamp(u, -limit, limit) + 1) * min(g, limit) * sigmoid(alpha * min(g,
// limit)).
void swiglu_oai(float* g, const float* u, int n, float alpha, float limit) {
  for (int i = 0; i < n; ++i) {
    const float gv = std::min(g[i], limit);
    const float uv = std::clamp(u[i], -limit, limit);
    g[i] = (uv + 1.0f) * gv / (1.0f + std::exp(-alpha * gv));
  }
}

const float* bias_slice(const std::vector<float>& b, int e, int n) {
  return b.empty() ? nullptr : b.data() + size_t(e) * size_t(n);
}

}  // namespace

ExpertActivation expert_activation_of(const HParams& hp) {
  ExpertActivation a;
  if (hp.expert_swiglu_alpha > 0) {
    a.alpha = hp.expert_swiglu_alpha;
    a.limit = hp.expert_swiglu_limit;
  }
  return a;
}

const float* expert_gate_bias(const MoeWeights& w, int e, int nf) {
  return bias_slice(w.gate_b, e, nf);
}
const float* expert_up_bias(const MoeWeights& w, int e, int nf) {
  return bias_slice(w.up_b, e, nf);
}
const float* expert_down_bias(const MoeWeights& w, int e, int n_embd) {
  return bias_slice(w.down_b, e, n_embd);
}

void expert_glu(const ExpertActivation& a, const float* gate_b, const float* up_b, float* g, float* u, int nf,
                int cnt) {
  for (int i = 0; i < cnt; ++i) {
    float* gi = g + size_t(i) * nf;
    float* ui = u + size_t(i) * nf;
    if (gate_b != nullptr) add_inplace(gi, gate_b, nf);
    if (up_b != nullptr) add_inplace(ui, up_b, nf);
    if (a.clamped()) {
      swiglu_oai(gi, ui, nf, a.alpha, a.limit);
    } else {
      silu_mul(gi, ui, nf);
    }
  }
}

void add_rows_bias(float* y, const float* b, int n, int cnt) {
  if (b == nullptr) return;
  for (int i = 0; i < cnt; ++i) add_inplace(y + size_t(i) * n, b, n);
}

void moe_ffn_block(const LayerWeights& w, int il, const LayerCtx& ctx, const float* xn, float* out) {
  const HParams& hp = ctx.hp;
  const MoeWeights& mw = w.moe;
  if (!ctx.be.is_host() || ctx.moe == nullptr)
    throw Unsupported(fmt::format("layer {}: MoE layers run on the CPU only", il));
  MoeScratch& s = *ctx.moe;
  const int m = ctx.m, n = hp.n_embd, ne = mw.n_expert(), k = hp.n_expert_used, nf = hp.n_ff_exp;
  float* logits = s.logits.data();
  int32_t* ids = s.ids.data();
  float* wts = s.w.data();
  matmul(mw.router, xn, m, logits, ctx.pool);
  if (!mw.router_b.empty())
    for (int t = 0; t < m; ++t) add_inplace(logits + size_t(t) * ne, mw.router_b.data(), ne);
  for (int t = 0; t < m; ++t) {
    if (hp.routing_grouped() || !mw.probs_bias.empty()) {
      moe_route_grouped(logits + size_t(t) * ne, ne, k, hp,
                        mw.probs_bias.empty() ? nullptr : mw.probs_bias.data(), ids + size_t(t) * k,
                        wts + size_t(t) * k);
      continue;
    }
    moe_route(logits + size_t(t) * ne, ne, k, hp.expert_weights_norm, ids + size_t(t) * k,
              wts + size_t(t) * k);
  }
  if (ctx.moe_observer != nullptr)
    ctx.moe_observer->on_routing(il, ctx.pos0, m, k, ids, wts, ctx.a.x.get(), xn);

  float* g = s.g.data();
  float* u = s.u.data();
  float* y = s.y.data();
  const ExpertActivation act = expert_activation_of(hp);
  if (ctx.moe_executor != nullptr) {
    ctx.moe_executor->run_experts(mw, il, ctx, xn, ids, wts, out);
  } else if (moe_pairwise(m, k, ctx.pool.size())) {
    std::fill(out, out + size_t(m) * n, 0.0f);
    // Decode: one task per (token, expert) pair, each computed whole by one thread. Threading each
    // small expert matmul instead would cost 3 * k pool dispatches per layer.
    const auto pair = [&](int64_t b, int64_t e, int) {
      thread_local ThreadPool solo(1);
      for (int64_t i = b; i < e; ++i) {
        const int t = int(i) / k, ex = ids[i];
        float* gi = g + size_t(i) * nf;
        float* ui = u + size_t(i) * nf;
        matmul(mw.gate[size_t(ex)], xn + size_t(t) * n, 1, gi, solo);
        matmul(mw.up[size_t(ex)], xn + size_t(t) * n, 1, ui, solo);
        expert_glu(act, expert_gate_bias(mw, ex, nf), expert_up_bias(mw, ex, nf), gi, ui, nf, 1);
        matmul(mw.down[size_t(ex)], gi, 1, y + size_t(i) * n, solo);
        add_rows_bias(y + size_t(i) * n, expert_down_bias(mw, ex, n), n, 1);
      }
    };
    ctx.pool.parallel_for(m * k, 1, pair);
    for (int i = 0; i < m * k; ++i) axpy_f32(wts[i], y + size_t(i) * n, out + size_t(i / k) * n, n);
  } else {
    std::fill(out, out + size_t(m) * n, 0.0f);
    // Prefill: tokens grouped by expert, so each selected expert's weights stream once per chunk.
    // A decode step's rows belong to separate sequences and must each sum their experts in the order
    // the single-row path above does (concurrent text equal to sequential text): there the groups are
    // (choice j, expert), taken j-major.
    const int groups = ctx.rows != nullptr ? k : 1;
    const auto bucket = [&](int i) { return (groups > 1 ? (i % k) * ne : 0) + ids[i]; };
    int32_t* rows = s.rows.data();  // (token, slot) pairs as t * k + j, bucketed by group
    std::vector<int>& start = s.start;
    start.assign(size_t(groups * ne) + 1, 0);
    for (int i = 0; i < m * k; ++i) ++start[size_t(bucket(i)) + 1];
    for (int e = 0; e < groups * ne; ++e) start[size_t(e) + 1] += start[size_t(e)];
    std::vector<int>& fill = s.fill;
    fill.assign(start.begin(), start.end() - 1);
    for (int i = 0; i < m * k; ++i) rows[fill[size_t(bucket(i))]++] = i;
    float* xg = s.xg.data();
    for (int ge = 0; ge < groups * ne; ++ge) {
      const int e = ge % ne, b = start[size_t(ge)], cnt = start[size_t(ge) + 1] - b;
      if (cnt == 0) continue;
      const float* xin = xn;
      if (m > 1) {
        for (int i = 0; i < cnt; ++i) {
          const int t = rows[b + i] / k;
          std::copy(xn + size_t(t) * n, xn + size_t(t + 1) * n, xg + size_t(i) * n);
        }
        xin = xg;
      }
      matmul(mw.gate[size_t(e)], xin, cnt, g, ctx.pool);
      matmul(mw.up[size_t(e)], xin, cnt, u, ctx.pool);
      expert_glu(act, expert_gate_bias(mw, e, nf), expert_up_bias(mw, e, nf), g, u, nf, cnt);
      matmul(mw.down[size_t(e)], g, cnt, y, ctx.pool);
      add_rows_bias(y, expert_down_bias(mw, e, n), n, cnt);
      for (int i = 0; i < cnt; ++i) {
        const int r = rows[b + i];
        axpy_f32(wts[r], y + size_t(i) * n, out + size_t(r / k) * n, n);
      }
    }
  }

  if (mw.has_shared()) {
    const int nfs = hp.n_ff_shexp;
    matmul(mw.gate_shexp, xn, m, g, ctx.pool);
    matmul(mw.up_shexp, xn, m, u, ctx.pool);
    for (int t = 0; t < m; ++t) silu_mul(g + size_t(t) * nfs, u + size_t(t) * nfs, nfs);
    matmul(mw.down_shexp, g, m, y, ctx.pool);
    for (int t = 0; t < m; ++t) {
      float scale = 1.0f;
      if (!mw.shexp_gate.empty()) {
        scale = 1.0f / (1.0f + std::exp(-dot_f32(mw.shexp_gate.data(), xn + size_t(t) * n, n)));
      }
      axpy_f32(scale, y + size_t(t) * n, out + size_t(t) * n, n);
    }
  }
}

}  // namespace qleap
