// gemma2 / gemma3 (text): "sandwich" blocks with four RMSNorms (before and after attention, before and
// after the FFN; GGUF stores the norm weights as 1 + w, llama.cpp's converter adds the 1), GeGLU FFN
// (tanh approximation), token embeddings scaled by sqrt(n_embd), NeoX RoPE, and sliding-window
// attention on most layers: gemma2 alternates (even layers local), gemma3 has five local layers per
// global one, with its own RoPE base on the local layers (10000; global: rope.freq_base with any
// linear scaling) and per-head q/k RMSNorm. The score scale is query_pre_attn_scalar^-1/2
// (attention.scale when the file has it, else llama.cpp's rule). gemma2 soft-caps attention scores
// and the output logits.
#include <fmt/format.h>

#include <cmath>

#include "core/error.h"
#include "model/blocks.h"

namespace qleap {
namespace {

// Which layers use the sliding window: attention.sliding_window_pattern as an array of booleans (one
// per layer, true: sliding) or a period N (layer il is global when il % N == N - 1, llama.cpp's
// convention), else the architecture's period.
void read_swa_layers(const GgufFile& f, HParams& hp, int default_period) {
  hp.swa_layers.assign(size_t(hp.n_layers), false);
  const GgufValue* p = f.find_arch("attention.sliding_window_pattern");
  if (p != nullptr && p->is_array()) {
    if (int(p->array_size()) != hp.n_layers || p->arr_u.size() != p->array_size())
      throw FormatError(fmt::format("attention.sliding_window_pattern has {} entries for {} layers",
                                    p->array_size(), hp.n_layers));
    for (int il = 0; il < hp.n_layers; ++il) hp.swa_layers[size_t(il)] = p->arr_u[size_t(il)] != 0;
    return;
  }
  const int64_t period = p != nullptr ? p->as_int() : default_period;
  if (period < 0) throw FormatError(fmt::format("bad attention.sliding_window_pattern {}", period));
  for (int il = 0; il < hp.n_layers; ++il)
    hp.swa_layers[size_t(il)] = period == 0 || il % period < period - 1;
}

// attention.scale when present (our converter writes query_pre_attn_scalar^-1/2), else llama.cpp's rule
// for files without it: the 27B models scale by n_embd / n_heads, the others by head_dim.
void read_attn_scale(const GgufFile& f, HParams& hp, int layers_of_27b) {
  if (const GgufValue* v = f.find_arch("attention.scale")) {
    hp.attn_scale = float(v->as_double());
    if (!(hp.attn_scale > 0)) throw FormatError("bad attention.scale");
    return;
  }
  const int d = hp.n_layers == layers_of_27b ? hp.n_embd / hp.n_heads : hp.head_dim;
  hp.attn_scale = 1.0f / std::sqrt(float(d));
}

float arch_float(const GgufFile& f, std::string_view key, double def) {
  const GgufValue* v = f.find_arch(key);
  const double x = v ? v->as_double() : def;
  if (!(x >= 0)) throw FormatError(fmt::format("bad {}.{} {}", f.architecture(), key, x));
  return float(x);
}

void read_common(const GgufFile& f, HParams& hp) {
  hp.embd_scale = std::sqrt(float(hp.n_embd));
  for (const GgufTensor& t : f.tensors()) {
    if (t.name.starts_with("v.") || t.name.starts_with("mm.")) {
      throw Unsupported(
          fmt::format("tensor '{}' belongs to a vision tower: this engine runs the text model only (use a "
                      "text-only GGUF, "
                      "without the projector)",
                      t.name));
    }
  }
}

void read_gemma2(const GgufFile& f, HParams& hp) {
  read_common(f, hp);
  // llama.cpp's defaults for files that lack the keys (Gemma 2's released configs).
  const GgufValue* w = f.find_arch("attention.sliding_window");
  hp.n_swa = int(w ? w->as_int() : 4096);
  if (hp.n_swa < 0) throw FormatError("bad attention.sliding_window");
  read_swa_layers(f, hp, 2);
  hp.attn_softcap = arch_float(f, "attn_logit_softcapping", 50.0);
  hp.final_softcap = arch_float(f, "final_logit_softcapping", 30.0);
  read_attn_scale(f, hp, 46);
}

void read_gemma3(const GgufFile& f, HParams& hp) {
  read_common(f, hp);
  const GgufValue* w = f.find_arch("attention.sliding_window");
  hp.n_swa = int(w ? w->as_int() : 0);
  if (hp.n_swa < 0) throw FormatError("bad attention.sliding_window");
  read_swa_layers(f, hp, 6);
  // Local layers: their own base (10000 unless the file says), no context scaling.
  hp.has_rope_swa = true;
  hp.rope_swa = hp.rope;
  hp.rope_swa.freq_base = arch_float(f, "rope.freq_base_swa", 10000.0);
  hp.rope_swa.scaling = RopeScaling::kNone;
  hp.rope_swa.factor = 1.0f;
  hp.rope_swa.attn_factor = 1.0f;
  hp.rope_swa.ext_factor = -1.0f;
  hp.rope_swa.freq_factors.clear();
  hp.rope_swa.long_freq_factors.clear();
  // transformers applies a final soft-cap when the config has one (Gemma 3's do not); attention
  // soft-capping is not part of Gemma 3's forward.
  hp.final_softcap = arch_float(f, "final_logit_softcapping", 0.0);
  read_attn_scale(f, hp, 62);
}

void load_sandwich_norms(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  w.attn_post_norm = load_vector(f, blk_name(il, "post_attention_norm.weight"), hp.n_embd, true);
  w.ffn_post_norm = load_vector(f, blk_name(il, "post_ffw_norm.weight"), hp.n_embd, true);
}

void load_layer_gemma2(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  load_attention(f, hp, il, AttnOptions{Presence::kAbsent, Presence::kAbsent}, w);
  load_swiglu_ffn(f, hp, il, w);  // same tensors; the activation differs
  load_sandwich_norms(f, hp, il, w);
}

void load_layer_gemma3(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  load_attention(f, hp, il, AttnOptions{Presence::kAbsent, Presence::kRequired}, w);
  load_swiglu_ffn(f, hp, il, w);
  load_sandwich_norms(f, hp, il, w);
}

// x += post_norm(attn(norm(x))); x += post_norm(ffn(norm(x))).
void sandwich_layer(const LayerWeights& w, int il, const LayerCtx& ctx) {
  Backend& be = ctx.be;
  Activations& a = ctx.a;
  const int n = ctx.hp.n_embd, m = ctx.m;
  const float eps = ctx.hp.rms_eps;
  float* x = a.x.get();
  float* xn = a.xn.get();
  float* t = a.tmp.get();
  be.rms_norm(x, w.attn_norm, xn, m, n, eps);
  attention_block(w, il, ctx, xn, t, /*accumulate=*/false);
  be.rms_norm(t, w.attn_post_norm, t, m, n, eps);
  be.add(x, t, int64_t(m) * n);
  be.rms_norm(x, w.ffn_norm, xn, m, n, eps);
  geglu_ffn_block(w, ctx, xn, t, /*accumulate=*/false);
  be.rms_norm(t, w.ffn_post_norm, t, m, n, eps);
  be.add(x, t, int64_t(m) * n);
}

}  // namespace

extern const ArchDef kArchGemma2;
const ArchDef kArchGemma2 = {"gemma2", RopeStyle::kNeox, load_layer_gemma2, sandwich_layer, read_gemma2};
extern const ArchDef kArchGemma3;
const ArchDef kArchGemma3 = {"gemma3", RopeStyle::kNeox, load_layer_gemma3, sandwich_layer, read_gemma3};

}  // namespace qleap
