#include "kv/kv_calibration.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace qleap {
namespace {

size_t at(const KvCalibration& c, int layer, int ch) {
  return size_t(layer) * size_t(c.kv_dim()) + size_t(ch);
}

double centered(double sum, double sum2, int64_t n) {
  if (n <= 0) return 0;
  const double mean = sum / double(n);
  return std::max(0.0, sum2 - double(n) * mean * mean);
}

}  // namespace

double KvCalibration::mean_k(int layer, int c) const {
  return n_tokens > 0 ? sum_k[at(*this, layer, c)] / double(n_tokens) : 0.0;
}
double KvCalibration::mean_v(int layer, int c) const {
  return n_tokens > 0 ? sum_v[at(*this, layer, c)] / double(n_tokens) : 0.0;
}
double KvCalibration::centered_energy_k(int layer, int c) const {
  const size_t i = at(*this, layer, c);
  return centered(sum_k[i], sum_k2[i], n_tokens);
}
double KvCalibration::centered_energy_v(int layer, int c) const {
  const size_t i = at(*this, layer, c);
  return centered(sum_v[i], sum_v2[i], n_tokens);
}

void KvCalibration::check(const KvShape& s) const {
  if (n_layers != s.n_layers || n_heads != s.n_heads || n_kv_heads != s.n_kv_heads ||
      head_dim != s.head_dim) {
    throw InvalidArgument(fmt::format(
        "kv calibration for {} layers x {}/{} heads x {} does not fit a cache of {} layers x {}/{} heads x "
        "{}",
        n_layers, n_heads, n_kv_heads, head_dim, s.n_layers, s.n_heads, s.n_kv_heads, s.head_dim));
  }
}

KvCalibrationRecorder::KvCalibrationRecorder(const KvShape& shape, bool keep_rows)
    : KvCache(shape), inner_(make_kv_cache("f32", shape)), keep_rows_(keep_rows) {
  cal_.n_layers = shape.n_layers;
  cal_.n_heads = shape.n_heads;
  cal_.n_kv_heads = shape.n_kv_heads;
  cal_.head_dim = shape.head_dim;
  reset();
}

void KvCalibrationRecorder::reset() {
  const size_t n = size_t(shape_.n_layers) * size_t(shape_.kv_dim());
  for (auto* v : {&cal_.sum_k, &cal_.sum_k2, &cal_.sum_v, &cal_.sum_v2, &cal_.sum_q2}) v->assign(n, 0.0);
  cal_.n_tokens = cal_.n_queries = 0;
  n_k_.assign(size_t(shape_.n_layers), 0);
  n_q_.assign(size_t(shape_.n_layers), 0);
  rows_ = KvChunkRows{};
  if (keep_rows_) {
    rows_.k.resize(size_t(shape_.n_layers));
    rows_.v.resize(size_t(shape_.n_layers));
    rows_.q.resize(size_t(shape_.n_layers));
  }
  inner_->reset();
}

void KvCalibrationRecorder::store(int layer, const KvSpan& s, const float* k, const float* v) {
  inner_->store(layer, s, k, v);
  const int kvd = shape_.kv_dim();
  if (keep_rows_) {
    // A chunk from position 0: rows land at their positions.
    auto put = [&](std::vector<float>& dst, const float* src) {
      const size_t end = size_t(s.pos0 + s.n) * kvd;
      if (dst.size() < end) dst.resize(end);
      std::copy(src, src + size_t(s.n) * kvd, dst.begin() + long(size_t(s.pos0) * kvd));
    };
    put(rows_.k[size_t(layer)], k);
    put(rows_.v[size_t(layer)], v);
    if (layer == 0) rows_.n = std::max(rows_.n, s.pos0 + s.n);
  }
  double* sk = &cal_.sum_k[size_t(layer) * kvd];
  double* sk2 = &cal_.sum_k2[size_t(layer) * kvd];
  double* sv = &cal_.sum_v[size_t(layer) * kvd];
  double* sv2 = &cal_.sum_v2[size_t(layer) * kvd];
  for (int t = 0; t < s.n; ++t) {
    if (s.pos0 + t == 0) continue;  // the sink token
    const float* kt = k + size_t(t) * kvd;
    const float* vt = v + size_t(t) * kvd;
    for (int i = 0; i < kvd; ++i) {
      sk[i] += kt[i];
      sk2[i] += double(kt[i]) * kt[i];
      sv[i] += vt[i];
      sv2[i] += double(vt[i]) * vt[i];
    }
    ++n_k_[size_t(layer)];
  }
  cal_.n_tokens = n_k_[0];
}

void KvCalibrationRecorder::attend(int layer, const KvSpan& s, const float* q, float* out, float scale,
                                   ThreadPool& pool) {
  inner_->attend(layer, s, q, out, scale, pool);
  const int hd = shape_.head_dim, group = shape_.n_heads / shape_.n_kv_heads, kvd = shape_.kv_dim();
  if (keep_rows_) {
    const size_t qd = size_t(shape_.q_dim()), end = size_t(s.pos0 + s.n) * qd;
    std::vector<float>& dst = rows_.q[size_t(layer)];
    if (dst.size() < end) dst.resize(end);
    std::copy(q, q + size_t(s.n) * qd, dst.begin() + long(size_t(s.pos0) * qd));
    rows_.scale = scale;
  }
  double* sq = &cal_.sum_q2[size_t(layer) * kvd];
  for (int t = 0; t < s.n; ++t)
    for (int h = 0; h < shape_.n_heads; ++h) {
      const float* qh = q + (size_t(t) * shape_.n_heads + h) * hd;
      double* dst = sq + size_t(h / group) * hd;
      for (int i = 0; i < hd; ++i) dst[i] += double(qh[i]) * qh[i];
    }
  n_q_[size_t(layer)] += s.n;
  cal_.n_queries = n_q_[0];
}

std::string kv_calibration_to_json(const KvCalibration& c) {
  nlohmann::json j;
  j["format"] = "qleap-kv-calibration-1";
  j["n_layers"] = c.n_layers;
  j["n_heads"] = c.n_heads;
  j["n_kv_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["n_tokens"] = c.n_tokens;
  j["n_queries"] = c.n_queries;
  j["sum_k"] = c.sum_k;
  j["sum_k2"] = c.sum_k2;
  j["sum_v"] = c.sum_v;
  j["sum_v2"] = c.sum_v2;
  j["sum_q2"] = c.sum_q2;
  return j.dump();
}

KvCalibration kv_calibration_from_json(const std::string& text) {
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || j.value("format", "") != "qleap-kv-calibration-1")
    throw FormatError("not a qleap kv calibration file");
  KvCalibration c;
  auto get_int = [&](const char* k) {
    const auto it = j.find(k);
    if (it == j.end() || !it->is_number_integer() || it->get<int64_t>() < 0)
      throw FormatError(fmt::format("kv calibration: '{}' is not a non-negative integer", k));
    return it->get<int64_t>();
  };
  c.n_layers = int(get_int("n_layers"));
  c.n_heads = int(get_int("n_heads"));
  c.n_kv_heads = int(get_int("n_kv_heads"));
  c.head_dim = int(get_int("head_dim"));
  c.n_tokens = get_int("n_tokens");
  c.n_queries = get_int("n_queries");
  if (c.n_kv_heads <= 0 || c.head_dim <= 0 || c.n_layers <= 0 || c.n_heads % c.n_kv_heads != 0 ||
      int64_t(c.n_layers) * c.n_kv_heads * c.head_dim > (int64_t(1) << 28))
    throw FormatError("kv calibration: bad shape");
  const size_t n = size_t(c.n_layers) * size_t(c.kv_dim());
  for (auto [key, dst] : {std::pair{"sum_k", &c.sum_k},
                          {"sum_k2", &c.sum_k2},
                          {"sum_v", &c.sum_v},
                          {"sum_v2", &c.sum_v2},
                          {"sum_q2", &c.sum_q2}}) {
    const auto it = j.find(key);
    if (it == j.end() || !it->is_array() || it->size() != n)
      throw FormatError(fmt::format("kv calibration: '{}' must hold {} numbers", key, n));
    dst->reserve(n);
    for (const auto& x : *it) {
      if (!x.is_number()) throw FormatError(fmt::format("kv calibration: '{}' holds a non-number", key));
      const double d = x.get<double>();
      if (!std::isfinite(d))
        throw FormatError(fmt::format("kv calibration: '{}' holds a non-finite value", key));
      dst->push_back(d);
    }
  }
  return c;
}

}  // namespace qleap
