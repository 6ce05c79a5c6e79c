// Launchers of cuda_delta_net.cu (the DeltaNet step and the gated attention's small ops), for the CUDA
// backend object. Only included by files compiled with nvcc.
#pragma once
#include "backend/backend.h"
#include "backend/cuda/cuda_common.cuh"
#include "core/error.h"

namespace qleap::cuda {

// Per row, per head of 2 * hd values: the first half to a, the second to b.
void split_heads(const float* x, float* a, float* b, int m, int n_heads, int hd, cudaStream_t st);
// y *= sigmoid(g), n floats.
void sigmoid_mul(float* y, const float* g, int64_t n, cudaStream_t st);

// The step's arguments with the device copies of its vectors.
struct DeltaNetDev {
  const DeltaNetArgs* args = nullptr;
  const float* conv_w = nullptr;
  const float* dt_bias = nullptr;
  const float* a = nullptr;
  const float* norm_w = nullptr;
};
void delta_net(const DeltaNetDev& d, int m, cudaStream_t st);

}  // namespace qleap::cuda
