// Per-head bit allocation for the TurboQuant KV cache.
//
// Heads differ by orders of magnitude in how much their attention output suffers from quantized
// keys or values: a head that attends locally reads mostly the exact recent window, one that
// retrieves distant positions reads records (SmolLM2, 3 bits: relative output error from 1e-5 to
// 2.5e-2 across its 90 kv heads; docs/turboquant.md). A sensitivity profile holds, per (layer, kv
// head), the measured relative attention-output error at a few rates for keys (values exact) and for
// values (keys exact); tq_allocate_bits spends a fixed bit budget where it removes the most error.
#pragma once
#include <string>
#include <vector>

namespace qleap {

struct TqSensitivity {
  int n_layers = 0, n_kv_heads = 0, head_dim = 0;
  int tokens = 0;            // length of the measured chunk (per measurement)
  int chunks = 0;            // measurements averaged
  int window = 0, sink = 0;  // exact rows the measurement assumed
  std::string model;         // informational
  // Integer rates measured, ascending and consecutive (e.g. 2, 3, 4).
  std::vector<int> rates;
  // [layer * n_kv_heads + kv_head][rate index]: sum over queries of ||o - o_hat||^2 / sum ||o||^2.
  std::vector<std::vector<double>> k_err, v_err;
  // The model-level check of the allocation this profile makes (runtime/kv_calibrate.cpp): the mean
  // KL divergence of the model's next-token distributions from those with float caches, on positions
  // of the calibration text whose queries the measurement did not use, with 3-bit caches at this
  // window, once with per-head rates from this profile and once with uniform rates. The relative
  // output error per head is only a proxy of the model's loss (equal weights for every head, however
  // much its output moves the residual stream): on Gemma 3 270M its allocation was worse than
  // uniform rates; check_diff_se: the standard error of the mean of the paired per-position
  // differences (allocated - uniform). check_tokens 0: not checked (a profile from `qleap profile`), the
  // allocation is used.
  int check_tokens = 0;
  double check_kld_allocated = 0, check_kld_uniform = 0, check_diff_se = 0;
  // Whether caches should spend their bits by this profile: unchecked, or the check found it better by
  // more than kTqCheckMargin standard errors. The allocation is fitted on queries of the same text (the
  // positions just after the checked ones, reading the same keys), so a small in-sample gain does not
  // carry over: Gemma 3 270M's allocation was 9 % better than uniform rates in the check, 1.8
  // standard errors, and 21 % worse on held-out documentation text (docs/turboquant.md).
  bool allocation_pays() const {
    return check_tokens == 0 || check_kld_allocated - check_kld_uniform + kTqCheckMargin * check_diff_se < 0;
  }
  static constexpr double kTqCheckMargin = 2.0;

  int n_heads_total() const { return n_layers * n_kv_heads; }
  // The error of head i at `bits` (a measured rate or a half rate between two: the data-oblivious
  // half rates quantize half the rotated coordinates at each neighbour, so their distortion, and to
  // first order the output error, is the mean of the neighbours').
  double error_at(const std::vector<std::vector<double>>& err, int head, float bits) const;
  // Adds another measurement of the same shape and rates (running mean).
  void merge(const TqSensitivity& other);
};

struct TqBitAllocation {
  std::vector<float> k_bits, v_bits;  // [layer * n_kv_heads + kv_head]
};

// Steps of `step` bits (0.5 or 1) from the lowest measured rate, each given to the (head, K or V)
// whose error it reduces most, until the mean over all K and V equals avg_bits (rounded to whole
// steps). Record bytes are linear in the bits when head_dim is a multiple of 16 (half rates split the
// coordinates in halves of whole bytes), so the cache is then exactly as large as a uniform avg_bits
// one; smaller heads need step 1. Ties go to the lower index, so the result is deterministic. Throws
// InvalidArgument when avg_bits is outside the measured rates.
TqBitAllocation tq_allocate_bits(const TqSensitivity& s, float avg_bits, float step = 0.5f);
// The step that keeps the bytes exact for this head_dim: half a bit when the halves are whole bytes.
inline float tq_allocation_step(int head_dim) {
  return head_dim % 16 == 0 ? 0.5f : 1.0f;
}

// JSON file ("qleap-kv-sensitivity", version 1). load throws FormatError on malformed content.
std::string tq_sensitivity_to_json(const TqSensitivity& s);
TqSensitivity tq_sensitivity_from_json(const std::string& text, const std::string& what);
void save_tq_sensitivity(const TqSensitivity& s, const std::string& path);
TqSensitivity load_tq_sensitivity(const std::string& path);

}  // namespace qleap
