// The model-level KV calibration that TurboQuant caches use (KvCalibration, kv/kv_cache.h): one forward
// pass on the CPU over a fixed text, with float caches that sum each layer's keys, values and
// queries. It belongs to the model, not to a request: every slot's cache gets the same one, again
// whenever the slot starts a new sequence, however short the first prompt is.
#pragma once
#include <memory>
#include <string>

#include "kv/kv_cache.h"
#include "model/model.h"

namespace qleap {

// Computed once per process and model, and kept as JSON in cache_dir (when not empty) under the
// identity of the model file (path, size, modification time) and the calibration version, so a later
// run loads it instead of running the pass again.
std::shared_ptr<const KvCalibration> model_kv_calibration(const std::shared_ptr<const Model>& model,
                                                          int n_threads, const std::string& cache_dir);

// The calibration of layers [first, end) as a calibration of a cache holding just those layers.
KvCalibration slice_calibration(const KvCalibration& c, int first, int end);

// The calibration text (English prose, dialogue, code, numbers and lists; written for this purpose).
const std::string& kv_calibration_text();

// Where `run`, `serve` and the other commands keep calibrations: $QLEAP_KV_CALIB_DIR, else
// ~/.qleap/kvcalib ("" without a home directory: no disk cache).
std::string default_kv_calibration_dir();

}  // namespace qleap
