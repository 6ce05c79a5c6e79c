#include "gguf/convert_gptoss.h"

#include <fmt/format.h>

#include <regex>

#include "core/error.h"

namespace qleap::convert_detail {
namespace {

using json = nlohmann::json;

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out;
  for (int64_t d : s) out += (out.empty() ? "" : ", ") + std::to_string(d);
  return "[" + out + "]";
}

// Per expert e: out[e][r][c] = in[e][c][col0 + r * step] for a checkpoint slice [cols][in_cols] used as
// x @ W: the GGUF rows are W's (strided) columns.
std::vector<float> transpose_experts(const std::vector<float>& in, int64_t n_expert, int64_t cols,
                                     int64_t in_cols, int64_t rows, int64_t col0, int64_t step) {
  std::vector<float> out(size_t(n_expert * rows * cols));
  for (int64_t e = 0; e < n_expert; ++e)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        out[size_t((e * rows + r) * cols + c)] = in[size_t((e * cols + c) * in_cols + col0 + r * step)];
  return out;
}

// Per expert e: out[e][r] = in[e][col0 + r * step] (the biases).
std::vector<float> strided_rows(const std::vector<float>& in, int64_t n_expert, int64_t in_cols, int64_t rows,
                                int64_t col0, int64_t step) {
  std::vector<float> out(size_t(n_expert * rows));
  for (int64_t e = 0; e < n_expert; ++e)
    for (int64_t r = 0; r < rows; ++r) out[size_t(e * rows + r)] = in[size_t(e * in_cols + col0 + r * step)];
  return out;
}

}  // namespace

void check_gptoss_config(const json& c) {
  if (c.contains("layer_types") && c["layer_types"].is_array()) {
    const json& lt = c["layer_types"];
    for (size_t i = 0; i < lt.size(); ++i) {
      const std::string want = i % 2 == 0 ? "sliding_attention" : "full_attention";
      if (!lt[i].is_string() || lt[i].get<std::string>() != want)
        throw Unsupported(fmt::format(
            "gpt_oss: layer {} is '{}'; only alternating sliding / full attention from layer 0 is supported",
            i, lt[i].dump()));
    }
  }
  const std::string act = c.value("hidden_act", "silu");
  if (act != "silu") throw Unsupported(fmt::format("gpt_oss: activation '{}' is not supported (silu)", act));
}

void write_gptoss_metadata(GgufWriter& w, const json& c) {
  const std::string a = "gpt-oss.";
  const json& sw = c.contains("sliding_window") ? c["sliding_window"] : json();
  w.set_u32(a + "attention.sliding_window", uint32_t(sw.is_number() ? sw.get<int64_t>() : 128));
  w.set_f32(a + "expert_swiglu_alpha", float(c.value("swiglu_alpha", 1.702)));
  w.set_f32(a + "expert_swiglu_limit", float(c.value("swiglu_limit", 7.0)));
  // transformers rounds YaRN's correction range out unless rope_parameters says truncate: false (gpt-oss).
  bool truncate = true;
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (c.contains(key) && c[key].is_object() && c[key].contains("truncate") &&
        c[key]["truncate"].is_boolean())
      truncate = c[key]["truncate"].get<bool>();
  }
  w.set_bool(a + "rope.scaling.yarn_truncate", truncate);
  w.set_bool(a + "expert_weights_norm", true);
}

std::vector<GptOssTensor> gptoss_tensors(const std::string& hf, const std::vector<int64_t>& shape,
                                         int64_t n_expert) {
  static const std::regex re(
      R"(model\.layers\.(\d+)\.(self_attn\.sinks|mlp\.experts\.(gate_up_proj|down_proj)(_bias)?))");
  std::smatch m;
  if (!std::regex_match(hf, m, re)) return {};
  const std::string blk = "blk." + m[1].str() + ".";
  auto bad = [&] {
    return FormatError(fmt::format("gpt_oss: tensor '{}' has shape {}", hf, shape_str(shape)));
  };
  std::vector<GptOssTensor> out;
  if (m[2].str() == "self_attn.sinks") {
    if (shape.size() != 1) throw bad();
    out.push_back({HybridTensor{blk + "attn_sinks.weight", shape[0], 0, true, nullptr}, 0});
    return out;
  }
  const bool gate_up = m[3].str() == "gate_up_proj", bias = m[4].matched;
  if (shape.empty() || shape[0] != n_expert) throw bad();
  if (!bias) {
    if (shape.size() != 3) throw bad();
    const int64_t E = shape[0], in_rows = shape[1], in_cols = shape[2];
    if (gate_up) {
      if (in_cols % 2 != 0) throw bad();
      const int64_t nf = in_cols / 2;
      for (int64_t j = 0; j < 2; ++j) {
        auto tf = [=](const std::vector<float>& in) {
          return transpose_experts(in, E, in_rows, in_cols, nf, j, 2);
        };
        out.push_back({HybridTensor{blk + (j == 0 ? "ffn_gate_exps.weight" : "ffn_up_exps.weight"), nf,
                                    in_rows, false, tf},
                       E});
      }
    } else {
      auto tf = [=](const std::vector<float>& in) {
        return transpose_experts(in, E, in_rows, in_cols, in_cols, 0, 1);
      };
      out.push_back({HybridTensor{blk + "ffn_down_exps.weight", in_cols, in_rows, false, tf}, E});
    }
    return out;
  }
  if (shape.size() != 2) throw bad();
  const int64_t E = shape[0], in_cols = shape[1];
  // A bias [E][n] is written as a [n, E] matrix kept in F32: E rows of n values.
  if (gate_up) {
    if (in_cols % 2 != 0) throw bad();
    const int64_t nf = in_cols / 2;
    for (int64_t j = 0; j < 2; ++j) {
      auto tf = [=](const std::vector<float>& in) { return strided_rows(in, E, in_cols, nf, j, 2); };
      out.push_back(
          {HybridTensor{blk + (j == 0 ? "ffn_gate_exps.bias" : "ffn_up_exps.bias"), E, nf, true, tf}, 0});
    }
  } else {
    out.push_back({HybridTensor{blk + "ffn_down_exps.bias", E, in_cols, true, nullptr}, 0});
  }
  return out;
}

}  // namespace qleap::convert_detail
