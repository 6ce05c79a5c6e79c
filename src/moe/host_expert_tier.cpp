#include "moe/host_expert_tier.h"

#include <fmt/format.h>

#include <cstring>

#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "core/error.h"

namespace qleap {

HostExpertTier::HostExpertTier(const ExpertSet& set, int slots_per_layer)
    : set_(set), slots_(slots_per_layer) {
  if (slots_ < 0 || slots_ > set.n_expert)
    throw InvalidArgument(fmt::format("host expert tier: {} slots for {} experts", slots_, set.n_expert));
  slot_.resize(size_t(set.n_moe()) * size_t(slots_));
  for (auto& s : slot_) {
    s = std::make_unique<Slot>();
    s->bytes.resize(set.expert_bytes);
    if (set.biases) s->bias.resize(2 * size_t(set.n_ff) + size_t(set.n_embd));
  }
  copy_thread_ = std::thread([this] { copy_main(); });
  compute_thread_ = std::thread([this] { compute_main(); });
}

HostExpertTier::~HostExpertTier() {
  {
    std::lock_guard<std::mutex> a(km_);  // the order upload() takes them in
    std::lock_guard<std::mutex> b(cm_);
    stop_ = true;
    hold_ = false;
  }
  ccv_.notify_all();
  kcv_.notify_all();
  copy_thread_.join();
  compute_thread_.join();
}

HostExpertTier::Slot& HostExpertTier::slot(int layer, int s) {
  if (layer < 0 || layer >= set_.n_moe() || s < 0 || s >= slots_)
    throw InvalidArgument(fmt::format("host expert tier: layer {} slot {} out of range", layer, s));
  return *slot_[size_t(layer) * size_t(slots_) + size_t(s)];
}
const HostExpertTier::Slot& HostExpertTier::slot(int layer, int s) const {
  return const_cast<HostExpertTier*>(this)->slot(layer, s);
}

void HostExpertTier::upload(int layer, int expert, int s) {
  Slot& sl = slot(layer, s);
  if (expert < 0 || expert >= set_.n_expert)
    throw InvalidArgument(fmt::format("host expert tier: expert {} out of range", expert));
  std::lock_guard<std::mutex> k(km_);
  if (compute_pending_ > 0)
    throw InvalidArgument("host expert tier: upload while computes are queued (sync first)");
  sl.requested = ++next_ticket_;
  {
    std::lock_guard<std::mutex> c(cm_);
    copies_.push_back(Upload{layer, expert, s, sl.requested});
  }
  ccv_.notify_one();
}

bool HostExpertTier::ready(int layer, int s) const {
  const Slot& sl = slot(layer, s);
  return sl.requested != 0 && sl.done.load(std::memory_order_acquire) == sl.requested;
}

void HostExpertTier::wait_uploads() {
  std::unique_lock<std::mutex> l(cm_);
  if (hold_ && !copies_.empty())
    throw InvalidArgument("host expert tier: wait_uploads while uploads are held");
  cdone_.wait(l, [&] { return copies_.empty() && !copy_busy_; });
}

void HostExpertTier::hold_uploads(bool hold) {
  {
    std::lock_guard<std::mutex> l(cm_);
    hold_ = hold;
  }
  ccv_.notify_all();
}

void HostExpertTier::copy_main() {
  std::unique_lock<std::mutex> l(cm_);
  for (;;) {
    ccv_.wait(l, [&] { return stop_ || (!hold_ && !copies_.empty()); });
    if (stop_) return;
    const Upload u = copies_.front();
    copies_.pop_front();
    copy_busy_ = true;
    l.unlock();
    // The slot's views are rewritten only here, and computes never read a slot whose latest
    // upload is pending (ExpertFlow checks ready()), so no lock is needed around the copy.
    Slot& sl = *slot_[size_t(u.layer) * size_t(slots_) + size_t(u.slot)];
    const MoeWeights& w = *set_.layers[size_t(u.layer)];
    size_t off = 0;
    WeightView* dst[3] = {&sl.gate, &sl.up, &sl.down};
    const WeightView* src[3] = {&w.gate[size_t(u.expert)], &w.up[size_t(u.expert)],
                                &w.down[size_t(u.expert)]};
    for (int i = 0; i < 3; ++i) {
      const size_t nb = src[i]->row_bytes * size_t(src[i]->rows);
      std::memcpy(sl.bytes.data() + off, src[i]->data, nb);
      *dst[i] = *src[i];
      dst[i]->data = sl.bytes.data() + off;
      off += nb;
    }
    // The biases travel with the expert, as they would to a device.
    const int nf = int(src[0]->rows), n = set_.n_embd;
    const float* b[3] = {expert_gate_bias(w, u.expert, nf), expert_up_bias(w, u.expert, nf),
                         expert_down_bias(w, u.expert, n)};
    const float** db[3] = {&sl.gate_b, &sl.up_b, &sl.down_b};
    size_t boff = 0;
    for (int i = 0; i < 3; ++i) {
      const size_t len = size_t(i == 2 ? n : nf);
      *db[i] = nullptr;
      if (b[i] == nullptr) continue;
      std::memcpy(sl.bias.data() + boff, b[i], len * sizeof(float));
      *db[i] = sl.bias.data() + boff;
      boff += len;
      off += len * sizeof(float);
    }
    bytes_.fetch_add(off);
    n_uploads_.fetch_add(1);
    sl.done.store(u.ticket, std::memory_order_release);
    l.lock();
    copy_busy_ = false;
    if (copies_.empty()) cdone_.notify_all();
  }
}

void HostExpertTier::compute(int layer, int s, const float* x, int rows, float* y) {
  if (!ready(layer, s))
    throw InvalidArgument(
        fmt::format("host expert tier: compute on layer {} slot {} before its upload", layer, s));
  {
    std::lock_guard<std::mutex> l(km_);
    computes_.push_back(Compute{layer, s, x, rows, y});
    ++compute_pending_;
  }
  kcv_.notify_one();
}

void HostExpertTier::sync() {
  std::unique_lock<std::mutex> l(km_);
  kdone_.wait(l, [&] { return compute_pending_ == 0; });
}

void HostExpertTier::compute_main() {
  ThreadPool solo(1);
  std::unique_lock<std::mutex> l(km_);
  for (;;) {
    kcv_.wait(l, [&] { return stop_ || !computes_.empty(); });
    if (stop_) return;
    const Compute c = computes_.front();
    computes_.pop_front();
    l.unlock();
    const Slot& sl = *slot_[size_t(c.layer) * size_t(slots_) + size_t(c.slot)];
    const int nf = int(sl.gate.rows);
    g_.resize(size_t(c.rows) * nf);
    u_.resize(size_t(c.rows) * nf);
    // The same kernels and row grouping as the CPU path: bit-identical results.
    matmul(sl.gate, c.x, c.rows, g_.data(), solo);
    matmul(sl.up, c.x, c.rows, u_.data(), solo);
    expert_glu(set_.act, sl.gate_b, sl.up_b, g_.data(), u_.data(), nf, c.rows);
    matmul(sl.down, g_.data(), c.rows, c.y, solo);
    add_rows_bias(c.y, sl.down_b, set_.n_embd, c.rows);
    l.lock();
    if (--compute_pending_ == 0) kdone_.notify_all();
  }
}

}  // namespace qleap
