// The CPU implementation of the backend ops (backend/backend.h): activations in host memory, the
// matmul kernels of backend/cpu/matmul.h and the row kernels of backend/cpu/ops.h, threaded over a
// pool. Weights are read where they are (the memory-mapped model file); prepare() has nothing to do.
#pragma once
#include "backend/backend.h"
#include "core/thread_pool.h"

namespace qleap {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(ThreadPool& pool) : pool_(pool) {}

  std::string name() const override { return "cpu"; }
  bool is_host() const override { return true; }
  ActBuffer alloc_floats(size_t n) override;
  void upload(float* dst, const float* host, size_t n) override;
  void download(float* host, const float* src, size_t n) override;
  void sync() override {}
  void prepare(const WeightView&) override {}
  void prepare(const std::vector<float>&) override {}
  size_t prepared_bytes() const override { return 0; }
  void set_rope(const RopeTable& rope) override { rope_ = &rope; }
  void set_rope_swa(const RopeTable& rope) override { rope_swa_ = &rope; }
  void set_positions(const int32_t* pos, int m) override;
  const int32_t* device_positions() const override { return nullptr; }

  void rms_norm(const float* x, const std::vector<float>& w, float* y, int m, int n, float eps) override;
  void matmul(const WeightView& w, const float* x, int m, float* y, bool accumulate) override;
  void matmul_many(std::span<const MatmulOut> outs, const float* x, int m) override;
  void add(float* y, const float* x, int64_t n) override;
  void silu_mul(float* g, const float* u, int m, int n) override;
  void gelu_mul(float* g, const float* u, int m, int n) override;
  void qk_prep(const QkPrep& a, int m) override;
  void split_heads(const float* x, float* a, float* b, int m, int n_heads, int head_dim) override;
  void sigmoid_mul(float* y, const float* g, int m, int n) override;
  void delta_net(const DeltaNetArgs& a, int m) override;
  ThreadPool* pool() override { return &pool_; }

 private:
  ThreadPool& pool_;
  const RopeTable* rope_ = nullptr;
  const RopeTable* rope_swa_ = nullptr;
  std::vector<int32_t> pos_;
  std::vector<float> acc_;  // matmul(accumulate) result before it is added
};

}  // namespace qleap
