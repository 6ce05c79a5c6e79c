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
#include <span>
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
  bool swa_rope = false;   // rotate with the sliding-window layers' table (set_rope_swa), not set_rope's
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float eps = 1e-5f;
};

// The state one DeltaNet layer keeps for one sequence (backend memory): the last kernel - 1 inputs of
// the causal conv ((kernel - 1) x conv_dim, oldest first) and the delta-rule matrix of every value head
// (n_v_heads x head_k_dim x head_v_dim).
struct DeltaStateRef {
  float* conv = nullptr;
  float* ssm = nullptr;
};

// One gated DeltaNet (Gated Delta Rule linear attention) mixing step over m rows, from the input
// projections to the gated-normalized output that the output projection reads:
//   x = silu(causal_conv1d(qkv)) (state carried), q, k l2-normalized per key head (q / sqrt(head_k_dim)),
//   beta = sigmoid(b), g = a * softplus(alpha + dt_bias) (log decay, a < 0), per value head h the rule
//   S = exp(g) S; S += k (beta (v - S^T k))^T; o = S^T q (key head: see v_tiled),
//   out = rms_norm(o) * norm_w * silu(z) per value head.
// rows == nullptr: the m rows are consecutive tokens of one sequence with state `state` (prefill, chunked
// form); else row t is one token of its own sequence with state rows[t] (decode, recurrent form).
struct DeltaNetArgs {
  float* qkv = nullptr;      // m x conv_dim: q (n_k_heads x head_k_dim) | k (same) | v; overwritten
  const float* z = nullptr;  // m x value_dim
  // m x n_v_heads logits each (or the fused layout, see ba_grouped); a backend may overwrite them.
  float* beta = nullptr;
  float* alpha = nullptr;
  // qwen3next's fused projection: beta holds m x 2 n_v_heads, per key head [r betas, r alphas] of its
  // r = n_v_heads / n_k_heads value heads; alpha is unused.
  bool ba_grouped = false;
  float* out = nullptr;                         // m x value_dim
  const std::vector<float>* conv_w = nullptr;   // conv_dim x kernel
  const std::vector<float>* dt_bias = nullptr;  // n_v_heads
  const std::vector<float>* a = nullptr;        // n_v_heads: -exp(A_log)
  const std::vector<float>* norm_w = nullptr;   // head_v_dim
  int n_k_heads = 0, n_v_heads = 0, head_k_dim = 0, head_v_dim = 0, kernel = 0;
  // Which key head value head h reads: h % n_k_heads (tiled, llama.cpp's qwen35 files) or
  // h / (n_v_heads / n_k_heads) (grouped, transformers and qwen3next files).
  bool v_tiled = false;
  float eps = 1e-6f;  // of the gated RMSNorm
  DeltaStateRef state;
  const DeltaStateRef* rows = nullptr;
  int key_dim() const { return n_k_heads * head_k_dim; }
  int value_dim() const { return n_v_heads * head_v_dim; }
  int conv_dim() const { return 2 * key_dim() + value_dim(); }
  int k_head_of(int h) const { return v_tiled ? h % n_k_heads : h / (n_v_heads / n_k_heads); }
};

// One output of Backend::matmul_many: y (m x w->rows) = x W^T.
struct MatmulOut {
  const WeightView* w = nullptr;
  float* y = nullptr;
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
  // The table of the sliding-window layers when they rotate differently (gemma3: another base, no
  // scaling), used by qk_prep with QkPrep::swa_rope.
  virtual void set_rope_swa(const RopeTable& rope) = 0;
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
  // Several weights on one input x (m x cols, the same cols for all): outs[i].y = x W_i^T, the same
  // results as a matmul call for each. A backend may share the work between them (the CPU quantizes x
  // once and runs all rows in one thread dispatch); by default, one matmul after the other.
  virtual void matmul_many(std::span<const MatmulOut> outs, const float* x, int m) {
    for (const MatmulOut& o : outs) matmul(*o.w, x, m, o.y);
  }
  // y += x (n floats).
  virtual void add(float* y, const float* x, int64_t n) = 0;
  // g = silu(g) * u over m rows of n.
  virtual void silu_mul(float* g, const float* u, int m, int n) = 0;
  // g = gelu_tanh(g) * u over m rows of n (GeGLU, backend/cpu/ops.h gelu_tanh).
  virtual void gelu_mul(float* g, const float* u, int m, int n) = 0;
  virtual void qk_prep(const QkPrep& a, int m) = 0;
  // Per row, per head of 2 * head_dim values: the first half to a, the second to b (a projection that
  // computes two things per head, like the query and its output gate).
  virtual void split_heads(const float* x, float* a, float* b, int m, int n_heads, int head_dim) = 0;
  // y *= sigmoid(g) over m rows of n.
  virtual void sigmoid_mul(float* y, const float* g, int m, int n) = 0;
  virtual void delta_net(const DeltaNetArgs& a, int m) = 0;

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
