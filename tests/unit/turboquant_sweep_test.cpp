// The scale search of tq_assign_cells (branch-free event generation, bucket sort, select-based sweep)
// against the first implementation, kept here as the reference: one std::sort of 64-bit keys (bits of
// the scale << 32 | coordinate) and a plain sweep. The records must not change, so cells and the
// returned factor must be equal bit for bit on every vector.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/fp16.h"
#include "turboquant/tq_quant.h"

namespace qleap {
namespace {

uint8_t reference_cell_index(const float* thresholds, int bits, float x) {
  int idx = 0;
  for (int step = 1 << (bits - 1); step >= 1; step >>= 1) idx += x >= thresholds[idx + step - 1] ? step : 0;
  return uint8_t(idx);
}

// tq_assign_cells as first written (main at 3317451), unchanged but for the names.
double reference_assign_cells(const TqState& st, const float* y, uint8_t* idx) {
  const TqLayout& l = st.layout;
  const int d = l.dim;
  const TqCodebook& hi = *st.cb_hi;
  const TqCodebook& lo = *st.cb_lo;
  auto cent = [&](int i, int k) {
    return i < l.split ? hi.centroids_f[size_t(k)] : lo.centroids_f[size_t(k)];
  };
  const bool search = st.cfg.ls_norm && st.cfg.scale_search && !l.qjl;
  const float a_hi = search ? float(kTqScaleRange) : 1.0f, inv_hi = 1.0f / a_hi;
  for (int i = 0; i < l.split; ++i)
    idx[i] = reference_cell_index(hi.thresholds_f.data(), l.bits_hi, y[i] * inv_hi);
  for (int i = l.split; i < d; ++i)
    idx[i] = reference_cell_index(lo.thresholds_f.data(), l.bits_lo, y[i] * inv_hi);
  if (!st.cfg.ls_norm || l.qjl) return 1.0;
  double yc = 0, cc = 0;
  for (int i = 0; i < d; ++i) {
    const double c = cent(i, idx[i]);
    yc += double(y[i]) * c;
    cc += c * c;
  }
  if (search) {
    std::vector<uint64_t> ev;
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
    size_t best = 0;
    const int n_hi = 1 << l.bits_hi, n_lo = 1 << l.bits_lo;
    std::vector<uint8_t> cur(idx, idx + d);
    for (size_t e = 0; e < ev.size(); ++e) {
      const int i = int(uint32_t(ev[e]));
      const int k = cur[size_t(i)], n = i < l.split ? n_hi : n_lo;
      const int k2 = y[i] > 0 ? std::min(k + 1, n - 1) : std::max(k - 1, 0);
      const double c0 = cent(i, k), c1 = cent(i, k2);
      cur[size_t(i)] = uint8_t(k2);
      yc += double(y[i]) * (c1 - c0);
      cc += c1 * c1 - c0 * c0;
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

// Vectors as KV caches see them, before normalization and rotation. Keys of real models have a few
// channels far larger than the rest, fixed per head (offsets, massive activations), heavy tails, and
// values in fp16; the degenerate ones (a spike, whose Hadamard rotation has equal magnitudes and so many
// equal scales; sparse; constant) stress the ties of the sort.
std::vector<float> make_vector(TqRng& rng, int d, int kind, const std::vector<float>& channel_bias) {
  std::vector<float> x(size_t(d), 0.0f);
  switch (kind) {
    case 0:  // Gaussian
      for (float& v : x) v = float(rng.next_gaussian());
      break;
    case 1:  // a few outlier coordinates
      for (float& v : x) v = float(rng.next_gaussian());
      for (int c : {3, 17, 40}) x[size_t(c % d)] *= 20.0f;
      break;
    case 2:  // key-like: per-channel offsets and outlier channels, heavy (Laplace) tails, fp16 values
      for (int i = 0; i < d; ++i) {
        const double u = rng.next_uniform() - 0.5;
        const double lap = (u < 0 ? 1 : -1) * std::log(1 - 2 * std::fabs(u));
        x[size_t(i)] = fp16_to_fp32(fp32_to_fp16(float(channel_bias[size_t(i)] + lap)));
      }
      break;
    case 3:  // sparse: a few nonzeros
      for (int k = 0; k < 3; ++k) x[size_t(rng.next_u64() % uint64_t(d))] = float(rng.next_gaussian());
      break;
    case 4:  // a spike
      x[size_t(rng.next_u64() % uint64_t(d))] = 1.0f;
      break;
    case 5:  // constant
      std::fill(x.begin(), x.end(), 0.25f);
      break;
    default:  // coarse values: many exact ties
      for (float& v : x) v = float(std::round(rng.next_gaussian() * 2) / 2);
      break;
  }
  return x;
}
constexpr int kKinds = 7;

struct Stats {
  int vectors = 0, mismatched = 0;
};

void expect_same(const TqState& st, const std::vector<float>& y, Stats& s, const std::string& what) {
  const int d = st.layout.dim;
  std::vector<uint8_t> got(size_t(d), 0xee), want(size_t(d), 0xee);
  const double f = tq_assign_cells(st, y.data(), got.data());
  const double r = reference_assign_cells(st, y.data(), want.data());
  ++s.vectors;
  const bool same = got == want && std::memcmp(&f, &r, sizeof f) == 0;
  if (!same && ++s.mismatched <= 5)
    ADD_FAILURE() << what << ": factor " << f << " vs reference " << r
                  << (got == want ? "" : ", cells differ");
}

TEST(TurboQuantSweep, SameCellsAndFactorAsTheReference) {
  for (int d : {64, 128, 80, 16, 576}) {  // 80: dense rotation; 576 (MLA latent): 64-bit event keys
    for (float bits : {2.0f, 2.5f, 3.0f, 3.5f, 4.0f}) {
      TqConfig cfg{d, bits};
      cfg.ls_norm = cfg.scale_search = true;
      const TqState st = tq_make_state(cfg, 3, 1);
      TqRng rng(uint64_t(d) * 131 + uint64_t(bits * 2));
      std::vector<float> bias(static_cast<size_t>(d));
      for (int i = 0; i < d; ++i) bias[size_t(i)] = i % 11 == 0 ? 8.0f * float(rng.next_gaussian()) : 0.3f;
      Stats s;
      const int per_kind = d > 128 ? 20 : 120;
      for (int kind = 0; kind < kKinds; ++kind) {
        for (int n = 0; n < per_kind; ++n) {
          const std::vector<float> x = make_vector(rng, d, kind, bias);
          double n2 = 0;
          for (float v : x) n2 += double(v) * v;
          if (n2 == 0) continue;
          std::vector<float> y(static_cast<size_t>(d));
          const float inv = float(1.0 / std::sqrt(n2));
          for (int i = 0; i < d; ++i) y[size_t(i)] = x[size_t(i)] * inv;
          rotate_forward(st.rotation, y.data(), y.data());
          const std::string what =
              "d " + std::to_string(d) + " bits " + std::to_string(bits) + " kind " + std::to_string(kind);
          expect_same(st, y, s, what);
          // Unrotated too: the sparse, spike and constant kinds keep their zeros and exact ties there.
          for (int i = 0; i < d; ++i) y[size_t(i)] = x[size_t(i)] * inv;
          expect_same(st, y, s, what + " unrotated");
        }
      }
      std::printf("[sweep] d %d bits %.1f: %d vectors, %d differ from the reference\n", d, bits, s.vectors,
                  s.mismatched);
      EXPECT_EQ(s.mismatched, 0) << "d " << d << " bits " << bits;
    }
  }
}

// Inputs the encoder never gets from tq_quantize (not unit, not finite) still give the reference's
// answer: the event filter and the sort must not depend on y being a unit vector.
TEST(TurboQuantSweep, UnusualInputsMatchTheReference) {
  for (float bits : {2.0f, 3.0f, 3.5f, 4.0f}) {
    TqConfig cfg{64, bits};
    cfg.ls_norm = cfg.scale_search = true;
    const TqState st = tq_make_state(cfg, 0, 0);
    TqRng rng(99);
    Stats s;
    for (float scale : {1e-38f, 1e-20f, 0.01f, 1.0f, 50.0f, 1e30f}) {
      for (int n = 0; n < 20; ++n) {
        std::vector<float> y(64);
        for (float& v : y) v = float(rng.next_gaussian()) * scale * 0.125f;
        if (n % 4 == 1) y[5] = -0.0f;
        if (n % 4 == 2) y[9] = std::numeric_limits<float>::infinity();
        if (n % 4 == 3) y[11] = std::numeric_limits<float>::quiet_NaN();
        expect_same(st, y, s, "bits " + std::to_string(bits) + " scale " + std::to_string(scale));
      }
    }
    EXPECT_EQ(s.mismatched, 0) << "bits " << bits;
  }
}

}  // namespace
}  // namespace qleap
