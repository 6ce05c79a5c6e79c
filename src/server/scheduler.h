// Which models are loaded: loads on demand, unloads least-recently-used idle models beyond
// max_loaded or the memory budget, and unloads idle models whose keep_alive has expired.
#pragma once
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "server/metrics.h"
#include "server/model_store.h"
#include "server/runner.h"

namespace qleap::server {

struct SchedulerOptions {
  RunnerOptions runner;
  int max_loaded = 3;
  uint64_t mem_budget = 0;          // bytes; 0: 3/4 of physical memory
  double default_keep_alive = 300;  // seconds; < 0 forever
};

class Scheduler;

// Holds a model loaded while a request uses it; on destruction the keep_alive clock starts.
class Lease {
 public:
  Lease(Scheduler* s, std::shared_ptr<ModelRunner> r) : sched_(s), runner_(std::move(r)) {}
  ~Lease();
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ModelRunner& operator*() const { return *runner_; }
  ModelRunner* operator->() const { return runner_.get(); }
  const std::shared_ptr<ModelRunner>& runner() const { return runner_; }
  // keep_alive from the request: nullopt = server default, 0 = unload when idle, < 0 = forever.
  std::optional<double> keep_alive;

 private:
  Scheduler* sched_;
  std::shared_ptr<ModelRunner> runner_;
};

class Scheduler {
 public:
  Scheduler(ModelStore& store, const SchedulerOptions& opt, Metrics& metrics);
  ~Scheduler();

  // The loaded runner for a model, loading it when needed. Throws ModelNotFound (unknown name)
  // or the load error.
  std::unique_ptr<Lease> acquire(const std::string& name);
  // Unloads a model now if no request uses it, else once the last one ends. False when not loaded.
  bool unload(const std::string& name);
  // Forgets a model (after delete): unloads it.
  std::vector<std::shared_ptr<ModelRunner>> loaded() const;
  Metrics& metrics() { return metrics_; }
  const SchedulerOptions& options() const { return opt_; }
  static uint64_t runner_bytes(const ModelRunner& r);

 private:
  friend class Lease;
  void release(ModelRunner& r, std::optional<double> keep_alive);
  void reaper();
  // Picks idle models to drop so that `need` more bytes fit; called with mu_ held.
  void evict_for(uint64_t need, std::vector<std::shared_ptr<ModelRunner>>& dropped);

  ModelStore& store_;
  SchedulerOptions opt_;
  Metrics& metrics_;
  mutable std::mutex mu_;
  std::mutex load_mu_;  // one load at a time
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<ModelRunner>> loaded_;
  bool stop_ = false;
  std::thread reaper_;
};

uint64_t physical_memory_bytes();
uint64_t process_rss_bytes();

}  // namespace qleap::server
