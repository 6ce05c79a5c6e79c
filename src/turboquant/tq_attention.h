// Attention directly over TurboQuant-packed keys and values, for one KV head and a group of query
// heads (GQA: every query head of the group is rotated once and scored against the same packed keys,
// so each key's indices are unpacked once per group, not once per query head).
//
// Keys: <q, k_hat_j> = norm_j * <R q, c[idx_j]> since R is orthogonal, so a query is rotated once and
// each score is a dot product of the rotated query with centroids looked up from the packed
// indices; the keys are never dequantized to a buffer. (The AVX2 kernel looks the centroids up with
// an in-register permute: 8 centroids fit one ymm, 16 take two permutes and a blend.)
// Values: sum_j w_j v_hat_j = R^T (sum_j w_j norm_j c[idx_j]); the sum is accumulated in the rotated
// space and inverse-rotated once per query head.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "turboquant/tq_quant.h"

namespace qleap {

// Positions whose keys and values are also kept exactly, as floats in the rotated space of their key /
// value states (R k and R v after whatever centering or scaling the records get); attention uses these
// instead of their records. Two sets (docs/turboquant.md measures both):
//  - the sink: positions [0, sink). The first token is an attention sink in most models: it draws a
//    large share of the weights while its key and value are unlike the others, so its quantization
//    error dominates the attention error;
//  - a recent window: a query that sees positions [0, m) sees [m - window, m) exactly, for those
//    positions whose rows are held ([begin, end)). Attention is local: most of a query's weight is on
//    its last few dozen positions. These rows are fp16 (the f16 cache's precision, half the memory).
struct TqExactRows {
  int sink = 0;
  const float* sink_k = nullptr;  // sink rows of key-dim floats
  const float* sink_v = nullptr;  // sink rows of value-dim floats
  int window = 0;
  int64_t begin = 0, end = 0;       // positions held as window rows
  int64_t ring = 0;                 // the rows are a ring of this many slots: position p in slot p % ring
  const uint16_t* win_k = nullptr;  // slots of key-dim fp16 values
  const uint16_t* win_v = nullptr;  // slots of value-dim fp16 values
  // Block key means: the records of position j (>= shift_block) were centered on the mean of the block
  // before theirs instead of the cache's one mean, so their scores get <q_rot, key_shift row j /
  // shift_block> back (rows of dim floats, the shift of block b = its mean minus the cache's mean, in
  // the keys' rotated space; row 0 is zero). RoPE turns the large constant part of real keys at a
  // rate set by the pair's frequency, so one mean taken at short positions stops fitting far ones.
  int64_t shift_block = 0;  // 0: no shifts
  const float* key_shift = nullptr;
  int64_t shift_ring = 0;  // > 0: the rows are a ring of this many (block b in row b % shift_ring)
  const float* shift_block_row(int64_t b, int dim) const {
    return key_shift + size_t(shift_ring > 0 ? b % shift_ring : b) * size_t(dim);
  }
  bool empty() const { return sink <= 0 && window <= 0 && shift_block <= 0; }
  // The shift row of position j, or nullptr when j's records need none.
  const float* shift_row(int64_t j, int dim) const {
    return shift_block > 0 && j >= shift_block ? shift_block_row(j / shift_block, dim) : nullptr;
  }
  // Whether position j is exact for a query that sees [0, m); if so, its key / value row as floats
  // goes to out (dim floats).
  bool key_row(int64_t j, int64_t m, int dim, float* out) const;
  bool value_row(int64_t j, int64_t m, int dim, float* out) const;
};

// For queries that see [0, m): overwrites the scores of exact positions among keys [j0, j0 + n) with
// exact <q_rot, k_rot> (scores laid out as in tq_scores, column j for key j0 + j), and adds the block
// key shifts (TqExactRows::key_shift) to the scores of the others.
void tq_exact_scores(const TqExactRows& x, int64_t m, const float* q_rot, int n_q, int dim, int64_t j0,
                     int64_t n, float* scores, size_t score_stride);
// For queries that see [0, m) and exact positions among [j0, j0 + n): adds w * v_rot to acc_rot and
// zeroes the weight, so that the tq_accumulate_values call that follows adds nothing for them.
void tq_exact_accumulate(const TqExactRows& x, int64_t m, float* w, size_t w_stride, int n_q, int dim,
                         int64_t j0, int64_t n, float* acc_rot);

// q_rot = R q (dim floats), once per query head.
void tq_rotate_query(const TqState& st, const float* q, float* q_rot);

// A run of records that may wrap around the end of a ring buffer: records from column `at` on sit
// `ring` records before where a straight run would put them (the ring's slot 0 follows its last
// slot). at <= 0 or ring == 0: a straight run.
struct TqWrap {
  int64_t at = 0;
  int64_t ring = 0;
  // The wrap of a run of n records from slot `slot` of a ring of `ring` slots (0: not a ring).
  static TqWrap of(int64_t ring, int64_t slot, int64_t n) {
    return ring > 0 && slot + n > ring ? TqWrap{ring - slot, ring} : TqWrap{};
  }
  // The same run seen from its column j0 on.
  TqWrap from(int64_t j0) const { return at > j0 ? TqWrap{at - j0, ring} : TqWrap{}; }
  // Records of a run of n before the wrap: the length of its first straight piece.
  int64_t first_piece(int64_t n) const { return at > 0 && ring > 0 ? std::min(n, at) : n; }
  // Byte offset of column j's record, records `stride` bytes apart.
  int64_t offset(int64_t j, size_t stride) const {
    return (ring > 0 && at > 0 && j >= at ? j - ring : j) * int64_t(stride);
  }
};

// scores[qi * score_stride + j] = <q_qi, k_hat_j> for qi < n_q, j < n; q_rot holds n_q rotated
// queries dim floats apart; records are key_stride bytes apart (wrapping as `wrap` says).
void tq_scores(const TqState& st, const float* q_rot, int n_q, const uint8_t* keys, size_t key_stride,
               int64_t n, float* scores, size_t score_stride, TqWrap wrap = {});

// acc_rot[qi * dim + i] += sum_j w[qi * w_stride + j] * norm_j * c[idx_ji] (rotated space).
void tq_accumulate_values(const TqState& st, const float* w, size_t w_stride, int n_q, const uint8_t* values,
                          size_t value_stride, int64_t n, float* acc_rot, TqWrap wrap = {});

// rows[j * row_stride + i] = norm_j * c[idx_ji]: records in the rotated space, as the score and value
// kernels see them (a tiled prefill decodes each block of records once for many queries).
void tq_decode_rows(const TqState& st, const uint8_t* recs, size_t stride, int64_t n, float* rows,
                    size_t row_stride, TqWrap wrap = {});

// out = R^T acc_rot (dim floats), once per query head.
void tq_unrotate(const TqState& st, const float* acc_rot, float* out);

// Softmax attention of n_q queries (q rows q_stride floats apart) for one KV head: query qi sees
// positions [key0, n_kv[qi]) (causal prefill: pos0 + t + 1; decode: all equal), whose records start
// at keys / values (position key0 first). out rows (out_stride floats apart, dim = value dim) get
// sum_j softmax(cap(scale * <q, k_hat_j>))_j v_hat_j, cap the soft-capping of KvShape::softcap
// (softcap 0: none). A query with n_kv <= key0 gets zeros. ks and vs may be different states (keys
// and values rotate independently). Exact positions (if given) use their rows instead of their
// records. sinks (n_q floats, or nullptr): each query's attention sink logit (KvShape::attn_sinks), which
// joins its softmax denominator without a value; sink_share (n_q floats, or nullptr) gets the weight each
// query put on its sink. wrap: where the run of keys and values wraps around a ring (TqWrap).
void tq_attend(const TqState& ks, const TqState& vs, const float* q, int n_q, size_t q_stride,
               const int64_t* n_kv, const uint8_t* keys, size_t key_stride, const uint8_t* values,
               size_t value_stride, float scale, float* out, size_t out_stride,
               const TqExactRows* exact = nullptr, int64_t key0 = 0, float softcap = 0,
               const float* sinks = nullptr, float* sink_share = nullptr, TqWrap wrap = {});

// Where a cache keeps the records of a sliding-window layer (KvShape::windows): a query at position p
// sees [p - window + 1, p] (window 0: [0, p]). With ring > 0 the records of position j sit in slot
// j % ring (a window is then a run of slots that may wrap, TqWrap); ring 0: position j in slot j.
struct TqWindow {
  int window = 0;
  int64_t ring = 0;
  float softcap = 0;  // as in tq_attend
  // The `group` query heads' attention sinks (tq_attend) of token 0, the next token's sinks_stride floats
  // further; nullptr: none. sink_share (same layout, written when given): each query's softmax weight
  // on its sink, 1 - the weights of its keys (a cache that stores centered values adds their mean back
  // by the keys' share).
  const float* sinks = nullptr;
  size_t sinks_stride = 0;
  float* sink_share = nullptr;
};

// Causal GQA attention for one layer and KV head in the layout of KvCache::attend: n_tokens query
// tokens at positions pos0 .. pos0 + n_tokens - 1, token t attending to [0, pos0 + t] (or its window);
// the `group` query heads of this KV head are adjacent (head_dim floats apart) in each token's row of
// q and out, rows q_row_stride / out_row_stride floats apart. Keys and values of position p are the
// records at keys + slot(p) * key_stride and values + slot(p) * value_stride.
void tq_attend_gqa(const TqState& ks, const TqState& vs, int pos0, int n_tokens, int group, const float* q,
                   size_t q_row_stride, const uint8_t* keys, size_t key_stride, const uint8_t* values,
                   size_t value_stride, float scale, float* out, size_t out_row_stride,
                   const TqExactRows* exact = nullptr, const TqWindow& win = {});

// Reference: dequantizes every key and value with tq_dequantize (exact positions: the inverse
// rotation of their rows) and attends in double.
void tq_attend_ref(const TqState& ks, const TqState& vs, const float* q, int n_q, size_t q_stride,
                   const int64_t* n_kv, const uint8_t* keys, size_t key_stride, const uint8_t* values,
                   size_t value_stride, float scale, float* out, size_t out_stride,
                   const TqExactRows* exact = nullptr);

// Which kernel tq_scores / tq_accumulate_values use for this layout at the current isa_level():
// "scalar", "avx2" or "avx512". SIMD needs each bit segment to be a multiple of 8 coordinates.
const char* tq_kernel_name(const TqLayout& l);

}  // namespace qleap
