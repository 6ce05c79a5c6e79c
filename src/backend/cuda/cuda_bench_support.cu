// Timings for qleap_cuda_bench: the practical bandwidth ceiling (a device copy), single mat-vec
// kernels, and the cuBLAS f16 GEMM rate that bounds prefill.
#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_api.h"
#include "backend/cuda/cuda_blas.cuh"
#include "backend/cuda/cuda_common.cuh"
#include "core/error.h"

namespace qleap::cuda {

namespace {

class Events {
 public:
  Events() {
    QL_CUDA(cudaEventCreate(&a_));
    QL_CUDA(cudaEventCreate(&b_));
  }
  ~Events() {
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
  }
  void start(cudaStream_t s) { QL_CUDA(cudaEventRecord(a_, s)); }
  float stop_ms(cudaStream_t s) {
    QL_CUDA(cudaEventRecord(b_, s));
    QL_CUDA(cudaEventSynchronize(b_));
    float ms = 0;
    QL_CUDA(cudaEventElapsedTime(&ms, a_, b_));
    return ms;
  }

 private:
  cudaEvent_t a_ = nullptr, b_ = nullptr;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

__global__ void fill_kernel(__half* p, size_t n, uint32_t seed) {
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    uint32_t x = uint32_t(i) * 2654435761u + seed;
    x ^= x >> 13;
    p[i] = __float2half(float(x & 0xFFFF) / 65536.0f - 0.5f);
  }
}

}  // namespace

double measure_copy_gbs(size_t bytes, int reps) {
  DevBuf<uint8_t> a(bytes), b(bytes);
  QL_CUDA(cudaMemset(a.get(), 1, bytes));
  Events ev;
  std::vector<double> t;
  for (int r = 0; r < reps + 1; ++r) {
    ev.start(nullptr);
    QL_CUDA(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, nullptr));
    const double ms = ev.stop_ms(nullptr);
    if (r > 0) t.push_back(ms);  // the first is a warm-up
  }
  return 2.0 * double(bytes) / (median(t) * 1e-3) / 1e9;
}

MatvecTiming time_matvec(const WeightView& w, int reps, int copies) {
  std::vector<DevWeight> ws;
  for (int i = 0; i < copies; ++i) ws.push_back(upload_weight(w));
  DevBuf<float> x(size_t(w.cols)), y(size_t(w.rows));
  std::vector<float> hx(size_t(w.cols), 0.01f);
  x.upload(hx.data(), hx.size());
  cublasHandle_t blas;
  QL_CUBLAS(blas::create(&blas));
  GemmScratch gs;
  Events ev;
  std::vector<double> t;
  try {
    for (int r = 0; r < reps + copies; ++r) {
      const DevWeight& d = ws[size_t(r % copies)];
      ev.start(nullptr);
      matmul(d, x.get(), 1, y.get(), false, nullptr, blas, gs);
      const double ms = ev.stop_ms(nullptr);
      if (r >= copies) t.push_back(ms);
    }
  } catch (...) {
    blas::destroy(blas);
    throw;
  }
  blas::destroy(blas);
  MatvecTiming out;
  out.us = median(t) * 1e3;
  out.bytes = ws[0].bytes();
  return out;
}

double time_gemm_f16(int m, int n, int k, int reps) {
  DevBuf<__half> a(size_t(n) * k), b(size_t(m) * k);
  DevBuf<float> c(size_t(m) * n);
  fill_kernel<<<unsigned((a.size() + 255) / 256), 256>>>(a.get(), a.size(), 1);
  fill_kernel<<<unsigned((b.size() + 255) / 256), 256>>>(b.get(), b.size(), 2);
  QL_CHECK_LAUNCH();
  cublasHandle_t blas;
  QL_CUBLAS(blas::create(&blas));
  const float alpha = 1.0f, beta = 0.0f;
  Events ev;
  std::vector<double> t;
  for (int r = 0; r < reps + 2; ++r) {
    ev.start(nullptr);
    QL_CUBLAS(blas::gemm_ex(blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, a.get(), CUDA_R_16F, k, b.get(),
                            CUDA_R_16F, k, &beta, c.get(), CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
    const double ms = ev.stop_ms(nullptr);
    if (r >= 2) t.push_back(ms);
  }
  blas::destroy(blas);
  return median(t) * 1e3;
}

}  // namespace qleap::cuda
