// Rotary position embedding parameters and cos/sin tables: shared vocabulary of the model loader,
// the CPU and CUDA kernels and the KV caches (the kernels that apply a table live with each backend).
#pragma once
#include <cstddef>
#include <vector>

namespace qleap {

enum class RopeStyle {
  kNormal,  // rotate adjacent pairs (x[2i], x[2i+1]) - GGUF llama (converters pre-permute q/k)
  kNeox,    // rotate (x[i], x[i + n_rot/2]) - qwen2/qwen3, HF rotate_half
};
enum class RopeScaling { kNone, kLinear, kYarn };

struct RopeParams {
  int n_rot = 0;  // rotated dimensions per head (<= head_dim, even); the rest pass through
  RopeStyle style = RopeStyle::kNormal;
  float freq_base = 10000.0f;
  RopeScaling scaling = RopeScaling::kNone;
  float factor = 1.0f;       // context extension factor (linear: positions / factor)
  int orig_ctx = 0;          // YaRN: original training context
  float ext_factor = -1.0f;  // YaRN extrapolation mix; < 0: 1 for yarn, else 0
  float attn_factor = 1.0f;  // multiplies cos/sin (YaRN attention temperature)
  float beta_fast = 32.0f;
  float beta_slow = 1.0f;
  bool yarn_truncate = true;        // YaRN: round the correction range out to whole pairs (HF `truncate`)
  std::vector<float> freq_factors;  // llama3-style per-pair divisors (rope_freqs.weight), may be empty
  // LongRoPE (phi3): divisors for contexts longer than orig_ctx, used instead of freq_factors (the
  // short factors) by a table of more than orig_ctx positions, as llama.cpp chooses them. May be empty.
  std::vector<float> long_freq_factors;
};

// Per pair i in [0, n_rot/2): the angle is pos * inv_freq[i] and cos/sin are scaled by mscale.
// YaRN's ramp between interpolated and extrapolated frequencies is linear in pos, so it folds into
// one effective inverse frequency per pair.
struct RopeFreqs {
  std::vector<double> inv_freq;
  double mscale = 1.0;
};
RopeFreqs rope_freqs(const RopeParams& p);

// cos/sin for positions [0, n_pos): table[pos * n_rot + 2 * i + {0, 1}] = {cos, sin} * mscale. With
// long_freq_factors and n_pos > orig_ctx, the long factors replace freq_factors.
class RopeTable {
 public:
  RopeTable() = default;
  RopeTable(const RopeParams& p, int n_pos);
  const float* at(int pos) const { return table_.data() + size_t(pos) * size_t(n_rot_); }
  int n_rot() const { return n_rot_; }
  int n_pos() const { return n_pos_; }
  RopeStyle style() const { return style_; }

 private:
  std::vector<float> table_;
  int n_rot_ = 0;
  int n_pos_ = 0;
  RopeStyle style_ = RopeStyle::kNormal;
};

}  // namespace qleap
