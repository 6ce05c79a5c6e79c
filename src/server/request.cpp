#include "server/request.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace qleap::server {

using nlohmann::json;

namespace {

const json* field(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

[[noreturn]] void type_error(const char* key, const char* want, const json& got) {
  throw RequestError(400,
                     fmt::format("invalid value for '{}': expected {}, got {}", key, want, got.type_name()));
}

float get_float(const json& obj, const char* key, float def) {
  const double v = get_number(obj, key, def);
  if (!std::isfinite(v)) throw RequestError(400, fmt::format("invalid value for '{}': not finite", key));
  return float(v);
}

std::vector<std::string> get_stop(const json& v, const char* key) {
  std::vector<std::string> out;
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    for (const auto& s : v) {
      if (!s.is_string()) type_error(key, "a string or an array of strings", s);
      out.push_back(s.get<std::string>());
    }
  } else {
    type_error(key, "a string or an array of strings", v);
  }
  std::erase_if(out, [](const std::string& s) { return s.empty(); });
  return out;
}

}  // namespace

std::string get_string(const json& obj, const char* key, const std::string& def) {
  const json* v = field(obj, key);
  if (!v) return def;
  if (!v->is_string()) type_error(key, "a string", *v);
  return v->get<std::string>();
}

bool get_bool(const json& obj, const char* key, bool def) {
  const json* v = field(obj, key);
  if (!v) return def;
  if (!v->is_boolean()) type_error(key, "a boolean", *v);
  return v->get<bool>();
}

double get_number(const json& obj, const char* key, double def) {
  const json* v = field(obj, key);
  if (!v) return def;
  if (!v->is_number()) type_error(key, "a number", *v);
  return v->get<double>();
}

int get_int(const json& obj, const char* key, int def) {
  const json* v = field(obj, key);
  if (!v) return def;
  if (!v->is_number()) type_error(key, "an integer", *v);
  const double d = v->get<double>();
  if (!std::isfinite(d) || d != std::floor(d) || d < -2147483648.0 || d > 2147483647.0) {
    throw RequestError(400, fmt::format("invalid value for '{}': expected a 32-bit integer", key));
  }
  return int(d);
}

int json_nesting_depth(std::string_view text, int limit) {
  int depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) {
        max_depth = depth;
        if (max_depth > limit) return limit + 1;
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return max_depth;
}

json parse_json_bounded(std::string_view text) {
  if (json_nesting_depth(text) > kMaxJsonDepth) return json(json::value_t::discarded);
  return json::parse(text.begin(), text.end(), nullptr, false);
}

json parse_body(const std::string& body) {
  if (json_nesting_depth(body) > kMaxJsonDepth) {
    throw RequestError(400, fmt::format("JSON nested too deeply (more than {} levels)", kMaxJsonDepth));
  }
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) throw RequestError(400, "invalid JSON in request body");
  if (!j.is_object()) throw RequestError(400, "request body must be a JSON object");
  return j;
}

GenOptions ollama_defaults() {
  GenOptions o;
  o.sampling.temperature = 0.8f;
  o.sampling.top_k = 40;
  o.sampling.top_p = 0.9f;
  o.sampling.min_p = 0.0f;
  o.sampling.repeat_penalty = 1.1f;
  o.sampling.repeat_last_n = 64;
  return o;
}

GenOptions openai_defaults() {
  GenOptions o;
  o.sampling.temperature = 1.0f;
  o.sampling.top_k = 0;
  o.sampling.top_p = 1.0f;
  o.sampling.min_p = 0.0f;
  o.sampling.repeat_penalty = 1.0f;
  return o;
}

void apply_ollama_options(const json& opt, GenOptions& o) {
  if (opt.is_null()) return;
  if (!opt.is_object()) type_error("options", "an object", opt);
  SamplerParams& s = o.sampling;
  s.temperature = get_float(opt, "temperature", s.temperature);
  s.top_k = get_int(opt, "top_k", s.top_k);
  s.top_p = get_float(opt, "top_p", s.top_p);
  s.min_p = get_float(opt, "min_p", s.min_p);
  s.repeat_penalty = get_float(opt, "repeat_penalty", s.repeat_penalty);
  s.repeat_last_n = get_int(opt, "repeat_last_n", s.repeat_last_n);
  s.presence_penalty = get_float(opt, "presence_penalty", s.presence_penalty);
  s.frequency_penalty = get_float(opt, "frequency_penalty", s.frequency_penalty);
  if (const json* v = field(opt, "seed")) {
    const int seed = get_int(opt, "seed", -1);
    (void)v;
    if (seed >= 0) s.seed = uint64_t(seed);
  }
  o.num_predict = get_int(opt, "num_predict", o.num_predict);
  o.num_ctx = get_int(opt, "num_ctx", o.num_ctx);
  o.num_keep = get_int(opt, "num_keep", o.num_keep);
  if (o.num_ctx < 0) throw RequestError(400, "invalid value for 'num_ctx': must be >= 0");
  if (const json* v = field(opt, "stop")) o.stop = get_stop(*v, "stop");
}

void apply_openai_params(const json& b, GenOptions& o) {
  SamplerParams& s = o.sampling;
  s.temperature = get_float(b, "temperature", s.temperature);
  s.top_p = get_float(b, "top_p", s.top_p);
  s.top_k = get_int(b, "top_k", s.top_k);
  s.min_p = get_float(b, "min_p", s.min_p);
  s.repeat_penalty = get_float(b, "repeat_penalty", s.repeat_penalty);
  s.presence_penalty = get_float(b, "presence_penalty", s.presence_penalty);
  s.frequency_penalty = get_float(b, "frequency_penalty", s.frequency_penalty);
  if (s.presence_penalty != 0 || s.frequency_penalty != 0) s.repeat_last_n = -1;
  if (field(b, "seed")) {
    const json& v = b["seed"];
    if (!v.is_number_integer()) type_error("seed", "an integer", v);
    s.seed = uint64_t(v.get<int64_t>()) & 0xFFFFFFFFull;
    if (s.seed == 0xFFFFFFFFull) s.seed = 0xFFFFFFFEull;
  }
  o.num_predict = get_int(b, "max_tokens", o.num_predict);
  o.num_predict = get_int(b, "max_completion_tokens", o.num_predict);
  if (const json* v = field(b, "stop")) o.stop = get_stop(*v, "stop");
}

std::optional<double> parse_keep_alive(const json& v) {
  if (v.is_null()) return std::nullopt;
  if (v.is_number()) {
    const double d = v.get<double>();
    if (!std::isfinite(d)) throw RequestError(400, "invalid keep_alive");
    return d;
  }
  if (!v.is_string()) type_error("keep_alive", "a duration string or a number of seconds", v);
  const std::string s = v.get<std::string>();
  if (s.empty()) return std::nullopt;
  // Go-style durations: [-]<number><unit>... with units h, m, s, ms; a bare number is seconds.
  size_t i = 0;
  double sign = 1;
  if (s[0] == '-') sign = -1, i = 1;
  double total = 0;
  bool any = false;
  while (i < s.size()) {
    size_t j = i;
    while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '.')) ++j;
    if (j == i || j - i > 18) throw RequestError(400, fmt::format("invalid keep_alive duration '{}'", s));
    double num = 0;
    try {
      num = std::stod(s.substr(i, j - i));
    } catch (const std::exception&) {
      throw RequestError(400, fmt::format("invalid keep_alive duration '{}'", s));
    }
    size_t k = j;
    while (k < s.size() && std::isalpha(static_cast<unsigned char>(s[k]))) ++k;
    const std::string unit = s.substr(j, k - j);
    double mul = 0;
    if (unit.empty()) {
      if (k != s.size() || any) throw RequestError(400, fmt::format("invalid keep_alive duration '{}'", s));
      mul = 1;
    } else if (unit == "h") {
      mul = 3600;
    } else if (unit == "m") {
      mul = 60;
    } else if (unit == "s") {
      mul = 1;
    } else if (unit == "ms") {
      mul = 1e-3;
    } else if (unit == "us" || unit == "µs") {
      mul = 1e-6;
    } else if (unit == "ns") {
      mul = 1e-9;
    } else {
      throw RequestError(400, fmt::format("invalid keep_alive duration '{}': unknown unit '{}'", s, unit));
    }
    total += num * mul;
    any = true;
    i = k;
  }
  return sign * total;
}

int truncate_prompt(std::vector<int32_t>& tokens, int n_ctx, int num_keep) {
  // Even a one-token context keeps the last prompt token: it gives the logits of the first output.
  if (n_ctx < 1 || int(tokens.size()) < n_ctx) return 0;
  const int target = std::max(1, n_ctx / 2);
  const int keep = std::clamp(num_keep, 0, target - 1);
  const int drop = int(tokens.size()) - target;
  tokens.erase(tokens.begin() + keep, tokens.begin() + keep + drop);
  return drop;
}

}  // namespace qleap::server
