#include "kv/recurrent_state.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"

namespace qleap {

RecurrentState::RecurrentState(Backend& be, const RecurrentShape& shape, int max_checkpoints)
    : be_(be), shape_(shape), max_checkpoints_(max_checkpoints) {
  if (shape.n_layers <= 0 || shape.conv_dim <= 0 || shape.conv_kernel <= 0 || shape.n_v_heads <= 0 ||
      shape.head_k_dim <= 0 || shape.head_v_dim <= 0 || max_checkpoints < 0)
    throw InvalidArgument(fmt::format(
        "recurrent state: bad shape (layers {}, conv {} x {}, heads {}, dims {}/{}, checkpoints {})",
        shape.n_layers, shape.conv_dim, shape.conv_kernel, shape.n_v_heads, shape.head_k_dim,
        shape.head_v_dim, max_checkpoints));
  buf_ = be_.alloc_floats(shape_.floats());  // zero-filled
}

DeltaStateRef RecurrentState::layer(int i) const {
  if (i < 0 || i >= shape_.n_layers)
    throw InvalidArgument(fmt::format("recurrent state: layer {} outside [0, {})", i, shape_.n_layers));
  float* base = buf_.get() + size_t(i) * shape_.layer_floats();
  return DeltaStateRef{base, base + shape_.conv_floats()};
}

void RecurrentState::reset() {
  n_past_ = 0;
  checkpoints_.clear();
  if (be_.is_host()) {
    std::fill(buf_.get(), buf_.get() + shape_.floats(), 0.0f);
  } else {
    const std::vector<float> zeros(shape_.floats(), 0.0f);
    be_.upload(buf_.get(), zeros.data(), zeros.size());
    be_.sync();
  }
}

void RecurrentState::advance(int n_past, bool checkpoint) {
  if (n_past < n_past_)
    throw InvalidArgument(fmt::format("recurrent state: advance to {} from {}", n_past, n_past_));
  n_past_ = n_past;
  if (!checkpoint || max_checkpoints_ == 0 || n_past == 0) return;
  Checkpoint cp;
  if (!checkpoints_.empty() && checkpoints_.back().n_past == n_past) {
    cp = std::move(checkpoints_.back());
    checkpoints_.pop_back();
  } else if (int(checkpoints_.size()) == max_checkpoints_) {
    cp = std::move(checkpoints_.front());  // reuse the oldest one's memory
    checkpoints_.pop_front();
  }
  cp.n_past = n_past;
  cp.data.resize(shape_.floats());
  be_.download(cp.data.data(), buf_.get(), cp.data.size());
  be_.sync();
  checkpoints_.push_back(std::move(cp));
}

int RecurrentState::restorable(int n) const {
  if (n >= n_past_) return n_past_;
  for (auto it = checkpoints_.rbegin(); it != checkpoints_.rend(); ++it) {
    if (it->n_past <= n) return it->n_past;
  }
  return 0;
}

void RecurrentState::trim(int n) {
  if (n == n_past_) return;
  if (n == 0) return reset();
  while (!checkpoints_.empty() && checkpoints_.back().n_past > n) checkpoints_.pop_back();
  if (checkpoints_.empty() || checkpoints_.back().n_past != n)
    throw InvalidArgument(fmt::format("recurrent state: no checkpoint at {} (holds {} tokens)", n, n_past_));
  const std::vector<float>& d = checkpoints_.back().data;
  be_.upload(buf_.get(), d.data(), d.size());
  be_.sync();
  n_past_ = n;
}

}  // namespace qleap
