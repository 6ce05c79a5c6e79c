#include "turboquant/rotation.h"

#include <cmath>
#include <string>

#include "core/cpu_features.h"
#include "core/error.h"

namespace qleap {

double TqRng::next_gaussian() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  const double u1 = next_uniform();
  const double u2 = next_uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double t = 6.283185307179586476925 * u2;
  spare_ = r * std::sin(t);
  has_spare_ = true;
  return r * std::cos(t);
}

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t tq_head_seed(uint64_t base_seed, int layer, int kv_head) {
  uint64_t h = mix64(base_seed + 0x9e3779b97f4a7c15ull);
  h = mix64(h ^ (uint64_t(uint32_t(layer)) + 0x632be59bd9b4e019ull));
  h = mix64(h ^ (uint64_t(uint32_t(kv_head)) + 0x8cb92ba72f3d8dd7ull));
  return h;
}

bool tq_is_pow2(int d) {
  return d > 0 && (d & (d - 1)) == 0;
}

namespace tq_detail {
void fwht_avx2(float* x, int n);
}

void fwht(float* x, int n) {
  // Every rotated query, output and stored vector goes through here (twice per token and head in a
  // TurboQuant prefill).
  if (n >= 8 && isa_level() >= IsaLevel::kAvx2) {
    tq_detail::fwht_avx2(x, n);
    return;
  }
  for (int h = 1; h < n; h <<= 1) {
    for (int i = 0; i < n; i += 2 * h) {
      for (int j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
}

// Haar-random orthogonal matrix: Gram-Schmidt (modified, two passes for orthogonality to double
// precision) on the columns of a Gaussian matrix. Gram-Schmidt yields R with a positive diagonal,
// which is exactly the sign fix that makes the QR factor Haar-distributed.
static std::vector<float> haar_orthogonal(int d, TqRng& rng) {
  std::vector<double> q(size_t(d) * d);  // column-major: column j at q[j * d]
  for (auto& v : q) v = rng.next_gaussian();
  for (int j = 0; j < d; ++j) {
    double* cj = &q[size_t(j) * d];
    for (int pass = 0; pass < 2; ++pass) {
      for (int i = 0; i < j; ++i) {
        const double* ci = &q[size_t(i) * d];
        double dot = 0;
        for (int k = 0; k < d; ++k) dot += ci[k] * cj[k];
        for (int k = 0; k < d; ++k) cj[k] -= dot * ci[k];
      }
    }
    double nrm = 0;
    for (int k = 0; k < d; ++k) nrm += cj[k] * cj[k];
    nrm = std::sqrt(nrm);
    for (int k = 0; k < d; ++k) cj[k] /= nrm;
  }
  std::vector<float> m(size_t(d) * d);  // row-major Q
  for (int r = 0; r < d; ++r)
    for (int c = 0; c < d; ++c) m[size_t(r) * d + c] = float(q[size_t(c) * d + r]);
  return m;
}

TqRotation make_rotation(int dim, TqRotationKind kind, uint64_t seed) {
  if (dim < 1 || dim > 65536) throw InvalidArgument("turboquant: bad rotation dim " + std::to_string(dim));
  if (kind == TqRotationKind::kAuto)
    kind = tq_is_pow2(dim) ? TqRotationKind::kHadamard : TqRotationKind::kDense;
  TqRotation r;
  r.dim = dim;
  r.kind = kind;
  TqRng rng(seed);
  if (kind == TqRotationKind::kHadamard) {
    if (!tq_is_pow2(dim))
      throw InvalidArgument("turboquant: Hadamard rotation needs a power-of-two dim, got " +
                            std::to_string(dim));
    r.signs.resize(dim);
    for (auto& s : r.signs) s = (rng.next_u64() >> 63) ? -1.0f : 1.0f;
  } else if (kind == TqRotationKind::kDense) {
    r.matrix = haar_orthogonal(dim, rng);
  } else {
    throw InvalidArgument("turboquant: unknown rotation kind");
  }
  return r;
}

void rotate_forward(const TqRotation& r, const float* x, float* y) {
  const int d = r.dim;
  if (r.kind == TqRotationKind::kHadamard) {
    const float s = 1.0f / std::sqrt(float(d));
    for (int i = 0; i < d; ++i) y[i] = x[i] * r.signs[i] * s;
    fwht(y, d);
    return;
  }
  // Dense: row dot products in float with 8 partial sums (vectorizable without reassociation).
  thread_local std::vector<float> tmp;
  tmp.assign(x, x + d);  // allows x == y
  for (int i = 0; i < d; ++i) {
    const float* row = &r.matrix[size_t(i) * d];
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int k = 0;
    for (; k + 8 <= d; k += 8)
      for (int j = 0; j < 8; ++j) acc[j] += row[k + j] * tmp[k + j];
    float s = 0;
    for (; k < d; ++k) s += row[k] * tmp[k];
    y[i] = s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  }
}

void rotate_inverse(const TqRotation& r, const float* y, float* x) {
  const int d = r.dim;
  if (r.kind == TqRotationKind::kHadamard) {
    // (H D / sqrt d)^-1 = D H / sqrt d since H is symmetric with H H = d I.
    const float s = 1.0f / std::sqrt(float(d));
    if (x != y)
      for (int i = 0; i < d; ++i) x[i] = y[i];
    fwht(x, d);
    for (int i = 0; i < d; ++i) x[i] *= r.signs[i] * s;
    return;
  }
  // Dense: x = Q^T y as a sum of rows of Q scaled by y_k (contiguous, vectorizable).
  thread_local std::vector<float> acc;
  acc.assign(d, 0.0f);
  for (int k = 0; k < d; ++k) {
    const float* row = &r.matrix[size_t(k) * d];
    const float yk = y[k];
    for (int i = 0; i < d; ++i) acc[i] += row[i] * yk;
  }
  for (int i = 0; i < d; ++i) x[i] = acc[i];
}

}  // namespace qleap
