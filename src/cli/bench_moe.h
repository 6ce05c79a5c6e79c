// `qleap bench --moe`: measured CPU speed of a MoE model plus simulated expert-cache policies
// replayed on the routing trace of the same run.
#pragma once
#include <string>

#include "cli/common.h"
#include "cli/expert_options.h"

namespace qleap::cli {

struct MoeBenchOptions {
  double budget_frac = 0.5;  // fast-memory budget as a fraction of all expert bytes
  std::string profile;       // --expert-profile: seeds the static policy (default: warm-up half of the run)
  std::string text;          // --moe-text: tokens from this file instead of random ids
  int admit_hits = 2;
  int window = 32;
  // --expert-cache / --expert-tier: measure the policies with the ExpertFlow runtime on that tier
  // (--expert-profile is `profile` above).
  ExpertFlowCliOptions experts;
};

void bench_moe_command(const CommonOptions& common, int n_prompt, int n_gen, int reps, bool json,
                       const MoeBenchOptions& mo);

// Compression ratio and decompression speed of zstd / lz4 on the model's FFN (expert) weights.
void bench_compress_command(const CommonOptions& common, bool json);

}  // namespace qleap::cli
