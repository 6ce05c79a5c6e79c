#include "turboquant/tq_sensitivity.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_io.h"
#include "core/json_int.h"

namespace qleap {

double TqSensitivity::error_at(const std::vector<std::vector<double>>& err, int head, float bits) const {
  const std::vector<double>& e = err[size_t(head)];
  const float lo = float(rates.front());
  const int i = int(std::floor(bits - lo));
  if (i < 0 || i >= int(rates.size()) || bits - lo - float(i) > 0.75f)
    throw InvalidArgument(fmt::format("kv sensitivity: no measurement for {} bits", bits));
  if (bits - lo - float(i) < 0.25f) return e[size_t(i)];
  if (i + 1 >= int(rates.size()))
    throw InvalidArgument(fmt::format("kv sensitivity: no measurement for {} bits", bits));
  return 0.5 * (e[size_t(i)] + e[size_t(i) + 1]);
}

void TqSensitivity::merge(const TqSensitivity& o) {
  if (o.n_layers != n_layers || o.n_kv_heads != n_kv_heads || o.head_dim != head_dim || o.rates != rates)
    throw InvalidArgument("kv sensitivity: merging measurements of different shapes");
  const double a = double(chunks) / (chunks + o.chunks), b = 1.0 - a;
  for (size_t h = 0; h < k_err.size(); ++h)
    for (size_t r = 0; r < rates.size(); ++r) {
      k_err[h][r] = a * k_err[h][r] + b * o.k_err[h][r];
      v_err[h][r] = a * v_err[h][r] + b * o.v_err[h][r];
    }
  chunks += o.chunks;
}

TqBitAllocation tq_allocate_bits(const TqSensitivity& s, float avg_bits, float step) {
  const int n = s.n_heads_total();
  if (n <= 0 || s.rates.empty()) throw InvalidArgument("kv sensitivity: empty profile");
  const float lo = float(s.rates.front()), hi = float(s.rates.back());
  if (!(avg_bits >= lo && avg_bits <= hi))
    throw InvalidArgument(fmt::format(
        "kv sensitivity: {} bits per value is outside the measured rates {}..{}", avg_bits, lo, hi));
  TqBitAllocation a;
  a.k_bits.assign(size_t(n), lo);
  a.v_bits.assign(size_t(n), lo);
  if (step != 0.5f && step != 1.0f) throw InvalidArgument("kv sensitivity: the step must be 0.5 or 1 bit");
  // Items 0..n-1 are keys, n..2n-1 values; each step adds `step` bits to one item.
  long steps = std::lround(double(avg_bits - lo) / step * 2.0 * n);
  auto bits_of = [&](int item) -> float& {
    return item < n ? a.k_bits[size_t(item)] : a.v_bits[size_t(item - n)];
  };
  auto gain = [&](int item) {
    const float b = bits_of(item);
    if (b + step > hi + 1e-3f) return -1.0;
    const auto& err = item < n ? s.k_err : s.v_err;
    const int head = item < n ? item : item - n;
    return s.error_at(err, head, b) - s.error_at(err, head, b + step);
  };
  // Greedy is optimal when each head's error is convex in the bits (each step removes less than the
  // one before), as measured errors are (about 4x less per bit); ties go to the lowest item.
  std::vector<double> g(size_t(2 * n));
  for (int i = 0; i < 2 * n; ++i) g[size_t(i)] = gain(i);
  for (; steps > 0; --steps) {
    const int best = int(std::max_element(g.begin(), g.end()) - g.begin());
    if (g[size_t(best)] < 0) break;
    bits_of(best) += step;
    g[size_t(best)] = gain(best);
  }
  return a;
}

std::string tq_sensitivity_to_json(const TqSensitivity& s) {
  nlohmann::json j;
  j["format"] = "qleap-kv-sensitivity";
  j["version"] = 1;
  j["model"] = s.model;
  j["n_layers"] = s.n_layers;
  j["n_kv_heads"] = s.n_kv_heads;
  j["head_dim"] = s.head_dim;
  j["tokens"] = s.tokens;
  j["chunks"] = s.chunks;
  j["window"] = s.window;
  j["sink"] = s.sink;
  j["rates"] = s.rates;
  nlohmann::json heads = nlohmann::json::array();
  for (int h = 0; h < s.n_heads_total(); ++h)
    heads.push_back({{"layer", h / s.n_kv_heads},
                     {"kv_head", h % s.n_kv_heads},
                     {"k", s.k_err[size_t(h)]},
                     {"v", s.v_err[size_t(h)]}});
  j["heads"] = std::move(heads);
  if (s.check_tokens > 0)
    j["check"] = {{"tokens", s.check_tokens},
                  {"kld_allocated", s.check_kld_allocated},
                  {"kld_uniform", s.check_kld_uniform},
                  {"diff_se", s.check_diff_se}};
  return j.dump(1);
}

namespace {

TqSensitivity parse_sensitivity(const std::string& text, const std::string& what) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("{}: not JSON ({})", what, e.what()));
  }
  auto fail = [&](const std::string& why) { return FormatError(fmt::format("{}: {}", what, why)); };
  if (!j.is_object() || j.value("format", "") != "qleap-kv-sensitivity")
    throw fail("not a KV sensitivity profile (qleap profile --kv-sensitivity)");
  const auto need = [&](const char* key) -> const nlohmann::json& {
    if (!j.contains(key)) throw fail(fmt::format("missing '{}'", key));
    return j[key];
  };
  if (json_integer<int>(need("version"), "version") != 1) throw fail("unsupported version");
  TqSensitivity s;
  s.n_layers = json_integer<int>(need("n_layers"), "n_layers");
  s.n_kv_heads = json_integer<int>(need("n_kv_heads"), "n_kv_heads");
  s.head_dim = json_integer<int>(need("head_dim"), "head_dim");
  s.tokens = json_integer<int>(need("tokens"), "tokens");
  s.chunks = json_integer<int>(need("chunks"), "chunks");
  s.window = json_integer<int>(need("window"), "window");
  s.sink = json_integer<int>(need("sink"), "sink");
  if (j.contains("model") && j["model"].is_string()) s.model = j["model"].get<std::string>();
  s.rates = json_integers<int>(need("rates"), "rates");
  if (s.n_layers <= 0 || s.n_kv_heads <= 0 || s.head_dim <= 0 || s.n_layers > 100000 || s.n_kv_heads > 100000)
    throw fail("bad shape");
  if (s.rates.size() < 2 || s.rates.front() < 1 || s.rates.back() > 8)
    throw fail("rates must be at least two integers in 1..8");
  for (size_t i = 1; i < s.rates.size(); ++i)
    if (s.rates[i] != s.rates[i - 1] + 1) throw fail("rates must be consecutive integers");
  const nlohmann::json& heads = need("heads");
  if (!heads.is_array() || heads.size() != size_t(s.n_heads_total()))
    throw fail(fmt::format("expected {} heads", s.n_heads_total()));
  s.k_err.assign(heads.size(), {});
  s.v_err.assign(heads.size(), {});
  std::vector<bool> seen(heads.size(), false);
  for (const auto& h : heads) {
    if (!h.is_object()) throw fail("a head entry is not an object");
    const int l = json_integer<int>(h.value("layer", nlohmann::json()), "layer");
    const int g = json_integer<int>(h.value("kv_head", nlohmann::json()), "kv_head");
    if (l < 0 || l >= s.n_layers || g < 0 || g >= s.n_kv_heads) throw fail("head index out of range");
    const size_t i = size_t(l) * size_t(s.n_kv_heads) + size_t(g);
    if (seen[i]) throw fail("a head is listed twice");
    seen[i] = true;
    for (const char* kv : {"k", "v"}) {
      const auto& arr = h.value(kv, nlohmann::json());
      if (!arr.is_array() || arr.size() != s.rates.size())
        throw fail(fmt::format("'{}' needs one error per rate", kv));
      std::vector<double> e;
      for (const auto& x : arr) {
        if (!x.is_number() || !std::isfinite(x.get<double>()) || x.get<double>() < 0)
          throw fail("errors must be finite non-negative numbers");
        e.push_back(x.get<double>());
      }
      (kv[0] == 'k' ? s.k_err : s.v_err)[i] = std::move(e);
    }
  }
  if (j.contains("check")) {
    const nlohmann::json& c = j["check"];
    if (!c.is_object()) throw fail("'check' must be an object");
    s.check_tokens = json_integer<int>(c.value("tokens", nlohmann::json()), "check.tokens");
    for (auto [key, dst] : {std::pair{"kld_allocated", &s.check_kld_allocated},
                            {"kld_uniform", &s.check_kld_uniform},
                            {"diff_se", &s.check_diff_se}}) {
      const nlohmann::json& x = c.value(key, nlohmann::json());
      if (!x.is_number() || !std::isfinite(x.get<double>()))
        throw fail(fmt::format("check.{} must be a finite number", key));
      *dst = x.get<double>();
    }
    if (s.check_tokens < 0 || s.check_diff_se < 0)
      throw fail("check.tokens and check.diff_se must not be negative");
  }
  return s;
}

}  // namespace

TqSensitivity tq_sensitivity_from_json(const std::string& text, const std::string& what) {
  try {
    return parse_sensitivity(text, what);
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong JSON type (e.g. "format": 5).
    throw FormatError(fmt::format("{}: malformed KV sensitivity profile ({})", what, e.what()));
  }
}

void save_tq_sensitivity(const TqSensitivity& s, const std::string& path) {
  std::ofstream out(path);
  if (!out) throw IoError(fmt::format("cannot write '{}'", path));
  out << tq_sensitivity_to_json(s) << "\n";
  if (!out) throw IoError(fmt::format("error writing '{}'", path));
}

TqSensitivity load_tq_sensitivity(const std::string& path) {
  return tq_sensitivity_from_json(read_file(path), path);
}

}  // namespace qleap
