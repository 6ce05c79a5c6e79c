// The "fast tier" of ExpertFlow (moe/expert_flow.h): memory that holds copies of some experts in
// slots (GPU memory, in the real deployment), a copy engine that fills slots asynchronously, and
// compute that runs an expert's FFN on the slot's copy (ExpertSet::act and the expert's biases: what
// model/moe_block.cpp computes for the same expert). ExpertFlow drives it; the policy of
// what to hold is ExpertCache's.
//
// Two implementations:
//   HostExpertTier (moe/host_expert_tier.h): slots in RAM, a copy thread and a compute thread. It
//     exists to run and test the orchestration on machines without a GPU; it is never faster than
//     the plain CPU path (it computes on the same CPU, and copying costs RAM bandwidth).
//   The CUDA tier (moe/cuda_expert_tier.cu, make_cuda_expert_tier): slots in device memory, uploads
//     on a copy stream, compute on a compute stream.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/moe_block.h"

namespace qleap {

// The experts the tier may hold: MoE layer li is model layer moe_layers[li].
struct ExpertSet {
  std::vector<int> moe_layers;
  std::vector<const MoeWeights*> layers;
  int n_expert = 0;
  int n_embd = 0;
  int n_ff = 0;             // largest expert FFN width
  size_t expert_bytes = 0;  // largest expert's gate + up + down bytes (GGUF layout) + its biases
  ExpertActivation act;     // every MoE layer's experts compute this (moe_block.h)
  bool biases = false;      // the experts have gate / up / down biases (gpt-oss): slots hold them too
  int n_moe() const { return int(moe_layers.size()); }
};
// Throws InvalidArgument when the model has no MoE layers.
ExpertSet expert_set_of(const Model& model);

class ExpertTier {
 public:
  virtual ~ExpertTier() = default;
  virtual std::string name() const = 0;
  virtual int slots_per_layer() const = 0;

  // Starts copying expert `expert` of MoE layer `layer` into `slot` and returns at once. From this
  // call until the copy has landed, ready(layer, slot) is false. Copies land in issue order. The
  // slot must have no compute queued since the last sync().
  virtual void upload(int layer, int expert, int slot) = 0;
  // Whether the latest upload into the slot has completed (false for a slot never filled).
  virtual bool ready(int layer, int slot) const = 0;
  // Blocks until every upload issued so far has landed.
  virtual void wait_uploads() = 0;

  // Queues y (rows x n_embd) = down(act(gate x + gate_b, up x + up_b)) + down_b with the weights
  // (and biases) of the expert in the slot, which must be ready; act is ExpertSet::act. x and y must stay
  // valid and untouched until sync().
  virtual void compute(int layer, int slot, const float* x, int rows, float* y) = 0;
  // Blocks until every queued compute has finished and its y is written.
  virtual void sync() = 0;

  // Bytes copied into slots by uploads that have completed, and their number.
  virtual uint64_t bytes_uploaded() const = 0;
  virtual int64_t uploads_done() const = 0;
};

// kind "host" or "cuda"; max_rows bounds the rows of all computes between two syncs (n_batch * k).
// Throws InvalidArgument for an unknown kind, Unsupported when "cuda" has no backend or device.
std::unique_ptr<ExpertTier> make_expert_tier(const std::string& kind, const ExpertSet& set,
                                             int slots_per_layer, int max_rows);
// The CUDA tier (max_rows: rows computed between two syncs). Throws Unsupported without a device, a
// CUDA build, or a kernel for the experts' format.
std::unique_ptr<ExpertTier> make_cuda_expert_tier(const ExpertSet& set, int slots_per_layer, int max_rows);

}  // namespace qleap
