// A simulated device for the Engine's device path on a machine without a GPU: it computes with the CPU
// kernels, but declares itself a device (is_host() false) and behaves like one where the driver can
// tell: activations in buffers of its own that the driver must copy to and from, weights usable only
// after prepare() (an unprepared tensor throws, as on CUDA), host-pointer reads of activations never
// needed. Counts what the driver asked of it.
#pragma once
#include <memory>
#include <set>
#include <stdexcept>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace qleap::testing {

class SimDeviceBackend final : public Backend {
 public:
  explicit SimDeviceBackend(ThreadPool& pool) : cpu_(pool) {}
  std::string name() const override { return "simdev"; }
  bool is_host() const override { return false; }
  ActBuffer alloc_floats(size_t n) override { return cpu_.alloc_floats(n); }
  void upload(float* dst, const float* host, size_t n) override {
    ++uploads;
    cpu_.upload(dst, host, n);
  }
  void download(float* host, const float* src, size_t n) override {
    ++downloads;
    cpu_.download(host, src, n);
  }
  void sync() override {}
  void prepare(const WeightView& w) override {
    if (w.type != GgmlType::F32 && w.type != GgmlType::F16 && w.type != GgmlType::Q8_0 &&
        w.type != GgmlType::Q4_0)
      throw Unsupported("simdev: no kernel for this format");
    prepared.insert(w.data);
  }
  void prepare(const std::vector<float>& v) override {
    if (!v.empty()) prepared.insert(v.data());
  }
  size_t prepared_bytes() const override { return 0; }
  void set_rope(const RopeTable& rope) override { cpu_.set_rope(rope); }
  void set_positions(const int32_t* pos, int m) override {
    cpu_.set_positions(pos, m);
    dev_pos_.assign(pos, pos + m);
  }
  // The "device copy" of the positions, as device caches would read it.
  const int32_t* device_positions() const override { return dev_pos_.data(); }

  void rms_norm(const float* x, const std::vector<float>& w, float* y, int m, int n, float eps) override {
    need(w.data());
    cpu_.rms_norm(x, w, y, m, n, eps);
  }
  void matmul(const WeightView& w, const float* x, int m, float* y, bool accumulate) override {
    need(w.data);
    cpu_.matmul(w, x, m, y, accumulate);
  }
  void add(float* y, const float* x, int64_t n) override { cpu_.add(y, x, n); }
  void silu_mul(float* g, const float* u, int m, int n) override { cpu_.silu_mul(g, u, m, n); }
  void qk_prep(const QkPrep& a, int m) override {
    for (const std::vector<float>* v : {a.bq, a.bk, a.bv, a.q_norm, a.k_norm}) {
      if (v != nullptr && !v->empty()) need(v->data());
    }
    cpu_.qk_prep(a, m);
  }
  void run_captured(uint64_t key, const std::function<void()>& body) override {
    captured_keys.insert(key);
    ++captured_runs;
    body();
  }

  std::set<const void*> prepared;
  std::set<uint64_t> captured_keys;
  int captured_runs = 0;
  int uploads = 0, downloads = 0;

 private:
  void need(const void* p) const {
    if (!prepared.count(p)) throw std::logic_error("simdev: a tensor was used without prepare()");
  }
  CpuBackend cpu_;
  std::vector<int32_t> dev_pos_;
};

}  // namespace qleap::testing
