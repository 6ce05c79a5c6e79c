// The CUDA backend object (cuda_api.h make_backend), visible to the other .cu files of the backend
// (the device KV caches queue their kernels on its stream).
#pragma once
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_common.cuh"

namespace qleap::cuda {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;

  std::string name() const override;
  bool is_host() const override { return false; }
  ActBuffer alloc_floats(size_t n) override;
  void upload(float* dst, const float* host, size_t n) override;
  void download(float* host, const float* src, size_t n) override;
  void sync() override;
  void prepare(const WeightView& w) override;
  void prepare(const std::vector<float>& v) override;
  size_t prepared_bytes() const override;
  void set_rope(const RopeTable& rope) override;
  void set_positions(const int32_t* pos, int m) override;
  const int32_t* device_positions() const override { return pos_.get(); }

  void rms_norm(const float* x, const std::vector<float>& w, float* y, int m, int n, float eps) override;
  void matmul(const WeightView& w, const float* x, int m, float* y, bool accumulate) override;
  void add(float* y, const float* x, int64_t n) override;
  void silu_mul(float* g, const float* u, int m, int n) override;
  void qk_prep(const QkPrep& a, int m) override;
  void run_captured(uint64_t key, const std::function<void()>& body) override;
  void drop_captures() override;

  cudaStream_t stream() const { return st_; }
  int device() const { return device_; }

 private:
  const DevWeight& weight(const WeightView& w) const;
  const float* vec(const std::vector<float>& v) const;  // nullptr for an empty vector

  int device_ = 0;
  cudaStream_t st_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  GemmScratch gemm_;
  bool use_graphs_ = true;
  DevBuf<float> rope_;
  int n_rot_ = 0;
  bool neox_ = false;
  DevBuf<int32_t> pos_;
  int32_t* h_pos_ = nullptr;  // pinned staging of the positions
  size_t h_pos_cap_ = 0;
  // Tensors this backend prepared, by host address (shared with other backends of the device).
  std::unordered_map<const void*, std::shared_ptr<const DevWeight>> weights_;
  std::unordered_map<const void*, std::shared_ptr<const DevBuf<float>>> vecs_;
  std::map<uint64_t, cudaGraphExec_t> graphs_;
};

}  // namespace qleap::cuda
