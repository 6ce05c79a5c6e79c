#include "runtime/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_api.h"
#include "core/error.h"
#include "runtime/device_host_kv.h"
#include "runtime/kv_calibrate.h"

namespace qleap {
namespace {

// The attention sinks (gpt-oss) of the attention layers [first, end) as the segment's cache holds them
// (KvShape::attn_sinks); left empty when no layer has any.
void set_attn_sinks(const Model& model, int first, int end, KvShape& shape) {
  const HParams& hp = model.hparams();
  const std::vector<LayerWeights>& layers = model.weights().layers;
  bool any = false;
  for (int il = first; il < end; ++il) any |= !layers[size_t(il)].attn_sinks.empty();
  if (!any) return;
  shape.attn_sinks.assign(size_t(shape.n_layers) * size_t(hp.n_heads),
                          -std::numeric_limits<float>::infinity());
  for (int il = first; il < end; ++il) {
    const std::vector<float>& s = layers[size_t(il)].attn_sinks;
    if (s.empty() || hp.is_recurrent(il)) continue;
    const size_t at = size_t(hp.kv_layers_before(il) - hp.kv_layers_before(first)) * size_t(hp.n_heads);
    std::copy(s.begin(), s.end(), shape.attn_sinks.begin() + ptrdiff_t(at));
  }
}

}  // namespace

Engine::Engine(std::shared_ptr<const Model> model, const EngineOptions& opt)
    : model_(std::move(model)), kv_type_(opt.kv_type), pool_([&] {
        if (opt.n_threads < 0)
          throw InvalidArgument(fmt::format("n_threads must be >= 0 (got {})", opt.n_threads));
        return opt.n_threads > 0 ? opt.n_threads : default_thread_count();
      }()) {
  const HParams& hp = model_->hparams();
  if (opt.n_ctx < 0) throw InvalidArgument(fmt::format("n_ctx must be >= 0 (got {})", opt.n_ctx));
  if (opt.n_batch <= 0) throw InvalidArgument(fmt::format("n_batch must be positive (got {})", opt.n_batch));
  if (opt.n_slots <= 0 || opt.n_slots > 1024)
    throw InvalidArgument(fmt::format("n_slots must be in [1, 1024] (got {})", opt.n_slots));
  n_ctx_ = opt.n_ctx > 0 ? opt.n_ctx : default_context(hp.n_ctx_train);
  n_batch_ = std::min(opt.n_batch, n_ctx_);
  if (opt.state_checkpoints < 0)
    throw InvalidArgument(fmt::format("state_checkpoints must be >= 0 (got {})", opt.state_checkpoints));
  state_checkpoints_ = opt.state_checkpoints;
  const int rows_max = std::max(n_batch_, opt.n_slots);
  rope_ = RopeTable(hp.rope, n_ctx_);
  if (hp.has_rope_swa) rope_swa_ = RopeTable(hp.rope_swa, n_ctx_);

  // Segments: the CPU holds the first layers, a CUDA device the rest (and the head when it has them all).
  const int n_devices = opt.make_device_backend ? 1 : (opt.gpu_layers != 0 ? cuda::device_count() : 0);
  placement_ = plan_placement(hp.n_layers, opt.gpu_layers, n_devices);
  const int first_gpu = placement_.first_gpu_layer();
  if (first_gpu > 0 || !placement_.any_gpu()) {
    Segment s;
    s.backend = std::make_unique<CpuBackend>(pool_);
    s.first = 0;
    s.end = first_gpu;
    s.head = !placement_.output_on_gpu;
    segments_.push_back(std::move(s));
  }
  if (placement_.any_gpu()) {
    Segment s;
    s.backend = opt.make_device_backend ? opt.make_device_backend() : cuda::make_backend(0);
    s.first = first_gpu;
    s.end = hp.n_layers;
    s.head = placement_.output_on_gpu;
    segments_.push_back(std::move(s));
  }
  const ModelWeights& w = model_->weights();
  for (Segment& s : segments_) {
    Backend& be = *s.backend;
    be.set_rope(rope_);
    if (hp.has_rope_swa) be.set_rope_swa(rope_swa_);
    if (be.is_host()) {
      model_->prepare_host(s.first, s.end, s.head, opt.repack_experts);
    } else {
      for (int il = s.first; il < s.end; ++il) prepare_layer(w.layers[size_t(il)], be);
      if (s.head) {
        be.prepare(w.output_norm);
        be.prepare(w.output);
      }
    }
    s.act.allocate(be, hp, rows_max);
  }
  moe_.allocate(hp, rows_max);
  host_x_.resize(size_t(rows_max) * hp.n_embd);
  host_xn_.resize(size_t(rows_max) * hp.n_embd);
  pos_.resize(size_t(rows_max));
  rows_.resize(size_t(rows_max));

  slots_.resize(size_t(opt.n_slots));
  for (Slot& sl : slots_) {
    for (Segment& seg : segments_) {
      // The caches hold the attention layers only (hybrid models' DeltaNet layers keep a state instead).
      KvShape shape;
      shape.n_layers = std::max(1, hp.kv_layers_before(seg.end) - hp.kv_layers_before(seg.first));
      shape.first_layer = hp.kv_layers_before(seg.first);
      shape.model_layers = hp.kv_layers_before(hp.n_layers);
      shape.n_ctx = n_ctx_;
      shape.n_heads = hp.n_heads;
      shape.n_kv_heads = hp.n_kv_heads;
      shape.head_dim = hp.head_dim;
      // Sliding-window layers keep a ring sized to their window and one prefill chunk.
      if (hp.n_swa > 0) {
        shape.windows.assign(size_t(shape.n_layers), 0);
        for (int il = seg.first; il < seg.end; ++il) shape.windows[size_t(il - seg.first)] = hp.window(il);
      }
      shape.max_tokens = n_batch_;
      shape.softcap = hp.attn_softcap;
      set_attn_sinks(*model_, seg.first, seg.end, shape);
      shape.values_are_keys = hp.is_mla();  // MLA caches its latent once (model/mla_block.h)
      std::unique_ptr<KvCache> kv;
      if (seg.backend->is_host() && opt.make_host_kv) {
        kv = opt.make_host_kv(shape);
      } else {
        kv = make_cache(seg, shape);
      }
      kv->set_pool(&pool_);
      sl.kv.push_back(std::move(kv));
      const int n_rec = hp.recurrent_layers_before(seg.end) - hp.recurrent_layers_before(seg.first);
      std::unique_ptr<RecurrentState> st;
      if (n_rec > 0) {
        const DeltaNetParams& d = hp.delta;
        st = std::make_unique<RecurrentState>(
            *seg.backend,
            RecurrentShape{n_rec, d.conv_dim(), d.conv_kernel, d.n_v_heads, d.head_k_dim, d.head_v_dim},
            state_checkpoints_);
      }
      sl.state.push_back(std::move(st));
    }
  }
  for (Segment& seg : segments_) {
    const size_t i = size_t(&seg - segments_.data());
    seg.capturable = !seg.backend->is_host();
    for (const Slot& sl : slots_) seg.capturable = seg.capturable && !sl.kv[i]->on_host();
  }
  // A model-level calibration for the caches that use one (never a request's own tokens).
  bool wants = false;
  for (const Slot& sl : slots_)
    for (const auto& kv : sl.kv) wants = wants || kv->wants_calibration();
  if (wants && opt.calibrate_kv) {
    const std::shared_ptr<const KvCalibration> cal =
        model_kv_calibration(model_, pool_.size(), opt.kv_calibration_dir);
    const int total = hp.kv_layers_before(hp.n_layers);
    for (const Segment& seg : segments_) {
      // A segment without attention layers still has a (one-layer, unused) cache of the right shape.
      const int first = std::min(hp.kv_layers_before(seg.first), total - 1);
      seg_calibration_.push_back(
          slice_calibration(*cal, first, std::max(first + 1, hp.kv_layers_before(seg.end))));
    }
    for (int i = 0; i < n_slots(); ++i) reset(i);
  }
}

Engine::~Engine() = default;

std::unique_ptr<KvCache> Engine::make_cache(const Segment& seg, const KvShape& shape) const {
  if (seg.backend->is_host()) return make_kv_cache(kv_type_, shape);
  if (auto kv = cuda::make_kv_cache(kv_type_, shape, *seg.backend)) return kv;
  // No device kernels for this type yet: the cache stays in host memory and attention for these
  // layers runs on the CPU (correct, slower, and not capturable as a graph).
  return make_device_host_kv(*seg.backend, make_kv_cache(kv_type_, shape));
}

const Engine::Slot& Engine::slot_at(int slot) const {
  if (slot < 0 || slot >= n_slots())
    throw InvalidArgument(fmt::format("slot {} outside [0, {})", slot, n_slots()));
  return slots_[size_t(slot)];
}

Engine::Slot& Engine::slot_at(int slot) {
  return const_cast<Slot&>(static_cast<const Engine*>(this)->slot_at(slot));
}

void Engine::reset(int slot) {
  Slot& s = slot_at(slot);
  s.n_past = 0;
  for (size_t i = 0; i < s.kv.size(); ++i) {
    s.kv[i]->reset();
    if (!seg_calibration_.empty() && s.kv[i]->wants_calibration()) s.kv[i]->calibrate(seg_calibration_[i]);
  }
  for (auto& st : s.state) {
    if (st) st->reset();
  }
}

int Engine::restorable(int slot, int n) const {
  const Slot& s = slot_at(slot);
  if (n < 0 || n > s.n_past) throw InvalidArgument(fmt::format("truncate({}) outside [0, {}]", n, s.n_past));
  int kept = n;
  for (const auto& st : s.state) {
    if (st) kept = std::min(kept, st->restorable(n));
  }
  // A sliding-window ring holds the last ring_size positions (window + 63): going back further than
  // that would leave positions after the trim point reading overwritten rows. A cache that keeps
  // recent rows exact only for a while (TurboQuant's window) may not bring them back either.
  for (const auto& kv : s.kv) {
    if (kept > 0 && (!kv->shape().can_trim(kept, s.n_past) || !kv->trims_exactly(kept))) kept = 0;
  }
  return kept;
}

int Engine::trim(int slot, int n) {
  const int kept = restorable(slot, n);
  Slot& s = slot_at(slot);
  if (kept == 0) {
    reset(slot);
    return 0;
  }
  s.n_past = kept;
  for (auto& kv : s.kv) kv->trim(kept);
  for (auto& st : s.state) {
    if (st) st->trim(kept);
  }
  return kept;
}

void Engine::advance_states(Slot& s, bool checkpoint) {
  for (auto& st : s.state) {
    if (st) st->advance(s.n_past, checkpoint);
  }
}

void Engine::check_tokens(const int32_t* tokens, int n) const {
  const int n_vocab = model_->n_vocab();
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= n_vocab) {
      throw InvalidArgument(
          fmt::format("token id {} at index {} out of range [0, {})", tokens[i], i, n_vocab));
    }
  }
}

const float* Engine::prefill(int slot, const int32_t* tokens, int n, bool all_logits) {
  Slot& s = slot_at(slot);
  if (n <= 0) throw InvalidArgument("eval: no tokens");
  if (size_t(s.n_past) + size_t(n) > size_t(n_ctx_)) {
    throw InvalidArgument(
        fmt::format("context overflow: {} tokens after {} exceed n_ctx {}", n, s.n_past, n_ctx_));
  }
  check_tokens(tokens, n);
  const int n_vocab = model_->n_vocab();
  logits_.resize(all_logits ? size_t(n) * n_vocab : size_t(n_vocab));
  for (int i = 0; i < n; i += n_batch_) {
    const int m = std::min(n_batch_, n - i);
    const bool last = i + m == n;
    // Only rows whose logits are wanted go through the head.
    const int head_first = all_logits ? 0 : (last ? m - 1 : m);
    float* out = all_logits ? logits_.data() + size_t(i) * n_vocab : logits_.data();
    forward(tokens + i, m, slot, s.n_past, nullptr, head_first, out, nullptr);
    s.n_past += m;
    // Checkpoints where a later prompt may branch off: whole chunks (the server reuses those) and the
    // end of a prompt (a chat's next turn starts after it); not after each generated token that
    // `qleap run` evaluates alone (a copy of the whole state per token).
    advance_states(s, n > 1 && (last || s.n_past % n_batch_ == 0));
  }
  return logits_.data();
}

const float* Engine::decode(const int* slots, const int32_t* tokens, int m) {
  if (m <= 0 || m > n_slots())
    throw InvalidArgument(fmt::format("decode: {} rows for {} slots", m, n_slots()));
  check_tokens(tokens, m);
  for (int i = 0; i < m; ++i) {
    const Slot& s = slot_at(slots[i]);
    for (int j = 0; j < i; ++j) {
      if (slots[j] == slots[i]) throw InvalidArgument("decode: a slot appears twice in one step");
    }
    if (s.n_past >= n_ctx_) throw InvalidArgument(fmt::format("context overflow: slot {} is full", slots[i]));
  }
  logits_.resize(size_t(m) * model_->n_vocab());
  {
    // Each row exactly as if it ran alone (see RowExactMatmul).
    const RowExactMatmul exact;
    forward(tokens, m, -1, 0, slots, 0, logits_.data(), nullptr);
  }
  for (int i = 0; i < m; ++i) {
    Slot& s = slots_[size_t(slots[i])];
    s.n_past += 1;
    advance_states(s, false);
  }
  return logits_.data();
}

std::vector<float> Engine::embed(int slot, const std::vector<int32_t>& tokens) {
  const int n = int(tokens.size());
  if (n <= 0) throw InvalidArgument("embed: no tokens");
  if (n > n_ctx_)
    throw InvalidArgument(fmt::format("input of {} tokens exceeds the context of {}", n, n_ctx_));
  check_tokens(tokens.data(), n);
  const int d = model_->hparams().n_embd;
  std::vector<double> sum(static_cast<size_t>(d), 0.0);
  reset(slot);
  Slot& s = slot_at(slot);
  for (int i = 0; i < n; i += n_batch_) {
    const int m = std::min(n_batch_, n - i);
    forward(tokens.data() + i, m, slot, s.n_past, nullptr, m, nullptr, host_xn_.data());
    s.n_past += m;
    advance_states(s, false);
    for (int t = 0; t < m; ++t) {
      const float* row = host_xn_.data() + size_t(t) * d;
      for (int j = 0; j < d; ++j) sum[size_t(j)] += row[j];
    }
  }
  reset(slot);  // the slot's cache now holds the input, not a conversation
  double norm = 0;
  for (double v : sum) norm += (v / n) * (v / n);
  norm = std::sqrt(norm);
  std::vector<float> out(static_cast<size_t>(d));
  for (int j = 0; j < d; ++j) out[size_t(j)] = norm > 0 ? float(sum[size_t(j)] / n / norm) : 0.0f;
  return out;
}

void Engine::forward(const int32_t* tokens, int m, int chunk_slot, int pos0, const int* row_slots,
                     int head_first, float* logits_out, float* final_hidden) {
  const HParams& hp = model_->hparams();
  const ModelWeights& w = model_->weights();
  const int n = hp.n_embd;
  const size_t rows_bytes = size_t(m) * n;
  for (int t = 0; t < m; ++t)
    pos_[size_t(t)] = chunk_slot >= 0 ? pos0 + t : slots_[size_t(row_slots[t])].n_past;

  // Token embeddings are looked up on the host (one row per token), then handed to the first segment.
  Segment& first = segments_.front();
  float* hx = first.backend->is_host() ? first.act.x.get() : host_x_.data();
  for (int t = 0; t < m; ++t) get_row(w.token_embd, tokens[t], hx + size_t(t) * n);
  if (hp.embd_scale > 0) {
    for (size_t i = 0; i < rows_bytes; ++i) hx[i] *= hp.embd_scale;
  }
  if (!first.backend->is_host()) first.backend->upload(first.act.x.get(), hx, rows_bytes);

  const ArchDef& arch = model_->arch_def();
  for (size_t si = 0; si < segments_.size(); ++si) {
    Segment& seg = segments_[si];
    Backend& be = *seg.backend;
    if (si > 0) {
      Segment& prev = segments_[si - 1];
      // The hidden state crosses over through host memory.
      if (prev.backend->is_host()) {
        be.upload(seg.act.x.get(), prev.act.x.get(), rows_bytes);
      } else if (be.is_host()) {
        prev.backend->download(seg.act.x.get(), prev.act.x.get(), rows_bytes);
        prev.backend->sync();
      } else {
        prev.backend->download(host_x_.data(), prev.act.x.get(), rows_bytes);
        prev.backend->sync();
        be.upload(seg.act.x.get(), host_x_.data(), rows_bytes);
      }
    }
    be.set_positions(pos_.data(), m);
    KvCache* chunk_kv = chunk_slot >= 0 ? slots_[size_t(chunk_slot)].kv[si].get() : nullptr;
    RecurrentState* chunk_state = chunk_slot >= 0 ? slots_[size_t(chunk_slot)].state[si].get() : nullptr;
    if (chunk_slot < 0) {
      for (int t = 0; t < m; ++t) {
        const Slot& rs = slots_[size_t(row_slots[t])];
        rows_[size_t(t)] = RowSeq{rs.kv[si].get(), pos_[size_t(t)], rs.state[si].get()};
      }
    }
    const LayerCtx ctx{hp,
                       be,
                       seg.act,
                       pool_,
                       m,
                       chunk_kv,
                       pos0,
                       chunk_slot >= 0 ? nullptr : rows_.data(),
                       seg.first,
                       be.is_host() ? &moe_ : nullptr,
                       moe_observer_,
                       moe_executor_,
                       chunk_state};
    const bool device_head = seg.head && !be.is_host() && head_first < m && logits_out != nullptr;
    auto body = [&] {
      for (int il = seg.first; il < seg.end; ++il) arch.forward_layer(w.layers[size_t(il)], il, ctx);
      if (device_head) {
        const int rows = m - head_first;
        be.rms_norm(seg.act.x.get() + size_t(head_first) * n, w.output_norm, seg.act.xn.get(), rows, n,
                    hp.rms_eps);
        be.matmul(w.output, seg.act.xn.get(), rows, seg.logits.get());
      }
    };
    if (device_head && seg.logits.size() < size_t(m - head_first) * hp.n_vocab) {
      be.drop_captures();  // recordings hold the old logits buffer
      seg.logits = be.alloc_floats(size_t(m - head_first) * hp.n_vocab);
    }
    // A single sequence's decode step on a device whose caches read positions on the device: the same
    // op sequence every token, recorded once per (slot, head) and replayed.
    if (seg.capturable && m == 1 && chunk_slot >= 0) {
      be.run_captured(uint64_t(chunk_slot) * 2 + (device_head ? 1 : 0), body);
    } else {
      body();
    }
    if (device_head) {
      be.download(logits_out, seg.logits.get(), size_t(m - head_first) * hp.n_vocab);
      be.sync();
      softcap_logits(logits_out, size_t(m - head_first) * hp.n_vocab);
      return;
    }
  }

  // The head on the CPU.
  Segment& last = segments_.back();
  const bool want_logits = logits_out != nullptr && head_first < m;
  if (!want_logits && final_hidden == nullptr) return;
  const int r0 = final_hidden ? 0 : head_first;
  const int rows = m - r0;
  const float* x = last.act.x.get() + size_t(r0) * n;
  if (!last.backend->is_host()) {
    last.backend->download(host_x_.data(), x, size_t(rows) * n);
    last.backend->sync();
    x = host_x_.data();
  }
  CpuBackend host(pool_);
  float* xn = final_hidden ? final_hidden : host_xn_.data();
  host.rms_norm(x, w.output_norm, xn, rows, n, hp.rms_eps);
  if (want_logits) {
    host.matmul(w.output, xn + size_t(head_first - r0) * n, m - head_first, logits_out, false);
    softcap_logits(logits_out, size_t(m - head_first) * hp.n_vocab);
  }
}

void Engine::softcap_logits(float* logits, size_t n) const {
  const float cap = model_->hparams().final_softcap;
  if (cap <= 0) return;
  for (size_t i = 0; i < n; ++i) logits[i] = softcap_score(logits[i], cap);
}

void Engine::fill_random_context(int slot, int n, uint64_t seed) {
  if (n < 0 || n >= n_ctx_)
    throw InvalidArgument(fmt::format("fill_random_context({}) outside [0, {})", n, n_ctx_));
  Slot& s = slot_at(slot);
  const HParams& hp = model_->hparams();
  const int kvd = hp.kv_dim();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> offset(static_cast<size_t>(kvd));
  for (auto& x : offset) x = 2.0f * nd(rng);
  const int chunk = std::max(1, n_batch_);
  std::vector<float> k(size_t(chunk) * kvd), v(size_t(chunk) * kvd);
  for (size_t si = 0; si < segments_.size(); ++si) {
    const Segment& seg = segments_[si];
    KvCache& kv = *s.kv[si];
    // Device caches take rows in device memory.
    ActBuffer dk, dv;
    if (!seg.backend->is_host()) {
      dk = seg.backend->alloc_floats(k.size());
      dv = seg.backend->alloc_floats(v.size());
    }
    for (int layer = 0; layer < kv.shape().n_layers; ++layer) {
      // As the attention blocks store (model/blocks.h, store_and_attend): pieces a ring can hold.
      const int piece = std::max(1, std::min(chunk, kv.shape().chunk_tokens(layer)));
      for (int p0 = 0; p0 < n; p0 += piece) {
        const int m = std::min(piece, n - p0);
        for (size_t i = 0; i < size_t(m) * kvd; ++i) {
          k[i] = nd(rng) + offset[i % size_t(kvd)];
          v[i] = nd(rng);
        }
        if (seg.backend->is_host()) {
          kv.store(layer, p0, m, k.data(), v.data());
        } else {
          std::vector<int32_t> pos(static_cast<size_t>(m));
          for (int t = 0; t < m; ++t) pos[size_t(t)] = p0 + t;
          seg.backend->set_positions(pos.data(), m);
          seg.backend->upload(dk.get(), k.data(), size_t(m) * kvd);
          seg.backend->upload(dv.get(), v.data(), size_t(m) * kvd);
          kv.store(layer, KvSpan{p0, m, seg.backend->device_positions()}, dk.get(), dv.get());
          seg.backend->sync();
        }
      }
    }
  }
  s.n_past = n;
  // (A DeltaNet state stays zero: its cost does not depend on the context.) A checkpoint, so that the
  // benchmark's trim back to this depth keeps it.
  advance_states(s, true);
}

KvUsage Engine::kv_usage() const {
  KvUsage u;
  u.type = kv_type_;
  for (const Slot& s : slots_) {
    size_t per_token = 0;
    for (const auto& kv : s.kv) {
      const KvStats st = kv->stats();
      per_token += st.bytes_per_token;
      u.allocated_bytes += st.allocated_bytes;
      if (&s == &slots_.front()) {
        u.bytes_per_token += st.bytes_per_token;
        u.fixed_bytes += st.fixed_bytes;
        u.calibrated = u.calibrated || st.calibrated;
      }
    }
    // DeltaNet states and their checkpoints: fixed per slot, whatever the context.
    for (const auto& rs : s.state) {
      if (!rs) continue;
      u.allocated_bytes += rs->max_bytes();
      if (&s == &slots_.front()) u.fixed_bytes += rs->max_bytes();
    }
    u.used_bytes += size_t(s.n_past) * per_token;
  }
  return u;
}

const KvCache* Engine::host_kv(int slot) const {
  const Slot& s = slot_at(slot);
  for (size_t i = 0; i < segments_.size(); ++i) {
    if (segments_[i].backend->is_host() && segments_[i].end > segments_[i].first) return s.kv[i].get();
  }
  return nullptr;
}

std::string Engine::describe_backends() const {
  std::string out;
  for (const Segment& s : segments_) {
    if (s.end == s.first && !s.head) continue;
    if (!out.empty()) out += ", ";
    out += s.end > s.first ? fmt::format("{}: layers {}-{}", s.backend->name(), s.first, s.end - 1)
                           : fmt::format("{}:", s.backend->name());
    if (s.head) out += " + head";
  }
  return out;
}

}  // namespace qleap
