// CPU kernels of the gated DeltaNet step (Backend::delta_net, backend/backend.h): the causal conv with
// its carried state, and the gated delta rule of one value head in two forms that compute the same
// thing: the recurrent form (token by token, for decode) and the chunked form (a block of tokens at a
// time through a triangular solve, for prefill; the form transformers and fla use).
#pragma once
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "core/thread_pool.h"

namespace qleap {

// The rows of one value head: token t's query, key and value start at q + t * ld_qk, k + t * ld_qk and
// v + t * ld_v; its log decay g[t] and write strength beta[t]; its output goes to o + t * ld_o. q and k are
// already l2-normalized, q scaled by 1 / sqrt(dk). S is the dk x dv state, updated in place.
struct DeltaHeadRows {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  const float* g = nullptr;
  const float* beta = nullptr;
  float* o = nullptr;
  int64_t ld_qk = 0, ld_v = 0, ld_o = 0;
  int dk = 0, dv = 0;
};

// Tokens of the chunked form per block (transformers' and fla's chunk size).
constexpr int kDeltaChunk = 64;

void delta_rule_recurrent(const DeltaHeadRows& r, int n, float* S);
// Blocks of `chunk` tokens counted from the first row (the last one may be shorter).
void delta_rule_chunked(const DeltaHeadRows& r, int n, float* S, int chunk = kDeltaChunk);

// The whole step (see DeltaNetArgs), over the pool.
void delta_net_cpu(const DeltaNetArgs& a, int m, ThreadPool& pool);

}  // namespace qleap
