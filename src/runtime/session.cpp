#include "runtime/session.h"

#include "core/error.h"

namespace qleap {

EngineOptions engine_options(const SessionOptions& o, int n_slots) {
  EngineOptions e;
  e.n_ctx = o.n_ctx;
  e.n_threads = o.n_threads;
  e.kv_type = o.kv_type;
  e.n_batch = o.n_batch;
  e.n_slots = n_slots;
  e.gpu_layers = o.gpu_layers;
  e.kv_calibration_dir = o.kv_calibration_dir;
  e.calibrate_kv = o.calibrate_kv;
  e.repack_experts = o.repack_experts;
  return e;
}

Session::Session(std::shared_ptr<const Model> model, const SessionOptions& opt)
    : engine_(std::move(model), engine_options(opt)) {}

const std::vector<float>& Session::eval(const std::vector<int32_t>& tokens, bool all_logits) {
  engine_.prefill(0, tokens.data(), int(tokens.size()), all_logits);
  return engine_.logits();
}

const KvCache& Session::kv() const {
  const KvCache* kv = engine_.host_kv(0);
  if (kv == nullptr) throw InvalidArgument("every layer is on the GPU: no host KV cache");
  return *kv;
}

}  // namespace qleap
