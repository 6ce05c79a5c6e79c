#include "server/live_status.h"

namespace qleap::server {

using nlohmann::json;

nlohmann::json live_status_fields(const RunnerStatus& s) {
  json slots = json::array();
  for (size_t i = 0; i < s.slot_tokens.size(); ++i) {
    slots.push_back(
        {{"id", i}, {"tokens", s.slot_tokens[i]}, {"busy", i < s.slot_busy.size() && s.slot_busy[i]}});
  }
  auto or_null = [](double v) { return v < 0 ? json(nullptr) : json(v); };
  return json{{"kv_bytes_used_f16", s.kv_bytes_used_f16},
              {"slots", slots},
              {"prefill_tok_per_s", s.prefill_tok_s},
              {"decode_tok_per_s", s.decode_tok_s},
              {"decode_idle_s", or_null(s.decode_idle_s)},
              {"expert_cache_hit_rate", or_null(s.expert_hit_rate)},
              {"expert_prefetch_recall", or_null(s.expert_prefetch_recall)}};
}

}  // namespace qleap::server
