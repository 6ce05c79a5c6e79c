#include "turboquant/tq_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>

#include "core/error.h"
#include "core/fp16.h"

namespace qleap {

namespace {

// The number of (sorted) thresholds <= x, by a branch-free binary search: bits steps instead of
// 2^bits - 1 comparisons.
inline uint8_t cell_index(const float* thresholds, int bits, float x) {
  int idx = 0;
  for (int step = 1 << (bits - 1); step >= 1; step >>= 1) idx += x >= thresholds[idx + step - 1] ? step : 0;
  return uint8_t(idx);
}

}  // namespace

TqLayout tq_layout(const TqConfig& cfg) {
  if (cfg.dim < 2 || cfg.dim > 65536)
    throw InvalidArgument("turboquant: dim must be 2..65536, got " + std::to_string(cfg.dim));
  const float twice = cfg.bits * 2.0f;
  if (!(twice >= 2.0f && twice <= 8.0f) || twice != std::floor(twice))
    throw InvalidArgument("turboquant: bits must be one of 1, 1.5, 2, 2.5, 3, 3.5, 4, got " +
                          std::to_string(cfg.bits));
  if (cfg.rotation == TqRotationKind::kHadamard && !tq_is_pow2(cfg.dim))
    throw InvalidArgument("turboquant: Hadamard rotation needs a power-of-two dim, got " +
                          std::to_string(cfg.dim));
  TqLayout l;
  l.dim = cfg.dim;
  const int t = int(twice);
  if (t % 2 == 0) {
    l.bits_hi = l.bits_lo = t / 2;
    l.split = cfg.dim;
  } else {
    l.bits_lo = t / 2;
    l.bits_hi = l.bits_lo + 1;
    l.split = cfg.dim / 2;
  }
  l.hi_bytes = (size_t(l.split) * l.bits_hi + 7) / 8;
  l.lo_bytes = (size_t(cfg.dim - l.split) * l.bits_lo + 7) / 8;
  l.norm_offset = l.hi_bytes + l.lo_bytes;
  l.bytes = l.norm_offset + 2;
  l.qjl = cfg.qjl;
  if (cfg.qjl) {
    l.qjl_offset = l.bytes;
    l.gamma_offset = l.qjl_offset + (size_t(cfg.dim) + 7) / 8;
    l.bytes = l.gamma_offset + 2;
  }
  return l;
}

TqState tq_make_state(const TqConfig& cfg, int layer, int kv_head) {
  TqState st;
  st.cfg = cfg;
  st.layout = tq_layout(cfg);
  const uint64_t seed = tq_head_seed(cfg.seed, layer, kv_head);
  st.rotation = make_rotation(cfg.dim, cfg.rotation, seed);
  st.cb_hi = &tq_codebook(st.layout.bits_hi, cfg.dim);
  st.cb_lo = &tq_codebook(st.layout.bits_lo, cfg.dim);
  if (cfg.qjl) {
    // A separate stream from the rotation's so that S and R are independent.
    TqRng rng(seed ^ 0x514a4c5f51554e54ull);
    st.qjl_matrix.resize(size_t(cfg.dim) * cfg.dim);
    for (auto& v : st.qjl_matrix) v = float(rng.next_gaussian());
  }
  return st;
}

std::vector<TqState> tq_make_states(const TqConfig& cfg, int n_layers, int n_kv_heads) {
  if (n_layers < 0 || n_kv_heads < 0) throw InvalidArgument("turboquant: negative layer or head count");
  std::vector<TqState> v;
  v.reserve(size_t(n_layers) * n_kv_heads);
  for (int l = 0; l < n_layers; ++l)
    for (int h = 0; h < n_kv_heads; ++h) v.push_back(tq_make_state(cfg, l, h));
  return v;
}

void tq_pack_indices(const uint8_t* idx, int n, int bits, uint8_t* out) {
  std::memset(out, 0, (size_t(n) * bits + 7) / 8);
  size_t bit = 0;
  for (int i = 0; i < n; ++i, bit += bits) {
    const uint32_t v = idx[i] & ((1u << bits) - 1);
    // bits <= 8, so the value spans at most two bytes.
    out[bit >> 3] |= uint8_t(v << (bit & 7));
    if ((bit & 7) + bits > 8) out[(bit >> 3) + 1] |= uint8_t(v >> (8 - (bit & 7)));
  }
}

void tq_unpack_indices(const uint8_t* in, int n, int bits, uint8_t* idx) {
  size_t bit = 0;
  const uint32_t mask = (1u << bits) - 1;
  for (int i = 0; i < n; ++i, bit += bits) {
    uint32_t v = in[bit >> 3] >> (bit & 7);
    if ((bit & 7) + bits > 8) v |= uint32_t(in[(bit >> 3) + 1]) << (8 - (bit & 7));
    idx[i] = uint8_t(v & mask);
  }
}

float tq_record_norm(const TqLayout& l, const uint8_t* rec) {
  uint16_t h;
  std::memcpy(&h, rec + l.norm_offset, 2);
  return fp16_to_fp32(h);
}

double tq_assign_cells(const TqState& st, const float* y, uint8_t* idx) {
  const TqLayout& l = st.layout;
  const int d = l.dim;
  const TqCodebook& hi = *st.cb_hi;
  const TqCodebook& lo = *st.cb_lo;
  auto cent = [&](int i, int k) {
    return i < l.split ? hi.centroids_f[size_t(k)] : lo.centroids_f[size_t(k)];
  };
  const bool search = st.cfg.ls_norm && st.cfg.scale_search && !l.qjl;
  // Cells at the largest assignment scale a_hi (y / a_hi: the smallest magnitudes), or at 1.
  const float a_hi = search ? float(kTqScaleRange) : 1.0f, inv_hi = 1.0f / a_hi;
  for (int i = 0; i < l.split; ++i) idx[i] = cell_index(hi.thresholds_f.data(), l.bits_hi, y[i] * inv_hi);
  for (int i = l.split; i < d; ++i) idx[i] = cell_index(lo.thresholds_f.data(), l.bits_lo, y[i] * inv_hi);
  if (!st.cfg.ls_norm || l.qjl) return 1.0;
  double yc = 0, cc = 0;
  for (int i = 0; i < d; ++i) {
    const double c = cent(i, idx[i]);
    yc += double(y[i]) * c;
    cc += c * c;
  }
  if (search) {
    // As a falls from a_hi to 1 / a_hi, |y_i / a| grows: coordinate i moves one cell outwards each time
    // a passes y_i / t for a threshold t of y_i's sign. Events sorted by falling a; the state after the
    // best prefix of them is the answer (ties: the earliest, i.e. the largest scale).
    // Event key: the bits of a (positive floats order like their bits) above the coordinate.
    thread_local std::vector<uint64_t> ev;
    ev.clear();
    const float a_lo = 1.0f / a_hi;
    for (int i = 0; i < d; ++i) {
      const float yi = y[i];
      if (yi == 0) continue;
      const float* t = i < l.split ? hi.thresholds_f.data() : lo.thresholds_f.data();
      const int nt = (1 << (i < l.split ? l.bits_hi : l.bits_lo)) - 1;
      for (int k = 0; k < nt; ++k) {
        if (yi > 0 ? t[k] <= 0 : t[k] >= 0) continue;
        const float a = yi / t[k];
        if (a < a_hi && a >= a_lo) {
          uint32_t bits;
          std::memcpy(&bits, &a, 4);
          ev.push_back(uint64_t(bits) << 32 | uint32_t(i));
        }
      }
    }
    std::sort(ev.begin(), ev.end(), std::greater<>());
    double best_yc = yc, best_cc = cc;
    size_t best = 0;  // events applied
    const int n_hi = 1 << l.bits_hi, n_lo = 1 << l.bits_lo;
    thread_local std::vector<uint8_t> cur;
    cur.assign(idx, idx + d);
    for (size_t e = 0; e < ev.size(); ++e) {
      const int i = int(uint32_t(ev[e]));
      const int k = cur[size_t(i)], n = i < l.split ? n_hi : n_lo;
      const int k2 = y[i] > 0 ? std::min(k + 1, n - 1) : std::max(k - 1, 0);
      const double c0 = cent(i, k), c1 = cent(i, k2);
      cur[size_t(i)] = uint8_t(k2);
      yc += double(y[i]) * (c1 - c0);
      cc += c1 * c1 - c0 * c0;
      // yc^2 / cc > best_yc^2 / best_cc, both yc positive.
      if (yc > 0 && cc > 0 && yc * yc * best_cc > best_yc * best_yc * cc) {
        best_yc = yc;
        best_cc = cc;
        best = e + 1;
      }
    }
    for (size_t e = 0; e < best; ++e) {
      const int i = int(uint32_t(ev[e])), n = i < l.split ? n_hi : n_lo;
      idx[i] = uint8_t(y[i] > 0 ? std::min(idx[i] + 1, n - 1) : std::max(idx[i] - 1, 0));
    }
    yc = best_yc;
    cc = best_cc;
  }
  return cc > 0 && yc > 0 ? yc / cc : 0.0;
}

void tq_quantize(const TqState& st, const float* x, uint8_t* out) {
  const TqLayout& l = st.layout;
  const int d = l.dim;
  double nrm2 = 0;
  for (int i = 0; i < d; ++i) nrm2 += double(x[i]) * x[i];
  const double nrm = std::sqrt(nrm2);
  // Per-thread scratch: quantize runs once per token, layer and head on the hot append path.
  thread_local std::vector<float> y;
  thread_local std::vector<uint8_t> idx;
  y.assign(d, 0.0f);
  idx.assign(d, 0);
  uint16_t norm_h = 0;
  const bool ok = nrm > 0 && std::isfinite(nrm);
  if (ok) {
    const float inv = float(1.0 / nrm);
    for (int i = 0; i < d; ++i) y[i] = x[i] * inv;
    rotate_forward(st.rotation, y.data(), y.data());
    double f = tq_assign_cells(st, y.data(), idx.data());
    if (f > 0 && st.cfg.unbiased && st.cfg.ls_norm && !l.qjl) {
      double yc = 0;
      for (int i = 0; i < d; ++i)
        yc += double(y[i]) * (i < l.split ? st.cb_hi->centroids_f[idx[i]] : st.cb_lo->centroids_f[idx[i]]);
      f = yc > 0 ? 1.0 / yc : f;
    }
    const double stored = f > 0 ? nrm * f : nrm;
    norm_h = fp32_to_fp16(float(std::min(stored, 65504.0)));  // saturate instead of inf
  }
  tq_pack_indices(idx.data(), l.split, l.bits_hi, out);
  if (d > l.split) tq_pack_indices(idx.data() + l.split, d - l.split, l.bits_lo, out + l.hi_bytes);
  std::memcpy(out + l.norm_offset, &norm_h, 2);
  if (l.qjl) {
    uint8_t* signs = out + l.qjl_offset;
    std::memset(signs, 0, (size_t(d) + 7) / 8);
    uint16_t gamma_h = 0;
    if (ok) {
      std::vector<double> r(d);
      double g2 = 0;
      for (int i = 0; i < d; ++i) {
        const float c = i < l.split ? st.cb_hi->centroids_f[idx[i]] : st.cb_lo->centroids_f[idx[i]];
        r[i] = double(y[i]) - c;
        g2 += r[i] * r[i];
      }
      for (int k = 0; k < d; ++k) {
        const float* row = &st.qjl_matrix[size_t(k) * d];
        double s = 0;
        for (int i = 0; i < d; ++i) s += double(row[i]) * r[i];
        if (s >= 0) signs[k >> 3] |= uint8_t(1u << (k & 7));
      }
      gamma_h = fp32_to_fp16(float(std::sqrt(g2)));
    }
    std::memcpy(out + l.gamma_offset, &gamma_h, 2);
  }
}

void tq_quantize_rows(const TqState& st, int64_t n, const float* x, size_t x_stride, uint8_t* out,
                      size_t out_stride) {
  for (int64_t j = 0; j < n; ++j) tq_quantize(st, x + size_t(j) * x_stride, out + size_t(j) * out_stride);
}

void tq_dequantize_rotated_unit(const TqState& st, const uint8_t* in, float* y) {
  const TqLayout& l = st.layout;
  std::vector<uint8_t> idx(l.dim);
  tq_unpack_indices(in, l.split, l.bits_hi, idx.data());
  if (l.dim > l.split) tq_unpack_indices(in + l.hi_bytes, l.dim - l.split, l.bits_lo, idx.data() + l.split);
  for (int i = 0; i < l.split; ++i) y[i] = st.cb_hi->centroids_f[idx[i]];
  for (int i = l.split; i < l.dim; ++i) y[i] = st.cb_lo->centroids_f[idx[i]];
}

void tq_dequantize(const TqState& st, const uint8_t* in, float* x) {
  const float nrm = tq_record_norm(st.layout, in);
  tq_dequantize_rotated_unit(st, in, x);
  rotate_inverse(st.rotation, x, x);
  for (int i = 0; i < st.layout.dim; ++i) x[i] *= nrm;
}

float tq_qjl_inner_product(const TqState& st, const float* q, const uint8_t* rec) {
  const TqLayout& l = st.layout;
  if (!l.qjl) throw InvalidArgument("turboquant: QJL estimate needs a config with qjl = true");
  const int d = l.dim;
  std::vector<float> qr(d), c(d);
  rotate_forward(st.rotation, q, qr.data());
  tq_dequantize_rotated_unit(st, rec, c.data());
  double mse_part = 0;
  for (int i = 0; i < d; ++i) mse_part += double(qr[i]) * c[i];
  const uint8_t* signs = rec + l.qjl_offset;
  double sk = 0;
  for (int k = 0; k < d; ++k) {
    const float* row = &st.qjl_matrix[size_t(k) * d];
    double s = 0;
    for (int i = 0; i < d; ++i) s += double(row[i]) * qr[i];
    sk += (signs[k >> 3] >> (k & 7)) & 1 ? s : -s;
  }
  uint16_t gh;
  std::memcpy(&gh, rec + l.gamma_offset, 2);
  const double gamma = fp16_to_fp32(gh);
  const double corr = std::sqrt(3.14159265358979323846 / 2.0) / d * gamma * sk;
  return float(tq_record_norm(l, rec) * (mse_part + corr));
}

}  // namespace qleap
