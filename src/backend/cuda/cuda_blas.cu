#include <dlfcn.h>

#include <mutex>
#include <string>

#include "backend/cuda/cuda_blas.cuh"

#ifndef QLEAP_CUBLAS_SONAME
#define QLEAP_CUBLAS_SONAME "libcublas.so"
#endif
#ifndef QLEAP_CUDA_LIBDIR
#define QLEAP_CUDA_LIBDIR ""
#endif

namespace qleap::cuda::blas {
namespace {

struct Api {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
  // cublasGemmEx is overloaded in C++ (a cudaDataType compute-type wrapper); the C symbol is this one.
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                            const void*, cudaDataType, int, const void*, cudaDataType, int, const void*,
                            void*, cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
  bool ok = false;
};

template <class F>
void sym(void* lib, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(lib, name));
}

const Api& api() {
  static Api a;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = nullptr;
    for (const std::string& n :
         {std::string(QLEAP_CUBLAS_SONAME), std::string(QLEAP_CUDA_LIBDIR) + "/" + QLEAP_CUBLAS_SONAME,
          std::string("libcublas.so")}) {
      if ((lib = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
    }
    if (lib == nullptr) return;
    sym(lib, "cublasCreate_v2", &a.create);
    sym(lib, "cublasDestroy_v2", &a.destroy);
    sym(lib, "cublasSetStream_v2", &a.set_stream);
    sym(lib, "cublasSgemm_v2", &a.sgemm);
    sym(lib, "cublasGemmEx", &a.gemm_ex);
    a.ok = a.create && a.destroy && a.set_stream && a.sgemm && a.gemm_ex;
  });
  return a;
}

}  // namespace

cublasStatus_t create(cublasHandle_t* h) {
  return api().ok ? api().create(h) : CUBLAS_STATUS_NOT_INITIALIZED;
}
cublasStatus_t destroy(cublasHandle_t h) {
  return api().ok ? api().destroy(h) : CUBLAS_STATUS_NOT_INITIALIZED;
}
cublasStatus_t set_stream(cublasHandle_t h, cudaStream_t s) {
  return api().ok ? api().set_stream(h, s) : CUBLAS_STATUS_NOT_INITIALIZED;
}
cublasStatus_t sgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                     const float* alpha, const float* a, int lda, const float* b, int ldb, const float* beta,
                     float* c, int ldc) {
  if (!api().ok) return CUBLAS_STATUS_NOT_INITIALIZED;
  return api().sgemm(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
cublasStatus_t gemm_ex(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                       const void* alpha, const void* a, cudaDataType at, int lda, const void* b,
                       cudaDataType bt, int ldb, const void* beta, void* c, cudaDataType ct, int ldc,
                       cublasComputeType_t compute, cublasGemmAlgo_t algo) {
  if (!api().ok) return CUBLAS_STATUS_NOT_INITIALIZED;
  return api().gemm_ex(h, ta, tb, m, n, k, alpha, a, at, lda, b, bt, ldb, beta, c, ct, ldc, compute, algo);
}

}  // namespace qleap::cuda::blas
