// TurboQuant vector quantizer (Zandieh et al., "TurboQuant: Online Vector Quantization with
// Near-optimal Distortion Rate", 2025), MSE variant with an optional QJL residual sketch.
//
// One vector x in R^d (one token's K or V for one KV head) is stored as
//   norm = ||x|| (fp16), u = x / norm, y = R u (random rotation, rotation.h),
//   idx_i = Lloyd-Max cell of y_i (codebook.h)                          -> b bits per coordinate
// and reconstructed as x_hat = norm * R^T c[idx]. Fractional rates b + 0.5 (1.5, 2.5, 3.5) give the
// first d/2 rotated coordinates b+1 bits and the rest b bits: after a random rotation every
// coordinate has the same distribution, so which half gets the extra bit does not matter, and a
// fixed split keeps the layout static. (The paper instead splits outlier/normal channels before
// the rotation; ours is the simpler data-oblivious variant.)
//
// Record layout of one vector (tq_layout): [hi segment][lo segment][norm fp16][qjl bits][gamma fp16]
//  - a segment packs its indices LSB-first into a bit stream: index i occupies bits [i*b, i*b+b), so
//    every group of 8 indices is exactly b whole bytes (what the SIMD kernels load);
//  - a uniform-rate config has only the hi segment (split == dim);
//  - the QJL part (optional, TqConfig::qjl) is sign(S r) for the residual r = R u - c[idx] (taken in
//    the rotated space, which is equivalent to the paper's u - R^T c[idx] with S R in place of S)
//    as d bits plus gamma = ||r|| (fp16); it makes inner-product estimates unbiased
//    (TurboQuant_prod). The paper's b-bit TurboQuant_prod is our (b-1)-bit config with qjl on.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "turboquant/codebook.h"
#include "turboquant/rotation.h"

namespace qleap {

struct TqConfig {
  int dim = 128;
  float bits = 3.0f;  // 1, 2, 3, 4 or a half rate 1.5, 2.5, 3.5
  TqRotationKind rotation = TqRotationKind::kAuto;
  uint64_t seed = kTqDefaultSeed;  // base seed; each (layer, kv_head) derives its own (tq_head_seed)
  bool qjl = false;                // append the 1-bit QJL residual sketch (+dim bits, +2 bytes)
  // Store the least-squares scale norm * <y, c> / <c, c> instead of norm (y = R u, c = c[idx]): the
  // reconstruction norm * c is then the closest multiple of c to x, at no extra bits (MSE-optimal
  // per vector; the codebook alone shrinks vectors by ~D(b)). Not with qjl, whose residual
  // estimator assumes the plain norm.
  bool ls_norm = false;
  // With ls_norm: choose the cells for the best scale too, not only the best scale for the cells. The
  // cells of y at assignment scale a are those of y / a; sweeping a over [1/kTqScaleRange, kTqScaleRange]
  // (every point where one coordinate changes cell, exactly) keeps the cells that maximize
  // <y, c>^2 / <c, c>, i.e. minimize min_s ||y - s c||^2. Same record layout and kernels; only the
  // encoder works harder (Gaussian unit vectors, d = 64: 3 bits -10 % MSE, 4 bits -22 %). Range 1.6: on
  // SmolLM2 +-1.3 kept only 40 % of the KLD gain of +-1.6 (real vectors' best scales spread wider).
  bool scale_search = false;
  // With ls_norm: store norm / <y, c> instead, so that <x_hat, x> = ||x||^2 (the record's projection on
  // its own direction is exact). The least-squares scale shrinks every record by cos^2 of its angle
  // to the codeword (~1 - D(b)), the same direction for all of them: scores and outputs are then biased
  // toward the mean, an error that does not average out over many positions. This one is unbiased in
  // that direction at a slightly larger MSE (tan^2 instead of sin^2 of the angle).
  bool unbiased = false;
};

// The assignment scales the search covers: [1 / kTqScaleRange, kTqScaleRange].
inline constexpr double kTqScaleRange = 1.6;

struct TqLayout {
  int dim = 0;
  int split = 0;  // coordinates [0, split) use bits_hi, [split, dim) use bits_lo
  int bits_hi = 0;
  int bits_lo = 0;  // == bits_hi for a uniform rate
  size_t hi_bytes = 0, lo_bytes = 0;
  size_t norm_offset = 0;  // fp16 ||x||
  size_t qjl_offset = 0;   // dim sign bits, then fp16 gamma (only when qjl)
  size_t gamma_offset = 0;
  bool qjl = false;
  size_t bytes = 0;  // bytes per vector
  double bits_per_coord() const { return 8.0 * double(bytes) / dim; }
};

// Validates cfg (InvalidArgument on a bad dim or rate) and computes the record layout.
TqLayout tq_layout(const TqConfig& cfg);
inline size_t tq_bytes_per_vector(const TqConfig& cfg) {
  return tq_layout(cfg).bytes;
}

// Everything needed to quantize and attend for one (layer, kv_head): immutable after creation, so
// one state may be shared by any number of threads.
struct TqState {
  TqConfig cfg;
  TqLayout layout;
  TqRotation rotation;
  const TqCodebook* cb_hi = nullptr;  // cached, process lifetime
  const TqCodebook* cb_lo = nullptr;
  std::vector<float> qjl_matrix;  // S, row-major dim x dim, i.i.d. N(0, 1) (only when cfg.qjl)
};

// The state for one (layer, kv_head); the rotation (and QJL matrix) seed is
// tq_head_seed(cfg.seed, layer, kv_head).
TqState tq_make_state(const TqConfig& cfg, int layer, int kv_head);

// States for a whole model, indexed [layer * n_kv_heads + kv_head]. Codebooks are shared (cached);
// each head holds only its rotation (dim signs for Hadamard, dim^2 floats for dense).
std::vector<TqState> tq_make_states(const TqConfig& cfg, int n_layers, int n_kv_heads);

// Packs x (dim floats) into out (layout.bytes bytes). A zero (or non-finite-norm) vector stores
// norm 0 and dequantizes to zeros.
void tq_quantize(const TqState& st, const float* x, uint8_t* out);
// n vectors, x rows x_stride floats apart, records out_stride bytes apart.
void tq_quantize_rows(const TqState& st, int64_t n, const float* x, size_t x_stride, uint8_t* out,
                      size_t out_stride);
// x_hat = norm * R^T c[idx] (the MSE reconstruction; the QJL part is not used here).
void tq_dequantize(const TqState& st, const uint8_t* in, float* x);
// The reconstruction before the inverse rotation and without the norm: c[idx] (dim floats).
void tq_dequantize_rotated_unit(const TqState& st, const uint8_t* in, float* y);

// The cells of the rotated unit vector y (dim floats) as tq_quantize chooses them (idx, dim bytes), and
// the factor its stored norm gets (1 without ls_norm; <y, c> / <c, c> with it; 0 for a degenerate
// vector). Exposed for tests.
double tq_assign_cells(const TqState& st, const float* y, uint8_t* idx);

// Bit-stream helpers (LSB-first, b in 1..8).
void tq_pack_indices(const uint8_t* idx, int n, int bits, uint8_t* out);
void tq_unpack_indices(const uint8_t* in, int n, int bits, uint8_t* idx);

float tq_record_norm(const TqLayout& l, const uint8_t* rec);

// QJL inner-product estimate <q, x> ~ norm * (<R q, c[idx]> + sqrt(pi/2)/d * gamma * <S R q, sign(S r)>),
// unbiased over the random S. Needs cfg.qjl; q is in the original space. Reference (scalar) only.
float tq_qjl_inner_product(const TqState& st, const float* q, const uint8_t* rec);

}  // namespace qleap
