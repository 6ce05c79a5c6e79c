// TurboQuant KV cache: every (layer, kv head, position) holds one packed TurboQuant record for the key
// and one for the value (turboquant/tq_quant.h); attention runs on the records (kv/kv_turboquant_attend.h:
// decode scores and accumulates the packed records directly; a prompt block decodes 64 records at a time
// into a per-thread tile of the tiled prefill kernel), never on a dequantized copy of the cache.
// When the values are the keys (KvShape::values_are_keys, MLA's latent) only the key record is stored,
// and the value path decodes it with the key's state, centering and scales (half the bytes).
//
// On top of the paper's quantizer (both measured in docs/turboquant.md, both on by default):
//  - centering: keys and values are stored minus a per-(layer, kv head) mean vector mu, taken from the
//    model's calibration (KvCalibration, kv_cache.h: a forward pass over a fixed text, made once per
//    model file by runtime/kv_calibrate.h), never from a request. For keys this is exact: every
//    score of a query moves by the same q.mu, which the softmax ignores. For values the output is
//    mu_v + sum_j w_j (v_j - mu_v) because the weights sum to 1. Centering removes the large shared
//    offset of real keys, so the quantization error scales with the keys' spread, not their norm.
//  - block key means (TqKvSpec::key_block): RoPE turns the keys' large mean with position, so keys are
//    centered per block of 128 positions on the calibrated mean plus the last block's drift, in the
//    channels where that drift predicts; a row per block adds the difference back to the scores.
//  - key records with unbiased norms (TqKvSpec::unbiased_k), values with least-squares norms
//    (TqConfig::ls_norm).
//  - exact rows (TqExactRows): the first `sink` positions of a sequence (the attention sink, usually
//    BOS) and each query's last `window` positions are also kept as floats, and attention uses those
//    instead of their records. Both are constants (a few positions per layer and kv head), not a
//    per-token cost; allocated_bytes() counts them.
//  - per-head rates: a sensitivity measured by tq_measure_sensitivity moves bits between (layer, kv
//    head) and K / V at the same total bytes. By default the one the model's calibration pass measured
//    on its calibration text (no file to pass; `uniform` turns it off); alloc=PROFILE uses a profile
//    from `qleap profile --kv-sensitivity` instead.
#pragma once
#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "kv/kv_calibration.h"
#include "turboquant/tq_quant.h"
#include "turboquant/tq_sensitivity.h"

namespace qleap {

struct TqKvSpec {
  float k_bits = 4;
  float v_bits = 4;
  bool center = true;   // subtract the calibrated mean key / value (see above)
  bool ls_norm = true;  // least-squares norm per record
  // With ls_norm: cells chosen for the best scale as well (TqConfig::scale_search); `nosearch`: off.
  bool scale_search = true;
  // Unbiased record norms (TqConfig::unbiased) for keys (on; `noubk`: least-squares) and values (`ubv`).
  // Least-squares norms shrink every key record toward the mean by ~D(b), which lowers the contrast of
  // all record scores alike. With block key means: SmolLM2 2K tq3 KLD 0.0102 -> 0.0083, Qwen2.5-Coder
  // 0.0156 -> 0.0130, Gemma 3 0.0308 -> 0.0210 (docs/turboquant.md).
  bool unbiased_k = true;
  bool unbiased_v = false;
  // Keys centered on the mean of the previous block of this many positions instead of the calibrated
  // mean (`bmN`, default 128; `bm0`: off), per channel where it predicted the last block better, on
  // layers without a ring shorter than two blocks (TqExactRows::key_shift).
  // RoPE turns the large constant part of keys with position, so a mean calibrated on ~900 positions
  // misfits far ones: SmolLM2 at 8K, tq3 KLD 0.054 -> 0.0100 with bm128 (docs/turboquant.md). A mean
  // that turns by about a radian per block keeps the calibrated one (TqKvBlockMeans tests).
  int key_block = 128;
  bool qscale = true;  // query-aware key channel scales, calibrated with the centering (needs center)
  // Leading positions kept exactly (floats, per layer and kv head: a constant, not per token).
  int sink = 1;
  // Recent positions kept exactly: a query at position p sees p - window + 1 .. p as fp16 rows (a ring
  // of `window` positions per layer and kv head, plus the current batch while it is attended). 64: on
  // SmolLM2 at 2048 context tq3 goes from +16.5% PPL without to about +2% (docs/turboquant.md).
  int window = 64;
  // The window of layers held in a ring (sliding-window layers), when >= 0 (`rwN`); -1: `window`. A
  // window as long as the layer's attention window keeps that layer exact (fp16 rows).
  int ring_window = -1;
  // Which draw of the random rotations (0: the default seeds). Every draw is an equally valid cache; other
  // draws measure how much a quality figure owes to one draw's luck.
  uint32_t draw = 0;
  // Value channel scales b_i^(1/4) (b_i: centered energy of channel i), calibrated with the centering.
  // Off by default: measured no gain on SmolLM2 / stories260K (docs/turboquant.md).
  bool vscale = false;
  // Keys as TurboQuant_prod: (k_bits - 1)-bit MSE codes + 1-bit QJL residual sketch and its fp16 norm
  // (unbiased scores); the residual term is scalar code (quality experiment, slow).
  bool qjl_keys = false;
  // Per-layer policy: the first and last edge_layers layers use edge_k_bits / edge_v_bits.
  int edge_layers = 0;
  float edge_k_bits = 4;
  float edge_v_bits = 4;
  // Layers whose positions live in a ring (sliding-window layers at contexts beyond window + 63)
  // cost a constant, not bytes per position, so they get ring_bits for K and V: by default (-1) one bit
  // more than the spec's rate, up to 4 (`ringB`: B bits; `ring0`: the spec's rate). On Gemma 3 270M
  // (15 of 18 layers sliding) most of tq3's error was in those layers: KLD 0.019 -> 0.009 at 2K for
  // +0.96 MiB (docs/turboquant.md).
  float ring_bits = -1;
  float ring_rate(float bits) const {
    return ring_bits < 0 ? std::min(4.0f, bits + 1.0f) : ring_bits > 0 ? ring_bits : bits;
  }
  // Per-head rates [layer * n_kv_heads + kv_head] (empty: k_bits / v_bits and the edge policy): filled
  // by make_turboquant_kv_cache from the sensitivity profile at alloc_path (turboquant/tq_sensitivity.h),
  // spending the budget of k_bits / v_bits where the profile says it removes the most error.
  std::string alloc_path;
  std::vector<float> head_k_bits, head_v_bits;
  // Without alloc=: per-head rates from the sensitivity that the model's calibration measured on its
  // calibration text (KvCalibration::tq_sensitivity), same mean and bytes. `uniform`: off.
  bool auto_alloc = true;
  // `alloc`: those rates even when the calibration's model-level check (TqSensitivity::allocation_pays)
  // found uniform rates better on its text (to measure what the check avoided).
  bool force_alloc = false;
  float k_bits_at(int layer, int n_layers) const;
  float v_bits_at(int layer, int n_layers) const;
};

// Parses a TurboQuant KV type name: "tqB" (K and V at B bits) or "kXvY" (K at X, V at Y bits), with
// B, X, Y in {2, 2.5, 3, 3.5, 4}, followed by any of these options, each after a ':':
//   plain     the paper's quantizer: no centering, plain norms, no exact sink or window, no ring bits
//   sinkN     keep the first N positions exactly (default 1; sink0: none)
//   wN        keep each query's last N positions exactly (default 64; w0: none)
//   rwN       the same on layers held in a ring (sliding windows; default: wN)
//   drawN     the N-th draw of the random rotations (default 0)
//   nocenter  no centering and no channel scales (least-squares norms kept)
//   noscale   centering without the query-aware key channel scales
//   nosearch  cells assigned at the unit scale only (no scale search in the encoder)
//   bmN       keys centered on the mean of the previous N positions (e.g. bm128; default: the
//             calibrated mean only)
//   ubk, ubv  unbiased key / value record norms instead of least-squares ones
//   vscale    also scale value channels (measured: no gain)
//   qjl       keys as (bits - 1)-bit MSE + 1-bit QJL residual (paper's TurboQuant_prod; slow, measured)
//   eN        the first and last N layers at 4-bit K and V (e.g. tq3:e2)
//   ringB     layers held in a ring (sliding windows) at B bits (default: one more than the rate, up
//             to 4); ring0: the type's rate
//   uniform   the same rate for every head (no per-head rates from the model's calibration)
//   alloc     the calibration's per-head rates even where its check found uniform rates better
//   alloc=P   per-head rates from the sensitivity profile at path P with the same mean bits (the rest
//             of the name is the path, so this option comes last)
// Returns nullopt for any other string.
std::optional<TqKvSpec> parse_tq_kv_type(const std::string& type);

// The quantizer config of the keys (value = false) or values (value = true) of a cache with this spec
// at `bits`; head (layer, g) uses tq_make_state(config, layer, g). Keys and values have different
// base seeds so that their rotations are independent.
TqConfig tq_kv_config(const TqKvSpec& spec, int head_dim, bool value, float bits);
inline TqConfig tq_kv_config(const TqKvSpec& spec, int head_dim, bool value) {
  return tq_kv_config(spec, head_dim, value, value ? spec.v_bits : spec.k_bits);
}

// Queries per chunk whose attention a measurement compares (the chunk's last ones).
inline constexpr int kTqMeasureQueries = 128;

// A measurement needs positions beyond the window: chunks shorter than this (or than window + 64)
// cannot be measured.
inline constexpr int kTqMeasureMinTokens = 128;

// The per-head sensitivity (turboquant/tq_sensitivity.h) of caches of this spec on one chunk of a
// sequence from position 0: what a cache calibrated with `cal` would lose on the chunk's own keys,
// values and queries (KvChunkRows, captured by kv/kv_calibration.h's recorder). Throws InvalidArgument
// when the chunk is shorter than kTqMeasureMinTokens (or window + 64) or does not fit the shape.
TqSensitivity tq_measure_sensitivity(const TqKvSpec& spec, const KvShape& shape, const KvCalibration& cal,
                                     const KvChunkRows& rows, ThreadPool* pool);

// The TurboQuant names listed in make_kv_cache's error message.
const char* tq_kv_type_help();

// Called by make_kv_cache (shape already validated). `name` is what type_name() reports.
std::unique_ptr<KvCache> make_turboquant_kv_cache(const std::string& name, const TqKvSpec& spec,
                                                  const KvShape& shape);

}  // namespace qleap
