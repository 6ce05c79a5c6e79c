#include "model/delta_net_block.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <memory>

#include "backend/cpu/matmul.h"
#include "core/error.h"
#include "model/moe_block.h"
#include "quant/quant.h"

namespace qleap {
namespace {

int64_t key_int(const GgufFile& f, std::string_view suffix, int64_t def, bool required) {
  const GgufValue* v = f.find_arch(suffix);
  if (v == nullptr) {
    if (required) throw FormatError(fmt::format("missing metadata key '{}.{}'", f.architecture(), suffix));
    return def;
  }
  return v->as_int();
}

// The conv kernel: a 2-D tensor of conv_dim rows of `kernel` taps, as floats.
std::vector<float> load_conv(const GgufFile& f, const std::string& name, int64_t kernel, int64_t channels) {
  const GgufTensor& t = f.tensor(name);
  if (t.shape.size() != 2 || t.ne(0) != kernel || t.ne(1) != channels)
    throw FormatError(fmt::format("tensor '{}': expected shape [{}, {}]", name, kernel, channels));
  const TypeTraits& tr = type_traits(t.type);
  const int64_t n = kernel * channels;
  if (tr.name == nullptr || !tr.can_compute || tr.block_size <= 0 || n % tr.block_size != 0 ||
      t.nbytes < row_size(t.type, n))
    throw Unsupported(fmt::format("tensor '{}' has type {}, which this build cannot read as a conv kernel",
                                  name, type_name(t.type)));
  std::vector<float> out(static_cast<size_t>(n));
  dequantize_row(t.type, t.data, out.data(), n);
  return out;
}

// qwen3next files from llama.cpp's first converter keep transformers' in_proj_qkvz as ssm_in: per key
// head [q (dk), k (dk), v (r dv), z (r dv)] (llama.cpp still reads them, through views of the product).
// Its rows are regrouped once here into qkv [all q, all k, all v] (value heads grouped, as in those
// files) and gate [all z], the projections the DeltaNet block takes: whole rows, so any format.
void load_fused_qkvz(const GgufFile& f, const HParams& hp, int il, DeltaNetWeights& w) {
  const DeltaNetParams& d = hp.delta;
  if (d.v_tiled)
    throw Unsupported(fmt::format("layer {}: a fused ssm_in projection in a {} file is not supported", il,
                                  f.architecture()));
  const int64_t nk = d.n_k_heads, dk = d.head_k_dim, rv = int64_t(d.n_v_heads / d.n_k_heads) * d.head_v_dim;
  const int64_t group = 2 * dk + 2 * rv;
  const WeightView all = load_matrix(f, blk_name(il, "ssm_in.weight"), hp.n_embd, nk * group);
  auto bytes = std::make_shared<std::vector<uint8_t>>(all.row_bytes * size_t(all.rows));
  const auto* src = static_cast<const uint8_t*>(all.data);
  uint8_t* dst = bytes->data();
  // (offset in a group, rows) of q, k, v, then z: each taken from every group in turn.
  const int64_t parts[4][2] = {{0, dk}, {dk, dk}, {2 * dk, rv}, {2 * dk + rv, rv}};
  for (const auto& [off, len] : parts) {
    for (int64_t g = 0; g < nk; ++g) {
      const size_t nb = all.row_bytes * size_t(len);
      std::memcpy(dst, src + all.row_bytes * size_t(g * group + off), nb);
      dst += nb;
    }
  }
  w.qkv = all;
  w.qkv.data = bytes->data();
  w.qkv.rows = d.conv_dim();
  w.qkv.packed = nullptr;
  w.gate = w.qkv;
  w.gate.data = bytes->data() + all.row_bytes * size_t(d.conv_dim());
  w.gate.rows = d.value_dim();
  w.owned = std::move(bytes);
}

void load_delta_net(const GgufFile& f, const HParams& hp, int il, DeltaNetWeights& w) {
  const DeltaNetParams& d = hp.delta;
  const int64_t n = hp.n_embd;
  if (f.find_tensor(blk_name(il, "attn_qkv.weight")) == nullptr &&
      f.find_tensor(blk_name(il, "ssm_in.weight")) != nullptr) {
    load_fused_qkvz(f, hp, il, w);
  } else {
    w.qkv = load_matrix(f, blk_name(il, "attn_qkv.weight"), n, d.conv_dim());
    w.gate = load_matrix(f, blk_name(il, "attn_gate.weight"), n, d.value_dim());
  }
  if (f.find_tensor(blk_name(il, "ssm_ba.weight")) != nullptr) {
    w.ba = load_matrix(f, blk_name(il, "ssm_ba.weight"), n, 2 * int64_t(d.n_v_heads));
  } else {
    w.beta = load_matrix(f, blk_name(il, "ssm_beta.weight"), n, d.n_v_heads);
    w.alpha = load_matrix(f, blk_name(il, "ssm_alpha.weight"), n, d.n_v_heads);
  }
  w.conv = load_conv(f, blk_name(il, "ssm_conv1d.weight"), d.conv_kernel, d.conv_dim());
  w.dt_bias = load_vector(f, blk_name(il, "ssm_dt.bias"), d.n_v_heads, true);
  w.a = load_vector(f, blk_name(il, "ssm_a"), d.n_v_heads, true);
  w.norm = load_vector(f, blk_name(il, "ssm_norm.weight"), d.head_v_dim, true);
  w.out = load_matrix(f, blk_name(il, "ssm_out.weight"), d.value_dim(), n);
}

void load_gated_attention(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  const int64_t n = hp.n_embd;
  // The query projection yields, per head, head_dim query values then head_dim gate values.
  load_qkv(f, il, n, 2 * int64_t(hp.q_dim()), hp.kv_dim(), Presence::kAbsent, w);
  w.wo = load_matrix(f, blk_name(il, "attn_output.weight"), hp.q_dim(), n);
  w.q_norm = load_vector(f, blk_name(il, "attn_q_norm.weight"), hp.head_dim, true);
  w.k_norm = load_vector(f, blk_name(il, "attn_k_norm.weight"), hp.head_dim, true);
}

}  // namespace

bool is_hybrid_arch(std::string_view arch) {
  return arch == "qwen35" || arch == "qwen35moe" || arch == "qwen3next";
}

void read_delta_net_params(const GgufFile& f, HParams& hp) {
  DeltaNetParams& d = hp.delta;
  d.conv_kernel = int(key_int(f, "ssm.conv_kernel", 0, true));
  d.head_k_dim = int(key_int(f, "ssm.state_size", 0, true));
  d.n_k_heads = int(key_int(f, "ssm.group_count", 0, true));
  d.n_v_heads = int(key_int(f, "ssm.time_step_rank", 0, true));
  const int64_t inner = key_int(f, "ssm.inner_size", 0, true);
  if (d.conv_kernel <= 0 || d.conv_kernel > 64 || d.head_k_dim <= 0 || d.n_k_heads <= 0 || d.n_v_heads <= 0 ||
      d.n_v_heads % d.n_k_heads != 0 || inner <= 0 || inner % d.n_v_heads != 0 ||
      inner / d.n_v_heads > 4096 || d.head_k_dim > 4096)
    throw FormatError(
        fmt::format("bad DeltaNet hyper-parameters: conv kernel {}, state size {}, heads {}/{}, "
                    "inner size {}",
                    d.conv_kernel, d.head_k_dim, d.n_k_heads, d.n_v_heads, inner));
  d.head_v_dim = int(inner / d.n_v_heads);
  // llama.cpp's qwen35 converter reorders the value heads so that value head h reads key head
  // h % n_k_heads (ggml's broadcast); qwen3next files keep the checkpoint's grouped order.
  d.v_tiled = f.architecture() != "qwen3next";

  // MTP (next-token prediction) blocks follow the main stack; they are not run.
  const int64_t nextn = key_int(f, "nextn_predict_layers", 0, false);
  if (nextn < 0 || nextn >= hp.n_layers)
    throw FormatError(fmt::format("bad nextn_predict_layers {} of {} blocks", nextn, hp.n_layers));
  hp.n_layers -= int(nextn);

  const int64_t interval = key_int(f, "full_attention_interval", 4, false);
  if (interval <= 0) throw FormatError(fmt::format("bad full_attention_interval {}", interval));
  hp.recurrent.assign(size_t(hp.n_layers), 0);
  for (int i = 0; i < hp.n_layers; ++i) hp.recurrent[size_t(i)] = (i + 1) % interval != 0 ? 1 : 0;

  // The multi-section (M-)RoPE of qwen35 rotates each frequency with the position of its section (time,
  // height, width). For text every section has the token's position, so it is the plain NeoX rotation
  // over the rotary dimensions; the sections only have to fit in them.
  if (const GgufValue* v = f.find_arch("rope.dimension_sections")) {
    int64_t sum = 0;
    for (int64_t x : v->arr_i) sum += x;
    for (uint64_t x : v->arr_u) sum += int64_t(x);
    if (!v->is_array() || sum * 2 > hp.rope.n_rot)
      throw FormatError(
          fmt::format("rope.dimension_sections do not fit {} rotary dimensions", hp.rope.n_rot));
  }
}

void load_hybrid_layer(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  w.attn_norm = load_vector(f, blk_name(il, "attn_norm.weight"), hp.n_embd, true);
  if (hp.is_recurrent(il)) {
    load_delta_net(f, hp, il, w.delta);
  } else {
    load_gated_attention(f, hp, il, w);
  }
  load_ffn_or_moe(f, hp, il, w, "post_attention_norm.weight");
}

void gated_attention_block(const LayerWeights& w, int il, const LayerCtx& ctx, const float* xn, float* out) {
  const HParams& hp = ctx.hp;
  Backend& be = ctx.be;
  Activations& a = ctx.a;
  const int m = ctx.m, q_dim = hp.q_dim(), kv_dim = hp.kv_dim();
  const MatmulOut qkv[] = {{&w.wq, a.qg.get()}, {&w.wk, a.k.get()}, {&w.wv, a.v.get()}};
  be.matmul_many(qkv, xn, m);
  be.split_heads(a.qg.get(), a.q.get(), a.qgate.get(), m, hp.n_heads, hp.head_dim);
  QkPrep qp;
  qp.q = a.q.get();
  qp.k = a.k.get();
  qp.v = a.v.get();
  qp.q_norm = &w.q_norm;
  qp.k_norm = &w.k_norm;
  qp.n_heads = hp.n_heads;
  qp.n_kv_heads = hp.n_kv_heads;
  qp.head_dim = hp.head_dim;
  qp.eps = hp.rms_eps;
  be.qk_prep(qp, m);

  const float scale = 1.0f / std::sqrt(float(hp.head_dim));
  const int32_t* dev_pos = be.device_positions();
  // The caches hold only the attention layers.
  const int layer = hp.kv_layers_before(il) - hp.kv_layers_before(ctx.kv_first);
  store_and_attend(ctx, layer, a.k.get(), a.v.get(), size_t(kv_dim), a.q.get(), a.attn.get(), size_t(q_dim),
                   scale, dev_pos);
  be.sigmoid_mul(a.attn.get(), a.qgate.get(), m, q_dim);
  be.matmul(w.wo, a.attn.get(), m, out, /*accumulate=*/true);
}

void delta_net_block(const LayerWeights& w, int il, const LayerCtx& ctx, const float* xn, float* out) {
  const HParams& hp = ctx.hp;
  const DeltaNetParams& d = hp.delta;
  const DeltaNetWeights& dw = w.delta;
  Backend& be = ctx.be;
  Activations& a = ctx.a;
  const int m = ctx.m, nv = d.n_v_heads;
  DeltaNetArgs da;
  if (dw.ba.data != nullptr) {
    const MatmulOut in[] = {{&dw.qkv, a.dn_qkv.get()}, {&dw.gate, a.dn_z.get()}, {&dw.ba, a.dn_ba.get()}};
    be.matmul_many(in, xn, m);
    da.beta = a.dn_ba.get();
    da.ba_grouped = true;
  } else {
    const MatmulOut in[] = {{&dw.qkv, a.dn_qkv.get()},
                            {&dw.gate, a.dn_z.get()},
                            {&dw.beta, a.dn_ba.get()},
                            {&dw.alpha, a.dn_ba.get() + size_t(m) * nv}};
    be.matmul_many(in, xn, m);
    da.beta = a.dn_ba.get();
    da.alpha = a.dn_ba.get() + size_t(m) * nv;
  }
  da.qkv = a.dn_qkv.get();
  da.z = a.dn_z.get();
  da.out = a.dn_out.get();
  da.conv_w = &dw.conv;
  da.dt_bias = &dw.dt_bias;
  da.a = &dw.a;
  da.norm_w = &dw.norm;
  da.n_k_heads = d.n_k_heads;
  da.n_v_heads = nv;
  da.head_k_dim = d.head_k_dim;
  da.head_v_dim = d.head_v_dim;
  da.kernel = d.conv_kernel;
  da.v_tiled = d.v_tiled;
  da.eps = hp.rms_eps;
  // The states hold only the DeltaNet layers.
  const int layer = hp.recurrent_layers_before(il) - hp.recurrent_layers_before(ctx.kv_first);
  thread_local std::vector<DeltaStateRef> row_states;
  if (ctx.rows == nullptr) {
    if (ctx.state == nullptr)
      throw InvalidArgument(fmt::format("layer {}: DeltaNet layer without a state", il));
    da.state = ctx.state->layer(layer);
  } else {
    row_states.resize(size_t(m));
    for (int t = 0; t < m; ++t) {
      if (ctx.rows[t].state == nullptr)
        throw InvalidArgument(fmt::format("layer {}: DeltaNet layer without a state", il));
      row_states[size_t(t)] = ctx.rows[t].state->layer(layer);
    }
    da.rows = row_states.data();
  }
  be.delta_net(da, m);
  be.matmul(dw.out, a.dn_out.get(), m, out, /*accumulate=*/true);
}

void hybrid_layer(const LayerWeights& w, int il, const LayerCtx& ctx) {
  Backend& be = ctx.be;
  Activations& a = ctx.a;
  const int n = ctx.hp.n_embd, m = ctx.m;
  const float eps = ctx.hp.rms_eps;
  be.rms_norm(a.x.get(), w.attn_norm, a.xn.get(), m, n, eps);
  if (w.is_recurrent()) {
    delta_net_block(w, il, ctx, a.xn.get(), a.x.get());
  } else {
    gated_attention_block(w, il, ctx, a.xn.get(), a.x.get());
  }
  pre_norm_ffn(w, il, ctx);
}

}  // namespace qleap
