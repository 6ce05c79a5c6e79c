// Internal: per-ISA kernels behind tq_attention.h. Plain pointers so that the ISA translation units
// need no C++ containers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "turboquant/tq_quant.h"

namespace qleap::tq_detail {

struct KernelArgs {
  int dim, split, bits_hi, bits_lo;
  size_t hi_bytes, norm_offset;
  const float* cb_hi;  // >= 16 floats (zero padded)
  const float* cb_lo;
};

inline KernelArgs kernel_args(const TqState& st) {
  const TqLayout& l = st.layout;
  return KernelArgs{l.dim,
                    l.split,
                    l.bits_hi,
                    l.bits_lo,
                    l.hi_bytes,
                    l.norm_offset,
                    st.cb_hi->centroids_f.data(),
                    st.cb_lo->centroids_f.data()};
}

using ScoresFn = void (*)(const KernelArgs& a, const float* q_rot, int n_q, const uint8_t* keys,
                          size_t key_stride, int64_t n, float* scores, size_t score_stride);
using AccumFn = void (*)(const KernelArgs& a, const float* w, size_t w_stride, int n_q, const uint8_t* values,
                         size_t value_stride, int64_t n, float* acc_rot);
using DecodeFn = void (*)(const KernelArgs& a, const uint8_t* recs, size_t stride, int64_t n, float* rows,
                          size_t row_stride);

void scores_scalar(const KernelArgs& a, const float* q_rot, int n_q, const uint8_t* keys, size_t key_stride,
                   int64_t n, float* scores, size_t score_stride);
void accum_scalar(const KernelArgs& a, const float* w, size_t w_stride, int n_q, const uint8_t* values,
                  size_t value_stride, int64_t n, float* acc_rot);
void decode_scalar(const KernelArgs& a, const uint8_t* recs, size_t stride, int64_t n, float* rows,
                   size_t row_stride);
void decode_avx2(const KernelArgs& a, const uint8_t* recs, size_t stride, int64_t n, float* rows,
                 size_t row_stride);
void scores_avx2(const KernelArgs& a, const float* q_rot, int n_q, const uint8_t* keys, size_t key_stride,
                 int64_t n, float* scores, size_t score_stride);
void accum_avx2(const KernelArgs& a, const float* w, size_t w_stride, int n_q, const uint8_t* values,
                size_t value_stride, int64_t n, float* acc_rot);

void scores_avx512(const KernelArgs& a, const float* q_rot, int n_q, const uint8_t* keys, size_t key_stride,
                   int64_t n, float* scores, size_t score_stride);
void accum_avx512(const KernelArgs& a, const float* w, size_t w_stride, int n_q, const uint8_t* values,
                  size_t value_stride, int64_t n, float* acc_rot);

// The kernels the dispatcher would pick for this layout at the current isa_level().
ScoresFn pick_scores(const TqLayout& l);
AccumFn pick_accum(const TqLayout& l);
DecodeFn pick_decode(const TqLayout& l);

}  // namespace qleap::tq_detail
