// deepseek2 (DeepSeek-V2 / V2-Lite / V3 / R1, Kimi-K2-style configs; transformers deepseek_v2 and
// deepseek_v3): Multi-head Latent Attention (model/mla_block.h) in every layer, the first
// leading_dense_block_count layers with a dense SwiGLU FFN and the rest MoE with shared experts and
// DeepSeek routing (model/moe_block.h moe_route_grouped: V2 softmax, V3 sigmoid with the exp_probs_b
// selection bias and group-limited selection, weights scaled by expert_weights_scale). RoPE on adjacent
// pairs of the rope part (DeepSeek's interleaved layout, as transformers' rope_interleave and the
// V2 complex rotation apply it). YaRN: the cos/sin keep magnitude 1 (transformers' attention factor
// get_mscale(f, mscale) / get_mscale(f, mscale_all_dim) is 1 for the DeepSeek configs; the converter
// refuses others) and the scores are scaled by mscale^2 / sqrt(qk_head_dim) with
// mscale = 1 + yarn_log_multiplier * ln(factor) (yarn_log_multiplier = 0.1 * mscale_all_dim).
#include <fmt/format.h>

#include <cmath>

#include "core/error.h"
#include "model/mla_block.h"
#include "model/moe_block.h"

namespace qleap {
namespace {

int64_t req_int(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.find_arch(key);
  if (v == nullptr) throw FormatError(fmt::format("missing metadata key '{}.{}'", f.architecture(), key));
  return v->as_int();
}

int64_t opt_int(const GgufFile& f, std::string_view key, int64_t def) {
  const GgufValue* v = f.find_arch(key);
  return v ? v->as_int() : def;
}

void read_hparams(const GgufFile& f, HParams& hp) {
  MlaParams& a = hp.mla;
  a.kv_lora_rank = int(req_int(f, "attention.kv_lora_rank"));
  a.q_lora_rank = int(opt_int(f, "attention.q_lora_rank", 0));
  // Newer llama.cpp files describe the absorbed form in key_length / value_length (kv_lora_rank + rope,
  // kv_lora_rank) and the per-head sizes in the *_mla keys; older ones give the per-head sizes there.
  const bool absorbed_keys = f.find_arch("attention.key_length_mla") != nullptr;
  const int qk =
      int(absorbed_keys ? req_int(f, "attention.key_length_mla") : req_int(f, "attention.key_length"));
  a.v_dim =
      int(absorbed_keys ? req_int(f, "attention.value_length_mla") : req_int(f, "attention.value_length"));
  a.rope_dim = hp.rope.n_rot;
  a.nope_dim = qk - a.rope_dim;
  if (a.kv_lora_rank <= 0 || a.q_lora_rank < 0 || a.v_dim <= 0 || a.nope_dim <= 0 || a.rope_dim <= 0) {
    throw FormatError(fmt::format("bad MLA sizes: kv_lora_rank {}, q_lora_rank {}, qk {}, rope {}, v {}",
                                  a.kv_lora_rank, a.q_lora_rank, qk, a.rope_dim, a.v_dim));
  }
  // What the caches see: one latent head per position.
  hp.n_kv_heads = 1;
  hp.head_dim = a.latent_dim();
  const RopeParams& r = hp.rope;
  double mscale = 1.0;
  if (r.scaling == RopeScaling::kYarn && r.factor > 1.0f) {
    const GgufValue* lm = f.find_arch("rope.scaling.yarn_log_multiplier");
    const double log_mul = lm ? lm->as_double() : 0.0;
    mscale = 1.0 + log_mul * std::log(double(r.factor));
    // rope_freqs scales cos/sin by attn_factor * (1 + 0.1 ln factor); DeepSeek keeps them at 1.
    hp.rope.attn_factor = float(double(r.attn_factor) / (1.0 + 0.1 * std::log(double(r.factor))));
  }
  hp.attn_scale = float(mscale * mscale / std::sqrt(double(qk)));

  if (hp.n_expert > 0) {
    if (hp.n_ff_shexp == 0) hp.n_ff_shexp = int(opt_int(f, "expert_shared_count", 0)) * hp.n_ff_exp;
    const int64_t gating = opt_int(f, "expert_gating_func", 1);
    if (gating != 1 && gating != 2)
      throw Unsupported(fmt::format("expert_gating_func {} (supported: 1 softmax, 2 sigmoid)", gating));
    hp.expert_gating = gating == 2 ? ExpertGating::kSigmoid : ExpertGating::kSoftmax;
    if (const GgufValue* v = f.find_arch("expert_weights_scale"))
      hp.expert_weights_scale = float(v->as_double());
    hp.n_expert_group = int(opt_int(f, "expert_group_count", 0));
    hp.n_expert_group_used = int(opt_int(f, "expert_group_used_count", 0));
    if (hp.n_expert_group > 1 &&
        (hp.n_expert % hp.n_expert_group != 0 || hp.n_expert_group_used <= 0 ||
         hp.n_expert_group_used > hp.n_expert_group ||
         hp.n_expert_group_used * (hp.n_expert / hp.n_expert_group) < hp.n_expert_used)) {
      throw FormatError(fmt::format("bad expert groups: {} experts in {} groups, {} used, top {}",
                                    hp.n_expert, hp.n_expert_group, hp.n_expert_group_used,
                                    hp.n_expert_used));
    }
    if (!(hp.expert_weights_scale > 0)) throw FormatError("bad expert_weights_scale");
  }
}

void load_layer(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  load_mla_attention(f, hp, il, w);
  load_ffn_or_moe(f, hp, il, w);
}

void forward_layer(const LayerWeights& w, int il, const LayerCtx& ctx) {
  Backend& be = ctx.be;
  Activations& a = ctx.a;
  const int n = ctx.hp.n_embd, m = ctx.m;
  const float eps = ctx.hp.rms_eps;
  be.rms_norm(a.x.get(), w.attn_norm, a.xn.get(), m, n, eps);
  mla_attention_block(w, il, ctx, a.xn.get(), a.x.get());
  pre_norm_ffn(w, il, ctx);
}

}  // namespace

extern const ArchDef kArchDeepseek2;
const ArchDef kArchDeepseek2 = {"deepseek2", RopeStyle::kNormal, load_layer, forward_layer, read_hparams};

}  // namespace qleap
