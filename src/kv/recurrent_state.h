// The per-sequence state of the DeltaNet (linear attention) layers of hybrid models: what they carry
// from token to token instead of a KV cache (the causal conv's last inputs and the delta-rule matrix of
// every value head, DeltaStateRef in backend/backend.h). It lives next to a slot's KV caches, one per
// segment of layers, in the memory of that segment's backend, with the same lifecycle:
//   advance(n)      the state now holds n tokens (after a prefill chunk or a decode step), optionally
//                   keeping a checkpoint of it;
//   reset()         a new sequence (zero state, no checkpoints);
//   restorable(n)   the longest prefix <= n it can return to: unlike a KV cache, whose positions can be
//                   cut anywhere, a recurrent state summarizes every token it saw and cannot forget the
//                   last ones; it can only go back to a checkpoint (or to 0, or stay where it is);
//   trim(n)         return there (n from restorable()), dropping the checkpoints after it.
// Checkpoints are host copies, at most max_checkpoints, the newest kept.
#pragma once
#include <cstddef>
#include <deque>
#include <vector>

#include "backend/backend.h"

namespace qleap {

struct RecurrentShape {
  int n_layers = 0;  // DeltaNet layers held
  int conv_dim = 0, conv_kernel = 0;
  int n_v_heads = 0, head_k_dim = 0, head_v_dim = 0;
  size_t conv_floats() const { return size_t(conv_kernel - 1) * size_t(conv_dim); }
  size_t ssm_floats() const { return size_t(n_v_heads) * size_t(head_k_dim) * size_t(head_v_dim); }
  size_t layer_floats() const { return conv_floats() + ssm_floats(); }
  size_t floats() const { return layer_floats() * size_t(n_layers); }
};

class RecurrentState {
 public:
  // Throws InvalidArgument on a bad shape.
  RecurrentState(Backend& be, const RecurrentShape& shape, int max_checkpoints);
  RecurrentState(const RecurrentState&) = delete;
  RecurrentState& operator=(const RecurrentState&) = delete;

  const RecurrentShape& shape() const { return shape_; }
  DeltaStateRef layer(int i) const;
  int n_past() const { return n_past_; }

  void reset();
  void advance(int n_past, bool checkpoint);
  int restorable(int n) const;
  void trim(int n);  // throws InvalidArgument when n is not restorable

  int n_checkpoints() const { return int(checkpoints_.size()); }
  size_t state_bytes() const { return shape_.floats() * sizeof(float); }
  // The state plus the checkpoints it may hold.
  size_t max_bytes() const { return state_bytes() * size_t(1 + max_checkpoints_); }

 private:
  struct Checkpoint {
    int n_past = 0;
    std::vector<float> data;
  };
  Backend& be_;
  RecurrentShape shape_;
  int max_checkpoints_ = 0;
  ActBuffer buf_;
  int n_past_ = 0;
  std::deque<Checkpoint> checkpoints_;  // increasing n_past
};

}  // namespace qleap
