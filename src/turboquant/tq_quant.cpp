#include "turboquant/tq_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>

#include "core/error.h"
#include "core/fp16.h"

namespace qleap {

namespace {

// cells[i] = the number of (sorted) thresholds <= y[i] * scale: every threshold compared with 16
// coordinates at a time and the hits summed, a form the compiler vectorizes (a binary search per
// coordinate loads a threshold that depends on the last comparison, and cost a tenth of the encoder).
// The same count, NaN included (no comparison holds).
void cell_indices(const float* thresholds, int bits, const float* y, float scale, int n, uint8_t* cells) {
  const int nt = (1 << bits) - 1;
  for (int i0 = 0; i0 < n; i0 += 16) {
    const int m = std::min(16, n - i0);
    float x[16] = {};
    int32_t c[16] = {};
    for (int j = 0; j < m; ++j) x[j] = y[i0 + j] * scale;
    for (int k = 0; k < nt; ++k) {
      const float t = thresholds[k];
      for (int j = 0; j < 16; ++j) c[j] += x[j] >= t ? 1 : 0;
    }
    for (int j = 0; j < m; ++j) cells[i0 + j] = uint8_t(c[j]);
  }
}

// Per-thread scratch of the scale search, grown as needed and kept: no allocation per vector.
struct SweepScratch {
  std::vector<uint32_t> ev32, tmp32, start;
  std::vector<uint64_t> ev64, tmp64;
  std::vector<float> a;
  std::vector<uint8_t> cur;
};

SweepScratch& sweep_scratch() {
  thread_local SweepScratch s;
  return s;
}

// Sorts n keys below 2^key_bits into descending order; the result is in ev or tmp (returned). One
// counting pass on the top bits into about 2n buckets leaves them nearly sorted, an insertion sort
// finishes (linear unless many keys share a bucket: then std::sort, e.g. many equal |y_i|).
template <typename Key>
Key* sort_descending(Key* ev, Key* tmp, size_t n, int key_bits, std::vector<uint32_t>& start) {
  if (n < 2) return ev;
  int nb_bits = 1;
  while ((size_t(1) << nb_bits) < 2 * n && nb_bits < 12) ++nb_bits;
  const int shift = std::max(0, key_bits - nb_bits);
  const size_t nb = size_t(1) << (key_bits - shift);
  // Bucket b holds the keys with key >> shift == nb - 1 - b (descending bucket order).
  start.assign(nb + 1, 0);
  for (size_t e = 0; e < n; ++e) ++start[nb - size_t(ev[e] >> shift)];
  for (size_t b = 1; b <= nb; ++b) start[b] += start[b - 1];
  for (size_t e = 0; e < n; ++e) tmp[start[nb - 1 - size_t(ev[e] >> shift)]++] = ev[e];
  size_t moves = 0;
  for (size_t e = 1; e < n; ++e) {
    const Key k = tmp[e];
    size_t j = e;
    for (; j > 0 && tmp[j - 1] < k; --j) tmp[j] = tmp[j - 1];
    tmp[j] = k;
    moves += e - j;
    if (moves > 8 * n) {
      std::sort(tmp, tmp + n, std::greater<>());
      break;
    }
  }
  return tmp;
}

// The bits the scale part of an event key needs: those of bits(a_hi) - bits(1 / a_hi) - 1.
int scale_key_bits(float a_hi) {
  const float a_lo = 1.0f / a_hi;
  uint32_t lo_bits, hi_bits;
  std::memcpy(&lo_bits, &a_lo, 4);
  std::memcpy(&hi_bits, &a_hi, 4);
  int b = 0;
  while (((hi_bits - lo_bits - 1) >> b) != 0) ++b;
  return b;
}

// The exact sweep of tq_assign_cells over the assignment scales a in [1 / a_hi, a_hi), from the cells
// idx at a_hi (yc = <y, c>, cc = <c, c> there); leaves idx, yc and cc at the best prefix of events.
// Event key: the bits of a (positive floats order like their bits) less those of 1 / a_hi, above the ib
// bits of the coordinate. Descending keys are the events by falling a, ties by falling coordinate: the
// order of the earlier std::sort of (bits of a) << 32 | i, so the sums below run in the same order and
// the records stay the same bit for bit.
template <typename Key>
void sweep_scales(const TqState& st, const float* y, uint8_t* idx, float a_hi, int ib, int key_bits,
                  double& yc, double& cc) {
  const TqLayout& l = st.layout;
  const int d = l.dim;
  const float a_lo = 1.0f / a_hi;
  uint32_t lo_bits, hi_bits;
  std::memcpy(&lo_bits, &a_lo, 4);
  std::memcpy(&hi_bits, &a_hi, 4);
  const uint32_t span = hi_bits - lo_bits;  // a in range <=> bits(a) - lo_bits < span (unsigned)

  // Per part, the thresholds a coordinate of each sign crosses as a falls (t > 0 for y > 0, t < 0 for
  // y < 0), nearest to zero first; the shorter list padded with NaN, whose a = NaN is out of range.
  struct Part {
    int i0, i1, m;
    float tp[256], tn[256];
  };
  Part parts[2];
  int m_max = 0;
  for (int h = 0; h < 2; ++h) {
    Part& p = parts[h];
    const TqCodebook& cb = h == 0 ? *st.cb_hi : *st.cb_lo;
    const int nt = (1 << (h == 0 ? l.bits_hi : l.bits_lo)) - 1;
    p.i0 = h == 0 ? 0 : l.split;
    p.i1 = h == 0 ? l.split : d;
    int np = 0, nn = 0;
    for (int k = 0; k < nt; ++k)
      if (cb.thresholds_f[size_t(k)] > 0) p.tp[np++] = cb.thresholds_f[size_t(k)];
    for (int k = nt - 1; k >= 0; --k)
      if (cb.thresholds_f[size_t(k)] < 0) p.tn[nn++] = cb.thresholds_f[size_t(k)];
    p.m = std::max(np, nn);
    std::fill(p.tp + np, p.tp + p.m, std::numeric_limits<float>::quiet_NaN());
    std::fill(p.tn + nn, p.tn + p.m, std::numeric_limits<float>::quiet_NaN());
    if (p.i1 > p.i0) m_max = std::max(m_max, p.m);
  }

  SweepScratch& s = sweep_scratch();
  std::vector<Key>& ev = [&]() -> std::vector<Key>& {
    if constexpr (sizeof(Key) == 4)
      return s.ev32;
    else
      return s.ev64;
  }();
  std::vector<Key>& tmp = [&]() -> std::vector<Key>& {
    if constexpr (sizeof(Key) == 4)
      return s.tmp32;
    else
      return s.tmp64;
  }();
  const size_t cap = size_t(d) * size_t(m_max) + 1;  // +1: every candidate is written, the valid kept
  if (ev.size() < cap) {
    ev.resize(cap);
    tmp.resize(cap);
  }
  if (s.a.size() < size_t(d)) s.a.resize(size_t(d));
  float* a = s.a.data();
  Key* evp = ev.data();
  size_t n = 0;
  // Branch-free: the divisions of one threshold rank vectorize, and every candidate is stored with the
  // count advanced only for those in range (a = y_i / t is monotonic along a coordinate's list, so its
  // events come out in falling a; y_i = 0 gives a = 0, out of range, as the old skip did).
  for (const Part& p : parts) {
    for (int j = 0; j < p.m; ++j) {
      const float tpj = p.tp[j], tnj = p.tn[j];
      for (int i = p.i0; i < p.i1; ++i) a[i] = y[i] / (y[i] > 0 ? tpj : tnj);
      for (int i = p.i0; i < p.i1; ++i) {
        uint32_t bits;
        std::memcpy(&bits, &a[i], 4);
        const uint32_t off = bits - lo_bits;
        evp[n] = Key(off) << ib | Key(uint32_t(i));
        n += off < span ? 1 : 0;
      }
    }
  }
  const Key* sorted = sort_descending(evp, tmp.data(), n, key_bits, s.start);

  const Key imask = (Key(1) << ib) - 1;
  const float* c_hi = st.cb_hi->centroids_f.data();
  const float* c_lo = st.cb_lo->centroids_f.data();
  const int split = l.split, top_hi = (1 << l.bits_hi) - 1, top_lo = (1 << l.bits_lo) - 1;
  s.cur.assign(idx, idx + d);
  uint8_t* cur = s.cur.data();
  // Locals, not the references: stores through cur (uint8_t, may alias anything) would otherwise send
  // the running sums through memory on every event.
  double run_yc = yc, run_cc = cc, best_yc = yc, best_cc = cc;
  size_t best = 0;  // events applied
  for (size_t e = 0; e < n; ++e) {
    // Each event moves its coordinate one cell outwards (clamped); integer arithmetic and selects, not
    // branches: the signs and the improvements are unpredictable.
    const int i = int(sorted[e] & imask);
    const bool h = i < split;
    const float* c = h ? c_hi : c_lo;
    const int top = h ? top_hi : top_lo;
    const float yi = y[i];
    const int k = cur[i];
    const int k2 = std::max(0, std::min(k - 1 + 2 * int(yi > 0), top));
    const double c0 = c[k], c1 = c[k2];
    cur[i] = uint8_t(k2);
    run_yc += double(yi) * (c1 - c0);
    run_cc += c1 * c1 - c0 * c0;
    // yc^2 / cc > best_yc^2 / best_cc, both yc positive.
    const bool better =
        (run_yc > 0) & (run_cc > 0) & (run_yc * run_yc * best_cc > best_yc * best_yc * run_cc);
    best_yc = better ? run_yc : best_yc;
    best_cc = better ? run_cc : best_cc;
    best = better ? e + 1 : best;
  }
  for (size_t e = 0; e < best; ++e) {
    const int i = int(sorted[e] & imask), top = i < split ? top_hi : top_lo;
    idx[i] = uint8_t(y[i] > 0 ? std::min(idx[i] + 1, top) : std::max(idx[i] - 1, 0));
  }
  yc = best_yc;
  cc = best_cc;
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
  cell_indices(hi.thresholds_f.data(), l.bits_hi, y, inv_hi, l.split, idx);
  cell_indices(lo.thresholds_f.data(), l.bits_lo, y + l.split, inv_hi, d - l.split, idx + l.split);
  if (!st.cfg.ls_norm || l.qjl) return 1.0;
  double yc = 0, cc = 0;
  for (int i = 0; i < d; ++i) {
    const double c = cent(i, idx[i]);
    yc += double(y[i]) * c;
    cc += c * c;
  }
  if (search) {
    // As a falls from a_hi to 1 / a_hi, |y_i / a| grows: coordinate i moves one cell outwards each time
    // a passes y_i / t for a threshold t of y_i's sign. The events are applied by falling a; the state
    // after the best prefix of them is the answer (ties: the earliest, i.e. the largest scale).
    int ib = 0;  // bits of a coordinate index
    while ((1 << ib) < d) ++ib;
    const int key_bits = ib + scale_key_bits(a_hi);  // 24 + ib for kTqScaleRange 1.6
    if (key_bits <= 32)
      sweep_scales<uint32_t>(st, y, idx, a_hi, ib, key_bits, yc, cc);
    else
      sweep_scales<uint64_t>(st, y, idx, a_hi, ib, key_bits, yc, cc);
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
