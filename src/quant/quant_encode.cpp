#include "quant/quant_encode.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace qleap {
namespace {

// Value with the largest magnitude (first one on ties), as the GGUF reference picks it.
float signed_absmax(const float* x, int n) {
  float amax = 0, mx = 0;
  for (int i = 0; i < n; ++i) {
    if (amax < std::fabs(x[i])) {
      amax = std::fabs(x[i]);
      mx = x[i];
    }
  }
  return mx;
}

void pack_nibbles(const int* q, uint8_t* qs) {
  for (int i = 0; i < kQK / 2; ++i) qs[i] = uint8_t((q[i] & 0xF) | ((q[i + kQK / 2] & 0xF) << 4));
}

void pack_high_bits(const int* q, uint8_t* qh) {
  uint32_t h = 0;
  for (int i = 0; i < kQK; ++i) h |= uint32_t((q[i] >> 4) & 1) << i;
  std::memcpy(qh, &h, 4);
}

// Symmetric/zero-point quantization of a block of 32 (GGUF reference rounding: truncate x + 0.5).
void quant_sym(const float* x, int nlevels_half, uint16_t* d_out, int* q) {
  const float mx = signed_absmax(x, kQK);
  const float d = mx / float(-nlevels_half);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int i = 0; i < kQK; ++i) {
    q[i] = std::min(2 * nlevels_half - 1, int(x[i] * id + (float(nlevels_half) + 0.5f)));
  }
  *d_out = fp32_to_fp16_ref(d);
}

void quant_affine(const float* x, int nmax, uint16_t* d_out, uint16_t* m_out, int* q) {
  float mn = x[0], mx = x[0];
  for (int i = 1; i < kQK; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  const float d = (mx - mn) / float(nmax);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int i = 0; i < kQK; ++i) q[i] = std::min(nmax, int((x[i] - mn) * id + 0.5f));
  *d_out = fp32_to_fp16_ref(d);
  *m_out = fp32_to_fp16_ref(mn);
}

int nearest(float v) {
  return int(std::lround(v));
}

// Fits x ~ scale * l + offset (offset <= 0, l in [0, nmax]) over n values by trying a range of
// inverse scales around the min-max one and refitting (scale, offset) by least squares for each
// rounding. Returns scale and -offset (>= 0).
void fit_affine(const float* x, int n, int nmax, float* scale, float* neg_offset) {
  float mn = x[0], mx = x[0];
  for (int i = 1; i < n; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  mn = std::min(mn, 0.0f);
  if (mx <= mn) {
    *scale = 0;
    *neg_offset = -mn;
    return;
  }
  float best_err = INFINITY, best_s = (mx - mn) / float(nmax), best_m = mn;
  int l[256];
  for (int step = -10; step <= 10; ++step) {
    const float iscale = (float(nmax) + 0.1f * float(step)) / (mx - mn);
    double sl = 0, sll = 0, sx = 0, slx = 0;
    for (int i = 0; i < n; ++i) {
      l[i] = std::clamp(nearest(iscale * (x[i] - mn)), 0, nmax);
      sl += l[i];
      sll += double(l[i]) * l[i];
      sx += x[i];
      slx += double(l[i]) * x[i];
    }
    const double det = n * sll - sl * sl;
    if (det <= 0) continue;
    double s = (n * slx - sl * sx) / det;
    double m = (sll * sx - sl * slx) / det;
    if (m > 0) {
      m = 0;
      s = sll > 0 ? slx / sll : 0;
    }
    double err = 0;
    for (int i = 0; i < n; ++i) {
      const double e = s * l[i] + m - x[i];
      err += e * e;
    }
    if (err < best_err) {
      best_err = float(err);
      best_s = float(s);
      best_m = float(m);
    }
  }
  *scale = std::max(best_s, 0.0f);
  *neg_offset = -best_m;
}

// Symmetric fit x ~ scale * l with l in [-nmax-1, nmax] (Q6_K, IQ-style search over the scale).
float fit_symmetric(const float* x, int n, int nmax) {
  const float mx = signed_absmax(x, n);
  if (mx == 0.0f) return 0.0f;
  float best_err = INFINITY, best_s = 0;
  for (int step = -9; step <= 9; ++step) {
    // Map the extreme value onto -nmax-1 (the side with one more level) or onto +nmax.
    const float iscale = -(float(nmax) + 1.0f + 0.1f * float(step)) / mx;
    double sll = 0, slx = 0;
    int l[256];
    for (int i = 0; i < n; ++i) {
      l[i] = std::clamp(nearest(iscale * x[i]), -nmax - 1, nmax);
      sll += double(l[i]) * l[i];
      slx += double(l[i]) * x[i];
    }
    if (sll <= 0) continue;
    const double s = slx / sll;
    double err = 0;
    for (int i = 0; i < n; ++i) {
      const double e = s * l[i] - x[i];
      err += e * e;
    }
    if (err < best_err) {
      best_err = float(err);
      best_s = float(s);
    }
  }
  return best_s;
}

void pack_scale_min_k4(const uint8_t* sc, const uint8_t* m, uint8_t* q) {
  for (int j = 0; j < 4; ++j) {
    q[j] = uint8_t((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    q[j + 4] = uint8_t((m[j] & 63) | ((m[j + 4] >> 4) << 6));
    q[j + 8] = uint8_t((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
  }
}

// Shared by Q4_K / Q5_K: per-sub-block affine fits, 6-bit scale/min codes, final quants q[256].
void quant_k_affine(const float* x, int nmax, uint16_t* d_out, uint16_t* dmin_out, uint8_t* scales, int* q) {
  float s[8], m[8];
  float smax = 0, mmax = 0;
  for (int j = 0; j < 8; ++j) {
    fit_affine(x + 32 * j, 32, nmax, &s[j], &m[j]);
    smax = std::max(smax, s[j]);
    mmax = std::max(mmax, m[j]);
  }
  const float d = fp16_to_fp32_ref(fp32_to_fp16_ref(smax / 63.0f));
  const float dmin = fp16_to_fp32_ref(fp32_to_fp16_ref(mmax / 63.0f));
  uint8_t sc[8], mc[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = uint8_t(d > 0 ? std::clamp(nearest(s[j] / d), 0, 63) : 0);
    mc[j] = uint8_t(dmin > 0 ? std::clamp(nearest(m[j] / dmin), 0, 63) : 0);
  }
  pack_scale_min_k4(sc, mc, scales);
  *d_out = fp32_to_fp16_ref(d);
  *dmin_out = fp32_to_fp16_ref(dmin);
  for (int j = 0; j < 8; ++j) {
    const float dl = d * float(sc[j]);
    const float ml = dmin * float(mc[j]);
    for (int i = 0; i < 32; ++i) {
      q[32 * j + i] = dl > 0 ? std::clamp(nearest((x[32 * j + i] + ml) / dl), 0, nmax) : 0;
    }
  }
}

}  // namespace

void quantize_block_ref(const float* x, BlockQ8_0* b) {
  float amax = 0;
  for (int i = 0; i < kQK; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int i = 0; i < kQK; ++i) b->qs[i] = int8_t(std::round(x[i] * id));  // half away from zero
  b->d = fp32_to_fp16_ref(d);
}

void quantize_block_ref(const float* x, BlockQ4_0* b) {
  int q[kQK];
  quant_sym(x, 8, &b->d, q);
  pack_nibbles(q, b->qs);
}

void quantize_block_ref(const float* x, BlockQ4_1* b) {
  int q[kQK];
  quant_affine(x, 15, &b->d, &b->m, q);
  pack_nibbles(q, b->qs);
}

void quantize_block_ref(const float* x, BlockQ5_0* b) {
  int q[kQK];
  quant_sym(x, 16, &b->d, q);
  pack_nibbles(q, b->qs);
  pack_high_bits(q, b->qh);
}

void quantize_block_ref(const float* x, BlockQ5_1* b) {
  int q[kQK];
  quant_affine(x, 31, &b->d, &b->m, q);
  pack_nibbles(q, b->qs);
  pack_high_bits(q, b->qh);
}

void quantize_block_ref(const float* x, BlockIq4Nl* b) {
  // Start from the scale that maps the extreme value onto the codebook end, then alternate
  // nearest-code assignment and a least-squares scale refit.
  const float mx = signed_absmax(x, kQK);
  float d = mx / float(kIq4nlValues[0]);
  int idx[kQK];
  auto assign = [&](float dd) {
    const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    for (int i = 0; i < kQK; ++i) {
      const float v = x[i] * id;
      int best = 0;
      float be = INFINITY;
      for (int k = 0; k < 16; ++k) {
        const float e = std::fabs(v - float(kIq4nlValues[k]));
        if (e < be) {
          be = e;
          best = k;
        }
      }
      idx[i] = best;
    }
  };
  for (int it = 0; it < 3 && d != 0.0f; ++it) {
    assign(d);
    double svx = 0, svv = 0;
    for (int i = 0; i < kQK; ++i) {
      svx += double(kIq4nlValues[idx[i]]) * x[i];
      svv += double(kIq4nlValues[idx[i]]) * kIq4nlValues[idx[i]];
    }
    if (svv > 0) d = float(svx / svv);
  }
  b->d = fp32_to_fp16_ref(d);
  assign(fp16_to_fp32_ref(b->d));
  pack_nibbles(idx, b->qs);
}

void quantize_block_ref(const float* x, BlockQ8_K* b) {
  float amax = 0;
  for (int i = 0; i < kQKK; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int i = 0; i < kQKK; ++i) b->qs[i] = int8_t(nearest(x[i] * id));
  for (int g = 0; g < kQKK / 16; ++g) {
    int s = 0;
    for (int i = 0; i < 16; ++i) s += b->qs[16 * g + i];
    b->bsums[g] = int16_t(s);
  }
  b->d = d;
}

void quantize_block_ref(const float* x, BlockQ4_K* b) {
  int q[kQKK];
  quant_k_affine(x, 15, &b->d, &b->dmin, b->scales, q);
  for (int g = 0; g < 4; ++g) {
    for (int l = 0; l < 32; ++l) b->qs[32 * g + l] = uint8_t(q[64 * g + l] | (q[64 * g + 32 + l] << 4));
  }
}

void quantize_block_ref(const float* x, BlockQ5_K* b) {
  int q[kQKK];
  quant_k_affine(x, 31, &b->d, &b->dmin, b->scales, q);
  std::memset(b->qh, 0, sizeof(b->qh));
  for (int g = 0; g < 4; ++g) {
    for (int l = 0; l < 32; ++l) {
      const int lo = q[64 * g + l], hi = q[64 * g + 32 + l];
      b->qs[32 * g + l] = uint8_t((lo & 0xF) | ((hi & 0xF) << 4));
      b->qh[l] |= uint8_t(((lo >> 4) << (2 * g)) | ((hi >> 4) << (2 * g + 1)));
    }
  }
}

void quantize_block_ref(const float* x, BlockQ6_K* b) {
  float s[16];
  float amax = 0, smax = 0;
  for (int g = 0; g < 16; ++g) {
    s[g] = fit_symmetric(x + 16 * g, 16, 31);
    if (std::fabs(s[g]) > amax) {
      amax = std::fabs(s[g]);
      smax = s[g];
    }
  }
  // Map the largest scale onto -128 so the signed code range is fully used.
  const float d = fp16_to_fp32_ref(fp32_to_fp16_ref(smax / -128.0f));
  b->d = fp32_to_fp16_ref(d);
  int q[kQKK];
  for (int g = 0; g < 16; ++g) {
    const int sc = d != 0.0f ? std::clamp(nearest(s[g] / d), -128, 127) : 0;
    b->scales[g] = int8_t(sc);
    const float dl = d * float(sc);
    for (int i = 0; i < 16; ++i) {
      q[16 * g + i] = dl != 0.0f ? std::clamp(nearest(x[16 * g + i] / dl), -32, 31) + 32 : 32;
    }
  }
  std::memset(b->qh, 0, sizeof(b->qh));
  for (int e = 0; e < kQKK; ++e) {
    const int h = e / 128, k = (e / 32) % 4, l = e % 32;
    uint8_t& lo = b->ql[h * 64 + (k % 2) * 32 + l];
    if (k / 2 == 0) {
      lo = uint8_t((lo & 0xF0) | (q[e] & 0xF));
    } else {
      lo = uint8_t((lo & 0x0F) | ((q[e] & 0xF) << 4));
    }
    b->qh[h * 32 + l] |= uint8_t((q[e] >> 4) << (2 * k));
  }
}

}  // namespace qleap
