// The CUDA backend as seen by the rest of the engine. This header has no CUDA types, so it is
// included by CPU-only code too; without nvcc (QLEAP_HAVE_CUDA undefined) backend/cuda_stub.cpp
// implements it: no devices, and everything that would need one throws Unsupported.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"

namespace qleap {

class Model;
struct Placement;
class ExpertTier;
struct ExpertSet;

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

// Runs the decoder layers [placement.first_gpu_layer(), n_layers) and, when placement says so, the
// final norm and output head on the GPU. The weights of those layers are copied to device memory
// once; the keys/values of those layers live in a device f16 cache of n_ctx positions.
class GpuLayers {
 public:
  virtual ~GpuLayers();
  // x: m x n_embd hidden states of tokens at positions pos0 .. pos0 + m - 1 after the CPU layers.
  // If the head is on the GPU and logits is non-null, writes the logits of every row (all) or of
  // the last row to logits and returns true. Otherwise copies the updated hidden states back to
  // x and returns false (the caller runs the head). With logits null (a prefill chunk whose
  // logits nobody wants) x is left as it was: nothing reads it.
  virtual bool forward(float* x, int m, int pos0, float* logits, bool all) = 0;
  virtual size_t device_bytes() const = 0;  // weights + cache + scratch held on the device
};

// Throws Unsupported when the backend or a device is missing, or a tensor format / architecture is
// not implemented on the GPU. rope must outlive nothing: its table is copied.
std::unique_ptr<GpuLayers> make_gpu_layers(const Model& model, const Placement& placement,
                                           const RopeTable& rope, int n_ctx, int n_batch);

// ExpertFlow's fast tier on the device (moe/expert_tier.h): slots_per_layer expert slots per MoE
// layer in device memory, uploads on a copy stream, expert FFNs on a compute stream. max_rows
// bounds the rows computed between two syncs. Throws Unsupported without a device or for expert
// formats without a CUDA kernel.
std::unique_ptr<ExpertTier> make_expert_tier(const ExpertSet& set, int slots_per_layer, int max_rows);

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
