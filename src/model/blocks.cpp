#include "model/blocks.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/matmul.h"
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

}  // namespace

void Activations::allocate(Backend& be, const HParams& hp, int nb) {
  n_batch = nb;
  const size_t n = size_t(nb);
  x = be.alloc_floats(n * hp.n_embd);
  xn = be.alloc_floats(n * hp.n_embd);
  tmp = be.alloc_floats(n * hp.n_embd);
  q = be.alloc_floats(n * hp.q_dim());
  attn = be.alloc_floats(n * hp.q_dim());
  k = be.alloc_floats(n * hp.kv_dim());
  v = be.alloc_floats(n * hp.kv_dim());
  gate = be.alloc_floats(n * hp.n_ff);
  up = be.alloc_floats(n * hp.n_ff);
  if (hp.delta.n_v_heads > 0) {
    qg = be.alloc_floats(n * 2 * hp.q_dim());
    qgate = be.alloc_floats(n * hp.q_dim());
    dn_qkv = be.alloc_floats(n * hp.delta.conv_dim());
    dn_z = be.alloc_floats(n * hp.delta.value_dim());
    dn_ba = be.alloc_floats(n * 2 * hp.delta.n_v_heads);
    dn_out = be.alloc_floats(n * hp.delta.value_dim());
  }
  if (hp.is_mla()) {
    const MlaParams& ml = hp.mla;
    mla_q = be.alloc_floats(n * hp.n_heads * ml.qk_dim());
    mla_qa = be.alloc_floats(n * std::max(ml.q_lora_rank, 1));
    mla_kv = be.alloc_floats(n * (ml.kv_lora_rank + ml.rope_dim));
    mla_o = be.alloc_floats(n * hp.n_heads * ml.v_dim);
    mla_in = be.alloc_floats(n * std::max(ml.nope_dim, ml.kv_lora_rank));
    mla_out = be.alloc_floats(n * std::max(ml.kv_lora_rank, ml.v_dim));
  }
}

void MoeScratch::allocate(const HParams& hp, int nb) {
  if (hp.n_expert <= 0) return;
  const size_t n = size_t(nb);
  const size_t nf = size_t(std::max(hp.n_ff_exp, hp.n_ff_shexp)), k = size_t(hp.n_expert_used);
  logits.assign(n * hp.n_expert, 0.0f);
  w.assign(n * k, 0.0f);
  ids.assign(n * k, 0);
  rows.assign(n * k, 0);
  // The decode path keeps one row per (token, expert) pair (moe_block.cpp).
  const size_t pairs = std::max(n, k * size_t(std::min(nb, kMoeDecodeTokens)));
  xg.assign(n * hp.n_embd, 0.0f);
  y.assign(pairs * hp.n_embd, 0.0f);
  g.assign(pairs * nf, 0.0f);
  u.assign(pairs * nf, 0.0f);
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

std::vector<float> load_weight_scales(const GgufFile& f, const std::string& weight_name, int64_t n) {
  const std::string suffix = ".weight";
  if (weight_name.size() <= suffix.size() ||
      weight_name.compare(weight_name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return std::vector<float>(size_t(n), 1.0f);
  const std::string name = weight_name.substr(0, weight_name.size() - suffix.size()) + ".scale";
  const GgufTensor* t = f.find_tensor(name);
  if (t == nullptr) return std::vector<float>(size_t(n), 1.0f);
  // One factor for the tensor, or one per expert of a stacked tensor.
  std::vector<float> s = load_vector(f, name, t->n_elements() == 1 ? 1 : n, true);
  for (float v : s)
    if (!std::isfinite(v)) throw FormatError(fmt::format("tensor '{}' holds a non-finite scale {}", name, v));
  if (s.size() == 1) s.assign(size_t(n), s[0]);
  return s;
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
  w.scale = load_weight_scales(f, name, 1)[0];
  return w;
}

WeightView rows_of(const WeightView& w, int64_t row0, int64_t rows) {
  WeightView v = w;
  v.data = static_cast<const uint8_t*>(w.data) + size_t(row0) * w.row_bytes;
  v.rows = rows;
  return v;
}

void load_qkv(const GgufFile& f, int il, int64_t n_embd, int64_t q_rows, int64_t kv_rows, Presence bias,
              LayerWeights& w) {
  const bool fused = f.find_tensor(blk_name(il, "attn_qkv.weight")) != nullptr;
  if (fused) {
    const WeightView qkv = load_matrix(f, blk_name(il, "attn_qkv.weight"), n_embd, q_rows + 2 * kv_rows);
    w.wq = rows_of(qkv, 0, q_rows);
    w.wk = rows_of(qkv, q_rows, kv_rows);
    w.wv = rows_of(qkv, q_rows + kv_rows, kv_rows);
  } else {
    w.wq = load_matrix(f, blk_name(il, "attn_q.weight"), n_embd, q_rows);
    w.wk = load_matrix(f, blk_name(il, "attn_k.weight"), n_embd, kv_rows);
    w.wv = load_matrix(f, blk_name(il, "attn_v.weight"), n_embd, kv_rows);
  }
  if (bias == Presence::kAbsent) return;
  const bool req = bias == Presence::kRequired;
  if (fused && f.find_tensor(blk_name(il, "attn_qkv.bias")) != nullptr) {
    const std::vector<float> b = load_vector(f, blk_name(il, "attn_qkv.bias"), q_rows + 2 * kv_rows, true);
    w.bq.assign(b.begin(), b.begin() + q_rows);
    w.bk.assign(b.begin() + q_rows, b.begin() + q_rows + kv_rows);
    w.bv.assign(b.begin() + q_rows + kv_rows, b.end());
    return;
  }
  w.bq = load_vector(f, blk_name(il, "attn_q.bias"), q_rows, req);
  w.bk = load_vector(f, blk_name(il, "attn_k.bias"), kv_rows, req);
  w.bv = load_vector(f, blk_name(il, "attn_v.bias"), kv_rows, req);
}

void load_attention(const GgufFile& f, const HParams& hp, int il, const AttnOptions& opt, LayerWeights& w) {
  w.attn_norm = load_vector(f, blk_name(il, "attn_norm.weight"), hp.n_embd, true);
  load_qkv(f, il, hp.n_embd, hp.q_dim(), hp.kv_dim(), opt.qkv_bias, w);
  w.wo = load_matrix(f, blk_name(il, "attn_output.weight"), hp.q_dim(), hp.n_embd);
  if (opt.qk_norm != Presence::kAbsent) {
    const bool req = opt.qk_norm == Presence::kRequired;
    w.q_norm = load_vector(f, blk_name(il, "attn_q_norm.weight"), hp.head_dim, req);
    w.k_norm = load_vector(f, blk_name(il, "attn_k_norm.weight"), hp.head_dim, req);
  }
}

void load_swiglu_ffn(const GgufFile& f, const HParams& hp, int il, LayerWeights& w, std::string_view norm) {
  w.ffn_norm = load_vector(f, blk_name(il, norm), hp.n_embd, true);
  w.w_gate = load_matrix(f, blk_name(il, "ffn_gate.weight"), hp.n_embd, hp.n_ff);
  w.w_up = load_matrix(f, blk_name(il, "ffn_up.weight"), hp.n_embd, hp.n_ff);
  w.w_down = load_matrix(f, blk_name(il, "ffn_down.weight"), hp.n_ff, hp.n_embd);
}

void attention_block(const LayerWeights& w, int il, const LayerCtx& ctx, const float* xn, float* out,
                     bool accumulate) {
  const HParams& hp = ctx.hp;
  Backend& be = ctx.be;
  Activations& a = ctx.a;
  const int m = ctx.m, q_dim = hp.q_dim(), kv_dim = hp.kv_dim();
  const MatmulOut qkv[] = {{&w.wq, a.q.get()}, {&w.wk, a.k.get()}, {&w.wv, a.v.get()}};
  be.matmul_many(qkv, xn, m);
  QkPrep qp;
  qp.q = a.q.get();
  qp.k = a.k.get();
  qp.v = a.v.get();
  qp.bq = &w.bq;
  qp.bk = &w.bk;
  qp.bv = &w.bv;
  qp.q_norm = &w.q_norm;
  qp.k_norm = &w.k_norm;
  qp.norm_full = w.qk_norm_full;
  qp.swa_rope = hp.has_rope_swa && hp.window(il) > 0;
  qp.n_heads = hp.n_heads;
  qp.n_kv_heads = hp.n_kv_heads;
  qp.head_dim = hp.head_dim;
  qp.eps = hp.rms_eps;
  be.qk_prep(qp, m);

  const float scale = hp.attn_scale > 0 ? hp.attn_scale : 1.0f / std::sqrt(float(hp.head_dim));
  const int32_t* dev_pos = be.device_positions();
  store_and_attend(ctx, il - ctx.kv_first, a.k.get(), a.v.get(), size_t(kv_dim), a.q.get(), a.attn.get(),
                   size_t(q_dim), scale, dev_pos);
  be.matmul(w.wo, a.attn.get(), m, out, accumulate);
}

void store_and_attend(const LayerCtx& ctx, int layer, const float* k, const float* v, size_t kv_stride,
                      const float* q, float* out, size_t q_stride, float scale, const int32_t* dev_pos) {
  const int m = ctx.m;
  if (ctx.rows == nullptr) {
    // dev_pos holds one position per row: piece t0's first position is at dev_pos + t0.
    const int piece = std::max(1, ctx.kv->shape().chunk_tokens(layer));
    for (int t0 = 0; t0 < m; t0 += piece) {
      const int n = std::min(piece, m - t0);
      const KvSpan span{ctx.pos0 + t0, n, dev_pos ? dev_pos + t0 : nullptr};
      ctx.kv->store(layer, span, k + size_t(t0) * kv_stride, v + size_t(t0) * kv_stride);
      ctx.kv->attend(layer, span, q + size_t(t0) * q_stride, out + size_t(t0) * q_stride, scale, ctx.pool);
    }
    return;
  }
  for (int t = 0; t < m; ++t) {
    const RowSeq& r = ctx.rows[t];
    const KvSpan span{r.pos, 1, dev_pos ? dev_pos + t : nullptr};
    r.kv->store(layer, span, k + size_t(t) * kv_stride, v + size_t(t) * kv_stride);
    r.kv->attend(layer, span, q + size_t(t) * q_stride, out + size_t(t) * q_stride, scale, ctx.pool);
  }
}

void swiglu_ffn_block(const LayerWeights& w, const LayerCtx& ctx, const float* xn, float* out) {
  Backend& be = ctx.be;
  Activations& a = ctx.a;
  const int m = ctx.m;
  const MatmulOut gate_up[] = {{&w.w_gate, a.gate.get()}, {&w.w_up, a.up.get()}};
  be.matmul_many(gate_up, xn, m);
  be.silu_mul(a.gate.get(), a.up.get(), m, ctx.hp.n_ff);
  be.matmul(w.w_down, a.gate.get(), m, out, /*accumulate=*/true);
}

void geglu_ffn_block(const LayerWeights& w, const LayerCtx& ctx, const float* xn, float* out,
                     bool accumulate) {
  Backend& be = ctx.be;
  Activations& a = ctx.a;
  const int m = ctx.m;
  const MatmulOut gate_up[] = {{&w.w_gate, a.gate.get()}, {&w.w_up, a.up.get()}};
  be.matmul_many(gate_up, xn, m);
  be.gelu_mul(a.gate.get(), a.up.get(), m, ctx.hp.n_ff);
  be.matmul(w.w_down, a.gate.get(), m, out, accumulate);
}

void pre_norm_layer(const LayerWeights& w, int il, const LayerCtx& ctx) {
  Backend& be = ctx.be;
  Activations& a = ctx.a;
  const int n = ctx.hp.n_embd, m = ctx.m;
  const float eps = ctx.hp.rms_eps;
  be.rms_norm(a.x.get(), w.attn_norm, a.xn.get(), m, n, eps);
  attention_block(w, il, ctx, a.xn.get(), a.x.get());
  pre_norm_ffn(w, il, ctx);
}

void pre_norm_ffn(const LayerWeights& w, int il, const LayerCtx& ctx) {
  Backend& be = ctx.be;
  Activations& a = ctx.a;
  const int n = ctx.hp.n_embd, m = ctx.m;
  be.rms_norm(a.x.get(), w.ffn_norm, a.xn.get(), m, n, ctx.hp.rms_eps);
  if (w.is_moe()) {
    moe_ffn_block(w, il, ctx, a.xn.get(), a.tmp.get());
    be.add(a.x.get(), a.tmp.get(), int64_t(m) * n);
  } else {
    swiglu_ffn_block(w, ctx, a.xn.get(), a.x.get());
  }
}

void prepare_layer(const LayerWeights& w, Backend& be) {
  if (w.is_moe()) {
    throw Unsupported(fmt::format(
        "MoE layers run on the CPU only ({} cannot hold them yet); keep them on the CPU (fewer --gpu-layers) "
        "and move experts to the GPU with --expert-tier cuda",
        be.name()));
  }
  if (w.is_mla()) {
    throw Unsupported(fmt::format(
        "MLA attention (deepseek2) runs on the CPU only ({} cannot hold it yet); run without --gpu-layers "
        "and move experts to the GPU with --expert-tier cuda",
        be.name()));
  }
  for (const std::vector<float>* v :
       {&w.attn_norm, &w.ffn_norm, &w.q_norm, &w.k_norm, &w.bq, &w.bk, &w.bv, &w.attn_post_norm,
        &w.ffn_post_norm, &w.delta.conv, &w.delta.dt_bias, &w.delta.a, &w.delta.norm}) {
    if (!v->empty()) be.prepare(*v);
  }
  for (const WeightView* v : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down, &w.delta.qkv,
                              &w.delta.gate, &w.delta.beta, &w.delta.alpha, &w.delta.ba, &w.delta.out}) {
    if (v->data != nullptr) be.prepare(*v);
  }
}

}  // namespace qleap
