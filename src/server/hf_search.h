// GET /api/qleap/search?q=...&limit=N: GGUF repositories on the Hugging Face Hub (hf_hub.h: the
// endpoint is configurable), each with its .gguf files, their sizes, and whether each fits this
// machine according to the planner (autoconf/planner.h). The planner needs the model's shape, so
// the header of one file per repository (metadata and tensor table, the first megabytes) is read
// with ranged GETs and scaled to every other file of the repository by its size: quantizations of
// one model share their shape. Headers are cached for the life of the server.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "autoconf/hardware.h"
#include "autoconf/planner.h"
#include "core/error.h"

namespace qleap::server {

struct ApiContext;
class Router;

// A failure of the search with the HTTP status the endpoint answers (400 bad query, 502 the Hub is
// unreachable or answered badly).
struct SearchError : Error {
  SearchError(int status, const std::string& msg) : Error(msg), status(status) {}
  int status;
};

// The search itself (the route's body), for the tests: hw and req are what the planner is given.
nlohmann::json search_hf_models(const std::string& query, int limit, const HardwareInfo& hw,
                                const PlanRequest& req);

// A .gguf file name's quantization label ("model-Q4_K_M.gguf" -> "Q4_K_M"), "" when none is seen.
std::string quant_of_file(const std::string& file);

void register_search_routes(Router& srv, ApiContext& ctx);

}  // namespace qleap::server
