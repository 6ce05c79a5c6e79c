// TurboQuant KV cache: every (layer, kv head, position) holds one packed TurboQuant record for the key
// and one for the value (turboquant/tq_quant.h); attention runs on the records directly
// (tq_attend_gqa), nothing is ever dequantized to a buffer.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "kv/kv_cache.h"
#include "turboquant/tq_quant.h"

namespace qleap {

struct TqKvSpec {
  float k_bits = 4;
  float v_bits = 4;
};

// Parses a TurboQuant KV type name: "tqB" (K and V at B bits) or "kXvY" (K at X, V at Y bits), with
// B, X, Y in {2, 2.5, 3, 3.5, 4}. Returns nullopt for any other string.
std::optional<TqKvSpec> parse_tq_kv_type(const std::string& type);

// The quantizer config of the keys (value = false) or values (value = true) of a cache with this spec;
// head (layer, g) uses tq_make_state(config, layer, g). Keys and values have different base seeds so
// that their rotations are independent.
TqConfig tq_kv_config(const TqKvSpec& spec, int head_dim, bool value);

// The TurboQuant names listed in make_kv_cache's error message.
const char* tq_kv_type_help();

// Called by make_kv_cache (shape already validated). `name` is what type_name() reports.
std::unique_ptr<KvCache> make_turboquant_kv_cache(const std::string& name, const TqKvSpec& spec,
                                                  const KvShape& shape);

}  // namespace qleap
