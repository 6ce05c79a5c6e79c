#include "gguf/convert.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>

#include "backend/cpu/matmul.h"
#include "core/error.h"
#include "core/json_int.h"
#include "core/thread_pool.h"
#include "gguf/convert_arch.h"
#include "gguf/convert_gptoss.h"
#include "gguf/convert_hybrid.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "gguf/safetensors.h"
#include "quant/quant.h"

namespace qleap {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

json read_json(const fs::path& p) {
  std::ifstream in(p);
  if (!in) throw IoError(fmt::format("cannot open '{}'", p.string()));
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("'{}' is not valid JSON: {}", p.string(), e.what()));
  }
}

// Optional numeric field; JSON null counts as absent.
std::optional<double> num(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) throw FormatError(fmt::format("config.json: '{}' is not a number", key));
  return it->get<double>();
}
int64_t req_int(const json& j, const char* key) {
  auto v = num(j, key);
  if (!v) throw FormatError(fmt::format("config.json lacks '{}'", key));
  return int64_t(*v);
}

struct HParams {
  std::string model_type, arch;
  int64_t n_embd = 0, n_layer = 0, n_ff = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ctx = 0, n_vocab = 0;
  double rope_theta = 10000.0, rms_eps = 1e-6;
  bool tied = false;
  json rope_scaling;  // object or null
  std::optional<int64_t> bos, eos;
  // Mixture of experts (n_expert 0: dense).
  int64_t n_expert = 0, n_expert_used = 0, n_ff_exp = 0, n_ff_shexp = 0;
  bool norm_topk = false;
  std::optional<HybridConfig> hybrid;  // Gated DeltaNet hybrids (gguf/convert_hybrid.h)
  json config;                         // the whole config.json (architecture extras: gguf/convert_arch.h)
  convert_detail::CommonSizes sizes() const { return {n_layer, n_embd, n_head, head_dim, n_ctx}; }
};

HParams read_hparams(const fs::path& dir) {
  const json top = read_json(dir / "config.json");
  HParams h;
  h.model_type = top.value("model_type", "");
  // Multimodal checkpoints (Qwen3.5) keep the language model's settings in text_config.
  const bool nested =
      is_hybrid_model_type(h.model_type) && top.contains("text_config") && top["text_config"].is_object();
  const json& c = nested ? top["text_config"] : top;
  h.config = c;
  if (std::string extra = convert_detail::extra_arch(c); !extra.empty()) {
    h.arch = extra;
  } else if (h.model_type == "llama" || h.model_type == "mistral" || h.model_type == "mixtral") {
    h.arch = "llama";
  } else if (h.model_type == "qwen2" || h.model_type == "qwen3" || h.model_type == "olmoe") {
    h.arch = h.model_type;
  } else if (h.model_type == "deepseek_v2" || h.model_type == "deepseek_v3") {
    h.arch = "deepseek2";
  } else if (h.model_type == "gpt_oss") {
    convert_detail::check_gptoss_config(c);
    h.arch = "gpt-oss";
  } else if (h.model_type == "qwen2_moe" || h.model_type == "qwen3_moe") {
    h.arch = h.model_type == "qwen2_moe" ? "qwen2moe" : "qwen3moe";
  } else if (!is_hybrid_model_type(h.model_type)) {
    throw Unsupported(fmt::format(
        "model_type '{}' is not supported (supported: llama, mistral, mixtral, qwen2, qwen3, qwen2_moe, "
        "qwen3_moe, olmoe, qwen3_5, qwen3_5_moe, qwen3_next, gemma2, gemma3_text, phi3, deepseek_v2, "
        "deepseek_v3, gpt_oss)",
        h.model_type));
  }
  h.n_embd = req_int(c, "hidden_size");
  h.n_layer = req_int(c, "num_hidden_layers");
  // MoE configs without a dense FFN size (qwen3_5_moe) give the experts'.
  h.n_ff =
      req_int(c, !num(c, "intermediate_size") && num(c, "moe_intermediate_size") ? "moe_intermediate_size"
                                                                                 : "intermediate_size");
  h.n_head = req_int(c, "num_attention_heads");
  h.n_head_kv = int64_t(num(c, "num_key_value_heads").value_or(double(h.n_head)));
  h.n_ctx = req_int(c, "max_position_embeddings");
  h.n_vocab = req_int(c, "vocab_size");
  if (h.n_embd <= 0 || h.n_layer <= 0 || h.n_ff <= 0 || h.n_head <= 0 || h.n_head_kv <= 0 || h.n_vocab <= 0 ||
      h.n_head % h.n_head_kv != 0) {
    throw FormatError("config.json has inconsistent sizes (heads, kv heads, hidden size)");
  }
  h.n_expert =
      int64_t(num(c, "num_experts")
                  .value_or(num(c, "num_local_experts").value_or(num(c, "n_routed_experts").value_or(0))));
  if (h.n_expert > 0) {
    h.n_expert_used = req_int(c, "num_experts_per_tok");
    h.n_ff_exp = int64_t(num(c, "moe_intermediate_size").value_or(double(h.n_ff)));
    h.n_ff_shexp = int64_t(num(c, "shared_expert_intermediate_size").value_or(0));
    // DeepSeek: n_shared_experts experts of moe_intermediate_size, run as one FFN of their total width.
    if (h.arch == "deepseek2") h.n_ff_shexp = int64_t(num(c, "n_shared_experts").value_or(0)) * h.n_ff_exp;
    // Mixtral always renormalizes the top-k weights; the others follow norm_topk_prob.
    h.norm_topk = h.model_type == "mixtral" || h.model_type == "qwen3_5_moe" ||
                  h.model_type == "qwen3_5_moe_text" || c.value("norm_topk_prob", false);
    if (h.n_expert_used <= 0 || h.n_expert_used > h.n_expert || h.n_ff_exp <= 0 || h.n_ff_shexp < 0)
      throw FormatError("config.json has inconsistent expert sizes");
    if (auto clip = num(c, "clip_qkv"))
      throw Unsupported(fmt::format("clip_qkv = {} is not supported", *clip));
    if (num(c, "router_jitter_noise").value_or(0) != 0 && h.model_type != "mixtral")
      throw Unsupported("router_jitter_noise");
  }
  h.head_dim = int64_t(num(c, "head_dim").value_or(double(h.n_embd / h.n_head)));
  if (h.head_dim <= 0 || h.head_dim % 2 != 0)
    throw FormatError("config.json: head_dim must be positive and even");
  h.rms_eps = num(c, "rms_norm_eps").value_or(1e-6);
  h.tied = c.value("tie_word_embeddings", false);
  // transformers 5 folds rope_theta and the scaling dict into rope_parameters; older configs have
  // rope_theta at the top level and rope_scaling beside it.
  json rp = c.contains("rope_parameters") ? c["rope_parameters"] : json();
  if (rp.is_object()) {
    if (auto t = num(rp, "rope_theta")) h.rope_theta = *t;
  }
  if (auto t = num(c, "rope_theta")) h.rope_theta = *t;
  if (c.contains("rope_scaling") && c["rope_scaling"].is_object()) {
    h.rope_scaling = c["rope_scaling"];
  } else if (rp.is_object()) {
    h.rope_scaling = rp;
  }
  if (h.rope_scaling.is_object()) {
    std::string type = h.rope_scaling.value("rope_type", h.rope_scaling.value("type", "default"));
    if (type == "default") h.rope_scaling = json();
  }
  auto first_id = [&](const char* key) -> std::optional<int64_t> {
    auto it = c.find(key);
    if (it == c.end() || it->is_null()) return std::nullopt;
    if (it->is_array())
      return it->empty() ? std::nullopt : std::optional<int64_t>(json_integer<int64_t>((*it)[0], key));
    return json_integer<int64_t>(*it, key);
  };
  h.bos = first_id("bos_token_id");
  h.eos = first_id("eos_token_id");
  if (is_hybrid_model_type(h.model_type)) {
    h.hybrid = read_hybrid_config(c, h.model_type, h.head_dim, h.n_layer,
                                  nested && top.contains("vision_config") && !top["vision_config"].is_null());
    h.arch = h.hybrid->arch;
  }
  return h;
}

// Per-dimension-pair rope frequency divisors of the llama3 scheme: long wavelengths are slowed by
// `factor`, short ones kept, and the band in between interpolated smoothly.
std::vector<float> llama3_rope_factors(const HParams& h) {
  const json& s = h.rope_scaling;
  const double factor = s.value("factor", 8.0);
  const double low = s.value("low_freq_factor", 1.0);
  const double high = s.value("high_freq_factor", 4.0);
  const double old_ctx = s.value("original_max_position_embeddings", 8192.0);
  const double low_wavelen = old_ctx / low;
  const double high_wavelen = old_ctx / high;
  std::vector<float> out;
  for (int64_t i = 0; i < h.head_dim; i += 2) {
    const double freq = 1.0 / std::pow(h.rope_theta, double(i) / double(h.head_dim));
    const double wavelen = 2 * M_PI / freq;
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(float(factor));
    } else {
      const double smooth = (old_ctx / wavelen - low) / (high - low);
      out.push_back(float(1.0 / ((1 - smooth) / factor + smooth)));
    }
  }
  return out;
}

void write_hparams(GgufWriter& w, const HParams& h, const std::string& name, GgmlType out_type) {
  const std::string a = h.arch + ".";
  w.set_string("general.architecture", h.arch);
  w.set_string("general.name", name);
  w.set_u32("general.file_type", file_type_for(out_type));
  w.set_u32("general.quantization_version", 2);
  w.set_u32(a + "vocab_size", uint32_t(h.n_vocab));
  w.set_u32(a + "context_length", uint32_t(h.n_ctx));
  w.set_u32(a + "embedding_length", uint32_t(h.n_embd));
  w.set_u32(a + "block_count", uint32_t(h.n_layer));
  w.set_u32(a + "feed_forward_length", uint32_t(h.n_ff));
  w.set_u32(a + "attention.head_count", uint32_t(h.n_head));
  w.set_u32(a + "attention.head_count_kv", uint32_t(h.n_head_kv));
  if (h.head_dim != h.n_embd / h.n_head || h.hybrid) {
    w.set_u32(a + "attention.key_length", uint32_t(h.head_dim));
    w.set_u32(a + "attention.value_length", uint32_t(h.head_dim));
  }
  if (h.n_expert > 0) {
    w.set_u32(a + "expert_count", uint32_t(h.n_expert));
    w.set_u32(a + "expert_used_count", uint32_t(h.n_expert_used));
    w.set_u32(a + "expert_feed_forward_length", uint32_t(h.n_ff_exp));
    if (h.n_ff_shexp > 0) w.set_u32(a + "expert_shared_feed_forward_length", uint32_t(h.n_ff_shexp));
    w.set_bool(a + "expert_weights_norm", h.norm_topk);
  }
  w.set_f32(a + "rope.freq_base", float(h.rope_theta));
  w.set_u32(a + "rope.dimension_count", uint32_t(h.head_dim));
  w.set_f32(a + "attention.layer_norm_rms_epsilon", float(h.rms_eps));
  if (h.rope_scaling.is_object()) {
    const json& s = h.rope_scaling;
    const std::string type = s.value("rope_type", s.value("type", ""));
    if (type == "linear") {
      w.set_string(a + "rope.scaling.type", "linear");
      w.set_f32(a + "rope.scaling.factor", float(s.value("factor", 1.0)));
    } else if (type == "yarn" && h.arch != "deepseek2") {
      w.set_string(a + "rope.scaling.type", "yarn");
      w.set_f32(a + "rope.scaling.factor", float(s.value("factor", 1.0)));
      w.set_u32(a + "rope.scaling.original_context_length",
                uint32_t(s.value("original_max_position_embeddings", double(h.n_ctx))));
      if (auto v = num(s, "beta_fast")) w.set_f32(a + "rope.scaling.yarn_beta_fast", float(*v));
      if (auto v = num(s, "beta_slow")) w.set_f32(a + "rope.scaling.yarn_beta_slow", float(*v));
      if (auto v = num(s, "attention_factor")) w.set_f32(a + "rope.scaling.attn_factor", float(*v));
    } else if (type == "llama3") {
      // Expressed by the rope_freqs tensor alone, as llama.cpp does.
    } else if (h.arch == "deepseek2" && type == "yarn") {
      // DeepSeek's YaRN: convert_arch.cpp (mscale / mscale_all_dim).
      w.set_string(a + "rope.scaling.type", "yarn");
      w.set_f32(a + "rope.scaling.factor", float(s.value("factor", 1.0)));
      w.set_u32(a + "rope.scaling.original_context_length",
                uint32_t(s.value("original_max_position_embeddings", double(h.n_ctx))));
      if (auto v = num(s, "beta_fast")) w.set_f32(a + "rope.scaling.yarn_beta_fast", float(*v));
      if (auto v = num(s, "beta_slow")) w.set_f32(a + "rope.scaling.yarn_beta_slow", float(*v));
    } else if (h.arch == "phi3" && (type == "longrope" || type == "su")) {
      // Factor tensors and the attention factor: convert_arch.cpp.
    } else {
      throw Unsupported(fmt::format("rope scaling type '{}' is not supported (linear, yarn, llama3)", type));
    }
  }
  convert_detail::write_extra_metadata(w, h.arch, h.config, h.sizes());
  if (h.arch == "gpt-oss") convert_detail::write_gptoss_metadata(w, h.config);
}

// Byte-level BPE tokenizer.json -> tokenizer.ggml.* (llama.cpp's "gpt2" model).
void write_tokenizer(GgufWriter& w, const fs::path& dir, const HParams& h, const ProgressFn& progress) {
  const fs::path tj = dir / "tokenizer.json";
  if (!fs::exists(tj)) {
    if (progress) progress("no tokenizer.json: writing a model without a tokenizer", 0.0);
    return;
  }
  const json t = read_json(tj);
  const json& model = t.at("model");
  if (model.value("type", "") != "BPE" || !model.contains("vocab") || !model.contains("merges")) {
    if (progress) progress("tokenizer.json is not a byte-level BPE model: tokenizer not written", 0.0);
    return;
  }
  std::map<int64_t, std::string> by_id;
  for (const auto& [tok, id] : model.at("vocab").items())
    by_id[json_integer<int64_t>(id, "tokenizer.json vocab id")] = tok;
  std::map<int64_t, int32_t> types;
  if (t.contains("added_tokens")) {
    for (const auto& at : t["added_tokens"]) {
      const int64_t id = json_integer<int64_t>(at.at("id"), "tokenizer.json added_tokens id");
      by_id[id] = at.at("content").get<std::string>();
      types[id] = at.value("special", false) ? 3 /*CONTROL*/ : 4 /*USER_DEFINED*/;
    }
  }
  const int64_t n = std::max<int64_t>(h.n_vocab, by_id.empty() ? 0 : by_id.rbegin()->first + 1);
  std::vector<std::string> tokens(static_cast<size_t>(n));
  std::vector<int32_t> token_type(size_t(n), 1 /*NORMAL*/);
  for (int64_t i = 0; i < n; ++i) {
    auto it = by_id.find(i);
    if (it == by_id.end()) {
      tokens[size_t(i)] = fmt::format("[PAD{}]", i);
      token_type[size_t(i)] = 5;  // UNUSED
    } else {
      tokens[size_t(i)] = it->second;
      if (auto ty = types.find(i); ty != types.end()) token_type[size_t(i)] = ty->second;
    }
  }
  std::vector<std::string> merges;
  for (const auto& m : model.at("merges")) {
    // Older tokenizers store "a b" strings, newer ones [a, b] pairs.
    if (m.is_string()) {
      merges.push_back(m.get<std::string>());
    } else {
      merges.push_back(m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
    }
  }
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", "default");
  w.set_array_string("tokenizer.ggml.tokens", std::move(tokens));
  w.set_array_i32("tokenizer.ggml.token_type", token_type);
  w.set_array_string("tokenizer.ggml.merges", std::move(merges));
  if (h.bos) w.set_u32("tokenizer.ggml.bos_token_id", uint32_t(*h.bos));
  if (h.eos) w.set_u32("tokenizer.ggml.eos_token_id", uint32_t(*h.eos));
  const fs::path tc = dir / "tokenizer_config.json";
  if (fs::exists(tc)) {
    const json c = read_json(tc);
    if (c.contains("chat_template") && c["chat_template"].is_string()) {
      w.set_string("tokenizer.chat_template", c["chat_template"].get<std::string>());
    }
    for (const char* k : {"add_bos_token", "add_eos_token"}) {
      if (c.contains(k) && c[k].is_boolean())
        w.set_bool(std::string("tokenizer.ggml.") + k, c[k].get<bool>());
    }
  }
}

// HF name -> GGUF name; empty for tensors that are dropped (rotary caches). Throws Unsupported.
std::string gguf_name(const std::string& hf, const std::string& arch) {
  static const std::map<std::string, std::string> kTop = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  static const std::map<std::string, std::string> kBlock = {
      {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"},
      {"self_attn.q_norm", "attn_q_norm"},
      {"self_attn.k_norm", "attn_k_norm"},
      {"input_layernorm", "attn_norm"},
      {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},
      {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
      // mixture of experts: routers (qwen*_moe / olmoe, mixtral) and qwen2moe's shared expert
      {"mlp.gate", "ffn_gate_inp"},
      {"block_sparse_moe.gate", "ffn_gate_inp"},
      {"mlp.shared_expert.gate_proj", "ffn_gate_shexp"},
      {"mlp.shared_expert.up_proj", "ffn_up_shexp"},
      {"mlp.shared_expert.down_proj", "ffn_down_shexp"},
      {"mlp.shared_expert_gate", "ffn_gate_inp_shexp"},
  };
  if (auto it = kTop.find(hf); it != kTop.end()) return it->second;
  if (hf.find("rotary_emb.inv_freq") != std::string::npos) return "";
  static const std::regex re(R"(model\.layers\.(\d+)\.(.+)\.(weight|bias))");
  std::smatch m;
  if (std::regex_match(hf, m, re)) {
    if (const std::string g = convert_detail::extra_block_name(arch, m[2].str()); !g.empty())
      return fmt::format("blk.{}.{}.{}", m[1].str(), g, m[3].str());
    if (auto it = kBlock.find(m[2].str()); it != kBlock.end()) {
      return fmt::format("blk.{}.{}.{}", m[1].str(), it->second, m[3].str());
    }
  }
  throw Unsupported(fmt::format("checkpoint tensor '{}' has no GGUF mapping", hf));
}

// Per-expert HF tensors ("model.layers.L.mlp.experts.E.gate_proj.weight", Mixtral's
// "block_sparse_moe.experts.E.w1.weight") -> the stacked GGUF tensor's name and E; nullopt otherwise.
std::optional<std::pair<std::string, int64_t>> expert_name(const std::string& hf) {
  static const std::regex re(
      R"(model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w2|w3)\.weight)");
  std::smatch m;
  if (!std::regex_match(hf, m, re)) return std::nullopt;
  const std::string p = m[3].str();
  const char* what = (p == "gate_proj" || p == "w1") ? "ffn_gate_exps"
                     : (p == "up_proj" || p == "w3") ? "ffn_up_exps"
                                                     : "ffn_down_exps";
  return std::make_pair(fmt::format("blk.{}.{}.weight", m[1].str(), what), std::stoll(m[2].str()));
}

// llama.cpp's order: embeddings, rope factors, blocks in layer order, final norm, output head.
std::tuple<int, int64_t, std::string> order_key(const std::string& g) {
  if (g.rfind("token_embd", 0) == 0) return {0, 0, g};
  if (g.rfind("rope_freqs", 0) == 0) return {1, 0, g};
  if (g.rfind("blk.", 0) == 0) {
    const size_t dot = g.find('.', 4);
    return {2, std::stoll(g.substr(4, dot - 4)), g.substr(dot + 1)};
  }
  if (g.rfind("output_norm", 0) == 0) return {3, 0, g};
  return {4, 0, g};
}

// HF keeps each head's rotary dimensions as two halves (rotate-half); llama's GGUF layout wants
// them as interleaved pairs. Row r = j * (d/2) + i of a head moves to row 2 * i + j.
std::vector<float> permute_rows(const std::vector<float>& w, int64_t rows, int64_t cols, int64_t n_head) {
  if (rows % n_head != 0 || (rows / n_head) % 2 != 0) {
    throw FormatError(fmt::format("cannot split {} rows into {} rotary heads", rows, n_head));
  }
  const int64_t d = rows / n_head, half = d / 2;
  std::vector<float> out(w.size());
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t j = 0; j < 2; ++j) {
      for (int64_t i = 0; i < half; ++i) {
        const float* src = w.data() + (h * d + j * half + i) * cols;
        std::copy(src, src + cols, out.data() + (h * d + 2 * i + j) * cols);
      }
    }
  }
  return out;
}

// Encodes rows of f32 data into type t on the pool.
void quantize_rows(ThreadPool& pool, GgmlType t, const float* src, uint8_t* dst, int64_t rows, int64_t cols) {
  const size_t rs = row_size(t, cols);
  pool.parallel_for(rows, std::max<int64_t>(1, rows / (int64_t(pool.size()) * 8)),
                    [&](int64_t b, int64_t e, int) {
                      for (int64_t r = b; r < e; ++r)
                        quantize_row_ref(t, src + r * cols, dst + size_t(r) * rs, cols);
                    });
}

// The type a 2-D weight gets: the requested one when its rows fit whole blocks, else IQ4_XS's
// 32-weight sibling IQ4_NL (same codebook, as llama.cpp falls back), else F16.
GgmlType weight_type(GgmlType want, int64_t row_len, const std::string& name, const ProgressFn& progress) {
  if (row_len % type_traits(want).block_size == 0) return want;
  const GgmlType fallback =
      want == GgmlType::IQ4_XS && row_len % type_traits(GgmlType::IQ4_NL).block_size == 0 ? GgmlType::IQ4_NL
                                                                                          : GgmlType::F16;
  if (progress) {
    progress(fmt::format("{}: row length {} is not a multiple of the {} block size; using {}", name, row_len,
                         type_name(want), type_name(fallback)),
             0.0);
  }
  return fallback;
}

void check_encoder(GgmlType t) {
  if (!can_quantize(t))
    throw Unsupported(fmt::format("this build cannot encode tensors as {}", type_name(t)));
}

}  // namespace

uint32_t file_type_for(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
      return 0;
    case GgmlType::F16:
      return 1;
    case GgmlType::Q4_0:
      return 2;
    case GgmlType::Q4_1:
      return 3;
    case GgmlType::Q8_0:
      return 7;
    case GgmlType::Q5_0:
      return 8;
    case GgmlType::Q5_1:
      return 9;
    case GgmlType::Q2_K:
      return 10;
    case GgmlType::Q3_K:
      return 11;  // Q3_K_S: every weight Q3_K
    case GgmlType::Q4_K:
      return 14;  // Q4_K_S
    case GgmlType::Q5_K:
      return 16;  // Q5_K_S
    case GgmlType::Q6_K:
      return 18;
    case GgmlType::IQ4_NL:
      return 25;
    case GgmlType::IQ4_XS:
      return 30;
    case GgmlType::BF16:
      return 32;
    case GgmlType::TQ1_0:
      return 36;
    case GgmlType::TQ2_0:
      return 37;
    case GgmlType::MXFP4:
      return 38;  // MXFP4_MOE (llama.cpp's only MXFP4 file type)
    case GgmlType::NVFP4:
      return 39;
    default:
      return 1024;  // GUESSED
  }
}

void convert_hf_to_gguf(const std::string& hf_dir, const std::string& out_path, const ConvertOptions& opt) {
  check_encoder(opt.out_type);
  const fs::path dir(hf_dir);
  const HParams h = read_hparams(dir);
  const SafetensorsModel st = SafetensorsModel::open_dir(hf_dir);
  const ProgressFn& progress = opt.progress;
  ThreadPool pool(opt.n_threads > 0 ? opt.n_threads : default_thread_count());

  GgufWriter w;
  std::string name = fs::path(hf_dir).lexically_normal().filename().string();
  if (name.empty()) name = fs::absolute(dir).lexically_normal().parent_path().filename().string();
  write_hparams(w, h, name, opt.out_type);
  if (h.hybrid) {
    write_hybrid_hparams(w, *h.hybrid);
    if (h.hybrid->vision && progress)
      progress("the vision tower is not converted: qleap runs the text model only", 0.0);
  }
  write_tokenizer(w, dir, h, progress);

  struct Item {
    std::string gname;
    const SafeTensor* src = nullptr;
    std::vector<const SafeTensor*> experts;  // stacked into one 3-D tensor (src = experts[0])
    std::optional<HybridTensor> hybrid;      // its shape and transform (gguf/convert_hybrid.h)
    int64_t stack = 0;                       // > 0: a 3-D tensor of `stack` hybrid slices (gpt-oss experts)
  };
  std::vector<Item> items;
  std::map<std::string, std::vector<const SafeTensor*>> expert_groups;
  const bool tied = h.tied || st.find("lm_head.weight") == nullptr;
  for (const auto& hf_name : st.names()) {
    const std::string hf = h.hybrid ? hybrid_tensor_name(hf_name) : hf_name;
    if (hf.empty()) continue;  // vision tower, MTP block
    if (auto ex = expert_name(hf)) {
      auto& v = expert_groups[ex->first];
      if (ex->second < 0 || ex->second >= std::max<int64_t>(h.n_expert, 1))
        throw FormatError(fmt::format("tensor '{}': expert index outside num_experts {}", hf, h.n_expert));
      v.resize(size_t(h.n_expert), nullptr);
      v[size_t(ex->second)] = &st.get(hf_name);
      continue;
    }
    if (h.arch == "deepseek2") {
      std::vector<HybridTensor> ts = convert_detail::mla_tensors(h.config, hf, st.get(hf_name).shape);
      for (HybridTensor& t : ts) items.push_back({t.gname, &st.get(hf_name), {}, std::move(t), 0});
      if (!ts.empty()) continue;
    }
    if (h.arch == "gpt-oss") {
      std::vector<convert_detail::GptOssTensor> ts =
          convert_detail::gptoss_tensors(hf, st.get(hf_name).shape, h.n_expert);
      for (auto& t : ts) items.push_back({t.t.gname, &st.get(hf_name), {}, std::move(t.t), t.stack});
      if (!ts.empty()) continue;
    }
    if (h.hybrid) {
      std::vector<HybridTensor> ts = hybrid_tensors(*h.hybrid, hf, st.get(hf_name).shape);
      for (HybridTensor& t : ts) items.push_back({t.gname, &st.get(hf_name), {}, std::move(t), 0});
      if (!ts.empty()) continue;
    }
    std::string g = gguf_name(hf, h.arch);
    if (g.empty() || (g == "output.weight" && tied)) continue;
    items.push_back({std::move(g), &st.get(hf_name), {}, std::nullopt, 0});
  }
  for (auto& [g, srcs] : expert_groups) {
    for (size_t e = 0; e < srcs.size(); ++e) {
      if (srcs[e] == nullptr) throw FormatError(fmt::format("{}: expert {} is missing", g, e));
      if (srcs[e]->shape != srcs[0]->shape)
        throw FormatError(fmt::format("{}: experts 0 and {} differ in shape", g, e));
    }
    items.push_back({g, srcs[0], srcs, std::nullopt, 0});
  }
  std::sort(items.begin(), items.end(),
            [](const Item& a, const Item& b) { return order_key(a.gname) < order_key(b.gname); });

  std::vector<float> rope_factors;
  if (h.rope_scaling.is_object() &&
      h.rope_scaling.value("rope_type", h.rope_scaling.value("type", "")) == "llama3") {
    rope_factors = llama3_rope_factors(h);
    w.add_tensor("rope_freqs.weight", GgmlType::F32, {int64_t(rope_factors.size())}, rope_factors.data());
  }
  const auto extra = convert_detail::extra_tensors(h.arch, h.config, h.sizes());
  for (const auto& [name, data] : extra)
    w.add_tensor(name, GgmlType::F32, {int64_t(data.size())}, data.data());

  const size_t n_items = items.size();
  for (size_t k = 0; k < n_items; ++k) {
    const Item& it = items[k];
    const SafeTensor& src = *it.src;
    src.ggml_type();  // rejects unsupported dtypes before anything is written
    if (src.shape.empty() || (src.shape.size() > 2 && !it.hybrid)) {
      throw Unsupported(
          fmt::format("tensor '{}' has {} dimensions (1 or 2 expected)", src.name, src.shape.size()));
    }
    // qwen2moe's shared-expert gate is a 1 x n_embd matrix that GGUF stores as a vector.
    const bool squeeze = it.gname.find("ffn_gate_inp_shexp") != std::string::npos && src.shape.size() == 2 &&
                         src.shape[0] == 1;
    const bool matrix = it.hybrid ? it.hybrid->cols > 0 : src.shape.size() == 2 && !squeeze;
    const int64_t n_stack = it.stack > 0 ? it.stack : it.experts.empty() ? 1 : int64_t(it.experts.size());
    const int64_t rows = it.hybrid ? (matrix ? it.hybrid->rows : 1) : matrix ? src.shape[0] : 1;
    const int64_t cols = it.hybrid ? (matrix ? it.hybrid->cols : it.hybrid->rows)
                         : matrix  ? src.shape[1]
                                   : src.shape.back();
    // Routers stay F32, as llama.cpp keeps them: routing flips on small errors.
    const bool router = it.gname.find(".ffn_gate_inp.") != std::string::npos;
    const bool keep_f32 = router || (it.hybrid && it.hybrid->keep_f32);
    const GgmlType type =
        matrix && !keep_f32 ? weight_type(opt.out_type, cols, it.gname, progress) : GgmlType::F32;
    // Llama's q/k (weights and any biases) are re-ordered for interleaved rope.
    int64_t permute_heads = 0;
    if (h.arch == "llama") {
      if (it.gname.find(".attn_q.") != std::string::npos) permute_heads = h.n_head;
      if (it.gname.find(".attn_k.") != std::string::npos) permute_heads = h.n_head_kv;
    }
    // gemma's norms are applied as (1 + w): GGUF holds the sum, as llama.cpp writes it.
    const bool plus_one = convert_detail::norm_plus_one(h.arch, it.gname);
    std::vector<int64_t> shape = matrix ? std::vector<int64_t>{cols, rows} : std::vector<int64_t>{cols};
    if (!it.experts.empty() || it.stack > 0) shape.push_back(n_stack);
    const std::string gname = it.gname;
    const auto transform = it.hybrid ? it.hybrid->transform : nullptr;
    w.add_tensor(gname, type, std::move(shape),
                 [&pool, &progress, n_items, k, type, rows, cols, matrix, permute_heads, plus_one, gname,
                  s = it.src, experts = it.experts, transform, stack = it.stack](uint8_t* dst, size_t) {
                   if (progress)
                     progress(fmt::format("[{}/{}] {} -> {}", k + 1, n_items, gname, type_name(type)),
                              double(k) / double(n_items));
                   if (!experts.empty()) {
                     const size_t slice = row_size(type, cols) * size_t(rows);
                     for (size_t e = 0; e < experts.size(); ++e) {
                       const std::vector<float> f = experts[e]->to_f32();
                       quantize_rows(pool, type, f.data(), dst + slice * e, rows, cols);
                     }
                     return;
                   }
                   std::vector<float> f = s->to_f32();
                   if (transform) f = transform(f);
                   const int64_t all_rows = rows * std::max<int64_t>(stack, 1);
                   if (f.size() != size_t(all_rows) * size_t(cols))
                     throw FormatError(
                         fmt::format("{}: {} values for a [{}, {}] tensor", gname, f.size(), cols, all_rows));
                   if (plus_one)
                     for (float& x : f) x += 1.0f;
                   if (permute_heads > 0) {
                     // A bias is a single column of `rows` values.
                     f = matrix ? permute_rows(f, rows, cols, permute_heads)
                                : permute_rows(f, cols, 1, permute_heads);
                   }
                   quantize_rows(pool, type, f.data(), dst, all_rows, cols);
                 });
  }
  w.write(out_path);
  if (progress) progress(fmt::format("wrote {} tensors to {}", w.n_tensors(), out_path), 1.0);
}

void requantize_gguf(const std::string& in, const std::string& out, GgmlType type, const ProgressFn& progress,
                     int n_threads) {
  check_encoder(type);
  const auto src = GgufFile::open(in);
  ThreadPool pool(n_threads > 0 ? n_threads : default_thread_count());
  GgufWriter w;
  for (const auto& [key, v] : src->metadata()) {
    if (key != "general.alignment") w.set(key, v);
  }
  w.set_alignment(uint32_t(src->alignment()));
  w.set_u32("general.file_type", file_type_for(type));
  w.set_u32("general.quantization_version", 2);
  const auto& ts = src->tensors();
  // MXFP4 on a MoE model is llama.cpp's MXFP4_MOE (file_type_for): the experts in MXFP4, the other
  // tensors as they are.
  const bool experts_only =
      type == GgmlType::MXFP4 && std::any_of(ts.begin(), ts.end(), [](const GgufTensor& t) {
        return t.shape.size() == 3 && t.name.find("_exps.") != std::string::npos;
      });
  for (size_t k = 0; k < ts.size(); ++k) {
    const GgufTensor& t = ts[k];
    // Matrices and stacked expert matrices (3-D, one matrix per expert); routers stay as they are (F32
    // from our converter, as llama.cpp keeps them: routing flips on small errors).
    const bool weight =
        (t.shape.size() == 2 || (t.shape.size() == 3 && t.name.find("_exps.") != std::string::npos)) &&
        t.name.size() > 7 && t.name.ends_with(".weight");
    const bool router = t.name.find(".ffn_gate_inp.") != std::string::npos;
    const bool skip = experts_only && t.shape.size() != 3;
    if (!weight || router || skip || t.type == type) {
      w.add_tensor(t.name, t.type, t.shape, static_cast<const void*>(t.data));
      continue;
    }
    const GgmlType dst_type = weight_type(type, t.shape[0], t.name, progress);
    if (dst_type == t.type) {
      w.add_tensor(t.name, t.type, t.shape, static_cast<const void*>(t.data));
      continue;
    }
    {
      // Decoders run on pool threads, where an exception could not propagate: probe one row here.
      std::vector<float> probe(static_cast<size_t>(t.shape[0]));
      dequantize_row(t.type, t.data, probe.data(), t.shape[0]);
    }
    w.add_tensor(t.name, dst_type, t.shape, [&, k, dst_type](uint8_t* dst, size_t) {
      if (progress) {
        progress(fmt::format("[{}/{}] {} {} -> {}", k + 1, ts.size(), t.name, type_name(t.type),
                             type_name(dst_type)),
                 double(k) / double(ts.size()));
      }
      const int64_t cols = t.shape[0], rows = t.shape[1] * (t.shape.size() == 3 ? t.shape[2] : 1);
      const size_t src_rs = row_size(t.type, cols), dst_rs = row_size(dst_type, cols);
      pool.parallel_for(rows, std::max<int64_t>(1, rows / (int64_t(pool.size()) * 8)),
                        [&](int64_t b, int64_t e, int) {
                          std::vector<float> row(static_cast<size_t>(cols));
                          for (int64_t r = b; r < e; ++r) {
                            dequantize_row(t.type, t.data + size_t(r) * src_rs, row.data(), cols);
                            quantize_row_ref(dst_type, row.data(), dst + size_t(r) * dst_rs, cols);
                          }
                        });
    });
  }
  w.write(out);
  if (progress) progress(fmt::format("wrote {} tensors to {}", w.n_tensors(), out), 1.0);
}

}  // namespace qleap
