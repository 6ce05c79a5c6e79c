// AVX2 Walsh-Hadamard transform: the same butterflies as fwht(), in the same order per element (a + b
// and a - b of the same operands), so the result is bit-identical to the scalar form.
#include <immintrin.h>

namespace qleap::tq_detail {

void fwht_avx2(float* x, int n) {
  // Stages h = 1, 2, 4 inside each group of 8: the partner comes from a permute, the lower element
  // of each pair takes a + b, the upper one a - b (partner - own).
  for (int i = 0; i < n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256 p = _mm256_permute_ps(v, 0xb1);  // x1 x0 x3 x2 ...
    v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xaa);
    p = _mm256_permute_ps(v, 0x4e);  // x2 x3 x0 x1 ...
    v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xcc);
    p = _mm256_permute2f128_ps(v, v, 1);  // x4..x7 x0..x3
    v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xf0);
    _mm256_storeu_ps(x + i, v);
  }
  for (int h = 8; h < n; h <<= 1)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; j += 8) {
        const __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + h);
        _mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
        _mm256_storeu_ps(x + j + h, _mm256_sub_ps(a, b));
      }
}

}  // namespace qleap::tq_detail
