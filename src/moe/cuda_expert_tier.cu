// ExpertFlow's fast tier on the GPU (moe/expert_tier.h), built from the CUDA backend's weight layouts
// and kernels (backend/cuda/cuda_common.cuh). Every MoE layer has `slots` expert slots
// in device memory, each holding one expert's gate, up and down matrices in the matmul kernels'
// layout (cuda_matmul.cu). Uploads: a host thread re-lays out the expert into one of two pinned
// staging buffers and queues the copy on the copy stream, so a promotion costs the forward thread
// nothing; each slot has an event recorded after its latest copy, and ready() asks that event
// without blocking. Computes queue the activations' upload, the three matmuls, the experts' activation
// (ExpertSet::act: SwiGLU or gpt-oss's clamped one, with the experts' biases when they have them, as
// model/moe_block.cpp computes it) and the result's download on the compute stream; sync() waits for it.
//
// Not yet run on a GPU: it compiles in CI, and its test (CudaExpertTier.*) skips without a device.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "backend/cuda/cuda_api.h"
#include "backend/cuda/cuda_blas.cuh"
#include "backend/cuda/cuda_common.cuh"
#include "core/error.h"
#include "moe/expert_tier.h"

namespace qleap {
namespace cuda {
namespace {

// g = act(g + gate_b, u + up_b) over rows of nf (biases may be null), as expert_glu (moe_block.h).
__global__ void expert_glu_kernel(float* __restrict__ g, const float* __restrict__ u,
                                  const float* __restrict__ gb, const float* __restrict__ ub, int nf,
                                  int64_t total, float alpha, float limit) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int c = int(i % nf);
  float a = g[i] + (gb != nullptr ? gb[c] : 0.0f);
  float b = u[i] + (ub != nullptr ? ub[c] : 0.0f);
  if (alpha > 0) {
    a = fminf(a, limit);
    b = fminf(fmaxf(b, -limit), limit);
    g[i] = (b + 1.0f) * a / (1.0f + __expf(-alpha * a));
  } else {
    g[i] = a / (1.0f + __expf(-a)) * b;
  }
}

// y (rows of n) += b.
__global__ void add_rows_bias_kernel(float* __restrict__ y, const float* __restrict__ b, int n,
                                     int64_t total) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total) y[i] += b[i % n];
}

constexpr int kThreads = 256;
unsigned blocks_for(int64_t total) {
  return unsigned((total + kThreads - 1) / kThreads);
}

class CudaExpertTier final : public ExpertTier {
 public:
  CudaExpertTier(const ExpertSet& set, int slots, int max_rows)
      : set_(set), slots_(slots), max_rows_(max_rows) {
    if (device_count() == 0) throw Unsupported("--expert-tier cuda: no CUDA device");
    if (slots < 0 || slots > set.n_expert) throw InvalidArgument("CUDA expert tier: bad slot count");
    if (max_rows <= 0) throw InvalidArgument("CUDA expert tier: max_rows must be positive");
    QL_CUDA(cudaGetDevice(&device_));
    size_t staging = 0, max_w = 0;
    for (const MoeWeights* w : set.layers) {
      for (const WeightView* v : {&w->gate[0], &w->up[0], &w->down[0]}) {
        if (!gpu_supports(v->type))
          throw Unsupported(std::string("--expert-tier cuda: no CUDA kernel for expert type ") +
                            type_name(v->type));
        max_w = std::max(max_w, size_t(v->rows) * size_t(v->cols));
      }
      staging = std::max(staging, device_weight_bytes(w->gate[0]) + device_weight_bytes(w->up[0]) +
                                      device_weight_bytes(w->down[0]) + bias_floats() * sizeof(float));
    }
    slot_.resize(size_t(set.n_moe()) * size_t(slots));
    for (int li = 0; li < set.n_moe(); ++li) {
      const MoeWeights& w = *set.layers[size_t(li)];
      for (int s = 0; s < slots; ++s) {
        auto sl = std::make_unique<Slot>();
        DevWeight* d[3] = {&sl->gate, &sl->up, &sl->down};
        const WeightView* v[3] = {&w.gate[0], &w.up[0], &w.down[0]};
        for (int i = 0; i < 3; ++i) {
          d[i]->type = v[i]->type;
          d[i]->rows = v[i]->rows;
          d[i]->cols = v[i]->cols;
          d[i]->row_bytes = gpu_row_bytes(v[i]->type, v[i]->cols);
          d[i]->data.alloc(d[i]->row_bytes * size_t(v[i]->rows));
        }
        if (set.biases) sl->bias.alloc(bias_floats());
        QL_CUDA(cudaEventCreateWithFlags(&sl->landed, cudaEventDisableTiming));
        slot_[size_t(li) * size_t(slots) + size_t(s)] = std::move(sl);
      }
    }
    QL_CUDA(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
    QL_CUDA(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking));
    QL_CUBLAS(blas::create(&blas_));
    QL_CUBLAS(blas::set_stream(blas_, compute_));
    for (auto& st : staging_) {
      QL_CUDA(cudaMallocHost(&st.p, staging));
      QL_CUDA(cudaEventCreateWithFlags(&st.done, cudaEventDisableTiming));
    }
    const size_t rows = size_t(max_rows), n = size_t(set.n_embd), nf = size_t(set.n_ff);
    QL_CUDA(cudaMallocHost(&h_x_, rows * n * sizeof(float)));
    QL_CUDA(cudaMallocHost(&h_y_, rows * n * sizeof(float)));
    d_x_.alloc(rows * n);
    d_y_.alloc(rows * n);
    d_g_.alloc(rows * nf);
    d_u_.alloc(rows * nf);
    gemm_.reserve(rows * std::max(n, nf), max_w);
    copy_thread_ = std::thread([this] { copy_main(); });
  }

  ~CudaExpertTier() override {
    {
      std::lock_guard<std::mutex> l(m_);
      stop_ = true;
    }
    cv_.notify_all();
    copy_thread_.join();
    cudaStreamSynchronize(copy_);
    cudaStreamSynchronize(compute_);
    for (auto& sl : slot_) cudaEventDestroy(sl->landed);
    for (auto& st : staging_) {
      cudaEventDestroy(st.done);
      cudaFreeHost(st.p);
    }
    cudaFreeHost(h_x_);
    cudaFreeHost(h_y_);
    blas::destroy(blas_);
    cudaStreamDestroy(copy_);
    cudaStreamDestroy(compute_);
  }

  std::string name() const override { return "cuda"; }
  int slots_per_layer() const override { return slots_; }

  void upload(int layer, int expert, int s) override {
    Slot& sl = slot(layer, s);
    if (expert < 0 || expert >= set_.n_expert) throw InvalidArgument("CUDA expert tier: expert out of range");
    if (!pending_.empty())
      throw InvalidArgument("CUDA expert tier: upload while computes are queued (sync first)");
    std::lock_guard<std::mutex> l(m_);
    if (error_) std::rethrow_exception(error_);
    sl.requested = ++next_ticket_;
    queue_.push_back(Upload{layer, expert, s, sl.requested});
    cv_.notify_one();
  }

  bool ready(int layer, int s) const override {
    const Slot& sl = slot(layer, s);
    if (sl.requested == 0 || sl.issued.load(std::memory_order_acquire) != sl.requested) return false;
    const cudaError_t e = cudaEventQuery(sl.landed);
    if (e == cudaSuccess) return true;
    if (e != cudaErrorNotReady) throw_cuda(e, "cudaEventQuery", __FILE__, __LINE__);
    // Some runtimes record "not ready" as the thread's last error; clear it, or the next kernel
    // launch check (cudaGetLastError) would report it.
    (void)cudaGetLastError();
    return false;
  }

  void wait_uploads() override {
    std::unique_lock<std::mutex> l(m_);
    idle_.wait(l, [&] { return (queue_.empty() && !busy_) || error_; });
    if (error_) std::rethrow_exception(error_);
  }

  void compute(int layer, int s, const float* x, int rows, float* y) override {
    if (!ready(layer, s)) throw InvalidArgument("CUDA expert tier: compute on a slot before its upload");
    const size_t n = size_t(set_.n_embd);
    if (rows <= 0 || used_rows_ + rows > max_rows_) throw InvalidArgument("CUDA expert tier: too many rows");
    const Slot& sl = slot(layer, s);
    const size_t off = size_t(used_rows_) * n;
    std::memcpy(h_x_ + off, x, size_t(rows) * n * sizeof(float));
    QL_CUDA(cudaMemcpyAsync(d_x_.get() + off, h_x_ + off, size_t(rows) * n * sizeof(float),
                            cudaMemcpyHostToDevice, compute_));
    matmul(sl.gate, d_x_.get() + off, rows, d_g_.get(), false, compute_, blas_, gemm_);
    matmul(sl.up, d_x_.get() + off, rows, d_u_.get(), false, compute_, blas_, gemm_);
    const int64_t gn = int64_t(rows) * sl.gate.rows;
    if (set_.act.clamped() || sl.has_bias[0] || sl.has_bias[1]) {
      const int nf = int(sl.gate.rows);
      expert_glu_kernel<<<blocks_for(gn), kThreads, 0, compute_>>>(
          d_g_.get(), d_u_.get(), sl.has_bias[0] ? sl.bias.get() : nullptr,
          sl.has_bias[1] ? sl.bias.get() + nf : nullptr, nf, gn, set_.act.alpha, set_.act.limit);
      QL_CHECK_LAUNCH();
    } else {
      silu_mul(d_g_.get(), d_u_.get(), gn, compute_);
    }
    matmul(sl.down, d_g_.get(), rows, d_y_.get() + off, false, compute_, blas_, gemm_);
    if (sl.has_bias[2]) {
      const int64_t yn = int64_t(rows) * int64_t(n);
      add_rows_bias_kernel<<<blocks_for(yn), kThreads, 0, compute_>>>(
          d_y_.get() + off, sl.bias.get() + 2 * sl.gate.rows, int(n), yn);
      QL_CHECK_LAUNCH();
    }
    QL_CUDA(cudaMemcpyAsync(h_y_ + off, d_y_.get() + off, size_t(rows) * n * sizeof(float),
                            cudaMemcpyDeviceToHost, compute_));
    pending_.push_back(Pending{y, off, rows});
    used_rows_ += rows;
  }

  void sync() override {
    QL_CUDA(cudaStreamSynchronize(compute_));
    const size_t n = size_t(set_.n_embd);
    for (const Pending& p : pending_) std::memcpy(p.y, h_y_ + p.off, size_t(p.rows) * n * sizeof(float));
    pending_.clear();
    used_rows_ = 0;
  }

  uint64_t bytes_uploaded() const override { return bytes_.load(); }
  int64_t uploads_done() const override { return n_uploads_.load(); }

 private:
  struct Slot {
    DevWeight gate, up, down;
    DevBuf<float> bias;     // gate (n_ff), up (n_ff), down (n_embd) biases, ExpertSet::biases
    bool has_bias[3] = {};  // of the expert last uploaded (set before its copy is issued)
    cudaEvent_t landed = nullptr;
    uint64_t requested = 0;           // forward thread only
    std::atomic<uint64_t> issued{0};  // ticket whose copy (and event) is on the copy stream
  };
  struct Upload {
    int layer, expert, slot;
    uint64_t ticket;
  };
  struct Pending {
    float* y;
    size_t off;
    int rows;
  };
  struct Staging {
    uint8_t* p = nullptr;
    cudaEvent_t done = nullptr;
    size_t bytes = 0;  // of the copy in flight from it (counted once it has landed)
    bool in_flight = false;
  };

  // A slot's bias floats: gate and up at the largest FFN width, then down.
  size_t bias_floats() const { return set_.biases ? 2 * size_t(set_.n_ff) + size_t(set_.n_embd) : 0; }

  Slot& slot(int layer, int s) const {
    if (layer < 0 || layer >= set_.n_moe() || s < 0 || s >= slots_)
      throw InvalidArgument("CUDA expert tier: layer or slot out of range");
    return *slot_[size_t(layer) * size_t(slots_) + size_t(s)];
  }

  // Waits for the copy from staging buffer st (if any) and counts it.
  void retire(Staging& st) {
    if (!st.in_flight) return;
    QL_CUDA(cudaEventSynchronize(st.done));
    bytes_.fetch_add(st.bytes);
    n_uploads_.fetch_add(1);
    st.in_flight = false;
  }

  void copy_main() {
    try {
      QL_CUDA(cudaSetDevice(device_));
      int next = 0;
      std::unique_lock<std::mutex> l(m_);
      for (;;) {
        if (queue_.empty()) {
          // Idle: retire what is in flight so that the counters and wait_uploads() are exact.
          l.unlock();
          for (auto& st : staging_) retire(st);
          l.lock();
          if (queue_.empty()) {
            busy_ = false;
            idle_.notify_all();
          }
        }
        cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        const Upload u = queue_.front();
        queue_.pop_front();
        busy_ = true;
        l.unlock();
        Staging& st = staging_[size_t(next)];
        next ^= 1;
        retire(st);  // the buffer's previous copy must have left it
        Slot& sl = slot(u.layer, u.slot);
        const MoeWeights& w = *set_.layers[size_t(u.layer)];
        const WeightView* v[3] = {&w.gate[size_t(u.expert)], &w.up[size_t(u.expert)],
                                  &w.down[size_t(u.expert)]};
        DevWeight* d[3] = {&sl.gate, &sl.up, &sl.down};
        size_t off = 0;
        for (int i = 0; i < 3; ++i) {
          const size_t start = off;
          for (int64_t r = 0; r < v[i]->rows; ++r) {
            repack_row(v[i]->type, static_cast<const uint8_t*>(v[i]->data) + size_t(r) * v[i]->row_bytes,
                       v[i]->cols, st.p + off);
            off += d[i]->row_bytes;
          }
          QL_CUDA(
              cudaMemcpyAsync(d[i]->data.get(), st.p + start, off - start, cudaMemcpyHostToDevice, copy_));
        }
        // Biases at fixed offsets of the slot's bias buffer (gate at 0, up at n_ff, down at 2 n_ff of
        // this expert's width), after the weights in the staging buffer.
        const int nf = int(v[0]->rows), n = set_.n_embd;
        const float* b[3] = {expert_gate_bias(w, u.expert, nf), expert_up_bias(w, u.expert, nf),
                             expert_down_bias(w, u.expert, n)};
        const size_t boff[3] = {0, size_t(nf), 2 * size_t(nf)};
        for (int i = 0; i < 3; ++i) {
          sl.has_bias[i] = b[i] != nullptr;
          if (b[i] == nullptr) continue;
          const size_t len = size_t(i == 2 ? n : nf) * sizeof(float);
          std::memcpy(st.p + off, b[i], len);
          QL_CUDA(cudaMemcpyAsync(sl.bias.get() + boff[i], st.p + off, len, cudaMemcpyHostToDevice, copy_));
          off += len;
        }
        QL_CUDA(cudaEventRecord(st.done, copy_));
        QL_CUDA(cudaEventRecord(sl.landed, copy_));
        st.bytes = off;
        st.in_flight = true;
        sl.issued.store(u.ticket, std::memory_order_release);
        l.lock();
      }
    } catch (...) {
      std::lock_guard<std::mutex> g(m_);
      error_ = std::current_exception();
      busy_ = false;
      idle_.notify_all();
    }
  }

  ExpertSet set_;
  int slots_, max_rows_;
  int device_ = 0;
  std::vector<std::unique_ptr<Slot>> slot_;
  cudaStream_t copy_ = nullptr, compute_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  Staging staging_[2];
  float *h_x_ = nullptr, *h_y_ = nullptr;
  DevBuf<float> d_x_, d_y_, d_g_, d_u_;
  GemmScratch gemm_;
  std::vector<Pending> pending_;
  int used_rows_ = 0;
  uint64_t next_ticket_ = 0;
  std::atomic<uint64_t> bytes_{0};
  std::atomic<int64_t> n_uploads_{0};

  std::mutex m_;
  std::condition_variable cv_, idle_;
  std::deque<Upload> queue_;
  bool busy_ = false, stop_ = false;
  std::exception_ptr error_;
  std::thread copy_thread_;
};

}  // namespace
}  // namespace cuda

std::unique_ptr<ExpertTier> make_cuda_expert_tier(const ExpertSet& set, int slots_per_layer, int max_rows) {
  return std::make_unique<cuda::CudaExpertTier>(set, slots_per_layer, max_rows);
}

}  // namespace qleap
