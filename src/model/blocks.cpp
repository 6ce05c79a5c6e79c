#include "model/blocks.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/moe_block.h"
#include "quant/quant.h"

namespace qleap {
namespace {

std::string shape_str(const GgufTensor& t) {
  std::string s = "[";
  for (size_t i = 0; i < t.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + "]";
}

const TypeTraits& computable_traits(const GgufTensor& t) {
  const TypeTraits& tr = type_traits(t.type);
  if (tr.name == nullptr || !tr.can_compute || tr.block_size <= 0) {
    throw Unsupported(fmt::format("tensor '{}' has type {}, which this build cannot compute with", t.name,
                                  type_name(t.type)));
  }
  return tr;
}

// Runs f(t) for t in [0, m), over the pool when the rows are numerous and costly enough to pay for
// the dispatch. The lambda handed to the pool captures one pointer, so std::function does not
// allocate.
template <class F>
void parallel_rows(ThreadPool& pool, int m, int64_t cost_per_row, const F& f) {
  if (pool.size() == 1 || m < 2 || cost_per_row * m < 32768) {
    for (int t = 0; t < m; ++t) f(t);
    return;
  }
  const F* fp = &f;
  pool.parallel_for(m, 1, [fp](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) (*fp)(int(t));
  });
}

}  // namespace

void ForwardScratch::allocate(const HParams& hp, int nb) {
  n_batch = nb;
  const size_t n = size_t(nb);
  x.assign(n * hp.n_embd, 0.0f);
  xn.assign(n * hp.n_embd, 0.0f);
  tmp.assign(n * hp.n_embd, 0.0f);
  q.assign(n * hp.q_dim(), 0.0f);
  attn.assign(n * hp.q_dim(), 0.0f);
  k.assign(n * hp.kv_dim(), 0.0f);
  v.assign(n * hp.kv_dim(), 0.0f);
  gate.assign(n * hp.n_ff, 0.0f);
  up.assign(n * hp.n_ff, 0.0f);
  if (hp.n_expert > 0) {
    const size_t nf = size_t(std::max(hp.n_ff_exp, hp.n_ff_shexp)), k = size_t(hp.n_expert_used);
    moe_logits.assign(n * hp.n_expert, 0.0f);
    moe_w.assign(n * k, 0.0f);
    moe_ids.assign(n * k, 0);
    moe_rows.assign(n * k, 0);
    // The decode path keeps one row per (token, expert) pair (moe_block.cpp).
    const size_t pairs = std::max(n, k * size_t(std::min(nb, kMoeDecodeTokens)));
    moe_xg.assign(n * hp.n_embd, 0.0f);
    moe_y.assign(pairs * hp.n_embd, 0.0f);
    moe_g.assign(pairs * nf, 0.0f);
    moe_u.assign(pairs * nf, 0.0f);
  }
}

std::string blk_name(int il, std::string_view what) {
  return fmt::format("blk.{}.{}", il, what);
}

std::vector<float> load_vector(const GgufFile& f, const std::string& name, int64_t n, bool required) {
  const GgufTensor* t = f.find_tensor(name);
  if (t == nullptr) {
    if (required) throw FormatError(fmt::format("missing tensor '{}'", name));
    return {};
  }
  if (t->ne(0) != n || t->n_elements() != n) {
    throw FormatError(fmt::format("tensor '{}' has shape {}, expected [{}]", name, shape_str(*t), n));
  }
  const TypeTraits& tr = computable_traits(*t);
  if (n % tr.block_size != 0) {
    throw FormatError(fmt::format("tensor '{}': {} elements are not whole {} blocks", name, n, tr.name));
  }
  std::vector<float> out(static_cast<size_t>(n));
  dequantize_row(t->type, t->data, out.data(), n);
  return out;
}

WeightView load_matrix(const GgufFile& f, const std::string& name, int64_t cols, int64_t rows) {
  const GgufTensor& t = f.tensor(name);  // FormatError naming it when missing
  if (t.shape.size() > 2 || t.ne(0) != cols || t.ne(1) != rows) {
    throw FormatError(
        fmt::format("tensor '{}' has shape {}, expected [{}, {}]", name, shape_str(t), cols, rows));
  }
  const TypeTraits& tr = computable_traits(t);
  if (cols % tr.block_size != 0) {
    throw FormatError(
        fmt::format("tensor '{}': row of {} elements is not whole {} blocks", name, cols, tr.name));
  }
  WeightView w;
  w.type = t.type;
  w.data = t.data;
  w.cols = cols;
  w.rows = rows;
  w.row_bytes = row_size(t.type, cols);
  if (t.nbytes < w.row_bytes * size_t(rows)) {
    throw FormatError(
        fmt::format("tensor '{}' holds {} bytes, expected {}", name, t.nbytes, w.row_bytes * rows));
  }
  return w;
}

void load_attention(const GgufFile& f, const HParams& hp, int il, const AttnOptions& opt, LayerWeights& w) {
  w.attn_norm = load_vector(f, blk_name(il, "attn_norm.weight"), hp.n_embd, true);
  w.wq = load_matrix(f, blk_name(il, "attn_q.weight"), hp.n_embd, hp.q_dim());
  w.wk = load_matrix(f, blk_name(il, "attn_k.weight"), hp.n_embd, hp.kv_dim());
  w.wv = load_matrix(f, blk_name(il, "attn_v.weight"), hp.n_embd, hp.kv_dim());
  w.wo = load_matrix(f, blk_name(il, "attn_output.weight"), hp.q_dim(), hp.n_embd);
  if (opt.qkv_bias != Presence::kAbsent) {
    const bool req = opt.qkv_bias == Presence::kRequired;
    w.bq = load_vector(f, blk_name(il, "attn_q.bias"), hp.q_dim(), req);
    w.bk = load_vector(f, blk_name(il, "attn_k.bias"), hp.kv_dim(), req);
    w.bv = load_vector(f, blk_name(il, "attn_v.bias"), hp.kv_dim(), req);
  }
  if (opt.qk_norm != Presence::kAbsent) {
    const bool req = opt.qk_norm == Presence::kRequired;
    w.q_norm = load_vector(f, blk_name(il, "attn_q_norm.weight"), hp.head_dim, req);
    w.k_norm = load_vector(f, blk_name(il, "attn_k_norm.weight"), hp.head_dim, req);
  }
}

void load_swiglu_ffn(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  w.ffn_norm = load_vector(f, blk_name(il, "ffn_norm.weight"), hp.n_embd, true);
  w.w_gate = load_matrix(f, blk_name(il, "ffn_gate.weight"), hp.n_embd, hp.n_ff);
  w.w_up = load_matrix(f, blk_name(il, "ffn_up.weight"), hp.n_embd, hp.n_ff);
  w.w_down = load_matrix(f, blk_name(il, "ffn_down.weight"), hp.n_ff, hp.n_embd);
}

void rms_norm_rows(const float* x, const float* w, float* y, int m, int n, float eps, ThreadPool& pool) {
  parallel_rows(pool, m, n, [&](int t) { rms_norm(x + size_t(t) * n, w, y + size_t(t) * n, n, eps); });
}

void attention_block(const LayerWeights& w, int il, const LayerCtx& ctx, const float* xn, float* out) {
  const HParams& hp = ctx.hp;
  ForwardScratch& s = ctx.s;
  const int m = ctx.m, hd = hp.head_dim, q_dim = hp.q_dim(), kv_dim = hp.kv_dim();
  matmul(w.wq, xn, m, s.q.data(), ctx.pool);
  matmul(w.wk, xn, m, s.k.data(), ctx.pool);
  matmul(w.wv, xn, m, s.v.data(), ctx.pool);

  // Bias, per-head q/k norm and rotation of each token's q and k rows.
  const RopeTable& rope = ctx.rope;
  parallel_rows(ctx.pool, m, 4 * (q_dim + 2 * kv_dim), [&](int t) {
    float* q = s.q.data() + size_t(t) * q_dim;
    float* k = s.k.data() + size_t(t) * kv_dim;
    float* v = s.v.data() + size_t(t) * kv_dim;
    if (!w.bq.empty()) add_inplace(q, w.bq.data(), q_dim);
    if (!w.bk.empty()) add_inplace(k, w.bk.data(), kv_dim);
    if (!w.bv.empty()) add_inplace(v, w.bv.data(), kv_dim);
    if (w.qk_norm_full) {
      rms_norm(q, w.q_norm.data(), q, q_dim, hp.rms_eps);
      rms_norm(k, w.k_norm.data(), k, kv_dim, hp.rms_eps);
    } else if (!w.q_norm.empty()) {
      for (int h = 0; h < hp.n_heads; ++h) rms_norm(q + h * hd, w.q_norm.data(), q + h * hd, hd, hp.rms_eps);
    }
    if (!w.qk_norm_full && !w.k_norm.empty()) {
      for (int h = 0; h < hp.n_kv_heads; ++h)
        rms_norm(k + h * hd, w.k_norm.data(), k + h * hd, hd, hp.rms_eps);
    }
    const float* cs = rope.at(ctx.rows ? ctx.rows[t].pos : ctx.pos0 + t);
    rope_apply(cs, rope.n_rot(), rope.style(), q, hp.n_heads, hd);
    rope_apply(cs, rope.n_rot(), rope.style(), k, hp.n_kv_heads, hd);
  });

  const float scale = 1.0f / std::sqrt(float(hd));
  if (ctx.rows == nullptr) {
    ctx.kv.store(il, ctx.pos0, m, s.k.data(), s.v.data());
    ctx.kv.attend(il, ctx.pos0, m, s.q.data(), s.attn.data(), scale, ctx.pool);
  } else {
    for (int t = 0; t < m; ++t) {
      const RowSeq& r = ctx.rows[t];
      r.kv->store(il, r.pos, 1, s.k.data() + size_t(t) * kv_dim, s.v.data() + size_t(t) * kv_dim);
      r.kv->attend(il, r.pos, 1, s.q.data() + size_t(t) * q_dim, s.attn.data() + size_t(t) * q_dim, scale,
                   ctx.pool);
    }
  }
  matmul(w.wo, s.attn.data(), m, out, ctx.pool);
}

void swiglu_ffn_block(const LayerWeights& w, const LayerCtx& ctx, const float* xn, float* out) {
  ForwardScratch& s = ctx.s;
  const int m = ctx.m, n_ff = ctx.hp.n_ff;
  matmul(w.w_gate, xn, m, s.gate.data(), ctx.pool);
  matmul(w.w_up, xn, m, s.up.data(), ctx.pool);
  parallel_rows(ctx.pool, m, 8 * n_ff, [&](int t) {
    silu_mul(s.gate.data() + size_t(t) * n_ff, s.up.data() + size_t(t) * n_ff, n_ff);
  });
  matmul(w.w_down, s.gate.data(), m, out, ctx.pool);
}

void pre_norm_layer(const LayerWeights& w, int il, const LayerCtx& ctx) {
  ForwardScratch& s = ctx.s;
  const int n = ctx.hp.n_embd, m = ctx.m;
  const float eps = ctx.hp.rms_eps;
  rms_norm_rows(s.x.data(), w.attn_norm.data(), s.xn.data(), m, n, eps, ctx.pool);
  attention_block(w, il, ctx, s.xn.data(), s.tmp.data());
  add_inplace(s.x.data(), s.tmp.data(), int64_t(m) * n);
  rms_norm_rows(s.x.data(), w.ffn_norm.data(), s.xn.data(), m, n, eps, ctx.pool);
  if (w.is_moe()) {
    moe_ffn_block(w, il, ctx, s.xn.data(), s.tmp.data());
  } else {
    swiglu_ffn_block(w, ctx, s.xn.data(), s.tmp.data());
  }
  add_inplace(s.x.data(), s.tmp.data(), int64_t(m) * n);
}

}  // namespace qleap
