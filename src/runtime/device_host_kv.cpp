#include "runtime/device_host_kv.h"

#include <vector>

namespace qleap {
namespace {

class DeviceHostKv final : public KvCache {
 public:
  DeviceHostKv(Backend& be, std::unique_ptr<KvCache> host)
      : KvCache(host->shape()), be_(be), host_(std::move(host)) {}
  using KvCache::attend;
  using KvCache::store;

  void store(int layer, const KvSpan& s, const float* k, const float* v) override {
    const size_t n = size_t(s.n) * size_t(shape_.kv_dim());
    k_.resize(n);
    v_.resize(n);
    be_.download(k_.data(), k, n);
    be_.download(v_.data(), v, n);
    be_.sync();
    host_->store(layer, KvSpan{s.pos0, s.n, nullptr}, k_.data(), v_.data());
  }
  void attend(int layer, const KvSpan& s, const float* q, float* out, float scale,
              ThreadPool& pool) override {
    const size_t n = size_t(s.n) * size_t(shape_.q_dim());
    q_.resize(n);
    o_.resize(n);
    be_.download(q_.data(), q, n);
    be_.sync();
    host_->attend(layer, KvSpan{s.pos0, s.n, nullptr}, q_.data(), o_.data(), scale, pool);
    be_.upload(out, o_.data(), n);
    be_.sync();  // o_ is reused by the next call
  }
  void reset() override { host_->reset(); }
  void trim(int n) override { host_->trim(n); }
  bool trims_exactly(int n) const override { return host_->trims_exactly(n); }
  bool wants_calibration() const override { return host_->wants_calibration(); }
  void calibrate(const KvCalibration& c) override { host_->calibrate(c); }
  KvStats stats() const override { return host_->stats(); }
  size_t bytes_per_token() const override { return host_->bytes_per_token(); }
  size_t allocated_bytes() const override { return host_->allocated_bytes(); }
  const char* type_name() const override { return host_->type_name(); }
  bool on_host() const override { return true; }

 private:
  Backend& be_;
  std::unique_ptr<KvCache> host_;
  std::vector<float> k_, v_, q_, o_;
};

}  // namespace

std::unique_ptr<KvCache> make_device_host_kv(Backend& device, std::unique_ptr<KvCache> host) {
  return std::make_unique<DeviceHostKv>(device, std::move(host));
}

}  // namespace qleap
