// The per-model engine figures that /api/qleap/status adds for the web UI's live view: tokens in
// each slot's cache, KV bytes against an f16 cache, prefill/decode speed, expert-cache figures.
#pragma once
#include <nlohmann/json.hpp>

#include "server/runner.h"

namespace qleap::server {

nlohmann::json live_status_fields(const RunnerStatus& s);

}  // namespace qleap::server
