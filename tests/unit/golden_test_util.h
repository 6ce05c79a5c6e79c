// Helpers shared by the golden-logit tests of the architectures with their own test file (gpt-oss,
// the DeltaNet hybrids, deepseek2 MLA): the tiny random HF models of tests/golden/fixtures
// (tools/gen_golden.py) with their transformers logits, converted by our converter, and the two
// comparisons those tests all make: decode steps against a prefill, and quantized weights or KV caches
// against the reference with MoE routing changes counted and left out.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "gguf/convert.h"
#include "gguf_test_util.h"
#include "model/model.h"
#include "model/moe_block.h"
#include "quant/quant.h"
#include "runtime/engine.h"

namespace qleap::testing {

struct Golden {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<std::vector<float>>> logits;  // [prompt][position][vocab]
  double max_ref = 0;                                   // largest |logit| of the reference
};

inline Golden load_golden(const std::string& name) {
  std::ifstream in(std::filesystem::path(fixtures_dir()) / name / "golden.json");
  const auto j = nlohmann::json::parse(in);
  Golden g{j.at("prompts").get<std::vector<std::vector<int32_t>>>(),
           j.at("logits").get<std::vector<std::vector<std::vector<float>>>>()};
  for (const auto& pl : g.logits)
    for (const auto& row : pl)
      for (float x : row) g.max_ref = std::max(g.max_ref, double(std::fabs(x)));
  return g;
}

// The fixture converted by our converter to `type` weights, in tmp.
inline std::string convert_fixture(const std::string& name, GgmlType type, const TempDir& tmp) {
  const std::string out = tmp.file(name + "_" + type_name(type) + ".gguf");
  ConvertOptions opt;
  opt.out_type = type;
  convert_hf_to_gguf((std::filesystem::path(fixtures_dir()) / name).string(), out, opt);
  return out;
}

// max |got - ref| over every position of one prompt (got: [position][vocab], row-major).
inline double max_abs_err(const std::vector<std::vector<float>>& ref, const float* got) {
  double e = 0;
  const size_t nv = ref[0].size();
  for (size_t p = 0; p < ref.size(); ++p)
    for (size_t v = 0; v < nv; ++v) e = std::max(e, double(std::fabs(got[p * nv + v] - ref[p][v])));
  return e;
}

// Which experts each (layer, position) of a prefill chose.
struct RoutingLog : MoeObserver {
  std::map<std::pair<int, int>, std::vector<int32_t>> chosen;
  void on_routing(int il, int pos0, int m, int k, const int32_t* ids, const float*, const float*,
                  const float*) override {
    for (int t = 0; t < m; ++t) {
      std::vector<int32_t> v(ids + size_t(t) * k, ids + size_t(t + 1) * k);
      std::sort(v.begin(), v.end());
      chosen[{il, pos0 + t}] = std::move(v);
    }
  }
};

// All-position logits of one prefill of the prompt in a fresh Engine; the routing goes to log if given.
inline std::vector<float> prefill_logits(const std::shared_ptr<const Model>& model,
                                         const std::vector<int32_t>& prompt, const EngineOptions& opt,
                                         RoutingLog* log = nullptr) {
  Engine e(model, opt);
  if (log != nullptr) e.set_moe_observer(log);
  const float* l = e.prefill(0, prompt.data(), int(prompt.size()), true);
  return std::vector<float>(l, l + prompt.size() * size_t(e.n_vocab()));
}

// max |difference| between decode steps and one prefill of the prompt: slot 1 decodes the prompt token
// by token next to slot 0 decoding another sequence (two rows of the continuous batch).
inline double decode_vs_prefill(const std::shared_ptr<const Model>& model, const std::vector<int32_t>& prompt,
                                EngineOptions opt) {
  opt.n_slots = std::max(opt.n_slots, 2);
  Engine ref(model, opt), dec(model, opt);
  const int n = int(prompt.size()), nv = ref.n_vocab();
  const float* r = ref.prefill(0, prompt.data(), n, true);
  const std::vector<float> pre(r, r + size_t(n) * nv);
  dec.prefill(0, prompt.data(), 1);
  dec.prefill(1, prompt.data(), 1);
  double e = 0;
  for (int t = 1; t < n; ++t) {
    const int slots[2] = {0, 1};
    const int32_t toks[2] = {int32_t((prompt[size_t(t)] * 7 + 3) % nv), prompt[size_t(t)]};
    const float* out = dec.decode(slots, toks, 2);
    for (int v = 0; v < nv; ++v)
      e = std::max(e, double(std::fabs(out[size_t(nv) + v] - pre[size_t(t) * nv + v])));
  }
  return e;
}

// One run of a prompt: its all-position logits, its routing decisions logged.
using PromptRun = std::function<std::vector<float>(const std::vector<int32_t>& prompt, RoutingLog& log)>;

// The routing the reference model (F32 weights, which match transformers) takes on every prompt.
inline std::vector<RoutingLog> reference_routing(const Golden& g, const PromptRun& run) {
  std::vector<RoutingLog> out(g.prompts.size());
  for (size_t p = 0; p < g.prompts.size(); ++p) run(g.prompts[p], out[p]);
  return out;
}

struct Closeness {
  double max_err = 0;  // at positions without a routing change
  int positions = 0, flipped = 0, decisions = 0, mismatch = 0, clear_mismatch = 0, non_finite = 0;
};

// Every prompt's logits against the reference. A router whose top-k changes under rounding (routing
// compared with ref_routes) changes that token by a whole expert, not by rounding: such positions are
// counted (flipped) and left out of the error and the argmax check. A mismatching argmax counts as clear
// where the reference's top-2 gap exceeds clear_gap. non_finite counts logits that are NaN or inf.
inline Closeness compare_to_golden(const Golden& g, const std::vector<RoutingLog>& ref_routes,
                                   const PromptRun& run, double clear_gap) {
  Closeness c;
  for (size_t p = 0; p < g.prompts.size(); ++p) {
    RoutingLog routes;
    const std::vector<float> logits = run(g.prompts[p], routes);
    std::set<int> flips;
    for (const auto& [key, ids] : ref_routes[p].chosen) {
      ++c.decisions;
      if (routes.chosen[key] != ids) flips.insert(key.second);
    }
    const size_t nv = g.logits[p][0].size();
    for (size_t pos = 0; pos < g.prompts[p].size(); ++pos, ++c.positions) {
      const auto& ref = g.logits[p][pos];
      const float* got = logits.data() + pos * nv;
      for (size_t v = 0; v < nv; ++v) c.non_finite += std::isfinite(got[v]) ? 0 : 1;
      if (flips.count(int(pos))) {
        ++c.flipped;
        continue;
      }
      for (size_t v = 0; v < nv; ++v) c.max_err = std::max(c.max_err, double(std::fabs(got[v] - ref[v])));
      const size_t a = size_t(std::max_element(ref.begin(), ref.end()) - ref.begin());
      const size_t b = size_t(std::max_element(got, got + nv) - got);
      if (a == b) continue;
      ++c.mismatch;
      std::vector<float> sorted = ref;
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
      if (sorted[0] - sorted[1] > clear_gap) ++c.clear_mismatch;
    }
  }
  return c;
}

// One line for the test log: "[golden] <what>: max abs err ...".
inline void print_closeness(const std::string& what, const Closeness& c, const Golden& g) {
  std::printf(
      "[golden] %s: max abs err %.3g (%.2g of max |logit| %.3g) at %d/%d positions (%d with a routing "
      "change of %d decisions left out); argmax differs at %d (%d clearly)\n",
      what.c_str(), c.max_err, c.max_err / g.max_ref, g.max_ref, c.positions - c.flipped, c.positions,
      c.flipped, c.decisions, c.mismatch, c.clear_mismatch);
}

}  // namespace qleap::testing
