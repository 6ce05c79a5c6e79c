#include "model/mla_block.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "core/error.h"
#include "model/moe_block.h"
#include "quant/quant.h"

namespace qleap {
namespace {

// A per-head stack of matrices: ne = [cols, rows, n] (llama.cpp's attn_k_b / attn_v_b) or the same bytes
// as a 2-D [cols, rows * n] tensor.
std::vector<WeightView> load_head_matrices(const GgufFile& f, const std::string& name, int64_t cols,
                                           int64_t rows, int64_t n) {
  const GgufTensor& t = f.tensor(name);
  const bool ok3 = t.shape.size() == 3 && t.ne(0) == cols && t.ne(1) == rows && t.ne(2) == n;
  const bool ok2 = t.shape.size() == 2 && t.ne(0) == cols && t.ne(1) == rows * n;
  if (!ok3 && !ok2) {
    throw FormatError(fmt::format("tensor '{}' has {} dimensions, expected [{}, {}, {}]", name,
                                  t.shape.size(), cols, rows, n));
  }
  // The 3-D check of load_expert_matrices covers types and byte counts.
  if (ok3) return load_expert_matrices(f, name, cols, rows, n);
  const WeightView all = load_matrix(f, name, cols, rows * n);
  std::vector<WeightView> out(size_t(n), all);
  for (int64_t h = 0; h < n; ++h) {
    out[size_t(h)].rows = rows;
    out[size_t(h)].data = static_cast<const uint8_t*>(all.data) + all.row_bytes * size_t(rows * h);
  }
  return out;
}

}  // namespace

void load_mla_attention(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  const MlaParams& a = hp.mla;
  const int64_t n = hp.n_embd, H = hp.n_heads, R = a.kv_lora_rank, N = a.nope_dim, V = a.v_dim;
  w.attn_norm = load_vector(f, blk_name(il, "attn_norm.weight"), n, true);
  if (a.q_lora_rank > 0) {
    w.wq_a = load_matrix(f, blk_name(il, "attn_q_a.weight"), n, a.q_lora_rank);
    w.q_a_norm = load_vector(f, blk_name(il, "attn_q_a_norm.weight"), a.q_lora_rank, true);
    w.wq = load_matrix(f, blk_name(il, "attn_q_b.weight"), a.q_lora_rank, H * a.qk_dim());
  } else {
    w.wq = load_matrix(f, blk_name(il, "attn_q.weight"), n, H * a.qk_dim());
  }
  w.wk = load_matrix(f, blk_name(il, "attn_kv_a_mqa.weight"), n, R + a.rope_dim);
  w.kv_a_norm = load_vector(f, blk_name(il, "attn_kv_a_norm.weight"), R, true);
  w.wo = load_matrix(f, blk_name(il, "attn_output.weight"), H * V, n);
  if (f.find_tensor(blk_name(il, "attn_k_b.weight")) != nullptr) {
    w.k_b = load_head_matrices(f, blk_name(il, "attn_k_b.weight"), N, R, H);
    w.v_b = load_head_matrices(f, blk_name(il, "attn_v_b.weight"), R, V, H);
    return;
  }
  // Older files (llama.cpp before the split): kv_b_proj as one matrix, per head N key rows then V value
  // rows over the latent. The value rows are W_UV as they are; the key rows are transposed here (to F32)
  // so that q_nope can be taken into the latent space with a plain matmul.
  const WeightView kv_b = load_matrix(f, blk_name(il, "attn_kv_b.weight"), R, H * (N + V));
  auto owned = std::make_shared<std::vector<float>>(size_t(H * R * N));
  std::vector<float> row(static_cast<size_t>(R));
  w.k_b.assign(size_t(H), WeightView{});
  w.v_b.assign(size_t(H), kv_b);
  for (int64_t h = 0; h < H; ++h) {
    float* kt = owned->data() + size_t(h * R * N);  // R rows of N
    for (int64_t i = 0; i < N; ++i) {
      dequantize_row(kv_b.type,
                     static_cast<const uint8_t*>(kv_b.data) + kv_b.row_bytes * size_t(h * (N + V) + i),
                     row.data(), R);
      for (int64_t r = 0; r < R; ++r) kt[r * N + i] = row[size_t(r)];
    }
    WeightView& k = w.k_b[size_t(h)];
    k.type = GgmlType::F32;
    k.data = kt;
    k.cols = N;
    k.rows = R;
    k.row_bytes = size_t(N) * sizeof(float);
    k.scale = kv_b.scale;
    WeightView& v = w.v_b[size_t(h)];
    v.rows = V;
    v.data = static_cast<const uint8_t*>(kv_b.data) + kv_b.row_bytes * size_t(h * (N + V) + N);
  }
  w.mla_owned = std::move(owned);
}

void mla_attention_block(const LayerWeights& w, int il, const LayerCtx& ctx, const float* xn, float* out) {
  const HParams& hp = ctx.hp;
  const MlaParams& ml = hp.mla;
  Backend& be = ctx.be;
  Activations& a = ctx.a;
  if (!be.is_host()) throw Unsupported(fmt::format("layer {}: MLA attention runs on the CPU only", il));
  const int m = ctx.m, H = hp.n_heads, R = ml.kv_lora_rank, P = ml.rope_dim, N = ml.nope_dim, V = ml.v_dim;
  const int Q = ml.qk_dim(), L = ml.latent_dim();
  ThreadPool& pool = ctx.pool;

  float* qf = a.mla_q.get();  // m x H x (nope | rope)
  if (w.wq_a.data != nullptr) {
    be.matmul(w.wq_a, xn, m, a.mla_qa.get());
    be.rms_norm(a.mla_qa.get(), w.q_a_norm, a.mla_qa.get(), m, ml.q_lora_rank, kMlaNormEps);
    be.matmul(w.wq, a.mla_qa.get(), m, qf);
  } else {
    be.matmul(w.wq, xn, m, qf);
  }
  // The latent: kv_a gives [c_kv | k_pe]; the cache wants [k_pe | rms_norm(c_kv)]. It is the value too
  // (KvShape::values_are_keys): of the attended latent only the c_kv part is used.
  float* kv = a.mla_kv.get();
  be.matmul(w.wk, xn, m, kv);
  float* k = a.k.get();
  for (int t = 0; t < m; ++t) {
    const float* src = kv + size_t(t) * (R + P);
    float* kt = k + size_t(t) * L;
    std::copy(src + R, src + R + P, kt);
    rms_norm(src, w.kv_a_norm.data(), kt + P, R, kMlaNormEps);
  }
  // Queries in the latent space: [q_pe | W_UK[h]^T q_nope] per head.
  float* q = a.q.get();
  float* gin = a.mla_in.get();
  float* gout = a.mla_out.get();
  for (int h = 0; h < H; ++h) {
    for (int t = 0; t < m; ++t) {
      const float* src = qf + (size_t(t) * H + h) * Q;
      std::copy(src, src + N, gin + size_t(t) * N);
      std::copy(src + N, src + Q, q + (size_t(t) * H + h) * L);
    }
    matmul(w.k_b[size_t(h)], gin, m, gout, pool);
    for (int t = 0; t < m; ++t)
      std::copy(gout + size_t(t) * R, gout + size_t(t + 1) * R, q + (size_t(t) * H + h) * L + P);
  }
  // RoPE on the first P values of every query head and of the latent key.
  QkPrep qp;
  qp.q = q;
  qp.k = k;
  qp.v = a.v.get();  // untouched (no bias)
  qp.n_heads = H;
  qp.n_kv_heads = 1;
  qp.head_dim = L;
  qp.eps = hp.rms_eps;
  be.qk_prep(qp, m);

  const int32_t* dev_pos = be.device_positions();
  const int layer = il - ctx.kv_first;
  float* att = a.attn.get();  // m x H x L: [ignored | attended c_kv]
  // The cached latent is both key and value (KvShape::values_are_keys).
  store_and_attend(ctx, layer, k, k, L, q, att, size_t(H) * L, hp.attn_scale, dev_pos);
  // Per head out of the latent (W_UV), then the output projection.
  float* o = a.mla_o.get();  // m x H x V
  for (int h = 0; h < H; ++h) {
    for (int t = 0; t < m; ++t) {
      const float* src = att + (size_t(t) * H + h) * L + P;
      std::copy(src, src + R, gin + size_t(t) * R);
    }
    matmul(w.v_b[size_t(h)], gin, m, gout, pool);
    for (int t = 0; t < m; ++t)
      std::copy(gout + size_t(t) * V, gout + size_t(t + 1) * V, o + (size_t(t) * H + h) * V);
  }
  be.matmul(w.wo, o, m, out, /*accumulate=*/true);
}

}  // namespace qleap
