// ExpertTier with its slots in RAM: uploads are memcpys done by a copy thread from a queue, and
// computes run on a compute thread with the CPU matmul kernels on the slot's copy of the weights.
// Both threads stand in for a GPU's copy and compute streams, so that ExpertFlow's orchestration
// (asynchronous promotion, never waiting on a copy, hits and misses computed at the same time)
// really runs, and is tested, on a CPU-only machine.
//
// It is a test vehicle, not an accelerator: hits are computed on the same CPU cores as the misses
// and every upload costs memory bandwidth, so it is never faster than the plain CPU path.
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "moe/expert_tier.h"

namespace qleap {

class HostExpertTier : public ExpertTier {
 public:
  HostExpertTier(const ExpertSet& set, int slots_per_layer);
  ~HostExpertTier() override;

  std::string name() const override { return "host"; }
  int slots_per_layer() const override { return slots_; }
  void upload(int layer, int expert, int slot) override;
  bool ready(int layer, int slot) const override;
  void wait_uploads() override;
  void compute(int layer, int slot, const float* x, int rows, float* y) override;
  void sync() override;
  uint64_t bytes_uploaded() const override { return bytes_.load(); }
  int64_t uploads_done() const override { return n_uploads_.load(); }

  // Tests: while held, queued uploads do not start (they stay "in flight"), as if the copy engine
  // were slow; release lets them run.
  void hold_uploads(bool hold);

 private:
  struct Slot {
    std::vector<uint8_t> bytes;  // gate, up, down rows back to back (GGUF layout)
    WeightView gate, up, down;   // views into bytes for the expert last uploaded
    std::vector<float> bias;     // its gate, up and down biases back to back (ExpertSet::biases)
    const float *gate_b = nullptr, *up_b = nullptr, *down_b = nullptr;  // into bias, or null
    uint64_t requested = 0;         // ticket of the latest upload issued (issuing thread only)
    std::atomic<uint64_t> done{0};  // ticket of the latest upload landed
  };
  struct Upload {
    int layer, expert, slot;
    uint64_t ticket;
  };
  struct Compute {
    int layer, slot;
    const float* x;
    int rows;
    float* y;
  };
  Slot& slot(int layer, int s);
  const Slot& slot(int layer, int s) const;
  void copy_main();
  void compute_main();

  ExpertSet set_;
  int slots_;
  std::vector<std::unique_ptr<Slot>> slot_;  // layer * slots_ + s
  uint64_t next_ticket_ = 0;
  std::atomic<uint64_t> bytes_{0};
  std::atomic<int64_t> n_uploads_{0};

  std::mutex cm_;  // copy queue
  std::condition_variable ccv_, cdone_;
  std::deque<Upload> copies_;
  bool copy_busy_ = false, hold_ = false;

  std::mutex km_;  // compute queue
  std::condition_variable kcv_, kdone_;
  std::deque<Compute> computes_;
  int compute_pending_ = 0;  // queued + running
  std::vector<float> g_, u_;

  bool stop_ = false;
  std::thread copy_thread_, compute_thread_;
};

}  // namespace qleap
