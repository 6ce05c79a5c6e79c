// Auto-tuning: measure a few candidate settings (short prefill + decode on random tokens) around the
// planner's choice, keep the fastest, and store it per model file and machine in a JSON file
// (~/.qleap/tune.json) that later `run`/`serve` invocations read.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "autoconf/hardware.h"
#include "autoconf/planner.h"
#include "model/model.h"

namespace qleap {

// "size-<bytes>-fnv1a-<16 hex>" over the first MiB (header, metadata, start of the data): cheap and
// changes whenever the file is replaced by another conversion or quantization.
std::string model_identity(const std::string& path);
// CPU model, physical cores and supported GPUs: what the tuned numbers depend on.
std::string machine_identity(const HardwareInfo& hw);

struct TuneKey {
  std::string model_id;
  std::string machine_id;
};

struct TuneSettings {
  int threads = 1;
  int batch = 512;
  std::string kv_type = "f16";
};

struct TuneMeasurement {
  TuneSettings settings;
  double pp_tok_s = 0;
  double tg_tok_s = 0;
  double seconds = 0;  // wall time of the measured workload (prefill n_prompt + decode n_gen)
};

struct TunedEntry {
  TuneSettings settings;
  double pp_tok_s = 0, tg_tok_s = 0;
  TuneMeasurement baseline;  // the planner's default, measured the same way
  std::string model_path;
  std::string tuned_at;  // ISO 8601 UTC
};

// $QLEAP_TUNE_FILE, else ~/.qleap/tune.json.
std::string tune_store_path();
// nullopt when the file or the entry does not exist; a corrupt file is treated as empty.
std::optional<TunedEntry> load_tuned(const std::string& store, const TuneKey& key);
// Replaces the entry for key (others are kept). Throws IoError when the file cannot be written.
void save_tuned(const std::string& store, const TuneKey& key, const TunedEntry& e);

// The machine's memory read bandwidth as `qleap tune` measured it (best of many probes on a machine
// that did not look busy), kept per machine_identity in the same store: a quick probe on a busy
// machine reads low, and the planner's decode ceiling should not follow it.
struct RememberedBandwidth {
  double gbps = 0;
  std::string measured_at;  // ISO 8601 UTC
};
std::optional<RememberedBandwidth> load_machine_bandwidth(const std::string& store,
                                                          const std::string& machine_id);
// Keeps the higher of the stored and the new figure. Throws IoError when the file cannot be written.
void save_machine_bandwidth(const std::string& store, const std::string& machine_id,
                            const RememberedBandwidth& b);

struct TuneOptions {
  int n_prompt = 128;
  int n_gen = 32;
  int reps = 2;              // best of at least this many runs...
  double min_seconds = 0.3;  // ...and at least this long per candidate
  int confirm_rounds = 2;    // alternate default and winner this many times at the end
  std::vector<std::string> kv_types = {"f16", "q8_0"};
  std::vector<int> batches = {64, 128, 256, 512};
  int max_threads = 0;  // 0: physical cores
};

// Thread counts worth trying on `cores` physical cores (all of 1..cores up to 8, else a spread).
std::vector<int> thread_candidates(int cores, int logical);

// Prefill n_prompt random tokens, then decode n_gen, reps times; best of each.
TuneMeasurement measure_settings(const std::shared_ptr<const Model>& model, const TuneSettings& s,
                                 const TuneOptions& o);

// Coordinate search from `start`: threads, then batch, then KV type, each keeping the fastest
// (shortest workload time). progress receives every measurement.
struct TuneResult {
  TuneMeasurement baseline;
  TuneMeasurement best;
  std::vector<TuneMeasurement> all;
  // The winner beat the default again when measured alternately with it (false: no better
  // candidate was found, or the confirmation did not hold and best is the default).
  bool confirmed = false;
};
TuneResult tune(const std::shared_ptr<const Model>& model, const HardwareInfo& hw, const TuneSettings& start,
                const TuneOptions& o, const std::function<void(const TuneMeasurement&)>& progress = {});

}  // namespace qleap
