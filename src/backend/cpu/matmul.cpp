#include "backend/cpu/matmul.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "backend/cpu/matmul_kernels.h"
#include "backend/cpu/packed_weights.h"
#include "core/cpu_features.h"
#include "core/error.h"
#include "core/guided_for.h"
#include "quant/quant.h"

namespace qleap {
namespace kern {

ActFormat act_format(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::IQ4_NL:
    case GgmlType::MXFP4:
    case GgmlType::NVFP4:
      return ActFormat::kQ8A;
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::IQ2_XXS:
    case GgmlType::IQ2_XS:
    case GgmlType::IQ2_S:
    case GgmlType::IQ3_XXS:
    case GgmlType::IQ3_S:
    case GgmlType::IQ1_S:
    case GgmlType::IQ1_M:
    case GgmlType::IQ4_XS:
    case GgmlType::TQ1_0:
    case GgmlType::TQ2_0:
      return ActFormat::kQ8K;
    default:
      return ActFormat::kF32;
  }
}

size_t act_row_bytes(ActFormat f, int64_t n) {
  switch (f) {
    case ActFormat::kQ8A:
      return size_t(n / 32) * sizeof(BlockQ8A);
    case ActFormat::kQ8K:
      return size_t(n / 256) * sizeof(BlockQ8_K);
    case ActFormat::kF32:
      return size_t(n) * sizeof(float);
  }
  return 0;
}

int panel_rows() {
  return isa_level() >= IsaLevel::kAvx512 && cpu_features().avx512vnni ? 16 : 8;
}

const IsaKernels* active_kernels() {
  const IsaLevel lvl = isa_level();
  if (lvl == IsaLevel::kAmx) return kernels_amx();
  if (lvl == IsaLevel::kAvx512) {
    // The AVX-512 build uses VNNI; without it the AVX2 build is the better choice.
    if (cpu_features().avx512vnni) return kernels_avx512();
    return kernels_avx2();
  }
  if (lvl == IsaLevel::kAvx2) return kernels_avx2();
  return nullptr;
}

}  // namespace kern

namespace {

// Grow-only per-thread buffers: the decode loop calls matmul hundreds of times per token.
struct Scratch {
  std::vector<uint8_t> act;
  std::vector<float> row;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

const uint8_t* row_ptr(const WeightView& w, int64_t r) {
  return static_cast<const uint8_t*>(w.data) + size_t(r) * w.row_bytes;
}

void check_view(const WeightView& w) {
  const auto& tr = type_traits(w.type);
  if (!tr.can_compute || tr.block_size <= 0) {
    throw Unsupported(fmt::format("matmul: unsupported weight type {}", type_name(w.type)));
  }
  if (w.cols % tr.block_size != 0) {
    throw InvalidArgument(
        fmt::format("matmul: {} columns not a multiple of the {} block", w.cols, type_name(w.type)));
  }
  if (w.row_bytes < row_size(w.type, w.cols)) throw InvalidArgument("matmul: row stride smaller than a row");
}

// Rows per parallel_for chunk: enough chunks (about 4 per thread) to even out uneven threads, each a
// multiple of 4 rows so the register tiles stay full.
int64_t row_grain(int64_t rows, int nth) {
  if (nth <= 1) return rows;
  const int64_t g = (rows + int64_t(nth) * 4 - 1) / (int64_t(nth) * 4);
  return std::max<int64_t>(4, (g + 3) / 4 * 4);
}

void matmul_fallback(const WeightView& w, const float* x, int64_t m, float* y, ThreadPool& pool) {
  pool.parallel_for(w.rows, row_grain(w.rows, pool.size()), [&](int64_t r0, int64_t r1, int) {
    auto& row = scratch().row;
    if (row.size() < size_t(w.cols)) row.resize(size_t(w.cols));
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_row_ref(w.type, row_ptr(w, r), row.data(), w.cols);
      for (int64_t t = 0; t < m; ++t) {
        float acc = 0;
        const float* xt = x + t * w.cols;
        for (int64_t c = 0; c < w.cols; ++c) acc += row[size_t(c)] * xt[c];
        y[t * w.rows + r] = acc;
      }
    }
  });
}

}  // namespace

namespace {
thread_local bool tls_row_exact = false;
// Fewest activation rows worth the matrix units: below this the VNNI kernels win (measured).
constexpr int64_t kTileMinRows = 32;
// Fewest activation rows for the interleaved-panel kernels (below: the row-dot tiles).
constexpr int64_t kPanelMinRows = 4;
}  // namespace

RowExactMatmul::RowExactMatmul() : prev_(tls_row_exact) {
  tls_row_exact = true;
}
RowExactMatmul::~RowExactMatmul() {
  tls_row_exact = prev_;
}

void matmul_ref(const WeightView& w, const float* x, int64_t m, float* y) {
  check_view(w);
  std::vector<float> row(size_t(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row_ref(w.type, row_ptr(w, r), row.data(), w.cols);
    for (int64_t t = 0; t < m; ++t) {
      double acc = 0;
      const float* xt = x + t * w.cols;
      for (int64_t c = 0; c < w.cols; ++c) acc += double(row[size_t(c)]) * xt[c];
      y[t * w.rows + r] = float(acc * double(w.scale));
    }
  }
}

namespace {

// Up to kRowDotMany weights on one input through the row dot-product kernels: the activations are
// quantized once and the rows of all weights are split over the threads in one dispatch. Each
// output row is computed as matmul() on that weight alone computes it (chunks start at multiples of
// 4 rows of their weight, as row_grain's did).
constexpr int kRowDotMany = 8;
constexpr int64_t kRowUnit = 4;

void rowdot_many(const kern::IsaKernels* k, const WeightView* const* ws, float* const* ys, int n,
                 const float* x, int64_t m, ThreadPool& pool) {
  // Everything the workers need, reached through one pointer: the lambdas below then fit in
  // std::function's inline storage, so a call allocates nothing once the scratch has grown.
  struct Mat {
    const WeightView* w;
    float* y;
    int64_t u_end;  // this weight's 4-row units end here in the joint numbering
  };
  struct Job {
    const kern::IsaKernels* k;
    Mat mats[kRowDotMany];
    int n;
    const float* x;
    int64_t m;
    kern::ActFormat af;
    const uint8_t* xa;
    uint8_t* act;
    size_t xa_stride;
    int64_t cols;
    bool row_exact;
  } job{};
  job.k = k;
  job.n = n;
  job.x = x;
  job.m = m;
  job.cols = ws[0]->cols;
  job.af = kern::act_format(ws[0]->type);
  job.xa = reinterpret_cast<const uint8_t*>(x);
  job.xa_stride = size_t(job.cols) * sizeof(float);
  job.row_exact = tls_row_exact && m > 1;
  int64_t units = 0;
  for (int i = 0; i < n; ++i) {
    units += (ws[i]->rows + kRowUnit - 1) / kRowUnit;
    job.mats[i] = Mat{ws[i], ys[i], units};
  }

  // Quantize the activations once; every weight row reuses them.
  if (job.af != kern::ActFormat::kF32) {
    job.xa_stride = kern::act_row_bytes(job.af, job.cols);
    auto& buf = scratch().act;
    if (buf.size() < job.xa_stride * size_t(m)) buf.resize(job.xa_stride * size_t(m));
    job.act = buf.data();
    job.xa = job.act;
    const auto quant_rows = [](Job& j, int64_t t0, int64_t t1) {
      const int64_t c = j.cols;
      for (int64_t t = t0; t < t1; ++t) {
        uint8_t* dst = j.act + size_t(t) * j.xa_stride;
        if (j.af == kern::ActFormat::kQ8A) {
          j.k->quantize_q8a(j.x + t * c, reinterpret_cast<kern::BlockQ8A*>(dst), c);
        } else {
          j.k->quantize_q8k(j.x + t * c, reinterpret_cast<BlockQ8_K*>(dst), c);
        }
      }
    };
    if (m >= 8 && pool.size() > 1) {
      Job* jp = &job;
      pool.parallel_for(m, std::max<int64_t>(1, m / (4 * pool.size())),
                        [jp, quant_rows](int64_t t0, int64_t t1, int) { quant_rows(*jp, t0, t1); });
    } else {
      quant_rows(job, 0, m);
    }
  }

  const Job* jp = &job;
  // Guided chunks: a decode dispatch on a small model lasts microseconds, and a fixed-size last
  // chunk left one thread waiting for a measurable share of it.
  parallel_for_guided(pool, units, 1, [jp](int64_t u0, int64_t u1, int) {
    const Job& j = *jp;
    int i = 0;
    while (u0 < u1) {
      while (u0 >= j.mats[i].u_end) ++i;
      const Mat& mt = j.mats[i];
      const WeightView& wv = *mt.w;
      const int64_t u_first = mt.u_end - (wv.rows + kRowUnit - 1) / kRowUnit;
      const int64_t ue = std::min(u1, mt.u_end);
      const int64_t r0 = (u0 - u_first) * kRowUnit;
      const int64_t r1 = std::min(wv.rows, (ue - u_first) * kRowUnit);
      u0 = ue;
      const auto* wd = static_cast<const uint8_t*>(wv.data);
      if (j.row_exact) {
        // One activation row at a time through the decode kernels, over blocks of weight rows small
        // enough (~16 KiB) to stay in L1 while every activation row passes: the weights are still
        // read from memory once.
        const int64_t block = std::max<int64_t>(1, int64_t(16384 / std::max<size_t>(1, wv.row_bytes)));
        for (int64_t rb = r0; rb < r1; rb += block) {
          const int64_t re = std::min(r1, rb + block);
          for (int64_t t = 0; t < j.m; ++t) {
            j.k->gemm(wv.type, wd, wv.row_bytes, wv.cols, rb, re, j.xa, j.xa_stride, t, t + 1, mt.y, wv.rows);
          }
        }
        continue;
      }
      j.k->gemm(wv.type, wd, wv.row_bytes, wv.cols, r0, r1, j.xa, j.xa_stride, 0, j.m, mt.y, wv.rows);
    }
  });
}

// Whether matmul() would take w through the row dot-product kernels (rowdot_many): no AMX tiles,
// no repacked copy, no prefill panels for it.
bool takes_rowdot(const kern::IsaKernels* k, const WeightView& w, float* y, int64_t m) {
  if (k == nullptr || w.rows <= 0) return false;
  if (!tls_row_exact && k->tile_matmul != nullptr && m >= kTileMinRows) return false;
  if (w.packed != nullptr && w.packed->source == w.data && k->packed_matmul != nullptr) return false;
  if (!tls_row_exact && k->panel_matmul != nullptr && m >= kPanelMinRows) return false;
  return k->gemm(w.type, static_cast<const uint8_t*>(w.data), w.row_bytes, w.cols, 0, 0, nullptr, 0, 0, 0, y,
                 w.rows);
}

}  // namespace

namespace {

// y (m rows of w.rows) *= w.scale: the per-tensor scale some files carry beside a weight
// (WeightView::scale).
void apply_scale(const WeightView& w, int64_t m, float* y) {
  if (w.scale == 1.0f) return;
  const int64_t n = m * w.rows;
  for (int64_t i = 0; i < n; ++i) y[i] *= w.scale;
}

// matmul() without the weight's scale.
void matmul_unscaled(const WeightView& w, const float* x, int64_t m, float* y, ThreadPool& pool) {
  if (m <= 0 || w.rows <= 0) return;
  const kern::IsaKernels* k = kern::active_kernels();
  if (k == nullptr) return matmul_fallback(w, x, m, y, pool);
  const auto* wd = static_cast<const uint8_t*>(w.data);
  if (!k->gemm(w.type, wd, w.row_bytes, w.cols, 0, 0, nullptr, 0, 0, 0, y, w.rows)) {
    return matmul_fallback(w, x, m, y, pool);
  }
  // AMX tiles for prefill (from the repacked copy when there is one, else the GGUF rows).
  if (!tls_row_exact && k->tile_matmul != nullptr && m >= kTileMinRows && k->tile_matmul(w, x, m, y, pool))
    return;
  // Repacked weights (made from these very bytes): decode and prefill read the interleaved copy.
  if (w.packed != nullptr && w.packed->source == w.data && k->packed_matmul != nullptr &&
      k->packed_matmul(*w.packed, x, m, y, pool, tls_row_exact && m > 1)) {
    return;
  }
  if (!tls_row_exact) {
    if (k->panel_matmul != nullptr && m >= kPanelMinRows && k->panel_matmul(w, x, m, y, pool)) return;
  }

  const WeightView* wp = &w;
  rowdot_many(k, &wp, &y, 1, x, m, pool);
}

}  // namespace

void matmul(const WeightView& w, const float* x, int64_t m, float* y, ThreadPool& pool) {
  check_view(w);
  matmul_unscaled(w, x, m, y, pool);
  if (m > 0) apply_scale(w, m, y);
}

void matmul_many(const WeightView* const* ws, float* const* ys, int n, const float* x, int64_t m,
                 ThreadPool& pool) {
  if (n <= 0) return;
  for (int i = 0; i < n; ++i) {
    check_view(*ws[i]);
    if (ws[i]->cols != ws[0]->cols) {
      throw InvalidArgument(
          fmt::format("matmul_many: weights of {} and {} columns on one input", ws[0]->cols, ws[i]->cols));
    }
  }
  if (m <= 0) return;
  const kern::IsaKernels* k = kern::active_kernels();
  // Where matmul() would run a weight on its repacked copy, the weights share one call; the others
  // (and the AMX prefill, which tries tiles first) go through matmul() one by one.
  const bool tiles = !tls_row_exact && k != nullptr && k->tile_matmul != nullptr && m >= kTileMinRows;
  const bool shared = m > 0 && k != nullptr && k->packed_matmul_many != nullptr && !tiles;
  const PackedMatrix* pms[kern::kMaxPackedMany];
  float* pys[kern::kMaxPackedMany];
  int idx[kern::kMaxPackedMany];
  int np = 0;
  const auto flush = [&] {
    if (np > 1 && k->packed_matmul_many(pms, pys, np, x, m, pool, tls_row_exact && m > 1)) {
      np = 0;
      return;
    }
    for (int j = 0; j < np; ++j) matmul_unscaled(*ws[idx[j]], x, m, ys[idx[j]], pool);
    np = 0;
  };
  // Weights that matmul() would take through the row dot products share one quantization and one
  // dispatch too, per activation format (a small model's decode has ~5 dispatches per layer: each
  // costs a few microseconds of serial work and waiting, as much as a small matrix takes).
  struct RowGroup {
    const WeightView* ws[kRowDotMany];
    float* ys[kRowDotMany];
    int n = 0;
  } rowdot[3];  // by kern::ActFormat
  const auto flush_rowdot = [&](RowGroup& g) {
    if (g.n > 0) rowdot_many(k, g.ws, g.ys, g.n, x, m, pool);
    g.n = 0;
  };
  for (int i = 0; i < n; ++i) {
    const WeightView& w = *ws[i];
    if (takes_rowdot(k, w, ys[i], m)) {
      RowGroup& g = rowdot[int(kern::act_format(w.type))];
      g.ws[g.n] = &w;
      g.ys[g.n++] = ys[i];
      if (g.n == kRowDotMany) flush_rowdot(g);
      continue;
    }
    if (!shared || w.rows <= 0 || w.packed == nullptr || w.packed->source != w.data ||
        !k->gemm(w.type, static_cast<const uint8_t*>(w.data), w.row_bytes, w.cols, 0, 0, nullptr, 0, 0, 0,
                 ys[i], w.rows)) {
      matmul_unscaled(w, x, m, ys[i], pool);
      continue;
    }
    pms[np] = w.packed;
    pys[np] = ys[i];
    idx[np++] = i;
    if (np == kern::kMaxPackedMany) flush();
  }
  flush();
  for (RowGroup& g : rowdot) flush_rowdot(g);
  for (int i = 0; i < n; ++i) apply_scale(*ws[i], m, ys[i]);
}

std::string matmul_path_summary() {
  const kern::IsaKernels* k = kern::active_kernels();
  if (k == nullptr) return "scalar reference kernels (fp32)";
  std::string s = fmt::format("{}: decode on repacked 16-row groups{} (row dot products otherwise)", k->name,
                              repack_enabled() ? "" : " (off)");
  if (k->panel_matmul != nullptr)
    s += fmt::format(", prefill on {}-row int8 panels from {} rows", kern::panel_rows(), kPanelMinRows);
  if (k->tile_matmul != nullptr) s += fmt::format(", AMX bf16 tiles from {} rows", kTileMinRows);
  return s;
}

void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n) {
  const kern::IsaKernels* k = kern::active_kernels();
  const auto& tr = type_traits(t);
  if (k != nullptr && tr.block_size > 0 && n % tr.block_size == 0 && k->dequantize(t, src, dst, n)) return;
  dequantize_row_ref(t, src, dst, n);
}

void get_row(const WeightView& w, int64_t r, float* out) {
  if (r < 0 || r >= w.rows)
    throw InvalidArgument(fmt::format("get_row: row {} out of range [0, {})", r, w.rows));
  dequantize_row(w.type, row_ptr(w, r), out, w.cols);
  if (w.scale != 1.0f)
    for (int64_t c = 0; c < w.cols; ++c) out[c] *= w.scale;
}

}  // namespace qleap
