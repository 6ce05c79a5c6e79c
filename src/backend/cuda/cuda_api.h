// The CUDA backend as seen by the rest of the engine. This header has no CUDA types, so it is
// included by CPU-only code too; without nvcc backend/cuda/cuda_stub.cpp implements it: no devices,
// and everything that would need one throws Unsupported.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "kv/kv_cache.h"
#include "tensor/rope.h"
#include "tensor/weight_view.h"

namespace qleap {

namespace cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;  // compute capability
  size_t total_bytes = 0, free_bytes = 0;
  int sm_count = 0;
};

// True when this binary was built with the CUDA backend.
bool compiled();
// Number of usable CUDA devices (0 without a driver, a device or the backend).
int device_count();
std::vector<DeviceInfo> devices();

// The CUDA implementation of the backend ops (backend/backend.h) on one device: activations and the
// prepared weights in device memory, one stream, cuBLAS for multi-row matmuls, CUDA graphs for
// run_captured. Weights are shared between backends of the same device (one upload per tensor per
// process, freed when the last backend holding it goes). Throws Unsupported without a device.
std::unique_ptr<Backend> make_backend(int device);

// A KV cache in device memory for layers on `backend` (a backend from make_backend), reading
// positions from KvSpan::dev_pos0 so decode steps can be replayed as graphs. nullptr when this type
// has no device kernels yet, or backend is not a CUDA backend (the Engine then keeps a host cache for
// those layers).
std::unique_ptr<KvCache> make_kv_cache(const std::string& type, const KvShape& shape, Backend& backend);

// ---- the ExpertFlow device tier's building blocks (moe/cuda_expert_tier.cu) ----
// Whether the device matmul kernels take this weight format.
bool supports_format(GgmlType t);

// Re-lays out w the way upload does and decodes every row with the kernels' own decoders, run on
// the CPU (no device needed): checks the GPU layouts against the scalar reference decoders.
void decode_gpu_layout_host(const WeightView& w, float* out);

// ---- single kernels on host data, for tests and benchmarks (each call copies in and out) ----
// y = W x for m rows, the same contract as the CPU matmul. m == 1 takes the mat-vec kernel,
// m > 1 the dequantize + cuBLAS path (or force_gemm for m == 1).
void matmul_host(const WeightView& w, const float* x, int64_t m, float* y, bool force_gemm = false);
void rms_norm_host(const float* x, const float* w, float* y, int m, int n, float eps);
void silu_mul_host(float* g, const float* u, int64_t n);
// Rotates m rows of n_heads heads each at positions pos0.. (in place) with the given table.
void rope_host(const RopeTable& rope, float* x, int m, int n_heads, int head_dim, int pos0);
// Causal attention like KvCache::attend over f16 keys/values: k, v are n_kv x kv_dim floats
// (converted to f16 on the device), q/out are m x n_heads*head_dim, query t at position pos0 + t.
void attention_host(const float* q, const float* k, const float* v, float* out, int m, int pos0, int n_kv,
                    int n_heads, int n_kv_heads, int head_dim, float scale);

// ---- measurements for benchmarks (cuda_bench_support.cu) ----
// Device-to-device copy of `bytes`: GB/s counting bytes read + bytes written (median of reps).
double measure_copy_gbs(size_t bytes, int reps);
// Mat-vec of w (uploaded once, `copies` distinct copies rotated so the L2 cache does not serve
// repeats): median microseconds per call and the weight bytes one call reads.
struct MatvecTiming {
  double us = 0;
  size_t bytes = 0;
};
MatvecTiming time_matvec(const WeightView& w, int reps, int copies);
// cublasGemmEx with f16 operands, fp32 accumulate: (m x k) x (k x n), median microseconds.
double time_gemm_f16(int m, int n, int k, int reps);

}  // namespace cuda
}  // namespace qleap
