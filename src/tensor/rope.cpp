#include "tensor/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace qleap {

RopeFreqs rope_freqs(const RopeParams& p) {
  if (p.n_rot <= 0 || p.n_rot % 2 != 0) throw InvalidArgument("rope: n_rot must be positive and even");
  const int half = p.n_rot / 2;
  if (!p.freq_factors.empty() && int(p.freq_factors.size()) < half) {
    throw FormatError("rope_freqs.weight has fewer entries than rope dimensions / 2");
  }
  RopeFreqs out;
  out.inv_freq.resize(size_t(half));
  out.mscale = p.attn_factor;
  double freq_scale = 1.0;
  if (p.scaling != RopeScaling::kNone && p.factor > 0) freq_scale = 1.0 / double(p.factor);
  double ext = p.ext_factor;
  if (ext < 0) ext = p.scaling == RopeScaling::kYarn ? 1.0 : 0.0;

  // YaRN correction range: the pair indices whose wavelength fits beta_fast / beta_slow rotations in
  // the original context keep extrapolated (unscaled) frequencies; the ramp interpolates in between.
  double low = 0, high = 0;
  if (ext != 0.0) {
    const double base = p.freq_base;
    const double n_ctx = p.orig_ctx > 0 ? p.orig_ctx : 4096;
    auto corr_dim = [&](double n_rotations) {
      return p.n_rot * std::log(n_ctx / (n_rotations * 2 * std::numbers::pi)) / (2 * std::log(base));
    };
    low = corr_dim(p.beta_fast);
    high = corr_dim(p.beta_slow);
    if (p.yarn_truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(0.0, low);
    high = std::min(double(p.n_rot - 1), high);
    // HF scales the magnitude by 0.1 * ln(factor) + 1 (get_mscale); llama.cpp the same via freq_scale.
    out.mscale *= 1.0 + 0.1 * std::log(1.0 / freq_scale);
  }
  for (int i = 0; i < half; ++i) {
    double inv = std::pow(double(p.freq_base), -2.0 * i / double(p.n_rot));
    if (!p.freq_factors.empty()) inv /= double(p.freq_factors[size_t(i)]);
    double mult = freq_scale;
    if (ext != 0.0) {
      const double y = (double(i) - low) / std::max(0.001, high - low);
      const double ramp = 1.0 - std::min(1.0, std::max(0.0, y));  // 1: extrapolate, 0: interpolate
      const double mix = ramp * ext;
      mult = freq_scale * (1.0 - mix) + mix;
    }
    out.inv_freq[size_t(i)] = inv * mult;
  }
  return out;
}

RopeTable::RopeTable(const RopeParams& p, int n_pos) : n_rot_(p.n_rot), n_pos_(n_pos), style_(p.style) {
  RopeFreqs f;
  if (!p.long_freq_factors.empty() && n_pos > p.orig_ctx) {
    RopeParams lp = p;
    lp.freq_factors = p.long_freq_factors;
    f = rope_freqs(lp);
  } else {
    f = rope_freqs(p);
  }
  const int half = p.n_rot / 2;
  table_.resize(size_t(n_pos) * size_t(n_rot_));
  for (int pos = 0; pos < n_pos; ++pos) {
    float* row = table_.data() + size_t(pos) * size_t(n_rot_);
    for (int i = 0; i < half; ++i) {
      const double theta = double(pos) * f.inv_freq[size_t(i)];
      row[2 * i] = float(std::cos(theta) * f.mscale);
      row[2 * i + 1] = float(std::sin(theta) * f.mscale);
    }
  }
}

}  // namespace qleap
