// Lloyd-Max scalar codebooks for TurboQuant. After a random rotation, each coordinate x of a unit
// vector in R^d has density f(x) = (1 - x^2)^((d-3)/2) / Z on [-1, 1] (a shifted Beta((d-1)/2,
// (d-1)/2); about N(0, 1/d) for large d). The MSE-optimal b-bit scalar quantizer for that density
// satisfies the Lloyd conditions: each threshold is the midpoint of its neighbouring centroids and
// each centroid is the conditional mean of its cell. We iterate those conditions to a fixed point.
//
// The cell integrals are exact, not sampled: with x = sin(t),
//   mass     int_a^b f      = J_{d-2}(asin b) - J_{d-2}(asin a),  J_n(t) = int_0^t cos^n
//   1st mom. int_a^b x f    = ((1-a^2)^((d-1)/2) - (1-b^2)^((d-1)/2)) / (d-1)
//   2nd mom. int_a^b x^2 f  = [J_{d-2} - J_d] between the same limits
// and J_n follows the reduction J_n = cos^(n-1) sin / n + (n-1)/n J_{n-2}, J_0 = t, J_1 = sin t,
// all in double. (The tests check the result against independent numerical quadrature.)
#pragma once
#include <vector>

namespace qleap {

struct TqCodebook {
  int bits = 0;
  int dim = 0;
  std::vector<double> centroids;   // 2^bits, ascending
  std::vector<double> thresholds;  // 2^bits - 1, ascending; cell k is [thresholds[k-1], thresholds[k])
  std::vector<float> centroids_f;  // the same as floats, padded with zeros to at least 16 entries
  std::vector<float> thresholds_f;
  double coord_mse = 0;  // E[(x - q(x))^2] for one coordinate of a uniform random unit vector
  int iterations = 0;    // Lloyd iterations until convergence
  // D(b) = E||u - u_hat||^2 for a uniform random unit vector u quantized coordinate-wise after
  // the rotation: dim * coord_mse (the rotation is orthogonal so the error norm is preserved).
  double vector_mse() const { return dim * coord_mse; }
};

// Computes the codebook from scratch. bits in [1, 8], dim in [2, 65536]; InvalidArgument otherwise.
TqCodebook compute_lloyd_max(int bits, int dim);

// Cached (thread-safe) codebook per (bits, dim); the reference stays valid for the process lifetime.
const TqCodebook& tq_codebook(int bits, int dim);

// The coordinate density f (normalized) and exact cell integrals, exposed for tests.
double tq_coord_density(double x, int dim);
// Mass, first and second moment of f over [a, b], -1 <= a <= b <= 1.
void tq_cell_moments(double a, double b, int dim, double* m0, double* m1, double* m2);

}  // namespace qleap
