// The ops table the model's forward pass is written over: one implementation per backend (CPU in
// backend/cpu/cpu_backend.h, CUDA in backend/cuda/), so an architecture is described once and any of
// its layers can run on either. An eager sequence of calls, no graph: each op runs (or, on a device,
// is queued) when called.
//
// Activations are float buffers that live where the backend computes (host memory for the CPU,
// device memory for CUDA): pointers handed to the ops below are such buffers, made with
// alloc_floats(). Weights are handed in as the host views the model holds (WeightView, the norm and
// bias vectors); a device backend keeps its own copy of every tensor it was given in prepare(), found
// by the host address. Passing a tensor that was not prepared is an error, never a silent host read.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/rope.h"
#include "tensor/weight_view.h"

namespace qleap {

class ThreadPool;

// A float buffer in a backend's memory.
class ActBuffer {
 public:
  ActBuffer() = default;
  ActBuffer(float* p, size_t n, std::function<void(float*)> free) : p_(p), n_(n), free_(std::move(free)) {}
  ActBuffer(const ActBuffer&) = delete;
  ActBuffer& operator=(const ActBuffer&) = delete;
  ActBuffer(ActBuffer&& o) noexcept { *this = std::move(o); }
  ActBuffer& operator=(ActBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    std::swap(free_, o.free_);
    return *this;
  }
  ~ActBuffer() {
    if (p_ && free_) free_(p_);
  }
  float* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  float* p_ = nullptr;
  size_t n_ = 0;
  std::function<void(float*)> free_;
};

// The per-token part of attention's input preparation: projection biases, per-head (or whole
// projection) RMSNorm of q and k, and RoPE at each token's position. q is m x n_heads * head_dim, k and
// v are m x n_kv_heads * head_dim, all in place.
struct QkPrep {
  float* q = nullptr;
  float* k = nullptr;
  float* v = nullptr;
  const std::vector<float>* bq = nullptr;  // empty or null: no bias
  const std::vector<float>* bk = nullptr;
  const std::vector<float>* bv = nullptr;
  const std::vector<float>* q_norm = nullptr;  // head_dim floats (or q_dim when norm_full); may be empty
  const std::vector<float>* k_norm = nullptr;
  bool norm_full = false;  // q_norm / k_norm span the whole projection (olmoe)
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float eps = 1e-5f;
};

class Backend {
 public:
  virtual ~Backend();
  virtual std::string name() const = 0;  // "cpu", "cuda:0"
  // Activations live in host memory (the CPU): host code may read and write them directly.
  virtual bool is_host() const = 0;

  // ---- memory ----
  virtual ActBuffer alloc_floats(size_t n) = 0;
  // Host <-> backend copies of n floats (plain memcpy on the CPU). Queued in order with the ops.
  virtual void upload(float* dst, const float* host, size_t n) = 0;
  virtual void download(float* host, const float* src, size_t n) = 0;
  // Waits until every queued op and copy has finished (a no-op on the CPU).
  virtual void sync() = 0;

  // ---- tensors ----
  // Makes the backend's copy of a weight or vector (no-op on the CPU). Throws Unsupported for a
  // format the backend has no kernel for.
  virtual void prepare(const WeightView& w) = 0;
  virtual void prepare(const std::vector<float>& v) = 0;
  virtual size_t prepared_bytes() const = 0;
  // The RoPE table of this context (copied by device backends).
  virtual void set_rope(const RopeTable& rope) = 0;
  // Positions of the rows of the next ops (m tokens, pos[t] for row t): RoPE and the device KV
  // caches read them. The array is copied.
  virtual void set_positions(const int32_t* pos, int m) = 0;
  // Device copy of the positions set last (nullptr on the CPU).
  virtual const int32_t* device_positions() const = 0;

  // ---- ops (m rows) ----
  // y = rms_norm(x) * w, row by row (x, y: m x n; y may alias x).
  virtual void rms_norm(const float* x, const std::vector<float>& w, float* y, int m, int n, float eps) = 0;
  // y (m x w.rows) = x (m x w.cols) W^T; accumulate: y += that.
  virtual void matmul(const WeightView& w, const float* x, int m, float* y, bool accumulate = false) = 0;
  // y += x (n floats).
  virtual void add(float* y, const float* x, int64_t n) = 0;
  // g = silu(g) * u over m rows of n.
  virtual void silu_mul(float* g, const float* u, int m, int n) = 0;
  virtual void qk_prep(const QkPrep& a, int m) = 0;

  // ---- capture ----
  // Runs body, which queues ops only (no host reads of activations, no syncs). A device backend may
  // record it the first time under `key` and replay the recording on later calls with the same key
  // instead of calling body (CUDA graphs); the CPU just calls body.
  virtual void run_captured(uint64_t key, const std::function<void()>& body) { (void)key, body(); }
  // Forgets recordings (call when buffers or caches a recording used are replaced).
  virtual void drop_captures() {}

  // The CPU backend's pool (ops that are host-only, like MoE routing, use it); nullptr elsewhere.
  virtual ThreadPool* pool() { return nullptr; }
};

}  // namespace qleap
