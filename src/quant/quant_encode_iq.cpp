// Encoders for the ternary and FP4 formats and IQ4_XS. TQ1_0, TQ2_0 and MXFP4 follow gguf-py's
// quantizers operation for operation (tested bit-exact against it); IQ4_XS and NVFP4, which gguf-py
// cannot encode, use our own scale search (tested by round-trip error).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "quant/quant_encode.h"

namespace qleap {
namespace {

float absmax(const float* x, int n) {
  float amax = 0;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  return amax;
}

// Ternary code 0..2 (value - 1) of each weight, rounding x / max half away from zero.
void ternary_codes(const float* x, float amax, int* q) {
  const float id = amax == 0.0f ? 0.0f : 1.0f / amax;
  for (int i = 0; i < kQKK; ++i) q[i] = int(std::round(x[i] * id)) + 1;
}

// Base-3 digits (most significant first) as the fraction byte = ceil(v * 256 / 243).
uint8_t pack_trits(const int* q, int n, int stride) {
  int v = 0;
  for (int k = 0; k < 5; ++k) v = 3 * v + (k < n ? q[k * stride] : 0);
  return uint8_t((v * 256 + 242) / 243);
}

int nearest_index(const float* values, int n, float v) {
  int best = 0;
  float be = INFINITY;
  for (int k = 0; k < n; ++k) {
    const float e = std::fabs(v - values[k]);
    if (e < be) {
      be = e;
      best = k;
    }
  }
  return best;
}

// Scale for 32 weights on the IQ4_NL codebook: start with the extreme value on the codebook end,
// then alternate nearest-code assignment and a least-squares refit.
float fit_iq4_scale(const float* x) {
  float amax = 0, mx = 0;
  for (int i = 0; i < 32; ++i) {
    if (amax < std::fabs(x[i])) {
      amax = std::fabs(x[i]);
      mx = x[i];
    }
  }
  float codebook[16];
  for (int k = 0; k < 16; ++k) codebook[k] = float(kIq4nlValues[k]);
  float d = mx / codebook[0];
  for (int it = 0; it < 3 && d != 0.0f; ++it) {
    const float id = 1.0f / d;
    double svx = 0, svv = 0;
    for (int i = 0; i < 32; ++i) {
      const float v = codebook[nearest_index(codebook, 16, x[i] * id)];
      svx += double(v) * x[i];
      svv += double(v) * v;
    }
    if (svv > 0) d = float(svx / svv);
  }
  return d;
}

}  // namespace

void quantize_block_ref(const float* x, BlockTq2_0* b) {
  const float amax = absmax(x, kQKK);
  int q[kQKK];
  ternary_codes(x, amax, q);
  for (int h = 0; h < 2; ++h) {
    for (int j = 0; j < 32; ++j) {
      int v = 0;
      for (int k = 0; k < 4; ++k) v |= q[128 * h + 32 * k + j] << (2 * k);
      b->qs[32 * h + j] = uint8_t(v);
    }
  }
  b->d = fp32_to_fp16_ref(amax);
}

void quantize_block_ref(const float* x, BlockTq1_0* b) {
  const float amax = absmax(x, kQKK);
  int q[kQKK];
  ternary_codes(x, amax, q);
  for (int j = 0; j < 32; ++j) b->qs[j] = pack_trits(q + j, 5, 32);
  for (int j = 0; j < 16; ++j) b->qs[32 + j] = pack_trits(q + 160 + j, 5, 16);
  for (int j = 0; j < 4; ++j) b->qh[j] = pack_trits(q + 240 + j, 4, 4);
  b->d = fp32_to_fp16_ref(amax);
}

void quantize_block_ref(const float* x, BlockMxfp4* b) {
  const float amax = absmax(x, kQK);
  // gguf-py (and ggml) take floor(log2(max)) in float; below 2^-125 their uint8 cast is undefined,
  // and we clamp to the smallest exponent there.
  const int e = amax > 0.0f ? int(std::floor(std::log2(amax))) - 2 + 127 : 0;
  b->e = uint8_t(std::clamp(e, 0, 255));
  const float d = e8m0_to_fp32_half(b->e);
  int q[kQK];
  for (int i = 0; i < kQK; ++i) {
    int best = 0;
    float be = INFINITY;
    for (int k = 0; k < 16; ++k) {
      const float err = std::fabs(d * float(kFp4Values[k]) - x[i]);
      if (err < be) {
        be = err;
        best = k;
      }
    }
    q[i] = best;
  }
  for (int j = 0; j < kQK / 2; ++j) b->qs[j] = uint8_t(q[j] | (q[j + kQK / 2] << 4));
}

// Index into kFp4Values of the E2M1 value nearest v (in kFp4Values' doubled units); ties go to the
// smaller magnitude.
int nearest_fp4(float v) {
  static constexpr float kMid[7] = {0.5f, 1.5f, 2.5f, 3.5f, 5.0f, 7.0f, 10.0f};
  const float a = std::fabs(v);
  int k = 0;
  while (k < 7 && a > kMid[k]) ++k;
  return k == 0 ? 0 : (v < 0 ? 8 + k : k);
}

void quantize_block_ref(const float* x, BlockNvfp4* b) {
  // E4M3 scale codes 0..126 in increasing order of value.
  static const auto kScale = [] {
    std::array<float, 127> t{};
    for (int c = 0; c < 127; ++c) t[size_t(c)] = ue4m3_to_fp32_half(uint8_t(c));
    return t;
  }();
  for (int s = 0; s < 4; ++s) {
    const float* xs = x + 16 * s;
    // kFp4Values' largest magnitude is 12: start from the code whose scale maps the block maximum
    // there, and keep the one of it and its neighbours with the least squared error.
    const float want = absmax(xs, 16) / 12.0f;
    const int c0 = int(std::lower_bound(kScale.begin(), kScale.end(), want) - kScale.begin());
    uint8_t best_code = 0;
    double best_err = INFINITY;
    for (int c = std::max(0, c0 - 2); c <= std::min(126, c0 + 2); ++c) {
      const float d = kScale[size_t(c)];
      double err = 0;
      for (int i = 0; i < 16; ++i) {
        const float w = d == 0.0f ? 0.0f : d * float(kFp4Values[nearest_fp4(xs[i] / d)]);
        err += double(w - xs[i]) * (w - xs[i]);
      }
      if (err < best_err) {
        best_err = err;
        best_code = uint8_t(c);
      }
    }
    b->d[s] = best_code;
    const float d = kScale[best_code];
    for (int j = 0; j < 8; ++j) {
      const int lo = d == 0.0f ? 0 : nearest_fp4(xs[j] / d);
      const int hi = d == 0.0f ? 0 : nearest_fp4(xs[8 + j] / d);
      b->qs[8 * s + j] = uint8_t(lo | (hi << 4));
    }
  }
}

void quantize_block_ref(const float* x, BlockIq4Xs* b) {
  float s[8];
  float amax = 0, smax = 0;
  for (int ib = 0; ib < 8; ++ib) {
    s[ib] = fit_iq4_scale(x + 32 * ib);
    if (std::fabs(s[ib]) > amax) {
      amax = std::fabs(s[ib]);
      smax = s[ib];
    }
  }
  // The largest sub-block scale maps onto -32, the end of the signed 6-bit range with one more level.
  const float d = fp16_to_fp32_ref(fp32_to_fp16_ref(smax / -32.0f));
  b->d = fp32_to_fp16_ref(d);
  b->scales_h = 0;
  std::memset(b->scales_l, 0, sizeof(b->scales_l));
  float codebook[16];
  for (int k = 0; k < 16; ++k) codebook[k] = float(kIq4nlValues[k]);
  for (int ib = 0; ib < 8; ++ib) {
    const int ls = d != 0.0f ? std::clamp(int(std::lround(s[ib] / d)), -32, 31) : 0;
    const int u = ls + 32;
    b->scales_l[ib / 2] |= uint8_t((u & 0xF) << (4 * (ib % 2)));
    b->scales_h = uint16_t(b->scales_h | ((u >> 4) << (2 * ib)));
    const float dl = d * float(ls);
    const float id = dl != 0.0f ? 1.0f / dl : 0.0f;
    const float* xb = x + 32 * ib;
    for (int j = 0; j < 16; ++j) {
      const int lo = nearest_index(codebook, 16, xb[j] * id);
      const int hi = nearest_index(codebook, 16, xb[16 + j] * id);
      b->qs[16 * ib + j] = uint8_t(lo | (hi << 4));
    }
  }
}

}  // namespace qleap
