#include "turboquant/tq_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/cpu_features.h"
#include "core/error.h"
#include "core/fp16.h"
#include "turboquant/tq_kernels.h"

namespace qleap {

namespace tq_detail {

namespace {

inline float load_norm(const uint8_t* rec, size_t off) {
  uint16_t h;
  std::memcpy(&h, rec + off, 2);
  return fp16_to_fp32_ref(h);
}

// Unpacks index i of a LSB-first b-bit stream.
inline uint32_t index_at(const uint8_t* p, int i, int bits) {
  const size_t bit = size_t(i) * bits;
  uint32_t v = p[bit >> 3] >> (bit & 7);
  if ((bit & 7) + bits > 8) v |= uint32_t(p[(bit >> 3) + 1]) << (8 - (bit & 7));
  return v & ((1u << bits) - 1);
}

// c[i] = the centroid of coordinate i of a record (its hi or lo segment's codebook).
inline void centroids_of(const KernelArgs& a, const uint8_t* rec, float* c) {
  for (int i = 0; i < a.split; ++i) c[i] = a.cb_hi[index_at(rec, i, a.bits_hi)];
  for (int i = a.split; i < a.dim; ++i) c[i] = a.cb_lo[index_at(rec + a.hi_bytes, i - a.split, a.bits_lo)];
}

}  // namespace

void scores_scalar(const KernelArgs& a, const float* q_rot, int n_q, const uint8_t* keys, size_t key_stride,
                   int64_t n, float* scores, size_t score_stride) {
  std::vector<float> c(a.dim);
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* rec = keys + size_t(j) * key_stride;
    centroids_of(a, rec, c.data());
    const float nrm = load_norm(rec, a.norm_offset);
    for (int qi = 0; qi < n_q; ++qi) {
      const float* q = q_rot + size_t(qi) * a.dim;
      float s = 0;
      for (int i = 0; i < a.dim; ++i) s += q[i] * c[i];
      scores[size_t(qi) * score_stride + j] = nrm * s;
    }
  }
}

void accum_scalar(const KernelArgs& a, const float* w, size_t w_stride, int n_q, const uint8_t* values,
                  size_t value_stride, int64_t n, float* acc_rot) {
  std::vector<float> c(a.dim);
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* rec = values + size_t(j) * value_stride;
    centroids_of(a, rec, c.data());
    const float nrm = load_norm(rec, a.norm_offset);
    for (int qi = 0; qi < n_q; ++qi) {
      const float coef = w[size_t(qi) * w_stride + j] * nrm;
      if (coef == 0.0f) continue;
      float* acc = acc_rot + size_t(qi) * a.dim;
      for (int i = 0; i < a.dim; ++i) acc[i] += coef * c[i];
    }
  }
}

void decode_scalar(const KernelArgs& a, const uint8_t* recs, size_t stride, int64_t n, float* rows,
                   size_t row_stride) {
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* rec = recs + size_t(j) * stride;
    float* out = rows + size_t(j) * row_stride;
    centroids_of(a, rec, out);
    const float nrm = load_norm(rec, a.norm_offset);
    for (int i = 0; i < a.dim; ++i) out[i] *= nrm;
  }
}

}  // namespace tq_detail

namespace tq_detail {

namespace {

// SIMD kernels step over whole groups of 8 (AVX2) or 16 (AVX-512) coordinates of a bit segment.
bool segments_multiple_of(const TqLayout& l, int m) {
  return l.split % m == 0 && (l.dim - l.split) % m == 0 && l.bits_hi <= 4 && l.bits_lo <= 4;
}

}  // namespace

ScoresFn pick_scores(const TqLayout& l) {
  const IsaLevel isa = isa_level();
  if (isa >= IsaLevel::kAvx512 && segments_multiple_of(l, 16)) return scores_avx512;
  if (isa >= IsaLevel::kAvx2 && segments_multiple_of(l, 8)) return scores_avx2;
  return scores_scalar;
}

AccumFn pick_accum(const TqLayout& l) {
  const IsaLevel isa = isa_level();
  if (isa >= IsaLevel::kAvx512 && segments_multiple_of(l, 16)) return accum_avx512;
  if (isa >= IsaLevel::kAvx2 && segments_multiple_of(l, 8)) return accum_avx2;
  return accum_scalar;
}

DecodeFn pick_decode(const TqLayout& l) {
  // One decode per key block and query block (tq_decode_rows): the AVX2 form serves AVX-512 CPUs too.
  return isa_level() >= IsaLevel::kAvx2 && segments_multiple_of(l, 8) ? decode_avx2 : decode_scalar;
}

}  // namespace tq_detail

using namespace tq_detail;

const char* tq_kernel_name(const TqLayout& l) {
  const ScoresFn f = pick_scores(l);
  return f == scores_avx512 ? "avx512" : f == scores_avx2 ? "avx2" : "scalar";
}

void tq_rotate_query(const TqState& st, const float* q, float* q_rot) {
  rotate_forward(st.rotation, q, q_rot);
}

void tq_unrotate(const TqState& st, const float* acc_rot, float* out) {
  rotate_inverse(st.rotation, acc_rot, out);
}

void tq_scores(const TqState& st, const float* q_rot, int n_q, const uint8_t* keys, size_t key_stride,
               int64_t n, float* scores, size_t score_stride, TqWrap wrap) {
  if (n <= 0 || n_q <= 0) return;
  const auto f = pick_scores(st.layout);
  // Scores are per key: the two straight pieces of a wrapped run give what one run would.
  const int64_t n1 = wrap.first_piece(n);
  f(kernel_args(st), q_rot, n_q, keys, key_stride, n1, scores, score_stride);
  if (n1 < n)
    f(kernel_args(st), q_rot, n_q, keys + wrap.offset(n1, key_stride), key_stride, n - n1, scores + n1,
      score_stride);
}

void tq_accumulate_values(const TqState& st, const float* w, size_t w_stride, int n_q, const uint8_t* values,
                          size_t value_stride, int64_t n, float* acc_rot, TqWrap wrap) {
  if (n <= 0 || n_q <= 0) return;
  const auto f = pick_accum(st.layout);
  const int64_t n1 = wrap.first_piece(n);
  f(kernel_args(st), w, w_stride, n_q, values, value_stride, n1, acc_rot);
  if (n1 < n)
    f(kernel_args(st), w + n1, w_stride, n_q, values + wrap.offset(n1, value_stride), value_stride, n - n1,
      acc_rot);
}

void tq_decode_rows(const TqState& st, const uint8_t* recs, size_t stride, int64_t n, float* rows,
                    size_t row_stride, TqWrap wrap) {
  if (n <= 0) return;
  const auto f = pick_decode(st.layout);
  const int64_t n1 = wrap.first_piece(n);
  f(kernel_args(st), recs, stride, n1, rows, row_stride);
  if (n1 < n)
    f(kernel_args(st), recs + wrap.offset(n1, stride), stride, n - n1, rows + size_t(n1) * row_stride,
      row_stride);
}

namespace {

// The exact positions among [j0, j0 + n) of a query that sees [0, m): sink [j0, sink_end) and window
// [win_lo, win_hi) (disjoint).
struct ExactRanges {
  int64_t sink_end, win_lo, win_hi;
};
ExactRanges exact_ranges(const TqExactRows& x, int64_t m, int64_t j0, int64_t n) {
  const int64_t je = std::min(j0 + n, m);
  ExactRanges r{std::min<int64_t>(je, x.sink), 0, 0};
  if (x.window > 0) {
    r.win_lo = std::max({j0, m - x.window, x.begin, int64_t(x.sink)});
    r.win_hi = std::min(je, x.end);
  }
  return r;
}

// The row of position j for a query that sees [0, m), as floats in `out`, if j is exact. For the
// reference (tq_attend_ref), so the condition is written out per position, independently of
// exact_ranges: a wrong range in the kernels' path then shows up as a mismatch.
bool exact_row(const TqExactRows& x, bool value, int64_t j, int64_t m, int dim, float* out) {
  if (j < 0 || j >= m) return false;
  if (j < x.sink) {
    std::copy_n((value ? x.sink_v : x.sink_k) + size_t(j) * dim, dim, out);
    return true;
  }
  if (x.window <= 0 || j < m - x.window || j < x.begin || j >= x.end) return false;
  fp16_to_fp32_row((value ? x.win_v : x.win_k) + size_t(j % x.ring) * dim, out, dim);
  return true;
}

}  // namespace

bool TqExactRows::key_row(int64_t j, int64_t m, int dim, float* out) const {
  return exact_row(*this, false, j, m, dim, out);
}

bool TqExactRows::value_row(int64_t j, int64_t m, int dim, float* out) const {
  return exact_row(*this, true, j, m, dim, out);
}

void tq_exact_scores(const TqExactRows& x, int64_t m, const float* q_rot, int n_q, int dim, int64_t j0,
                     int64_t n, float* scores, size_t score_stride) {
  const ExactRanges r = exact_ranges(x, m, j0, n);
  if (x.shift_block > 0) {
    // Shifts first: the exact rows below overwrite their positions' scores anyway.
    const int64_t B = x.shift_block, je = std::min(j0 + n, m);
    for (int64_t b = std::max<int64_t>(1, j0 / B); b * B < je; ++b) {
      const float* d = x.shift_block_row(b, dim);
      const int64_t lo = std::max(j0, b * B), hi = std::min(je, (b + 1) * B);
      for (int qi = 0; qi < n_q; ++qi) {
        const float o = dot_f32(d, q_rot + size_t(qi) * dim, dim);
        float* sc = scores + size_t(qi) * score_stride;
        for (int64_t j = lo; j < hi; ++j) sc[j - j0] += o;
      }
    }
  }
  for (int64_t j = j0; j < r.sink_end; ++j) {
    const float* k = x.sink_k + size_t(j) * dim;
    for (int qi = 0; qi < n_q; ++qi)
      scores[size_t(qi) * score_stride + size_t(j - j0)] = dot_f32(k, q_rot + size_t(qi) * dim, dim);
  }
  // fp16 window rows: the dispatched multi-query dot converts each row once for up to 8 queries.
  const float* qp[8];
  float out[8];
  for (int q0 = 0; q0 < n_q && r.win_lo < r.win_hi; q0 += 8) {
    const int nq = std::min(8, n_q - q0);
    for (int i = 0; i < nq; ++i) qp[i] = q_rot + size_t(q0 + i) * dim;
    for (int64_t j = r.win_lo; j < r.win_hi; ++j) {
      dot_f16_multi(x.win_k + size_t(j % x.ring) * dim, qp, nq, dim, out);
      for (int i = 0; i < nq; ++i) scores[size_t(q0 + i) * score_stride + size_t(j - j0)] = out[i];
    }
  }
}

void tq_exact_accumulate(const TqExactRows& x, int64_t m, float* w, size_t w_stride, int n_q, int dim,
                         int64_t j0, int64_t n, float* acc_rot) {
  const ExactRanges r = exact_ranges(x, m, j0, n);
  for (int64_t j = j0; j < r.sink_end; ++j) {
    const float* v = x.sink_v + size_t(j) * dim;
    for (int qi = 0; qi < n_q; ++qi) {
      float& wj = w[size_t(qi) * w_stride + size_t(j - j0)];
      axpy_f32(wj, v, acc_rot + size_t(qi) * dim, dim);
      wj = 0.0f;
    }
  }
  float* ap[8];
  float p[8];
  for (int q0 = 0; q0 < n_q && r.win_lo < r.win_hi; q0 += 8) {
    const int nq = std::min(8, n_q - q0);
    for (int i = 0; i < nq; ++i) ap[i] = acc_rot + size_t(q0 + i) * dim;
    for (int64_t j = r.win_lo; j < r.win_hi; ++j) {
      for (int i = 0; i < nq; ++i) {
        float& wj = w[size_t(q0 + i) * w_stride + size_t(j - j0)];
        p[i] = wj;
        wj = 0.0f;
      }
      axpy_f16_multi(p, x.win_v + size_t(j % x.ring) * dim, ap, nq, dim);
    }
  }
}

void tq_attend(const TqState& ks, const TqState& vs, const float* q, int n_q, size_t q_stride,
               const int64_t* n_kv, const uint8_t* keys, size_t key_stride, const uint8_t* values,
               size_t value_stride, float scale, float* out, size_t out_stride, const TqExactRows* exact,
               int64_t key0, float softcap, const float* sinks, float* sink_share, TqWrap wrap) {
  if (n_q <= 0) return;
  if (key0 < 0) throw InvalidArgument("turboquant: negative first key");
  const int dk = ks.layout.dim, dv = vs.layout.dim;
  // Keys seen by query qi: [key0, n_kv[qi]), count(qi) of them, in columns j - key0.
  auto count = [&](int qi) { return std::max<int64_t>(0, n_kv[qi] - key0); };
  int64_t n_max = 0;
  for (int qi = 0; qi < n_q; ++qi) {
    if (n_kv[qi] < 0) throw InvalidArgument("turboquant: negative n_kv");
    n_max = std::max(n_max, count(qi));
  }
  // Scratch reused across calls on the same thread (the decode loop calls this per layer and head).
  thread_local std::vector<float> q_rot, w, acc;
  q_rot.resize(size_t(n_q) * dk);
  w.resize(size_t(n_q) * std::max<int64_t>(n_max, 1));
  acc.assign(size_t(n_q) * dv, 0.0f);
  for (int qi = 0; qi < n_q; ++qi) tq_rotate_query(ks, q + size_t(qi) * q_stride, &q_rot[size_t(qi) * dk]);
  // Blocks of 4 queries (what the kernels share one key unpacking across) only go as far as their
  // longest context, so a causal prefill passed token-major (the heads of one token adjacent) does
  // not score the masked future positions.
  for (int q0 = 0; q0 < n_q; q0 += 4) {
    const int nb = std::min(4, n_q - q0);
    int64_t n_blk = 0;
    for (int qi = q0; qi < q0 + nb; ++qi) n_blk = std::max(n_blk, count(qi));
    if (n_blk == 0) continue;
    float* wb = &w[size_t(q0) * n_max];
    tq_scores(ks, &q_rot[size_t(q0) * dk], nb, keys, key_stride, n_blk, wb, size_t(n_max), wrap);
    // f(first query, count, context) over the runs of the block that share their exact rows: the
    // window depends on each query's context, so the block is one run only when all contexts are
    // equal (a GQA group of one token).
    const bool same_ctx = std::all_of(n_kv + q0, n_kv + q0 + nb, [&](int64_t m) { return m == n_kv[q0]; });
    auto exact_runs = [&](auto&& f) {
      if (!exact) return;
      if (same_ctx) {
        f(q0, nb, n_kv[q0]);
      } else {
        for (int qi = q0; qi < q0 + nb; ++qi) f(qi, 1, n_kv[qi]);
      }
    };
    exact_runs([&](int first, int cnt, int64_t m) {
      tq_exact_scores(*exact, m, &q_rot[size_t(first) * dk], cnt, dk, key0, n_blk, &w[size_t(first) * n_max],
                      size_t(n_max));
    });
    for (int qi = q0; qi < q0 + nb; ++qi) {
      float* row = &w[size_t(qi) * n_max];
      const int64_t m = count(qi);
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < m; ++j) {
        row[j] = softcap_score(row[j] * scale, softcap);
        mx = std::max(mx, row[j]);
      }
      double sum = 0;
      for (int64_t j = 0; j < m; ++j) {
        row[j] = std::exp(row[j] - mx);
        sum += row[j];
      }
      const bool sink = sinks != nullptr && sinks[qi] > -std::numeric_limits<float>::infinity();
      const float inv = m == 0 ? 0.0f : sink ? attn_out_factor(mx, float(sum), sinks[qi]) : float(1.0 / sum);
      if (sink_share != nullptr) sink_share[qi] = 1.0f - float(sum) * inv;
      for (int64_t j = 0; j < m; ++j) row[j] *= inv;
      for (int64_t j = m; j < n_blk; ++j) row[j] = 0.0f;  // causal mask: later positions get no weight
    }
    exact_runs([&](int first, int cnt, int64_t m) {
      tq_exact_accumulate(*exact, m, &w[size_t(first) * n_max], size_t(n_max), cnt, dv, key0, n_blk,
                          &acc[size_t(first) * dv]);
    });
    tq_accumulate_values(vs, wb, size_t(n_max), nb, values, value_stride, n_blk, &acc[size_t(q0) * dv], wrap);
  }
  for (int qi = 0; qi < n_q; ++qi) tq_unrotate(vs, &acc[size_t(qi) * dv], out + size_t(qi) * out_stride);
}

void tq_attend_gqa(const TqState& ks, const TqState& vs, int pos0, int n_tokens, int group, const float* q,
                   size_t q_row_stride, const uint8_t* keys, size_t key_stride, const uint8_t* values,
                   size_t value_stride, float scale, float* out, size_t out_row_stride,
                   const TqExactRows* exact, const TqWindow& win) {
  if (pos0 < 0 || n_tokens < 0 || group < 1 || group > 256 || win.window < 0 || win.ring < 0)
    throw InvalidArgument("turboquant: bad GQA attention arguments");
  const int dk = ks.layout.dim, dv = vs.layout.dim;
  int64_t n_kv[256];
  for (int t = 0; t < n_tokens; ++t) {
    // One call per token: its `group` heads share the key unpacking and have the same context.
    const int64_t end = int64_t(pos0) + t + 1;
    const int64_t first = win.window > 0 ? std::max<int64_t>(0, end - win.window) : 0;
    if (win.ring > 0 && end - first > win.ring)
      throw InvalidArgument("turboquant: window longer than its ring");
    const int64_t slot = win.ring > 0 ? first % win.ring : first;
    for (int g = 0; g < group; ++g) n_kv[g] = end;
    tq_attend(ks, vs, q + size_t(t) * q_row_stride, group, size_t(dk), n_kv, keys + size_t(slot) * key_stride,
              key_stride, values + size_t(slot) * value_stride, value_stride, scale,
              out + size_t(t) * out_row_stride, size_t(dv), exact, first, win.softcap,
              win.sinks != nullptr ? win.sinks + size_t(t) * win.sinks_stride : nullptr,
              win.sink_share != nullptr ? win.sink_share + size_t(t) * win.sinks_stride : nullptr,
              TqWrap::of(win.ring, slot, end - first));
  }
}

void tq_attend_ref(const TqState& ks, const TqState& vs, const float* q, int n_q, size_t q_stride,
                   const int64_t* n_kv, const uint8_t* keys, size_t key_stride, const uint8_t* values,
                   size_t value_stride, float scale, float* out, size_t out_stride,
                   const TqExactRows* exact) {
  const int dk = ks.layout.dim, dv = vs.layout.dim;
  std::vector<float> k(dk), v(dv), row(size_t(std::max(dk, dv)));
  for (int qi = 0; qi < n_q; ++qi) {
    const float* qq = q + size_t(qi) * q_stride;
    const int64_t m = n_kv[qi];
    std::vector<double> s(size_t(std::max<int64_t>(m, 0)));
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < m; ++j) {
      if (exact && exact->key_row(j, m, dk, row.data())) {
        tq_unrotate(ks, row.data(), k.data());
      } else {
        tq_dequantize(ks, keys + size_t(j) * key_stride, k.data());
        if (const float* d = exact ? exact->shift_row(j, dk) : nullptr) {
          tq_unrotate(ks, d, row.data());
          for (int i = 0; i < dk; ++i) k[i] += row[i];
        }
      }
      double d = 0;
      for (int i = 0; i < dk; ++i) d += double(qq[i]) * k[i];
      s[j] = d * scale;
      mx = std::max(mx, s[j]);
    }
    double sum = 0;
    for (int64_t j = 0; j < m; ++j) sum += (s[j] = std::exp(s[j] - mx));
    std::vector<double> o(dv, 0.0);
    for (int64_t j = 0; j < m; ++j) {
      if (exact && exact->value_row(j, m, dv, row.data())) {
        tq_unrotate(vs, row.data(), v.data());
      } else {
        tq_dequantize(vs, values + size_t(j) * value_stride, v.data());
      }
      for (int i = 0; i < dv; ++i) o[i] += s[j] / sum * v[i];
    }
    for (int i = 0; i < dv; ++i) out[size_t(qi) * out_stride + i] = float(o[i]);
  }
}

}  // namespace qleap
