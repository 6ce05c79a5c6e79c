// TurboQuant KV type names (parse_tq_kv_type) and the quantizer configs they give (tq_kv_config).
#include <algorithm>
#include <string>

#include "kv/kv_turboquant.h"

namespace qleap {

namespace {

// Rates accepted in names, spelled exactly like this (so each name has one spelling).
std::optional<float> parse_rate(const std::string& s) {
  static const std::pair<const char*, float> kRates[] = {
      {"2", 2.0f}, {"2.5", 2.5f}, {"3", 3.0f}, {"3.5", 3.5f}, {"4", 4.0f}};
  for (const auto& [text, bits] : kRates) {
    if (s == text) return bits;
  }
  return std::nullopt;
}

}  // namespace

float TqKvSpec::k_bits_at(int layer, int n_layers) const {
  return layer < edge_layers || layer >= n_layers - edge_layers ? edge_k_bits : k_bits;
}
float TqKvSpec::v_bits_at(int layer, int n_layers) const {
  return layer < edge_layers || layer >= n_layers - edge_layers ? edge_v_bits : v_bits;
}

std::optional<TqKvSpec> parse_tq_kv_type(const std::string& type) {
  const size_t colon = type.find(':');
  const std::string base = type.substr(0, colon);
  TqKvSpec spec;
  if (base.size() > 2 && base.compare(0, 2, "tq") == 0) {
    const auto b = parse_rate(base.substr(2));
    if (!b) return std::nullopt;
    spec.k_bits = spec.v_bits = *b;
  } else if (base.size() > 3 && base[0] == 'k') {
    const size_t vpos = base.find('v');
    if (vpos == std::string::npos) return std::nullopt;
    const auto kb = parse_rate(base.substr(1, vpos - 1));
    const auto vb = parse_rate(base.substr(vpos + 1));
    if (!kb || !vb) return std::nullopt;
    spec.k_bits = *kb;
    spec.v_bits = *vb;
  } else {
    return std::nullopt;
  }
  size_t at = colon;
  while (at != std::string::npos) {
    const size_t next = type.find(':', at + 1);
    const std::string opt =
        type.substr(at + 1, next == std::string::npos ? std::string::npos : next - at - 1);
    if (opt == "plain") {
      spec.center = false;
      spec.ls_norm = false;
      spec.unbiased_k = false;
      spec.key_block = 0;
      spec.sink = 0;
      spec.window = 0;
      spec.ring_bits = 0;
    } else if (opt.size() > 1 && opt.size() <= 6 && opt[0] == 'w' &&
               std::all_of(opt.begin() + 1, opt.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      spec.window = std::stoi(opt.substr(1));
    } else if (opt.size() > 2 && opt.size() <= 7 && opt.compare(0, 2, "rw") == 0 &&
               std::all_of(opt.begin() + 2, opt.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      spec.ring_window = std::stoi(opt.substr(2));
    } else if (opt.size() > 4 && opt.size() <= 8 && opt.compare(0, 4, "sink") == 0 &&
               std::all_of(opt.begin() + 4, opt.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      spec.sink = std::stoi(opt.substr(4));
    } else if (opt.size() > 4 && opt.size() <= 10 && opt.compare(0, 4, "draw") == 0 &&
               std::all_of(opt.begin() + 4, opt.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      spec.draw = uint32_t(std::stoul(opt.substr(4)));
    } else if (opt.compare(0, 6, "alloc=") == 0) {
      // The path may contain ':'; it is the rest of the name.
      spec.alloc_path = type.substr(at + 1 + 6);
      if (spec.alloc_path.empty()) return std::nullopt;
      break;
    } else if (opt == "uniform") {
      spec.auto_alloc = false;
    } else if (opt == "alloc") {
      spec.force_alloc = true;
    } else if (opt == "nocenter") {
      spec.center = false;
    } else if (opt == "noscale") {
      spec.qscale = false;
    } else if (opt.size() > 2 && opt.size() <= 7 && opt.compare(0, 2, "bm") == 0 &&
               std::all_of(opt.begin() + 2, opt.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      spec.key_block = std::stoi(opt.substr(2));
      if (spec.key_block != 0 && spec.key_block < 8) return std::nullopt;
    } else if (opt == "ubk") {
      spec.unbiased_k = true;
    } else if (opt == "noubk") {
      spec.unbiased_k = false;
    } else if (opt == "ubv") {
      spec.unbiased_v = true;
    } else if (opt == "nosearch") {
      spec.scale_search = false;
    } else if (opt == "qjl") {
      spec.qjl_keys = true;
    } else if (opt == "vscale") {
      spec.vscale = true;
    } else if (opt == "ring0") {
      spec.ring_bits = 0;
    } else if (opt.size() > 4 && opt.compare(0, 4, "ring") == 0 && parse_rate(opt.substr(4))) {
      spec.ring_bits = *parse_rate(opt.substr(4));
    } else if (opt.size() >= 2 && opt.size() <= 3 && opt[0] == 'e' &&
               std::all_of(opt.begin() + 1, opt.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      spec.edge_layers = std::stoi(opt.substr(1));
    } else {
      return std::nullopt;
    }
    at = next;
  }
  return spec;
}

TqConfig tq_kv_config(const TqKvSpec& spec, int head_dim, bool value, float bits) {
  TqConfig c;
  c.dim = head_dim;
  c.bits = bits;
  c.ls_norm = spec.ls_norm;
  c.scale_search = spec.scale_search;
  c.unbiased = value ? spec.unbiased_v : spec.unbiased_k;
  if (!value && spec.qjl_keys) {
    // TurboQuant_prod: (b - 1)-bit MSE codes + the 1-bit QJL sketch of the residual.
    c.bits = bits - 1;
    c.qjl = true;
  }
  // rotation kAuto: Hadamard for power-of-two head dims, Haar (dense) otherwise.
  // Values get another base seed ("VALUES" in the high bytes) so that tq_head_seed gives every
  // (layer, head) a value rotation independent of its key rotation.
  if (value) c.seed = kTqDefaultSeed ^ 0x56414c5545530000ull;
  // Another draw: a distinct base seed for every (draw, key/value); tq_head_seed mixes it per head.
  if (spec.draw != 0) c.seed ^= (uint64_t(spec.draw) * 0x9E3779B97F4A7C15ull) | 1;
  return c;
}

const char* tq_kv_type_help() {
  return "tq2, tq2.5, tq3, tq3.5, tq4 (TurboQuant, K and V at that many bits), kXvY with X, Y in "
         "{2, 2.5, 3, 3.5, 4} (e.g. k4v3, k4v2, k3v2: K at X bits, V at Y bits); options appended with ':' "
         "- plain (no centering, plain norms, no exact sink or window), sinkN (first N positions exact, "
         "default 1), wN (each query's last N positions exact, default 64), drawN (another draw of the "
         "random rotations), "
         "uniform (no per-head rates from the model's calibration), alloc (the calibration's per-head "
         "rates even where its check found uniform rates better), nocenter, noscale, nosearch, bmN (keys "
         "centered on the mean of the previous N positions, default bm128, bm0 off), noubk "
         "(least-squares key norms instead of unbiased ones), ubv (unbiased value norms), vscale, "
         "qjl, eN "
         "(first and last N layers "
         "at 4 bits), ringB (sliding-window layers held in a ring at B bits; default one bit more, up to 4; "
         "ring0: the type's rate), rwN (the exact window of those layers, default wN; as long as the "
         "model's sliding window, e.g. rw512, they are exact fp16 rows), alloc=PROFILE "
         "(per-head bits from a sensitivity profile, same mean; last option), "
         "e.g. tq3:e2, tq3:alloc=smollm2.kvsens.json";
}

}  // namespace qleap
