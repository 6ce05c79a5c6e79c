// cuBLAS, loaded on first use with dlopen: linking it directly costs every qleap process (CPU-only
// runs included) about 0.3-0.5 s of library start-up. Same signatures as the cuBLAS functions;
// a missing library makes create() return CUBLAS_STATUS_NOT_INITIALIZED.
#pragma once
#include <cublas_v2.h>

namespace qleap::cuda::blas {

cublasStatus_t create(cublasHandle_t* h);
cublasStatus_t destroy(cublasHandle_t h);
cublasStatus_t set_stream(cublasHandle_t h, cudaStream_t s);
cublasStatus_t sgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                     const float* alpha, const float* a, int lda, const float* b, int ldb, const float* beta,
                     float* c, int ldc);
cublasStatus_t gemm_ex(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                       const void* alpha, const void* a, cudaDataType at, int lda, const void* b,
                       cudaDataType bt, int ldb, const void* beta, void* c, cudaDataType ct, int ldc,
                       cublasComputeType_t compute, cublasGemmAlgo_t algo);

}  // namespace qleap::cuda::blas
