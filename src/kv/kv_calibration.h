// Making a KvCalibration (kv_cache.h): a cache wrapper that passes every call through to a float
// cache and sums what the calibration needs, so that a plain forward pass over a calibration text
// with this cache in place yields the model's key, value and query statistics.
#pragma once
#include <memory>
#include <string>

#include "kv/kv_cache.h"

namespace qleap {

// The float keys, values and queries of one chunk of a sequence, per layer (n x kv_dim, n x kv_dim,
// n x q_dim), and the attention scale the model used: what a sensitivity measurement replays.
struct KvChunkRows {
  int n = 0;
  float scale = 0;
  std::vector<std::vector<float>> k, v, q;
};

class KvCalibrationRecorder final : public KvCache {
 public:
  // keep_rows: also keep every stored key and value and every query (rows()), for a measurement.
  explicit KvCalibrationRecorder(const KvShape& shape, bool keep_rows = false);
  using KvCache::attend;
  using KvCache::store;
  void store(int layer, const KvSpan& s, const float* k, const float* v) override;
  void attend(int layer, const KvSpan& s, const float* q, float* out, float scale, ThreadPool& pool) override;
  void reset() override;
  size_t bytes_per_token() const override { return inner_->bytes_per_token(); }
  size_t allocated_bytes() const override { return inner_->allocated_bytes(); }
  const char* type_name() const override { return "calibration"; }

  // What was summed so far (each layer must have seen the same tokens).
  const KvCalibration& result() const { return cal_; }
  const KvChunkRows& rows() const { return rows_; }

 private:
  std::unique_ptr<KvCache> inner_;
  bool keep_rows_ = false;
  KvChunkRows rows_;
  KvCalibration cal_;
  std::vector<int64_t> n_k_, n_q_;  // per layer
};

// Serialization for the per-model cache of calibrations (runtime/kv_calibrate.h): a JSON object
// with the shape, counts and sums. from_json throws FormatError on anything malformed.
std::string kv_calibration_to_json(const KvCalibration& c);
KvCalibration kv_calibration_from_json(const std::string& text);

}  // namespace qleap
