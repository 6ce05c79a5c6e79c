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
#include <cstddef>
#include <cstdint>

#include "turboquant/tq_quant.h"

namespace qleap {

// q_rot = R q (dim floats), once per query head.
void tq_rotate_query(const TqState& st, const float* q, float* q_rot);

// scores[qi * score_stride + j] = <q_qi, k_hat_j> for qi < n_q, j < n; q_rot holds n_q rotated
// queries dim floats apart; records are key_stride bytes apart.
void tq_scores(const TqState& st, const float* q_rot, int n_q, const uint8_t* keys, size_t key_stride,
               int64_t n, float* scores, size_t score_stride);

// acc_rot[qi * dim + i] += sum_j w[qi * w_stride + j] * norm_j * c[idx_ji] (rotated space).
void tq_accumulate_values(const TqState& st, const float* w, size_t w_stride, int n_q, const uint8_t* values,
                          size_t value_stride, int64_t n, float* acc_rot);

// out = R^T acc_rot (dim floats), once per query head.
void tq_unrotate(const TqState& st, const float* acc_rot, float* out);

// Softmax attention of n_q queries (q rows q_stride floats apart) for one KV head: query qi sees
// positions [0, n_kv[qi]) (causal prefill: pos0 + t + 1; decode: all equal). out rows (out_stride
// floats apart, dim = value dim) get sum_j softmax(scale * <q, k_hat_j>)_j v_hat_j. A query with
// n_kv == 0 gets zeros. ks and vs may be different states (keys and values rotate independently).
void tq_attend(const TqState& ks, const TqState& vs, const float* q, int n_q, size_t q_stride,
               const int64_t* n_kv, const uint8_t* keys, size_t key_stride, const uint8_t* values,
               size_t value_stride, float scale, float* out, size_t out_stride);

// Causal GQA attention for one layer and KV head in the layout of KvCache::attend: n_tokens query
// tokens at positions pos0 .. pos0 + n_tokens - 1, token t attending to [0, pos0 + t]; the `group`
// query heads of this KV head are adjacent (head_dim floats apart) in each token's row of q and out,
// rows q_row_stride / out_row_stride floats apart. Keys and values of position p are the records at
// keys + p * key_stride and values + p * value_stride.
void tq_attend_gqa(const TqState& ks, const TqState& vs, int pos0, int n_tokens, int group, const float* q,
                   size_t q_row_stride, const uint8_t* keys, size_t key_stride, const uint8_t* values,
                   size_t value_stride, float scale, float* out, size_t out_row_stride);

// Reference: dequantizes every key and value with tq_dequantize and attends in double.
void tq_attend_ref(const TqState& ks, const TqState& vs, const float* q, int n_q, size_t q_stride,
                   const int64_t* n_kv, const uint8_t* keys, size_t key_stride, const uint8_t* values,
                   size_t value_stride, float scale, float* out, size_t out_stride);

// Which kernel tq_scores / tq_accumulate_values use for this layout at the current isa_level():
// "scalar", "avx2" or "avx512". SIMD needs each bit segment to be a multiple of 8 coordinates.
const char* tq_kernel_name(const TqLayout& l);

}  // namespace qleap
