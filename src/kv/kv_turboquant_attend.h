// Attention of a TurboQuant cache (kv/kv_turboquant.h) over one layer's records, three paths:
//  - tq_attend_tiled (prefill): the tiled kernel of the f16 cache (kv/flash_prefill.h) over rows that
//    the records are decoded to, in their rotated space (norm * c[idx], tq_decode_rows), once per block
//    of keys and block of query rows, so a prompt of n tokens decodes each record about n / 20 times
//    instead of unpacking it twice per query token. Queries are rotated into each head's key space
//    first and the outputs back from its value space. Sink rows stand in for their records and the
//    recent window is the kernel's exact band.
//  - tq_attend_chunks (prefill where the tiled kernel does not apply: no AVX2, head_dim not a multiple
//    of 8, soft-capping, QJL keys): tq_attend_gqa per (kv head, chunk of query tokens).
//  - tq_attend_split (decode): items (query token, kv head, key slice), each leaving {m, l, acc_rot}
//    per query head, merged in the rotated value space (flash-decoding, kv/split_attention.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "kv/flash_prefill.h"
#include "kv/kv_cache.h"
#include "kv/split_attention.h"
#include "turboquant/tq_attention.h"

namespace qleap {

// One kv head of a layer: its states, the records of position j in slot j (or j % ring), its exact
// rows.
struct TqHeadRecords {
  const TqState* ks = nullptr;
  const TqState* vs = nullptr;
  const uint8_t* keys = nullptr;
  size_t key_stride = 0;
  const uint8_t* values = nullptr;
  size_t value_stride = 0;
  TqExactRows exact;
};

struct TqLayerRecords {
  const KvShape* shape = nullptr;
  int layer = 0;                     // the cache's layer index (sliding windows, first_key)
  std::vector<TqHeadRecords> heads;  // per kv head
  int64_t ring = 0;                  // records of position j in slot j % ring (0: slot j)
  // This call's attention sinks per (token, query head), n_heads floats per token, as the scores see
  // them, and where each query's weight on its sink goes; nullptr: none.
  const float* sinks = nullptr;
  float* sink_share = nullptr;
};

// q and out: n_q x n_heads x head_dim in the model's space (q already multiplied by any key channel
// scales; out before the values' centering is added back). Token t is at position pos0 + t.
// False (nothing written) when the tiled kernel does not take this layer.
bool tq_attend_tiled(const TqLayerRecords& r, int pos0, int n_q, const float* q, float* out, float scale,
                     ThreadPool& pool);
void tq_attend_chunks(const TqLayerRecords& r, int pos0, int n_q, const float* q, float* out, float scale,
                      ThreadPool& pool);
// n_split slices per (token, kv head); partial: scratch reused across calls.
void tq_attend_split(const TqLayerRecords& r, int pos0, int n_q, const float* q, float* out, float scale,
                     ThreadPool& pool, int n_split, SplitPartials& partial);

}  // namespace qleap
