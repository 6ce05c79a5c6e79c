#include "gguf/convert_arch.h"

#include <fmt/format.h>

#include <cmath>
#include <map>
#include <optional>
#include <regex>

#include "core/error.h"

namespace qleap::convert_detail {
namespace {

using json = nlohmann::json;

// Optional numeric field; JSON null (or a missing object) counts as absent.
std::optional<double> num(const json& j, const char* key) {
  if (!j.is_object()) return std::nullopt;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) throw FormatError(fmt::format("config.json: '{}' is not a number", key));
  return it->get<double>();
}

const json& field(const json& j, const char* key) {
  static const json kNull;
  if (!j.is_object()) return kNull;
  auto it = j.find(key);
  return it == j.end() ? kNull : *it;
}

std::string rope_type(const json& rp) {
  if (!rp.is_object()) return "default";
  const json& t = rp.contains("rope_type") ? rp["rope_type"] : field(rp, "type");
  return t.is_string() ? t.get<std::string>() : "default";
}

void require_gelu_tanh(const json& c) {
  const json& a = c.contains("hidden_activation") ? c["hidden_activation"] : field(c, "hidden_act");
  const std::string act = a.is_string() ? a.get<std::string>() : "gelu_pytorch_tanh";
  if (act != "gelu_pytorch_tanh")
    throw Unsupported(fmt::format("gemma: activation '{}' is not supported (gelu_pytorch_tanh)", act));
}

// Per layer: true for a sliding-window layer. From layer_types when the config has them, else the
// period (gemma2: 2, gemma3: sliding_window_pattern, default 6; the last layer of each period is global).
std::vector<bool> sliding_layers(const json& c, int64_t n_layer, int64_t default_period) {
  std::vector<bool> out(static_cast<size_t>(n_layer), false);
  const json& lt = field(c, "layer_types");
  if (lt.is_array()) {
    if (int64_t(lt.size()) != n_layer)
      throw FormatError(fmt::format("config.json: {} layer_types for {} layers", lt.size(), n_layer));
    for (size_t i = 0; i < lt.size(); ++i) {
      const std::string t = lt[i].is_string() ? lt[i].get<std::string>() : "";
      if (t != "sliding_attention" && t != "full_attention")
        throw Unsupported(fmt::format("config.json: layer type '{}' is not supported", t));
      out[i] = t == "sliding_attention";
    }
    return out;
  }
  int64_t period = default_period;
  if (auto p = num(c, "sliding_window_pattern")) period = int64_t(*p);
  if (auto p = num(c, "_sliding_window_pattern")) period = int64_t(*p);
  for (int64_t i = 0; i < n_layer; ++i) out[size_t(i)] = period <= 0 || i % period < period - 1;
  return out;
}

void write_gemma(GgufWriter& w, const std::string& arch, const json& c, const CommonSizes& s) {
  const std::string a = arch + ".";
  // Written always, as llama.cpp does for gemma.
  w.set_u32(a + "attention.key_length", uint32_t(s.head_dim));
  w.set_u32(a + "attention.value_length", uint32_t(s.head_dim));
  const double window = num(c, "sliding_window").value_or(0);
  if (window < 0) throw FormatError("config.json: negative sliding_window");
  w.set_u32(a + "attention.sliding_window", uint32_t(window));
  const int64_t period = arch == "gemma2" ? 2 : 6;
  const std::vector<bool> swa = sliding_layers(c, s.n_layer, period);
  bool default_pattern = true;
  for (int64_t i = 0; i < s.n_layer; ++i)
    default_pattern = default_pattern && swa[size_t(i)] == (i % period < period - 1);
  if (!default_pattern) {
    GgufValue v;
    v.type = GgufType::ARRAY;
    v.elem_type = GgufType::BOOL;
    for (bool b : swa) v.arr_u.push_back(b ? 1 : 0);
    w.set(a + "attention.sliding_window_pattern", std::move(v));
  }
  const double qpas = num(c, "query_pre_attn_scalar").value_or(double(s.head_dim));
  if (!(qpas > 0)) throw FormatError("config.json: bad query_pre_attn_scalar");
  w.set_f32(a + "attention.scale", float(1.0 / std::sqrt(qpas)));
  if (arch == "gemma2") {
    w.set_f32(a + "attn_logit_softcapping", float(num(c, "attn_logit_softcapping").value_or(0)));
    w.set_f32(a + "final_logit_softcapping", float(num(c, "final_logit_softcapping").value_or(0)));
    return;
  }
  // gemma3: transformers does not apply attn_logit_softcapping in Gemma 3's attention.
  if (auto cap = num(c, "final_logit_softcapping")) w.set_f32(a + "final_logit_softcapping", float(*cap));
  // Global layers: rope_theta with any linear scaling; local layers: their own base, unscaled.
  // transformers 5 keeps both in rope_parameters by layer type; older configs have rope_theta,
  // rope_local_base_freq and rope_scaling.
  const json& rp = field(c, "rope_parameters");
  const json& full = field(rp, "full_attention");
  const json& local = field(rp, "sliding_attention");
  const double theta = num(full, "rope_theta").value_or(num(c, "rope_theta").value_or(1e6));
  const double theta_local = num(local, "rope_theta").value_or(num(c, "rope_local_base_freq").value_or(1e4));
  w.set_f32(a + "rope.freq_base", float(theta));
  w.set_f32(a + "rope.freq_base_swa", float(theta_local));
  if (rope_type(local) != "default")
    throw Unsupported(fmt::format("gemma3: rope scaling '{}' on sliding-window layers", rope_type(local)));
  const json& scaling = full.is_object() ? full : field(c, "rope_scaling");
  const std::string type = rope_type(scaling);
  if (type == "linear") {
    w.set_string(a + "rope.scaling.type", "linear");
    w.set_f32(a + "rope.scaling.factor", float(num(scaling, "factor").value_or(1.0)));
  } else if (type != "default") {
    throw Unsupported(fmt::format("gemma3: rope scaling type '{}' is not supported (linear)", type));
  }
}

// phi3's rope parameters: transformers 5's rope_parameters, or rope_scaling with top-level fields.
const json& phi3_rope(const json& c) {
  const json& rs = field(c, "rope_scaling");
  return rs.is_object() ? rs : field(c, "rope_parameters");
}

double phi3_partial(const json& c) {
  return num(c, "partial_rotary_factor").value_or(num(phi3_rope(c), "partial_rotary_factor").value_or(1.0));
}

int64_t phi3_orig_ctx(const json& c, const CommonSizes& s) {
  return int64_t(
      num(c, "original_max_position_embeddings")
          .value_or(num(phi3_rope(c), "original_max_position_embeddings").value_or(double(s.n_ctx))));
}

bool phi3_longrope(const json& c) {
  const std::string t = rope_type(phi3_rope(c));
  if (t == "longrope" || t == "su") return true;
  if (t != "default")
    throw Unsupported(fmt::format("phi3: rope scaling type '{}' is not supported (longrope)", t));
  return false;
}

int64_t phi3_n_rot(const json& c, const CommonSizes& s) {
  const int64_t n_rot = int64_t(double(s.head_dim) * phi3_partial(c));
  if (n_rot <= 0 || n_rot > s.head_dim || n_rot % 2 != 0)
    throw FormatError(fmt::format("phi3: partial_rotary_factor gives {} rotary dimensions", n_rot));
  return n_rot;
}

void write_phi3(GgufWriter& w, const json& c, const CommonSizes& s) {
  w.set_u32("phi3.rope.dimension_count", uint32_t(phi3_n_rot(c, s)));
  const int64_t orig = phi3_orig_ctx(c, s);
  if (orig <= 0) throw FormatError("phi3: bad original_max_position_embeddings");
  w.set_u32("phi3.rope.scaling.original_context_length", uint32_t(orig));
  // Written always (0: no window): llama.cpp refuses a phi3 file without the key.
  const double sw = num(c, "sliding_window").value_or(0);
  if (sw < 0) throw FormatError("config.json: negative sliding_window");
  w.set_u32("phi3.attention.sliding_window", uint32_t(sw));
  if (!phi3_longrope(c)) return;
  // transformers' LongRoPE attention factor (cos/sin scale): given, or from the context ratio.
  const json& rp = phi3_rope(c);
  double attn = 1.0;
  if (auto f = num(rp, "attention_factor")) {
    attn = *f;
  } else {
    const double factor = num(rp, "factor").value_or(double(s.n_ctx) / double(orig));
    if (factor > 1.0) attn = std::sqrt(1.0 + std::log(factor) / std::log(double(orig)));
  }
  w.set_f32("phi3.rope.scaling.attn_factor", float(attn));
}

int64_t req(const json& c, const char* key) {
  auto v = num(c, key);
  if (!v || *v <= 0) throw FormatError(fmt::format("config.json: '{}' missing or not positive", key));
  return int64_t(*v);
}

bool deepseek_v3(const json& c) {
  return c.value("model_type", "") == "deepseek_v3";
}

void write_deepseek2(GgufWriter& w, const json& c) {
  const std::string a = "deepseek2.";
  if (c.value("attention_bias", false)) throw Unsupported("deepseek: attention_bias is not supported");
  const json& act = field(c, "hidden_act");
  if (act.is_string() && act.get<std::string>() != "silu")
    throw Unsupported(
        fmt::format("deepseek: activation '{}' is not supported (silu)", act.get<std::string>()));
  const int64_t nope = req(c, "qk_nope_head_dim"), rope = req(c, "qk_rope_head_dim"),
                v = req(c, "v_head_dim");
  if (rope % 2 != 0) throw FormatError("config.json: qk_rope_head_dim must be even");
  if (auto q = num(c, "q_lora_rank")) w.set_u32(a + "attention.q_lora_rank", uint32_t(*q));
  w.set_u32(a + "attention.kv_lora_rank", uint32_t(req(c, "kv_lora_rank")));
  w.set_u32(a + "attention.key_length", uint32_t(nope + rope));
  w.set_u32(a + "attention.value_length", uint32_t(v));
  w.set_u32(a + "rope.dimension_count", uint32_t(rope));
  w.set_u32(a + "leading_dense_block_count", uint32_t(num(c, "first_k_dense_replace").value_or(0)));
  const bool v3 = deepseek_v3(c);
  if (num(c, "n_routed_experts").value_or(0) > 0) {
    w.set_u32(a + "expert_shared_count", uint32_t(num(c, "n_shared_experts").value_or(0)));
    w.set_f32(a + "expert_weights_scale", float(num(c, "routed_scaling_factor").value_or(1.0)));
    // llama.cpp's enum: 1 softmax, 2 sigmoid. transformers' V3 router is sigmoid, V2's softmax.
    w.set_u32(a + "expert_gating_func", v3 ? 2 : 1);
    const std::string method = field(c, "topk_method").is_string() ? c["topk_method"].get<std::string>()
                                                                   : (v3 ? "noaux_tc" : "greedy");
    if (method != "greedy" && method != "group_limited_greedy" && method != "noaux_tc")
      throw Unsupported(fmt::format("deepseek: topk_method '{}' is not supported", method));
    const int64_t groups = int64_t(num(c, "n_group").value_or(1)),
                  used = int64_t(num(c, "topk_group").value_or(1));
    // transformers' V3 router always selects by groups; V2's only with group_limited_greedy.
    if (groups > 1 && (v3 || method == "group_limited_greedy")) {
      w.set_u32(a + "expert_group_count", uint32_t(groups));
      w.set_u32(a + "expert_group_used_count", uint32_t(used));
    }
  }
  const json& rs =
      field(c, "rope_scaling").is_object() ? field(c, "rope_scaling") : field(c, "rope_parameters");
  if (rope_type(rs) == "yarn") {
    const double factor = num(rs, "factor").value_or(1.0);
    const auto mscale = num(rs, "mscale"), all = num(rs, "mscale_all_dim");
    const auto mget = [&](double m) { return factor <= 1 ? 1.0 : 0.1 * m * std::log(factor) + 1.0; };
    // transformers' cos/sin factor; the engine (as llama.cpp) keeps cos/sin at magnitude 1.
    const double attn =
        num(rs, "attention_factor")
            .value_or(mscale && *mscale != 0 && all && *all != 0 ? mget(*mscale) / mget(*all) : mget(1.0));
    if (std::fabs(attn - 1.0) > 1e-6)
      throw Unsupported(fmt::format(
          "deepseek: YaRN with an attention factor of {} (mscale != mscale_all_dim) is not supported", attn));
    if (all && *all != 0) w.set_f32(a + "rope.scaling.yarn_log_multiplier", float(0.1 * *all));
  } else if (rope_type(rs) != "default") {
    throw Unsupported(fmt::format("deepseek: rope scaling type '{}' is not supported (yarn)", rope_type(rs)));
  }
}

// Rows [first, first + n) of each of `heads` blocks of `stride` rows: from halves to adjacent pairs.
std::vector<float> rope_rows_to_pairs(const std::vector<float>& f, int64_t cols, int64_t heads,
                                      int64_t stride, int64_t first, int64_t n) {
  std::vector<float> out = f;
  const int64_t half = n / 2;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t i = 0; i < half; ++i) {
        const int64_t src = h * stride + first + j * half + i, dst = h * stride + first + 2 * i + j;
        std::copy(f.begin() + src * cols, f.begin() + (src + 1) * cols, out.begin() + dst * cols);
      }
  return out;
}

}  // namespace

std::vector<HybridTensor> mla_tensors(const json& c, const std::string& hf,
                                      const std::vector<int64_t>& shape) {
  static const std::regex re(R"(model\.layers\.(\d+)\.(.+))");
  std::smatch m;
  if (!std::regex_match(hf, m, re)) return {};
  const std::string blk = "blk." + m[1].str() + ".", what = m[2].str();
  const int64_t H = req(c, "num_attention_heads"), N = req(c, "qk_nope_head_dim"),
                P = req(c, "qk_rope_head_dim"), V = req(c, "v_head_dim"), R = req(c, "kv_lora_rank");
  const auto expect = [&](std::vector<int64_t> want) {
    if (shape != want)
      throw FormatError(fmt::format("tensor '{}' does not have the shape the config gives", hf));
  };
  if (what == "mlp.gate.e_score_correction_bias") {
    expect({req(c, "n_routed_experts")});
    return {HybridTensor{blk + "exp_probs_b.bias", shape[0], 0, true, nullptr}};
  }
  if (what == "self_attn.kv_b_proj.weight") {
    expect({H * (N + V), R});
    HybridTensor k{blk + "attn_k_b.weight", H * R, N, false, [=](const std::vector<float>& f) {
                     std::vector<float> out(size_t(H * R * N));
                     for (int64_t h = 0; h < H; ++h)
                       for (int64_t i = 0; i < N; ++i)
                         for (int64_t r = 0; r < R; ++r)
                           out[size_t((h * R + r) * N + i)] = f[size_t((h * (N + V) + i) * R + r)];
                     return out;
                   }};
    HybridTensor v{blk + "attn_v_b.weight", H * V, R, false, [=](const std::vector<float>& f) {
                     std::vector<float> out(size_t(H * V * R));
                     for (int64_t h = 0; h < H; ++h)
                       std::copy(f.begin() + (h * (N + V) + N) * R, f.begin() + (h * (N + V) + N + V) * R,
                                 out.begin() + h * V * R);
                     return out;
                   }};
    return {std::move(k), std::move(v)};
  }
  const json& ri = field(c, "rope_interleave");
  if (!deepseek_v3(c) || !ri.is_boolean() || ri.get<bool>()) return {};
  // rope_interleave = false: transformers rotates the rope part in halves (rotate_half).
  if (what == "self_attn.q_proj.weight" || what == "self_attn.q_b_proj.weight") {
    if (shape.size() != 2 || shape[0] != H * (N + P))
      throw FormatError(fmt::format("tensor '{}': bad shape", hf));
    const int64_t cols = shape[1];
    const std::string g = what == "self_attn.q_proj.weight" ? "attn_q.weight" : "attn_q_b.weight";
    return {HybridTensor{blk + g, H * (N + P), cols, false, [=](const std::vector<float>& f) {
                           return rope_rows_to_pairs(f, cols, H, N + P, N, P);
                         }}};
  }
  if (what == "self_attn.kv_a_proj_with_mqa.weight") {
    if (shape.size() != 2 || shape[0] != R + P) throw FormatError(fmt::format("tensor '{}': bad shape", hf));
    const int64_t cols = shape[1];
    return {HybridTensor{blk + "attn_kv_a_mqa.weight", R + P, cols, false, [=](const std::vector<float>& f) {
                           return rope_rows_to_pairs(f, cols, 1, R + P, R, P);
                         }}};
  }
  return {};
}

std::string extra_arch(const json& c) {
  const std::string mt = c.value("model_type", "");
  if (mt == "gemma3" || c.contains("vision_config")) {
    throw Unsupported(
        "this is a multimodal Gemma 3 checkpoint (vision tower): only the text model is supported; convert a "
        "text-only checkpoint (model_type gemma3_text, e.g. gemma-3-270m / gemma-3-1b)");
  }
  if (mt != "gemma2" && mt != "gemma3_text" && mt != "phi3") return "";
  if (mt != "phi3") {
    require_gelu_tanh(c);
    if (c.value("attention_bias", false)) throw Unsupported("gemma: attention_bias is not supported");
    const json& bi = field(c, "use_bidirectional_attention");
    if (bi.is_boolean() && bi.get<bool>())
      throw Unsupported("gemma: bidirectional attention (EmbeddingGemma) is not supported");
  } else {
    const json& act = field(c, "hidden_act");
    if (act.is_string() && act.get<std::string>() != "silu")
      throw Unsupported(fmt::format("phi3: activation '{}' is not supported (silu)", act.get<std::string>()));
  }
  return mt == "gemma3_text" ? "gemma3" : mt;
}

void write_extra_metadata(GgufWriter& w, const std::string& arch, const json& c, const CommonSizes& s) {
  if (arch == "gemma2" || arch == "gemma3") write_gemma(w, arch, c, s);
  if (arch == "phi3") write_phi3(w, c, s);
  if (arch == "deepseek2") write_deepseek2(w, c);
}

std::string extra_block_name(const std::string& arch, const std::string& what) {
  static const std::map<std::string, std::string> kGemma = {
      {"input_layernorm", "attn_norm"},
      {"post_attention_layernorm", "post_attention_norm"},
      {"pre_feedforward_layernorm", "ffn_norm"},
      {"post_feedforward_layernorm", "post_ffw_norm"},
  };
  static const std::map<std::string, std::string> kPhi3 = {
      {"self_attn.qkv_proj", "attn_qkv"},
      {"mlp.gate_up_proj", "ffn_up"},
  };
  static const std::map<std::string, std::string> kDeepseek = {
      {"self_attn.q_a_proj", "attn_q_a"},
      {"self_attn.q_a_layernorm", "attn_q_a_norm"},
      {"self_attn.q_b_proj", "attn_q_b"},
      {"self_attn.kv_a_proj_with_mqa", "attn_kv_a_mqa"},
      {"self_attn.kv_a_layernorm", "attn_kv_a_norm"},
      {"mlp.shared_experts.gate_proj", "ffn_gate_shexp"},
      {"mlp.shared_experts.up_proj", "ffn_up_shexp"},
      {"mlp.shared_experts.down_proj", "ffn_down_shexp"},
  };
  static const std::map<std::string, std::string> kGptOss = {
      {"post_attention_layernorm", "post_attention_norm"},
      {"mlp.router", "ffn_gate_inp"},
  };
  const auto* table = arch == "gemma2" || arch == "gemma3" ? &kGemma
                      : arch == "phi3"                     ? &kPhi3
                      : arch == "deepseek2"                ? &kDeepseek
                      : arch == "gpt-oss"                  ? &kGptOss
                                                           : nullptr;
  if (table == nullptr) return "";
  auto it = table->find(what);
  return it == table->end() ? "" : it->second;
}

bool norm_plus_one(const std::string& arch, const std::string& gguf_name) {
  return (arch == "gemma2" || arch == "gemma3") && gguf_name.ends_with("norm.weight");
}

std::vector<std::pair<std::string, std::vector<float>>> extra_tensors(const std::string& arch, const json& c,
                                                                      const CommonSizes& s) {
  if (arch != "phi3" || !phi3_longrope(c)) return {};
  const json& rp = phi3_rope(c);
  const size_t half = size_t(phi3_n_rot(c, s) / 2);
  std::vector<std::pair<std::string, std::vector<float>>> out;
  for (const auto& [key, name] : {std::pair{"long_factor", "rope_factors_long.weight"},
                                  std::pair{"short_factor", "rope_factors_short.weight"}}) {
    const json& f = field(rp, key);
    if (!f.is_array() || f.size() != half)
      throw FormatError(fmt::format("phi3: rope {} must be a list of {} numbers", key, half));
    std::vector<float> v;
    for (const json& x : f) {
      if (!x.is_number() || !(x.get<double>() > 0))
        throw FormatError(fmt::format("phi3: rope {} holds a non-positive entry", key));
      v.push_back(float(x.get<double>()));
    }
    out.emplace_back(name, std::move(v));
  }
  return out;
}

}  // namespace qleap::convert_detail
