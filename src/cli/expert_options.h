// ExpertFlow flags of `run` and `bench --moe`: --expert-cache BYTES|auto (turns the runtime on),
// --expert-profile FILE (seeds the cache), --expert-tier host|cuda (where the cached experts live).
#pragma once
#include <CLI/CLI.hpp>
#include <cstddef>
#include <memory>
#include <string>

#include "model/model.h"
#include "moe/expert_flow.h"

namespace qleap::cli {

struct ExpertFlowCliOptions {
  std::string cache;          // empty: ExpertFlow off
  std::string profile;        // qleap profile JSON
  std::string tier = "cuda";  // host: RAM slots (tests the runtime on any machine, no speedup)
  bool tier_given = false;
};
// with_profile false: the command registers --expert-profile itself (bench --moe).
void add_expert_flow_options(CLI::App& cmd, ExpertFlowCliOptions& o, bool with_profile = true);

// "1073741824", "512M", "2G", "1.5GiB", "64 MiB" (K, M, G, T are powers of 1024). InvalidArgument
// otherwise.
size_t parse_byte_size(const std::string& s);

// --expert-cache BYTES|auto resolved for this model and tier: auto is 90% of the device's free
// memory less 1 GiB for cuda, half of all expert bytes for host. Capped at all expert bytes.
size_t resolve_expert_budget(const std::string& spec, const std::string& tier, const ExpertSet& set);

// Checks the flags without a model (budget syntax, the profile file is readable and parses,
// --expert-profile / --expert-tier without --expert-cache): commands call it before loading.
void check_expert_flow_options(const ExpertFlowCliOptions& o);

// The ExpertFlow the flags ask for, or nullptr when --expert-cache is absent, or when the tier is
// cuda and there is no device (a note on stderr says so, and the experts stay on the CPU - like
// --gpu-layers without a device). Throws InvalidArgument / IoError / FormatError on bad flags, a
// missing or malformed profile, or a dense model; the profile must outlive the flow (held in
// `profile_out`).
std::unique_ptr<ExpertFlow> make_cli_expert_flow(const ExpertFlowCliOptions& o, const Model& model,
                                                 int n_batch, bool quiet,
                                                 std::unique_ptr<ExpertProfile>& profile_out);

// One line describing a flow (tier, budget, slots, seeding).
std::string describe_expert_flow(const ExpertFlow& f, const ExpertFlowConfig& cfg);

}  // namespace qleap::cli
