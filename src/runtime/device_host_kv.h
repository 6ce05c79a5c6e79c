// A host KV cache serving layers that run on a device, for cache types the device has no kernels for
// (TurboQuant, q8_0, q4_0 on CUDA today): store() and attend() copy their rows to host memory, run the
// host cache there, and copy the attention output back. Correct for every type, at the cost of a
// device round trip per layer and step, and never recorded into a graph (the Engine checks on_host()).
#pragma once
#include <memory>

#include "backend/backend.h"
#include "kv/kv_cache.h"

namespace qleap {

std::unique_ptr<KvCache> make_device_host_kv(Backend& device, std::unique_ptr<KvCache> host);

}  // namespace qleap
