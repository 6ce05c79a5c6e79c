#include "gguf/convert_hybrid.h"

#include <fmt/format.h>

#include <cmath>
#include <regex>

#include "core/error.h"

namespace qleap {
namespace {

using json = nlohmann::json;

int64_t int_field(const json& j, const char* key, std::optional<int64_t> def = std::nullopt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (def) return *def;
    throw FormatError(fmt::format("config.json lacks '{}'", key));
  }
  if (!it->is_number_integer()) throw FormatError(fmt::format("config.json: '{}' is not an integer", key));
  return it->get<int64_t>();
}

// Old index of the value head at tiled position p = j * nk + k: k * r + j.
int64_t grouped_head(int64_t p, int64_t nk, int64_t r) {
  return (p % nk) * r + p / nk;
}

// Reorders the value heads (hd rows, or columns, each) of rows x cols row-major data from grouped to
// tiled order; the heads start at row (or column) `first`.
std::vector<float> tile_heads(const std::vector<float>& f, int64_t rows, int64_t cols, int64_t first,
                              int64_t nk, int64_t nv, int64_t hd, bool columns) {
  const int64_t r = nv / nk;
  std::vector<float> out = f;
  if (r == 1) return out;
  for (int64_t p = 0; p < nv; ++p) {
    const int64_t src = first + grouped_head(p, nk, r) * hd, dst = first + p * hd;
    for (int64_t i = 0; i < hd; ++i) {
      if (columns) {
        for (int64_t row = 0; row < rows; ++row)
          out[size_t(row * cols + dst + i)] = f[size_t(row * cols + src + i)];
      } else {
        std::copy(f.begin() + (src + i) * cols, f.begin() + (src + i + 1) * cols,
                  out.begin() + (dst + i) * cols);
      }
    }
  }
  return out;
}

std::vector<float> plus_one(const std::vector<float>& f) {
  std::vector<float> out(f);
  for (float& x : out) x += 1.0f;
  return out;
}

void expect_shape(const std::string& hf, const std::vector<int64_t>& shape, std::vector<int64_t> want) {
  // A conv kernel may come as [C, 1, K] or [C, K].
  std::vector<int64_t> got;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (!(shape.size() == 3 && i == 1 && shape[i] == 1)) got.push_back(shape[i]);
  }
  if (got != want) {
    std::string g, e;
    for (int64_t d : shape) g += (g.empty() ? "" : ", ") + std::to_string(d);
    for (int64_t d : want) e += (e.empty() ? "" : ", ") + std::to_string(d);
    throw FormatError(fmt::format("tensor '{}' has shape [{}], expected [{}]", hf, g, e));
  }
}

}  // namespace

bool is_hybrid_model_type(const std::string& t) {
  return t == "qwen3_5" || t == "qwen3_5_text" || t == "qwen3_5_moe" || t == "qwen3_5_moe_text" ||
         t == "qwen3_next";
}

HybridConfig read_hybrid_config(const json& c, const std::string& model_type, int64_t head_dim,
                                int64_t n_layers, bool vision) {
  HybridConfig h;
  h.arch = model_type == "qwen3_next"                                          ? "qwen3next"
           : (model_type == "qwen3_5_moe" || model_type == "qwen3_5_moe_text") ? "qwen35moe"
                                                                               : "qwen35";
  h.vision = vision;
  h.conv_kernel = int_field(c, "linear_conv_kernel_dim", 4);
  h.n_k_heads = int_field(c, "linear_num_key_heads");
  h.n_v_heads = int_field(c, "linear_num_value_heads");
  h.head_k_dim = int_field(c, "linear_key_head_dim");
  h.head_v_dim = int_field(c, "linear_value_head_dim");
  if (h.conv_kernel <= 0 || h.n_k_heads <= 0 || h.n_v_heads <= 0 || h.head_k_dim <= 0 || h.head_v_dim <= 0 ||
      h.n_v_heads % h.n_k_heads != 0)
    throw FormatError("config.json has inconsistent linear attention sizes");

  // Which layers attend: every interval-th (transformers writes the pattern out as layer_types).
  h.full_attention_interval = int_field(c, "full_attention_interval", 4);
  if (auto it = c.find("layer_types"); it != c.end() && it->is_array()) {
    if (int64_t(it->size()) < n_layers)
      throw FormatError("config.json: layer_types is shorter than the model");
    int64_t first_full = -1;
    for (int64_t i = 0; i < n_layers && first_full < 0; ++i)
      if ((*it)[size_t(i)] == "full_attention") first_full = i;
    h.full_attention_interval = first_full < 0 ? n_layers + 1 : first_full + 1;
    for (int64_t i = 0; i < n_layers; ++i) {
      const std::string t = (*it)[size_t(i)].get<std::string>();
      const bool full = (i + 1) % h.full_attention_interval == 0;
      if (t != (full ? "full_attention" : "linear_attention"))
        throw Unsupported(fmt::format(
            "layer_types: layer {} is {}, but only a full attention layer every n layers is supported", i,
            t));
    }
  }
  if (h.full_attention_interval <= 0) throw FormatError("config.json: bad full_attention_interval");

  const json rp = c.contains("rope_parameters") && c["rope_parameters"].is_object() ? c["rope_parameters"]
                                                                                    : json::object();
  double partial = 0.25;
  for (const json* j : {&c, &rp}) {
    if (auto it = j->find("partial_rotary_factor"); it != j->end() && it->is_number())
      partial = it->get<double>();
  }
  h.n_rot = int64_t(std::llround(double(head_dim) * partial));
  if (h.n_rot <= 0 || h.n_rot > head_dim || h.n_rot % 2 != 0)
    throw FormatError(fmt::format("config.json: partial_rotary_factor {} of head_dim {}", partial, head_dim));
  if (h.arch != "qwen3next") {
    // llama.cpp requires the sections; transformers' default is [11, 11, 10].
    h.mrope_sections = {11, 11, 10};
    if (auto it = rp.find("mrope_section"); it != rp.end() && it->is_array())
      h.mrope_sections = it->get<std::vector<int64_t>>();
    while (h.mrope_sections.size() < 4) h.mrope_sections.push_back(0);
  }
  return h;
}

void write_hybrid_hparams(GgufWriter& w, const HybridConfig& h) {
  const std::string a = h.arch + ".";
  w.set_u32(a + "ssm.conv_kernel", uint32_t(h.conv_kernel));
  w.set_u32(a + "ssm.state_size", uint32_t(h.head_k_dim));
  w.set_u32(a + "ssm.group_count", uint32_t(h.n_k_heads));
  w.set_u32(a + "ssm.time_step_rank", uint32_t(h.n_v_heads));
  w.set_u32(a + "ssm.inner_size", uint32_t(h.n_v_heads * h.head_v_dim));
  w.set_u32(a + "full_attention_interval", uint32_t(h.full_attention_interval));
  w.set_u32(a + "rope.dimension_count", uint32_t(h.n_rot));
  if (!h.mrope_sections.empty()) {
    std::vector<int32_t> s;
    for (int64_t x : h.mrope_sections) s.push_back(int32_t(x));
    w.set_array_i32(a + "rope.dimension_sections", s);
  }
}

std::string hybrid_tensor_name(const std::string& hf) {
  static const std::string kLm = "model.language_model.";
  if (hf.rfind("model.visual.", 0) == 0 || hf.rfind("visual.", 0) == 0 || hf.rfind("mtp.", 0) == 0) return "";
  if (hf.rfind(kLm, 0) == 0) return "model." + hf.substr(kLm.size());
  return hf;
}

std::vector<HybridTensor> hybrid_tensors(const HybridConfig& h, const std::string& hf,
                                         const std::vector<int64_t>& shape) {
  const int64_t nk = h.n_k_heads, nv = h.n_v_heads, dk = h.head_k_dim, dv = h.head_v_dim;
  const int64_t kd = nk * dk, vd = nv * dv, conv = 2 * kd + vd;
  const bool tiled = h.v_tiled();
  if (hf == "model.norm.weight") return {{"output_norm.weight", shape.at(0), 0, false, plus_one}};
  static const std::regex re(R"(model\.layers\.(\d+)\.(.+))");
  std::smatch m;
  if (!std::regex_match(hf, m, re)) return {};
  const std::string blk = "blk." + m[1].str() + ".", what = m[2].str();
  const auto vec = [&](const char* g, int64_t n,
                       std::function<std::vector<float>(const std::vector<float>&)> f) {
    expect_shape(hf, shape, {n});
    return std::vector<HybridTensor>{{blk + g, n, 0, false, std::move(f)}};
  };
  const auto norm = [&](const char* g) { return vec(g, shape.empty() ? 0 : shape[0], plus_one); };
  if (what == "input_layernorm.weight") return norm("attn_norm.weight");
  if (what == "post_attention_layernorm.weight") return norm("post_attention_norm.weight");
  if (what == "self_attn.q_norm.weight") return norm("attn_q_norm.weight");
  if (what == "self_attn.k_norm.weight") return norm("attn_k_norm.weight");
  if (what.rfind("linear_attn.", 0) != 0) return {};

  const std::string la = what.substr(12);
  const auto per_head = [&](std::function<std::vector<float>(const std::vector<float>&)> f) {
    return [f, tiled, nk, nv](const std::vector<float>& x) {
      const std::vector<float> y = f(x);
      return tiled ? tile_heads(y, nv, 1, 0, nk, nv, 1, false) : y;
    };
  };
  if (la == "A_log")
    return vec("ssm_a", nv, per_head([](const std::vector<float>& x) {
                 std::vector<float> y(x.size());
                 for (size_t i = 0; i < x.size(); ++i) y[i] = -std::exp(x[i]);
                 return y;
               }));
  if (la == "dt_bias") return vec("ssm_dt.bias", nv, per_head([](const std::vector<float>& x) { return x; }));
  if (la == "norm.weight") return vec("ssm_norm.weight", dv, [](const std::vector<float>& x) { return x; });
  const auto matrix = [&](const char* g, int64_t rows, int64_t cols, bool keep_f32,
                          std::function<std::vector<float>(const std::vector<float>&)> f) {
    expect_shape(hf, shape, {rows, cols});
    return std::vector<HybridTensor>{{blk + g, rows, cols, keep_f32, std::move(f)}};
  };
  const int64_t n = shape.size() == 2 ? shape[1] : 0;  // n_embd (input projections)
  if (la == "conv1d.weight") {
    const int64_t k = h.conv_kernel;
    return matrix("ssm_conv1d.weight", conv, k, true, [=](const std::vector<float>& x) {
      return tiled ? tile_heads(x, conv, k, 2 * kd, nk, nv, dv, false) : x;
    });
  }
  if (la == "in_proj_qkv.weight")
    return matrix("attn_qkv.weight", conv, n, false, [=](const std::vector<float>& x) {
      return tiled ? tile_heads(x, conv, n, 2 * kd, nk, nv, dv, false) : x;
    });
  if (la == "in_proj_z.weight")
    return matrix("attn_gate.weight", vd, n, false, [=](const std::vector<float>& x) {
      return tiled ? tile_heads(x, vd, n, 0, nk, nv, dv, false) : x;
    });
  if (la == "in_proj_b.weight" || la == "in_proj_a.weight")
    return matrix(
        la == "in_proj_b.weight" ? "ssm_beta.weight" : "ssm_alpha.weight", nv, n, false,
        [=](const std::vector<float>& x) { return tiled ? tile_heads(x, nv, n, 0, nk, nv, 1, false) : x; });
  if (la == "out_proj.weight") {
    const int64_t rows = shape.empty() ? 0 : shape[0];
    return matrix("ssm_out.weight", rows, vd, false, [=](const std::vector<float>& x) {
      return tiled ? tile_heads(x, rows, vd, 0, nk, nv, dv, true) : x;
    });
  }
  if (la == "in_proj_ba.weight")  // qwen3next: kept fused, per key head [r betas, r alphas]
    return matrix("ssm_ba.weight", 2 * nv, n, false, [](const std::vector<float>& x) { return x; });
  if (la == "in_proj_qkvz.weight") {
    // qwen3next: per key head [q (dk), k (dk), v (r dv), z (r dv)] -> attn_qkv [all q, all k, all v]
    // (value heads stay grouped) and attn_gate [all z].
    const int64_t r = nv / nk, group = 2 * dk + 2 * r * dv;
    expect_shape(hf, shape, {nk * group, n});
    const auto part = [=](int64_t off, int64_t len, int64_t g) {  // rows [off, off + len) of group g
      return std::pair<int64_t, int64_t>{g * group + off, len};
    };
    const auto gather = [=](const std::vector<float>& x, std::vector<std::pair<int64_t, int64_t>> spans) {
      std::vector<float> out;
      for (auto [row, len] : spans) out.insert(out.end(), x.begin() + row * n, x.begin() + (row + len) * n);
      return out;
    };
    auto qkv = [=](const std::vector<float>& x) {
      std::vector<std::pair<int64_t, int64_t>> s;
      for (int64_t g = 0; g < nk; ++g) s.push_back(part(0, dk, g));
      for (int64_t g = 0; g < nk; ++g) s.push_back(part(dk, dk, g));
      for (int64_t g = 0; g < nk; ++g) s.push_back(part(2 * dk, r * dv, g));
      return gather(x, s);
    };
    auto z = [=](const std::vector<float>& x) {
      std::vector<std::pair<int64_t, int64_t>> s;
      for (int64_t g = 0; g < nk; ++g) s.push_back(part(2 * dk + r * dv, r * dv, g));
      return gather(x, s);
    };
    return {{blk + "attn_qkv.weight", conv, n, false, qkv}, {blk + "attn_gate.weight", vd, n, false, z}};
  }
  throw Unsupported(fmt::format("checkpoint tensor '{}' has no GGUF mapping", hf));
}

}  // namespace qleap
