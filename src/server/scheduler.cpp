#include "server/scheduler.h"

#include <unistd.h>

#include <fstream>

namespace qleap::server {

uint64_t physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 0;
}

uint64_t process_rss_bytes() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, rss = 0;
  f >> size >> rss;
  return rss * uint64_t(sysconf(_SC_PAGESIZE));
}

Lease::~Lease() {
  if (sched_ && runner_) sched_->release(*runner_, keep_alive);
}

Scheduler::Scheduler(ModelStore& store, const SchedulerOptions& opt, Metrics& metrics)
    : store_(store), opt_(opt), metrics_(metrics) {
  if (opt_.mem_budget == 0) opt_.mem_budget = physical_memory_bytes() / 4 * 3;
  reaper_ = std::thread([this] { reaper(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  reaper_.join();
  std::map<std::string, std::shared_ptr<ModelRunner>> all;
  {
    std::lock_guard<std::mutex> lk(mu_);
    all.swap(loaded_);
  }
}

uint64_t Scheduler::runner_bytes(const ModelRunner& r) {
  return r.info().size + r.status().kv_bytes_allocated;
}

void Scheduler::evict_for(uint64_t need, std::vector<std::shared_ptr<ModelRunner>>& dropped) {
  for (;;) {
    uint64_t used = 0;
    for (const auto& [n, r] : loaded_) used += runner_bytes(*r);
    const bool too_many = int(loaded_.size()) >= std::max(1, opt_.max_loaded);
    if (!too_many && used + need <= opt_.mem_budget) return;
    // Least recently used model that no request holds. Its runner may still be counting a job that
    // just finished (the HTTP side hands the lease back before the runner thread frees the slot):
    // nobody waits for such a job, so it does not keep the model loaded.
    auto victim = loaded_.end();
    for (auto it = loaded_.begin(); it != loaded_.end(); ++it) {
      if (it->second->leases > 0) continue;
      if (victim == loaded_.end() || it->second->last_used < victim->second->last_used) victim = it;
    }
    if (victim == loaded_.end()) return;  // everything is busy: go over budget rather than fail
    dropped.push_back(victim->second);
    loaded_.erase(victim);
    ++metrics_.model_unloads_total;
  }
}

std::unique_ptr<Lease> Scheduler::acquire(const std::string& name) {
  const ModelInfo info = store_.get(name);  // ModelNotFound
  std::vector<std::shared_ptr<ModelRunner>> dropped;
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = loaded_.find(info.name);
    if (it != loaded_.end() && it->second->info().path == info.path &&
        it->second->info().modified_unix == info.modified_unix) {
      ++it->second->leases;
      it->second->unload_when_idle = false;
      it->second->last_used = std::chrono::steady_clock::now();
      return std::make_unique<Lease>(this, it->second);
    }
  }
  std::lock_guard<std::mutex> load_lk(load_mu_);
  {
    // Another request may have loaded it while we waited.
    std::lock_guard<std::mutex> lk(mu_);
    auto it = loaded_.find(info.name);
    if (it != loaded_.end()) {
      if (it->second->info().modified_unix == info.modified_unix) {
        ++it->second->leases;
        it->second->unload_when_idle = false;
        it->second->last_used = std::chrono::steady_clock::now();
        return std::make_unique<Lease>(this, it->second);
      }
      dropped.push_back(it->second);  // the file changed: reload
      loaded_.erase(it);
    }
    evict_for(info.size, dropped);
  }
  dropped.clear();  // unload (joins their threads) before loading the new one
  auto r = std::make_shared<ModelRunner>(info, opt_.runner, metrics_);
  ++metrics_.model_loads_total;
  std::lock_guard<std::mutex> lk(mu_);
  r->leases = 1;
  loaded_[info.name] = r;
  return std::make_unique<Lease>(this, r);
}

void Scheduler::release(ModelRunner& r, std::optional<double> keep_alive) {
  std::lock_guard<std::mutex> lk(mu_);
  --r.leases;
  r.last_used = std::chrono::steady_clock::now();
  const double ka = keep_alive.value_or(opt_.default_keep_alive);
  if (ka < 0) {
    r.expires_at = std::chrono::system_clock::time_point::max();
  } else {
    r.expires_at =
        std::chrono::system_clock::now() +
        std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::duration<double>(ka));
  }
  r.unload_when_idle = ka == 0;
  cv_.notify_all();
}

bool Scheduler::unload(const std::string& name) {
  std::shared_ptr<ModelRunner> drop;
  {
    std::lock_guard<std::mutex> lk(mu_);
    ModelInfo info;
    try {
      info = store_.get(name);
    } catch (const ModelNotFound&) {
      info.name = name;
    }
    auto it = loaded_.find(info.name);
    if (it == loaded_.end()) return false;
    if (it->second->leases > 0 || it->second->busy() > 0) {
      it->second->unload_when_idle = true;
      it->second->expires_at = std::chrono::system_clock::now();
      return true;
    }
    drop = it->second;
    loaded_.erase(it);
    ++metrics_.model_unloads_total;
  }
  return true;
}

std::vector<std::shared_ptr<ModelRunner>> Scheduler::loaded() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<std::shared_ptr<ModelRunner>> out;
  for (const auto& [n, r] : loaded_) out.push_back(r);
  return out;
}

void Scheduler::reaper() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    cv_.wait_for(lk, std::chrono::milliseconds(250));
    std::vector<std::shared_ptr<ModelRunner>> drop;
    const auto now = std::chrono::system_clock::now();
    for (auto it = loaded_.begin(); it != loaded_.end();) {
      ModelRunner& r = *it->second;
      if (r.leases == 0 && r.busy() == 0 && (r.unload_when_idle || r.expires_at <= now)) {
        drop.push_back(it->second);
        it = loaded_.erase(it);
        ++metrics_.model_unloads_total;
      } else {
        ++it;
      }
    }
    if (!drop.empty()) {
      lk.unlock();
      drop.clear();
      lk.lock();
    }
  }
}

}  // namespace qleap::server
