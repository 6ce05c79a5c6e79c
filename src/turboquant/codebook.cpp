#include "turboquant/codebook.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "core/error.h"

namespace qleap {

namespace {

// J_n(asin x) for n = n_lo (the mass exponent d-2) and n_lo + 2 (= d).
void j_values(double x, int n_lo, double* j_lo, double* j_hi) {
  x = std::clamp(x, -1.0, 1.0);
  const double s = x;
  const double c = std::sqrt(std::max(0.0, 1.0 - x * x));
  const double t = std::asin(x);
  double j_prev = (n_lo % 2 == 0) ? t : s;  // J_0 or J_1
  int n = (n_lo % 2 == 0) ? 0 : 1;
  // c^(n-1) maintained incrementally: multiply by c^2 every step.
  double cpow = (n == 0) ? 0.0 : 1.0;  // c^(n-1) for n = 1 (c^0); unused for n = 0
  const double c2 = c * c;
  auto step = [&]() {
    // J_{n+2} = c^(n+1) s / (n+2) + (n+1)/(n+2) J_n
    const double c_np1 = (n == 0) ? c : cpow * c2;  // c^(n+1)
    const double j_next = c_np1 * s / (n + 2) + double(n + 1) / (n + 2) * j_prev;
    cpow = c_np1;
    n += 2;
    j_prev = j_next;
  };
  while (n < n_lo) step();
  *j_lo = j_prev;
  step();
  *j_hi = j_prev;
}

double norm_const(int dim) {
  double lo, hi;
  j_values(1.0, dim - 2, &lo, &hi);
  return 2.0 * lo;  // Z = int_{-1}^{1} (1-x^2)^((d-3)/2) dx
}

}  // namespace

void tq_cell_moments(double a, double b, int dim, double* m0, double* m1, double* m2) {
  const double z = norm_const(dim);
  double ja_lo, ja_hi, jb_lo, jb_hi;
  j_values(a, dim - 2, &ja_lo, &ja_hi);
  j_values(b, dim - 2, &jb_lo, &jb_hi);
  *m0 = (jb_lo - ja_lo) / z;
  *m2 = ((jb_lo - jb_hi) - (ja_lo - ja_hi)) / z;
  const double e = 0.5 * (dim - 1);
  const double pa = std::pow(std::max(0.0, 1.0 - a * a), e);
  const double pb = std::pow(std::max(0.0, 1.0 - b * b), e);
  *m1 = (pa - pb) / (dim - 1) / z;
}

double tq_coord_density(double x, int dim) {
  if (x <= -1.0 || x >= 1.0) return 0.0;
  return std::pow(1.0 - x * x, 0.5 * (dim - 3)) / norm_const(dim);
}

TqCodebook compute_lloyd_max(int bits, int dim) {
  if (bits < 1 || bits > 8)
    throw InvalidArgument("turboquant: codebook bits must be 1..8, got " + std::to_string(bits));
  if (dim < 2 || dim > 65536)
    throw InvalidArgument("turboquant: codebook dim must be 2..65536, got " + std::to_string(dim));
  const int k_levels = 1 << bits;
  const double z = norm_const(dim);
  TqCodebook cb;
  cb.bits = bits;
  cb.dim = dim;
  cb.centroids.resize(k_levels);
  cb.thresholds.resize(k_levels - 1);
  // Start evenly spaced over +-3 sigma (sigma = 1/sqrt(d)), clipped to the support. The density is
  // log-concave for d >= 3, so Lloyd's fixed point is unique and any start converges to it.
  const double spread = std::min(1.0, 3.0 / std::sqrt(double(dim)));
  for (int k = 0; k < k_levels; ++k) cb.centroids[k] = spread * (-1.0 + (2.0 * k + 1.0) / k_levels);

  // Per-edge J values, recomputed each iteration from the thresholds.
  std::vector<double> edge_x(k_levels + 1), edge_jlo(k_levels + 1), edge_jhi(k_levels + 1),
      edge_p(k_levels + 1);
  const double e = 0.5 * (dim - 1);
  auto eval_edges = [&]() {
    edge_x[0] = -1.0;
    edge_x[k_levels] = 1.0;
    for (int k = 0; k + 1 < k_levels; ++k) edge_x[k + 1] = cb.thresholds[k];
    for (int k = 0; k <= k_levels; ++k) {
      j_values(edge_x[k], dim - 2, &edge_jlo[k], &edge_jhi[k]);
      edge_p[k] = std::pow(std::max(0.0, 1.0 - edge_x[k] * edge_x[k]), e) / (dim - 1);
    }
  };
  // Converged when no centroid moves by more than 1e-12 sigma: far below float resolution, and
  // above the ~1e-16 rounding floor of the cell integrals.
  const double tol = 1e-12 / std::sqrt(double(dim));
  const int kMaxIter = 200000;
  int it = 0;
  for (; it < kMaxIter; ++it) {
    for (int k = 0; k + 1 < k_levels; ++k) cb.thresholds[k] = 0.5 * (cb.centroids[k] + cb.centroids[k + 1]);
    eval_edges();
    double max_delta = 0;
    for (int k = 0; k < k_levels; ++k) {
      const double m0 = edge_jlo[k + 1] - edge_jlo[k];
      const double m1 = edge_p[k] - edge_p[k + 1];
      if (m0 <= 0) continue;  // empty cell (cannot happen for a positive density); keep the centroid
      const double c = m1 / m0;
      max_delta = std::max(max_delta, std::fabs(c - cb.centroids[k]));
      cb.centroids[k] = c;
    }
    if (max_delta < tol) break;
  }
  cb.iterations = it + 1;
  for (int k = 0; k + 1 < k_levels; ++k) cb.thresholds[k] = 0.5 * (cb.centroids[k] + cb.centroids[k + 1]);
  eval_edges();
  double mse = 0;
  for (int k = 0; k < k_levels; ++k) {
    const double m0 = edge_jlo[k + 1] - edge_jlo[k];
    const double m1 = edge_p[k] - edge_p[k + 1];
    const double m2 = (edge_jlo[k + 1] - edge_jhi[k + 1]) - (edge_jlo[k] - edge_jhi[k]);
    const double c = cb.centroids[k];
    mse += m2 - 2 * c * m1 + c * c * m0;
  }
  cb.coord_mse = mse / z;
  cb.centroids_f.assign(std::max(16, k_levels), 0.0f);
  for (int k = 0; k < k_levels; ++k) cb.centroids_f[k] = float(cb.centroids[k]);
  cb.thresholds_f.resize(k_levels - 1);
  for (int k = 0; k + 1 < k_levels; ++k) cb.thresholds_f[k] = float(cb.thresholds[k]);
  return cb;
}

const TqCodebook& tq_codebook(int bits, int dim) {
  static std::mutex mu;
  static std::map<std::pair<int, int>, std::unique_ptr<TqCodebook>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[{bits, dim}];
  if (!slot) slot = std::make_unique<TqCodebook>(compute_lloyd_max(bits, dim));
  return *slot;
}

}  // namespace qleap
