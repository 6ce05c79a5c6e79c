// The CUDA API of backend/cuda/cuda_api.h for builds without nvcc (only this file of the folder is
// compiled then): no devices; everything that would need one throws Unsupported.
#include "backend/cuda/cuda_api.h"
#include "core/error.h"

namespace qleap::cuda {
namespace {
[[noreturn]] void no_backend() {
  throw Unsupported("this build has no CUDA backend (configure with nvcc installed and QLEAP_CUDA=ON)");
}
}  // namespace

bool compiled() {
  return false;
}
int device_count() {
  return 0;
}
std::vector<DeviceInfo> devices() {
  return {};
}
std::unique_ptr<Backend> make_backend(int) {
  no_backend();
}
std::unique_ptr<KvCache> make_kv_cache(const std::string&, const KvShape&, Backend&) {
  return nullptr;
}
bool supports_format(GgmlType) {
  return false;
}
void decode_gpu_layout_host(const WeightView&, float*) {
  no_backend();
}
void matmul_host(const WeightView&, const float*, int64_t, float*, bool) {
  no_backend();
}
void rms_norm_host(const float*, const float*, float*, int, int, float) {
  no_backend();
}
void silu_mul_host(float*, const float*, int64_t) {
  no_backend();
}
void rope_host(const RopeTable&, float*, int, int, int, int) {
  no_backend();
}
void attention_host(const float*, const float*, const float*, float*, int, int, int, int, int, int, float) {
  no_backend();
}

double measure_copy_gbs(size_t, int) {
  no_backend();
}
MatvecTiming time_matvec(const WeightView&, int, int) {
  no_backend();
}
double time_gemm_f16(int, int, int, int) {
  no_backend();
}

}  // namespace qleap::cuda
