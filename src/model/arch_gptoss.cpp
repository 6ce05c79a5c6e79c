// gpt-oss (gpt-oss-20b, gpt-oss-120b; llama.cpp's "gpt-oss"): pre-norm blocks whose attention has biases
// on q, k, v and the output projection and a learned sink logit per head (attn_sinks, joining the
// softmax denominator without a value: KvShape::attn_sinks); sliding-window (128) and full attention
// alternate, even layers local; NeoX RoPE with YaRN, not truncated (the reference implementation's
// correction range keeps its fractional ends). Every FFN is a MoE: router with bias, top-k of the
// logits and a softmax over those k (= softmax, top-k, renormalized), experts with biases and the
// clamped SwiGLU (moe_block.cpp). The FFN's input norm is stored as post_attention_norm.
#include <fmt/format.h>

#include <algorithm>

#include "backend/cpu/matmul.h"
#include "core/error.h"
#include "model/moe_block.h"
#include "quant/quant.h"

namespace qleap {
namespace {

constexpr float kSwigluAlpha = 1.702f;  // transformers' GptOssConfig.swiglu_alpha
constexpr float kSwigluLimit = 7.0f;    // swiglu_limit

float arch_number(const GgufFile& f, std::string_view key, double def) {
  const GgufValue* v = f.find_arch(key);
  const double x = v ? v->as_double() : def;
  if (!(x > 0)) throw FormatError(fmt::format("bad {}.{} {}", f.architecture(), key, x));
  return float(x);
}

void read_gptoss(const GgufFile& f, HParams& hp) {
  const GgufValue* w = f.find_arch("attention.sliding_window");
  hp.n_swa = int(w ? w->as_int() : 128);
  if (hp.n_swa < 0) throw FormatError("bad attention.sliding_window");
  hp.swa_layers.assign(size_t(hp.n_layers), false);
  const GgufValue* p = f.find_arch("attention.sliding_window_pattern");
  if (p != nullptr && p->is_array()) {
    if (int(p->array_size()) != hp.n_layers || p->arr_u.size() != p->array_size())
      throw FormatError(fmt::format("attention.sliding_window_pattern has {} entries for {} layers",
                                    p->array_size(), hp.n_layers));
    for (int il = 0; il < hp.n_layers; ++il) hp.swa_layers[size_t(il)] = p->arr_u[size_t(il)] != 0;
  } else {
    for (int il = 0; il < hp.n_layers; ++il) hp.swa_layers[size_t(il)] = il % 2 == 0;
  }
  if (hp.n_expert <= 0) throw FormatError("gpt-oss: expert_count missing");
  // top-k of the logits then softmax over them is the renormalized top-k of the full softmax.
  hp.expert_weights_norm = true;
  hp.expert_swiglu_alpha = arch_number(f, "expert_swiglu_alpha", kSwigluAlpha);
  hp.expert_swiglu_limit = arch_number(f, "expert_swiglu_limit", kSwigluLimit);
  // gpt-oss's config says truncate: false; files that say otherwise keep llama.cpp's floor / ceil.
  if (const GgufValue* t = f.find_arch("rope.scaling.yarn_truncate")) {
    hp.rope.yarn_truncate = t->as_bool();
  } else {
    hp.rope.yarn_truncate = false;
  }
}

// A 2-D float tensor [ne0, ne1] decoded to ne1 rows of ne0 floats (the experts' biases).
std::vector<float> load_rows(const GgufFile& f, const std::string& name, int64_t ne0, int64_t ne1) {
  const GgufTensor& t = f.tensor(name);
  if (t.shape.size() != 2 || t.ne(0) != ne0 || t.ne(1) != ne1)
    throw FormatError(fmt::format("tensor '{}' has the wrong shape, expected [{}, {}]", name, ne0, ne1));
  const TypeTraits& tr = type_traits(t.type);
  if (tr.name == nullptr || !tr.can_compute || tr.block_size <= 0 || ne0 % tr.block_size != 0)
    throw Unsupported(
        fmt::format("tensor '{}' has type {}, which this build cannot read", name, type_name(t.type)));
  const size_t rb = row_size(t.type, ne0);
  if (t.nbytes < rb * size_t(ne1)) throw FormatError(fmt::format("tensor '{}' is truncated", name));
  std::vector<float> out(size_t(ne0 * ne1));
  for (int64_t r = 0; r < ne1; ++r)
    dequantize_row(t.type, t.data + rb * size_t(r), out.data() + r * ne0, ne0);
  return out;
}

void load_layer(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  load_attention(f, hp, il, AttnOptions{Presence::kRequired, Presence::kAbsent}, w);
  w.bo = load_vector(f, blk_name(il, "attn_output.bias"), hp.n_embd, true);
  w.attn_sinks = load_vector(f, blk_name(il, "attn_sinks.weight"), hp.n_heads, true);
  const int64_t n = hp.n_embd, ne = hp.n_expert, nf = hp.n_ff_exp;
  w.ffn_norm = load_vector(f, blk_name(il, "post_attention_norm.weight"), n, true);
  MoeWeights& m = w.moe;
  m.router = load_matrix(f, blk_name(il, "ffn_gate_inp.weight"), n, ne);
  m.router_b = load_vector(f, blk_name(il, "ffn_gate_inp.bias"), ne, true);
  load_gate_up_experts(f, il, n, nf, ne, m);
  m.down = load_expert_matrices(f, blk_name(il, "ffn_down_exps.weight"), nf, n, ne);
  if (f.find_tensor(blk_name(il, "ffn_gate_up_exps.bias")) != nullptr) {
    // Per expert its nf gate biases, then its nf up biases.
    const std::vector<float> both = load_rows(f, blk_name(il, "ffn_gate_up_exps.bias"), 2 * nf, ne);
    m.gate_b.resize(size_t(nf * ne));
    m.up_b.resize(size_t(nf * ne));
    for (int64_t e = 0; e < ne; ++e) {
      const float* src = both.data() + 2 * nf * e;
      std::copy(src, src + nf, m.gate_b.begin() + nf * e);
      std::copy(src + nf, src + 2 * nf, m.up_b.begin() + nf * e);
    }
  } else {
    m.gate_b = load_rows(f, blk_name(il, "ffn_gate_exps.bias"), nf, ne);
    m.up_b = load_rows(f, blk_name(il, "ffn_up_exps.bias"), nf, ne);
  }
  m.down_b = load_rows(f, blk_name(il, "ffn_down_exps.bias"), n, ne);
}

// x += attn(norm(x)) + b_o; x += moe(norm(x)).
void forward_layer(const LayerWeights& w, int il, const LayerCtx& ctx) {
  Backend& be = ctx.be;
  Activations& a = ctx.a;
  const int n = ctx.hp.n_embd, m = ctx.m;
  const float eps = ctx.hp.rms_eps;
  // The MoE block runs on host backends only, so the whole layer does (the bias is a host vector).
  if (!be.is_host()) throw Unsupported(fmt::format("gpt-oss layer {}: runs on the CPU only", il));
  float* t = a.tmp.get();
  be.rms_norm(a.x.get(), w.attn_norm, a.xn.get(), m, n, eps);
  attention_block(w, il, ctx, a.xn.get(), t, /*accumulate=*/false);
  for (int r = 0; r < m; ++r) be.add(t + size_t(r) * n, w.bo.data(), n);
  be.add(a.x.get(), t, int64_t(m) * n);
  be.rms_norm(a.x.get(), w.ffn_norm, a.xn.get(), m, n, eps);
  moe_ffn_block(w, il, ctx, a.xn.get(), t);
  be.add(a.x.get(), t, int64_t(m) * n);
}

}  // namespace

extern const ArchDef kArchGptOss;
const ArchDef kArchGptOss = {"gpt-oss", RopeStyle::kNeox, load_layer, forward_layer, read_gptoss};

}  // namespace qleap
