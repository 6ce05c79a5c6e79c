// The one driver: a batch of sequences (slots) over one shared, read-only Model, logits out. The CLI is
// a one-slot batch (runtime/session.h); the server's inference loop uses several slots.
//
// Layers are placed in segments of consecutive layers, each on one backend (backend/backend.h): the
// CPU, and with --gpu-layers the CUDA device for the last layers (and the output head when it holds
// them all). The forward of every architecture is the same ops sequence on either; the hidden state
// crosses from one segment to the next. Each slot has one KV cache per segment, on that segment's
// device, of the requested type.
//
// Row results do not depend on which other rows share a step (every per-row operation is row-local
// and decode steps use the row-exact matmul, backend/cpu/matmul.h), so greedy output is the same
// whether a request runs alone or next to others.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "kv/recurrent_state.h"
#include "model/blocks.h"
#include "model/model.h"
#include "placement/placement.h"

namespace qleap {

struct EngineOptions {
  int n_ctx = 0;      // positions per slot; 0: default_context(n_ctx_train)
  int n_threads = 0;  // 0: default_thread_count()
  std::string kv_type = "f16";
  int n_batch = 512;   // prefill chunk (tokens per matmul)
  int n_slots = 1;     // sequences held at once
  int gpu_layers = 0;  // the last N layers on the CUDA device (like llama.cpp -ngl); < 0: all
  // MoE: repack the routed experts of the CPU layers too (when they take at most half of the RAM:
  // Model::experts_fit_host_memory). False where an ExpertFlow executor will run them from its own
  // GGUF-layout copies.
  bool repack_experts = true;
  // Hybrid models: how many checkpoints of each slot's DeltaNet state to keep (the newest), taken at
  // multiples of n_batch and at the end of each prefill: the prefixes trim() can return to.
  int state_checkpoints = 2;
  // Makes the cache of a slot's CPU segment instead of kv_type (calibration recorders, tests).
  std::function<std::unique_ptr<KvCache>(const KvShape&)> make_host_kv = nullptr;
  // Caches that want a calibration (TurboQuant) get the model's (runtime/kv_calibrate.h), kept in this
  // folder between runs when not empty.
  std::string kv_calibration_dir = "";
  // false: no calibration pass even when a cache would use one (sizing probes such as `qleap info`).
  bool calibrate_kv = true;
  // Makes the backend of the offloaded layers instead of the CUDA device (tests run the device path of
  // the driver on a simulated device).
  std::function<std::unique_ptr<Backend>()> make_device_backend = nullptr;
};

struct KvUsage {
  std::string type;
  size_t bytes_per_token = 0;  // one slot, every segment
  size_t allocated_bytes = 0;  // every slot
  size_t fixed_bytes = 0;      // one slot
  size_t used_bytes = 0;       // positions held, every slot
  bool calibrated = false;
};

class Engine {
 public:
  // Throws InvalidArgument on bad options, Unsupported when a layer cannot run where it is placed.
  Engine(std::shared_ptr<const Model> model, const EngineOptions& opt);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  int n_slots() const { return int(slots_.size()); }
  int n_ctx() const { return n_ctx_; }
  int n_batch() const { return n_batch_; }
  int n_vocab() const { return model_->n_vocab(); }
  int n_past(int slot) const { return slot_at(slot).n_past; }

  // Lifecycle of a slot: reset() starts a new sequence (the caches forget it and are calibrated
  // again); trim(n) keeps the first n tokens (0 <= n <= n_past), or fewer: a hybrid model's DeltaNet
  // state can only go back to one of its checkpoints (or to 0), and a sliding-window layer's ring may
  // no longer hold what positions after n would read (then 0, a reset). Returns the tokens kept; the
  // caller evaluates the rest of its prompt from there.
  void reset(int slot);
  int trim(int slot, int n);
  // What trim(slot, n) would keep, without changing anything.
  int restorable(int slot, int n) const;

  // Evaluates tokens at the slot's n_past.. (chunks of n_batch) and returns the logits of the last
  // token (n_vocab floats), or of every token (n x n_vocab) when all_logits. The pointer stays valid
  // until the next call. Throws InvalidArgument on overflow, bad ids or no tokens.
  const float* prefill(int slot, const int32_t* tokens, int n, bool all_logits = false);
  // One token for each of m distinct slots in one pass; returns m x n_vocab logits (row i for
  // slots[i]).
  const float* decode(const int* slots, const int32_t* tokens, int m);
  // Runs tokens through a slot from position 0 (the slot is reset) and returns the mean over tokens of
  // the final hidden states (after the output norm), L2-normalised: n_embd floats.
  std::vector<float> embed(int slot, const std::vector<int32_t>& tokens);
  // Benchmarks only: makes the first n positions of a slot hold random keys and values (N(0, 1) plus a
  // fixed per-channel offset, like real keys) in every layer, as if n tokens had been evaluated.
  void fill_random_context(int slot, int n, uint64_t seed);

  // The last logits prefill() or decode() returned, as a vector (rows x n_vocab).
  const std::vector<float>& logits() const { return logits_; }

  KvUsage kv_usage() const;
  const std::string& kv_type() const { return kv_type_; }
  // The cache of a slot's CPU segment (the first; null when every layer is on a device).
  const KvCache* host_kv(int slot) const;
  const Placement& placement() const { return placement_; }
  const Model& model() const { return *model_; }
  ThreadPool& pool() { return pool_; }
  std::string describe_backends() const;  // "cpu: layers 0-21, cuda:0: layers 22-29 + head"

  // Routing decisions of MoE layers go to o (nullptr: none); routed experts of MoE layers run through
  // e (ExpertFlow; nullptr: the plain CPU loop). Both must outlive later calls.
  void set_moe_observer(MoeObserver* o) { moe_observer_ = o; }
  void set_moe_executor(MoeExecutor* e) { moe_executor_ = e; }

 private:
  struct Segment {
    std::unique_ptr<Backend> backend;
    int first = 0, end = 0;  // layers [first, end)
    bool head = false;       // the output head runs here
    Activations act;
    bool capturable = false;  // every cache on it is device-native (graph replays are safe)
    ActBuffer logits;         // device logits (head on a device)
  };
  struct Slot {
    std::vector<std::unique_ptr<KvCache>> kv;            // per segment
    std::vector<std::unique_ptr<RecurrentState>> state;  // per segment; null without DeltaNet layers
    int n_past = 0;
  };

  const Slot& slot_at(int slot) const;
  Slot& slot_at(int slot);
  void check_tokens(const int32_t* tokens, int n) const;
  // After a slot's sequence grew to n_past: the DeltaNet states follow (checkpoint: keep a copy).
  void advance_states(Slot& s, bool checkpoint);
  std::unique_ptr<KvCache> make_cache(const Segment& seg, const KvShape& shape) const;
  // m tokens through every layer; the rows are the positions of one slot from pos0 (chunk_slot >= 0)
  // or one token of each of the slots in row_slots. Writes the logits of rows [head_first, m) to
  // logits_out (n_vocab floats each) unless head_first >= m; mean_out (embed): the normalized final
  // hidden states of all m rows.
  void forward(const int32_t* tokens, int m, int chunk_slot, int pos0, const int* row_slots, int head_first,
               float* logits_out, float* final_hidden);
  void run_head(Segment& seg, const float* x, int rows, float* logits_out);
  void softcap_logits(float* logits, size_t n) const;  // HParams::final_softcap

  std::shared_ptr<const Model> model_;
  int n_ctx_ = 0;
  int n_batch_ = 0;
  int state_checkpoints_ = 0;
  std::string kv_type_;
  ThreadPool pool_;
  Placement placement_;
  RopeTable rope_;
  RopeTable rope_swa_;  // sliding-window layers' table (HParams::has_rope_swa)
  std::vector<Segment> segments_;
  std::vector<Slot> slots_;
  std::vector<KvCalibration> seg_calibration_;  // per segment; empty: no cache wants one
  MoeScratch moe_;
  std::vector<float> host_x_;  // n_batch x n_embd: embeddings and hand-overs between devices
  std::vector<float> host_xn_;
  std::vector<int32_t> pos_;
  std::vector<RowSeq> rows_;
  std::vector<float> logits_;
  MoeObserver* moe_observer_ = nullptr;
  MoeExecutor* moe_executor_ = nullptr;
};

}  // namespace qleap
