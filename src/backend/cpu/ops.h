// Elementwise and small vector kernels of the transformer forward pass (norms, RoPE, softmax,
// activations, attention dot products). Each entry point dispatches at run time to AVX2 code when the
// CPU has it (core/cpu_features.h); the scalar versions are the reference.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace qleap {

// y = x / sqrt(mean(x^2) + eps) * w  (w may be nullptr: no weight). y may alias x.
void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps);
void rms_norm_ref(const float* x, const float* w, float* y, int64_t n, float eps);

// In place, numerically stable (subtracts the max).
void softmax(float* x, int64_t n);

// g[i] = silu(g[i]) * u[i]  (the SwiGLU gate).
void silu_mul(float* g, const float* u, int64_t n);

// y[i] += x[i]
void add_inplace(float* y, const float* x, int64_t n);

// Dot products and y += a * x over the storage formats of the KV cache.
float dot_f32(const float* a, const float* b, int64_t n);
float dot_f16(const uint16_t* a, const float* b, int64_t n);
void axpy_f32(float a, const float* x, float* y, int64_t n);
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n);
void scale_inplace(float* y, float a, int64_t n);
// One key/value row against several query heads (nq <= 8) that share it, so the row is loaded and
// converted once: out[k] = x . q[k];  acc[k] += p[k] * x.
void dot_f32_multi(const float* x, const float* const* q, int nq, int64_t n, float* out);
void dot_f16_multi(const uint16_t* x, const float* const* q, int nq, int64_t n, float* out);
void axpy_f32_multi(const float* p, const float* x, float* const* acc, int nq, int64_t n);
void axpy_f16_multi(const float* p, const uint16_t* x, float* const* acc, int nq, int64_t n);
// x[i] = exp(x[i] - m); returns the sum (the inner step of an online softmax).
float exp_sub_sum(float* x, int64_t n, float m);
// Converts a row of floats to fp16 (round to nearest even).
void fp32_to_fp16_row(const float* x, uint16_t* y, int64_t n);
void fp16_to_fp32_row(const uint16_t* x, float* y, int64_t n);

// The GGUF Q8_0 block: 32 signed bytes and one fp16 scale (34 bytes).
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[32];
};
static_assert(sizeof(BlockQ8_0) == 34);
// Quantizes n (multiple of 32) floats the way GGUF Q8_0 does: d = max|x| / 127, q = round(x / d).
void quantize_q8_0(const float* x, BlockQ8_0* out, int64_t n);
// n is a multiple of 32 (whole blocks).
float dot_q8_0(const BlockQ8_0* a, const float* b, int64_t n);
void axpy_q8_0(float a, const BlockQ8_0* x, float* y, int64_t n);
void dequantize_q8_0(const BlockQ8_0* x, float* y, int64_t n);

// ---- Rotary position embedding ----

enum class RopeStyle {
  kNormal,  // rotate adjacent pairs (x[2i], x[2i+1]) - GGUF llama (converters pre-permute q/k)
  kNeox,    // rotate (x[i], x[i + n_rot/2]) - qwen2/qwen3, HF rotate_half
};
enum class RopeScaling { kNone, kLinear, kYarn };

struct RopeParams {
  int n_rot = 0;  // rotated dimensions per head (<= head_dim, even); the rest pass through
  RopeStyle style = RopeStyle::kNormal;
  float freq_base = 10000.0f;
  RopeScaling scaling = RopeScaling::kNone;
  float factor = 1.0f;       // context extension factor (linear: positions / factor)
  int orig_ctx = 0;          // YaRN: original training context
  float ext_factor = -1.0f;  // YaRN extrapolation mix; < 0: 1 for yarn, else 0
  float attn_factor = 1.0f;  // multiplies cos/sin (YaRN attention temperature)
  float beta_fast = 32.0f;
  float beta_slow = 1.0f;
  std::vector<float> freq_factors;  // llama3-style per-pair divisors (rope_freqs.weight), may be empty
};

// Per pair i in [0, n_rot/2): the angle is pos * inv_freq[i] and cos/sin are scaled by mscale.
// YaRN's ramp between interpolated and extrapolated frequencies is linear in pos, so it folds into
// one effective inverse frequency per pair.
struct RopeFreqs {
  std::vector<double> inv_freq;
  double mscale = 1.0;
};
RopeFreqs rope_freqs(const RopeParams& p);

// cos/sin for positions [0, n_pos): table[pos * n_rot + 2 * i + {0, 1}] = {cos, sin} * mscale.
class RopeTable {
 public:
  RopeTable() = default;
  RopeTable(const RopeParams& p, int n_pos);
  const float* at(int pos) const { return table_.data() + size_t(pos) * size_t(n_rot_); }
  int n_rot() const { return n_rot_; }
  int n_pos() const { return n_pos_; }
  RopeStyle style() const { return style_; }

 private:
  std::vector<float> table_;
  int n_rot_ = 0;
  int n_pos_ = 0;
  RopeStyle style_ = RopeStyle::kNormal;
};

// Rotates n_heads heads of head_dim floats (contiguous) at one position with cos/sin pairs cs
// (n_rot floats as laid out by RopeTable::at).
void rope_apply(const float* cs, int n_rot, RopeStyle style, float* x, int n_heads, int head_dim);

// ---- implementation details shared with the ISA files ----
namespace ops_detail {
float dot_f32_avx2(const float* a, const float* b, int64_t n);
float dot_f16_avx2(const uint16_t* a, const float* b, int64_t n);
float dot_q8_0_avx2(const BlockQ8_0* a, const float* b, int64_t n);
void axpy_f32_avx2(float a, const float* x, float* y, int64_t n);
void axpy_f16_avx2(float a, const uint16_t* x, float* y, int64_t n);
void axpy_q8_0_avx2(float a, const BlockQ8_0* x, float* y, int64_t n);
float sum_squares_avx2(const float* x, int64_t n);
void scale_mul_avx2(const float* x, const float* w, float s, float* y, int64_t n);
void silu_mul_avx2(float* g, const float* u, int64_t n);
float exp_sub_sum_avx2(float* x, int64_t n, float m);
void fp32_to_fp16_row_avx2(const float* x, uint16_t* y, int64_t n);
void fp16_to_fp32_row_avx2(const uint16_t* x, float* y, int64_t n);
void dequantize_q8_0_avx2(const BlockQ8_0* x, float* y, int64_t n);
void dot_f32_multi_avx2(const float* x, const float* const* q, int nq, int64_t n, float* out);
void dot_f16_multi_avx2(const uint16_t* x, const float* const* q, int nq, int64_t n, float* out);
void axpy_f32_multi_avx2(const float* p, const float* x, float* const* acc, int nq, int64_t n);
void axpy_f16_multi_avx2(const float* p, const uint16_t* x, float* const* acc, int nq, int64_t n);
}  // namespace ops_detail

inline float silu(float x) {
  return x / (1.0f + __builtin_expf(-x));
}

}  // namespace qleap
