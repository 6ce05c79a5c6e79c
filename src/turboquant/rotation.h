// Random orthogonal rotations for TurboQuant. Rotating a vector by a random orthogonal matrix makes
// every coordinate of its unit direction follow the same known distribution (codebook.h), whatever
// the input looked like; outlier channels get spread over all coordinates.
//
// Two kinds:
//  - Hadamard: x' = H D x / sqrt(d) with D a random +-1 diagonal and H the Walsh-Hadamard matrix.
//    O(d log d), d must be a power of two. Not Haar-distributed, but close enough in practice for
//    the coordinate distribution (and what every fast KV-cache quantizer uses).
//  - Dense: x' = Q x with Q Haar-random (QR of a Gaussian matrix with the sign fix), any d >= 1.
//
// Everything is deterministic in the seed and platform-independent: our own splitmix64 generator
// and Box-Muller in double, never std::*_distribution (whose output is implementation-defined).
#pragma once
#include <cstdint>
#include <vector>

namespace qleap {

enum class TqRotationKind : uint8_t {
  kAuto = 0,  // Hadamard when dim is a power of two, else dense
  kHadamard = 1,
  kDense = 2,
};

struct TqRotation {
  int dim = 0;
  TqRotationKind kind = TqRotationKind::kDense;  // resolved: never kAuto
  std::vector<float> signs;                      // Hadamard: the diagonal of D (+-1), dim entries
  std::vector<float> matrix;                     // Dense: Q, row-major dim x dim, x' = Q x
};

// Deterministic splitmix64 stream; also used for the QJL projection and the tests.
struct TqRng {
  uint64_t state;  // splitmix64 counter
  explicit TqRng(uint64_t seed) : state(seed) {}
  uint64_t next_u64() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1): 53 random bits, never exactly 0.
  double next_uniform() { return (double(next_u64() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
  double next_gaussian();  // Box-Muller; the pair's second sample is kept for the next call

 private:
  double spare_ = 0;
  bool has_spare_ = false;
};

// Default base seed of the KV cache quantizer ("TurboQnt" in ASCII).
inline constexpr uint64_t kTqDefaultSeed = 0x547572626f516e74ull;

// The seed of the rotation for one (layer, kv_head): a splitmix64 hash of base_seed, layer and head,
// so that every head gets an independent rotation and the cache is reproducible across runs.
uint64_t tq_head_seed(uint64_t base_seed, int layer, int kv_head);

bool tq_is_pow2(int d);

// Throws InvalidArgument for dim < 1, or kHadamard with a non-power-of-two dim.
TqRotation make_rotation(int dim, TqRotationKind kind, uint64_t seed);

// y = R x and x = R^T y. In-place (x == y) is allowed.
void rotate_forward(const TqRotation& r, const float* x, float* y);
void rotate_inverse(const TqRotation& r, const float* y, float* x);

// In-place unnormalized fast Walsh-Hadamard transform of n (power of two) floats.
void fwht(float* x, int n);

}  // namespace qleap
