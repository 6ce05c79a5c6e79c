// Internal helpers of the CUDA backend: error checks, device buffers, and the launchers that the
// .cu files share. Only included by files compiled with nvcc.
#pragma once
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "backend/cpu/matmul.h"
#include "quant/ggml_type.h"

namespace qleap::cuda {

[[noreturn]] void throw_cuda(cudaError_t e, const char* what, const char* file, int line);
[[noreturn]] void throw_cublas(cublasStatus_t s, const char* what, const char* file, int line);

#define QL_CUDA(x)                                                                \
  do {                                                                            \
    cudaError_t e_ = (x);                                                         \
    if (e_ != cudaSuccess) ::qleap::cuda::throw_cuda(e_, #x, __FILE__, __LINE__); \
  } while (0)
#define QL_CUBLAS(x)                                                                          \
  do {                                                                                        \
    cublasStatus_t s_ = (x);                                                                  \
    if (s_ != CUBLAS_STATUS_SUCCESS) ::qleap::cuda::throw_cublas(s_, #x, __FILE__, __LINE__); \
  } while (0)
#define QL_CHECK_LAUNCH() QL_CUDA(cudaGetLastError())

// Owning device allocation (move-only).
template <class T>
class DevBuf {
 public:
  DevBuf() = default;
  explicit DevBuf(size_t n) { alloc(n); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  DevBuf& operator=(DevBuf&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~DevBuf() {
    if (p_) cudaFree(p_);
  }
  void alloc(size_t n) {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    n_ = n;
    if (n) QL_CUDA(cudaMalloc(&p_, n * sizeof(T)));
  }
  void upload(const T* h, size_t n, size_t off = 0) {
    QL_CUDA(cudaMemcpy(p_ + off, h, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  void download(T* h, size_t n, size_t off = 0) const {
    QL_CUDA(cudaMemcpy(h, p_ + off, n * sizeof(T), cudaMemcpyDeviceToHost));
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// A weight matrix in device memory, re-laid out at upload so that every thread's loads are 16-byte
// aligned (see cuda_matmul.cu for each format's layout). rows x cols like WeightView.
struct DevWeight {
  GgmlType type = GgmlType::F32;
  int64_t rows = 0, cols = 0;
  size_t row_bytes = 0;  // device layout, a multiple of 16
  DevBuf<uint8_t> data;
  size_t bytes() const { return data.bytes(); }
};

// Throws Unsupported for formats without a GPU kernel.
bool gpu_supports(GgmlType t);
// Bytes of one row in the device layout, and the host-side re-layout of one row into it.
size_t gpu_row_bytes(GgmlType t, int64_t cols);
void repack_row(GgmlType t, const uint8_t* src, int64_t cols, uint8_t* dst);
DevWeight upload_weight(const WeightView& w);
size_t device_weight_bytes(const WeightView& w);  // what upload_weight allocates (0: unsupported)
void decode_gpu_layout_host(const WeightView& w, float* out);  // declared for tests in cuda_api.h

// Scratch for the GEMM path: f16 activations and a dequantized slice of the weight.
struct GemmScratch {
  DevBuf<__half> xh;    // m x cols
  DevBuf<__half> wtmp;  // rows_per_pass x cols
  size_t wtmp_elems = 0;
  void reserve(size_t x_elems, size_t w_elems);
};

// y (m x rows) = x (m x cols) W^T, or y += that when accumulate. m == 1 runs the mat-vec kernel
// unless force_gemm; otherwise dequantizes W to f16 in slices and calls cublasGemmEx.
void matmul(const DevWeight& w, const float* x, int m, float* y, bool accumulate, cudaStream_t st,
            cublasHandle_t blas, GemmScratch& gs, bool force_gemm = false);

// ---- elementwise / attention kernels (cuda_ops.cu) ----
void rms_norm(const float* x, const float* w, float* y, int m, int n, float eps, cudaStream_t st);
void silu_mul(float* g, const float* u, int64_t n, cudaStream_t st);
void gelu_mul(float* g, const float* u, int64_t n, cudaStream_t st);

struct QkvPostArgs {
  float* q;                      // m x n_heads*hd, rotated in place (and normed)
  float* k;                      // m x kv_dim; rotated in place when k_cache is null
  float* v;                      // biased in place when k_cache is null
  const float *bq, *bk, *bv;     // may be null
  const float *q_norm, *k_norm;  // may be null (per head, hd)
  const float* rope;             // n_ctx x n_rot: cos, sin pairs
  int n_rot, neox;
  __half *k_cache, *v_cache;  // n_ctx x kv_dim of this layer; null: k and v stay in place
  int n_heads, n_kv_heads, hd;
  float eps;
};
// Bias, per-head RMSNorm, RoPE of q and k for m tokens at *pos0..; k and v go to the cache (or stay
// in place, biased and rotated, when the cache pointers are null).
void qkv_post(const QkvPostArgs& a, int m, const int* pos0, cudaStream_t st);
// y += x (n floats).
void add(float* y, const float* x, int64_t n, cudaStream_t st);
// Rows t of k and v (m x kv_dim) into positions *pos0 + t of an f16 cache of `ring` slots x kv_dim
// (position p in slot p % ring; ring = n_ctx for full-attention layers).
void kv_store_f16(const float* k, const float* v, __half* k_cache, __half* v_cache, int m, int kv_dim,
                  const int* pos0, int ring, cudaStream_t st);

struct AttnArgs {
  const float* q;  // m x n_heads*hd
  const __half *k_cache, *v_cache;
  float* out;      // m x n_heads*hd
  float* partial;  // m x n_heads x n_splits x (hd + 2)
  int n_heads, n_kv_heads, hd;
  float scale;
  int split_len, n_splits;
  int window;     // sliding window: a query at pos sees [pos - window + 1, pos]; 0: [0, pos]
  int ring;       // cache slots: position p in slot p % ring
  float softcap;  // scores become softcap * tanh(score / softcap); 0: off
  // n_heads attention sink logits (device memory) that join each query's softmax denominator without a
  // value (gpt-oss; -inf: none for that head); nullptr: none.
  const float* sinks;
};
// Causal attention of m queries at *pos0.. over the cache positions [0, pos] (or the window). Each
// query's key range is cut into n_splits pieces of split_len (flash-decoding), merged by a second
// kernel.
void attention(const AttnArgs& a, int m, const int* pos0, cudaStream_t st);

}  // namespace qleap::cuda
