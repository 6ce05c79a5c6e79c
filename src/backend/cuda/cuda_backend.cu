// The backend ops on a CUDA device (backend/backend.h): one stream per backend, the kernels of
// cuda_ops.cu / cuda_matmul.cu, cuBLAS for multi-row matmuls, and decode steps recorded once as CUDA
// graphs and replayed (every kernel reads the step's positions from device memory, so one recording
// serves every step).
//
// Not yet run on a GPU: this file compiles in CI; the CUDA tests (tests/unit/cuda_*.cpp) skip
// without a device, and scripts/gpu_check.sh runs them where there is one.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <tuple>

#include "backend/cuda/cuda_api.h"
#include "backend/cuda/cuda_backend.cuh"
#include "backend/cuda/cuda_blas.cuh"
#include "core/error.h"

namespace qleap::cuda {
namespace {

constexpr size_t kWeightSliceBytes = size_t(128) << 20;  // f16 dequantized weight slice for GEMMs

// Device copies of host tensors, shared by every backend of a device that prepares the same host
// address: a server's models and a bench's sessions upload each tensor once. The entries expire
// with the last backend holding them; the host address stays valid as long as its model, which
// outlives the backends that use it.
struct SharedTensors {
  std::mutex mu;
  std::map<std::pair<int, const void*>, std::weak_ptr<const DevWeight>> weights;
  std::map<std::pair<int, const void*>, std::weak_ptr<const DevBuf<float>>> vecs;
};
SharedTensors& shared() {
  static SharedTensors s;
  return s;
}

void check_free(size_t need, const char* what) {
  size_t free_b = 0, total_b = 0;
  QL_CUDA(cudaMemGetInfo(&free_b, &total_b));
  if (need > free_b) {
    char msg[256];
    std::snprintf(
        msg, sizeof msg,
        "%s needs %.2f GiB of GPU memory but %.2f GiB are free: offload fewer layers (--gpu-layers) "
        "or use a smaller --ctx",
        what, double(need) / double(1 << 30), double(free_b) / double(1 << 30));
    throw InvalidArgument(msg);
  }
}

}  // namespace

CudaBackend::CudaBackend(int device) : device_(device) {
  if (device < 0 || device >= device_count()) throw Unsupported("--gpu-layers: no CUDA device");
  QL_CUDA(cudaSetDevice(device));
  const char* g = std::getenv("QLEAP_CUDA_GRAPHS");
  use_graphs_ = !(g && std::string(g) == "0");
  QL_CUDA(cudaStreamCreateWithFlags(&st_, cudaStreamNonBlocking));
  try {
    QL_CUBLAS(blas::create(&blas_));
    QL_CUBLAS(blas::set_stream(blas_, st_));
  } catch (...) {
    cudaStreamDestroy(st_);
    throw;
  }
}

CudaBackend::~CudaBackend() {
  drop_captures();
  if (h_pos_) cudaFreeHost(h_pos_);
  if (blas_) blas::destroy(blas_);
  if (st_) cudaStreamDestroy(st_);
}

std::string CudaBackend::name() const {
  return "cuda:" + std::to_string(device_);
}

ActBuffer CudaBackend::alloc_floats(size_t n) {
  float* p = nullptr;
  QL_CUDA(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(float)));
  QL_CUDA(cudaMemsetAsync(p, 0, std::max<size_t>(1, n) * sizeof(float), st_));
  return ActBuffer(p, n, [](float* q) { cudaFree(q); });
}

void CudaBackend::upload(float* dst, const float* host, size_t n) {
  QL_CUDA(cudaMemcpyAsync(dst, host, n * sizeof(float), cudaMemcpyHostToDevice, st_));
}

void CudaBackend::download(float* host, const float* src, size_t n) {
  QL_CUDA(cudaMemcpyAsync(host, src, n * sizeof(float), cudaMemcpyDeviceToHost, st_));
}

void CudaBackend::sync() {
  QL_CUDA(cudaStreamSynchronize(st_));
}

void CudaBackend::prepare(const WeightView& w) {
  if (weights_.count(w.data)) return;
  if (!gpu_supports(w.type))
    throw Unsupported(std::string("--gpu-layers: no CUDA kernel for ") + type_name(w.type) + " weights");
  SharedTensors& sh = shared();
  std::lock_guard<std::mutex> lock(sh.mu);
  auto& slot = sh.weights[{device_, w.data}];
  std::shared_ptr<const DevWeight> d = slot.lock();
  if (!d) {
    check_free(device_weight_bytes(w), "--gpu-layers");
    d = std::make_shared<const DevWeight>(upload_weight(w));
    slot = d;
  }
  weights_[w.data] = d;
  const size_t slice = std::max(size_t(w.cols), kWeightSliceBytes / 2);
  if (gemm_.wtmp_elems < slice) gemm_.reserve(0, slice);
}

void CudaBackend::prepare(const std::vector<float>& v) {
  if (v.empty() || vecs_.count(v.data())) return;
  SharedTensors& sh = shared();
  std::lock_guard<std::mutex> lock(sh.mu);
  auto& slot = sh.vecs[{device_, v.data()}];
  std::shared_ptr<const DevBuf<float>> d = slot.lock();
  if (!d) {
    auto b = std::make_shared<DevBuf<float>>(v.size());
    b->upload(v.data(), v.size());
    d = b;
    slot = d;
  }
  vecs_[v.data()] = d;
}

size_t CudaBackend::prepared_bytes() const {
  size_t b = rope_.bytes();
  for (const auto& [k, w] : weights_) b += w->bytes();
  for (const auto& [k, v] : vecs_) b += v->bytes();
  return b;
}

const DevWeight& CudaBackend::weight(const WeightView& w) const {
  auto it = weights_.find(w.data);
  if (it == weights_.end()) throw InvalidArgument("CUDA backend: a weight was used without prepare()");
  return *it->second;
}

const float* CudaBackend::vec(const std::vector<float>& v) const {
  if (v.empty()) return nullptr;
  auto it = vecs_.find(v.data());
  if (it == vecs_.end()) throw InvalidArgument("CUDA backend: a vector was used without prepare()");
  return it->second->get();
}

void CudaBackend::set_rope(const RopeTable& rope) {
  drop_captures();  // recordings read the old table
  rope_.alloc(size_t(rope.n_pos()) * rope.n_rot());
  rope_.upload(rope.at(0), rope_.size());
  n_rot_ = rope.n_rot();
  neox_ = rope.style() == RopeStyle::kNeox;
}

void CudaBackend::set_positions(const int32_t* pos, int m) {
  if (size_t(m) > h_pos_cap_) {
    QL_CUDA(cudaStreamSynchronize(st_));  // the old staging buffer may still be read by a copy
    drop_captures();                      // recordings read the old device buffer
    if (h_pos_) cudaFreeHost(h_pos_);
    h_pos_ = nullptr;
    const size_t cap = std::max<size_t>(size_t(m), 64);
    QL_CUDA(cudaMallocHost(&h_pos_, cap * sizeof(int32_t)));
    h_pos_cap_ = cap;
    pos_.alloc(cap);
  } else {
    QL_CUDA(cudaStreamSynchronize(st_));  // the staging buffer is reused: the last copy must be done
  }
  std::memcpy(h_pos_, pos, size_t(m) * sizeof(int32_t));
  QL_CUDA(cudaMemcpyAsync(pos_.get(), h_pos_, size_t(m) * sizeof(int32_t), cudaMemcpyHostToDevice, st_));
}

void CudaBackend::rms_norm(const float* x, const std::vector<float>& w, float* y, int m, int n, float eps) {
  cuda::rms_norm(x, vec(w), y, m, n, eps, st_);
}

void CudaBackend::matmul(const WeightView& w, const float* x, int m, float* y, bool accumulate) {
  const DevWeight& d = weight(w);
  if (m > 1 && gemm_.xh.size() < size_t(m) * size_t(w.cols)) gemm_.reserve(size_t(m) * size_t(w.cols), 0);
  cuda::matmul(d, x, m, y, accumulate, st_, blas_, gemm_);
}

void CudaBackend::add(float* y, const float* x, int64_t n) {
  cuda::add(y, x, n, st_);
}

void CudaBackend::silu_mul(float* g, const float* u, int m, int n) {
  cuda::silu_mul(g, u, int64_t(m) * n, st_);
}

void CudaBackend::qk_prep(const QkPrep& a, int m) {
  const auto has = [](const std::vector<float>* v) { return v != nullptr && !v->empty(); };
  QkvPostArgs p{};
  p.q = a.q;
  p.k = a.k;
  p.v = a.v;
  p.bq = has(a.bq) ? vec(*a.bq) : nullptr;
  p.bk = has(a.bk) ? vec(*a.bk) : nullptr;
  p.bv = has(a.bv) ? vec(*a.bv) : nullptr;
  if (a.norm_full) {
    // The norm spans the whole projection: a row norm over q_dim / kv_dim, then RoPE without norms.
    cuda::rms_norm(a.q, vec(*a.q_norm), a.q, m, a.n_heads * a.head_dim, a.eps, st_);
    cuda::rms_norm(a.k, vec(*a.k_norm), a.k, m, a.n_kv_heads * a.head_dim, a.eps, st_);
  } else {
    p.q_norm = has(a.q_norm) ? vec(*a.q_norm) : nullptr;
    p.k_norm = has(a.k_norm) ? vec(*a.k_norm) : nullptr;
  }
  p.rope = rope_.get();
  p.n_rot = n_rot_;
  p.neox = neox_ ? 1 : 0;
  p.k_cache = nullptr;
  p.v_cache = nullptr;
  p.n_heads = a.n_heads;
  p.n_kv_heads = a.n_kv_heads;
  p.hd = a.head_dim;
  p.eps = a.eps;
  qkv_post(p, m, pos_.get(), st_);
}

void CudaBackend::run_captured(uint64_t key, const std::function<void()>& body) {
  if (!use_graphs_) return body();
  if (auto it = graphs_.find(key); it != graphs_.end()) {
    QL_CUDA(cudaGraphLaunch(it->second, st_));
    return;
  }
  cudaGraph_t g = nullptr;
  QL_CUDA(cudaStreamBeginCapture(st_, cudaStreamCaptureModeThreadLocal));
  try {
    body();
  } catch (...) {
    if (cudaStreamEndCapture(st_, &g) == cudaSuccess && g) cudaGraphDestroy(g);
    cudaGetLastError();
    throw;
  }
  QL_CUDA(cudaStreamEndCapture(st_, &g));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  QL_CUDA(e);
  graphs_[key] = exec;
  QL_CUDA(cudaGraphLaunch(exec, st_));
}

void CudaBackend::drop_captures() {
  for (auto& [k, g] : graphs_) cudaGraphExecDestroy(g);
  graphs_.clear();
}

std::unique_ptr<Backend> make_backend(int device) {
  return std::make_unique<CudaBackend>(device);
}

bool supports_format(GgmlType t) {
  return gpu_supports(t);
}

}  // namespace qleap::cuda
