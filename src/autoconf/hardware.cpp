#include "autoconf/hardware.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "autoconf/memory_bandwidth.h"
#include "autoconf/tuner.h"
#include "core/cpu_features.h"
#include "core/thread_pool.h"

namespace qleap {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// Splits "key<spaces>: value" lines; returns false for lines without a colon.
bool split_field(std::string_view line, std::string_view& key, std::string_view& value) {
  const size_t p = line.find(':');
  if (p == std::string_view::npos) return false;
  key = trim(line.substr(0, p));
  value = trim(line.substr(p + 1));
  return true;
}

template <class T>
bool to_number(std::string_view s, T& out, int base = 10) {
  const auto r = std::from_chars(s.data(), s.data() + s.size(), out, base);
  return r.ec == std::errc() && r.ptr != s.data();
}

template <class F>
void for_each_line(std::string_view text, F&& f) {
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    f(text.substr(0, nl));
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

CpuInfoText parse_proc_cpuinfo(std::string_view text) {
  CpuInfoText r;
  std::set<std::pair<long, long>> cores;
  long phys = 0;
  bool have_core_id = false;
  for_each_line(text, [&](std::string_view line) {
    std::string_view k, v;
    if (!split_field(line, k, v)) return;
    if (k == "processor") {
      ++r.logical;
      phys = 0;  // a block without "physical id" belongs to package 0
    } else if (k == "model name" && r.model_name.empty()) {
      r.model_name = std::string(v);
    } else if (k == "physical id") {
      to_number(v, phys);
    } else if (k == "core id") {
      long c = 0;
      if (to_number(v, c)) {
        cores.insert({phys, c});
        have_core_id = true;
      }
    }
  });
  r.physical_cores = have_core_id ? int(cores.size()) : 0;
  return r;
}

MemInfoText parse_proc_meminfo(std::string_view text) {
  MemInfoText r;
  for_each_line(text, [&](std::string_view line) {
    std::string_view k, v;
    if (!split_field(line, k, v)) return;
    uint64_t* dst = k == "MemTotal" ? &r.total : k == "MemAvailable" ? &r.available : nullptr;
    if (!dst) return;
    uint64_t n = 0;
    if (!to_number(v, n)) return;
    // Values are in kB (the kernel's "kB" means KiB) unless no unit is given.
    *dst = v.find("kB") != std::string_view::npos ? n * 1024 : n;
  });
  return r;
}

uint64_t parse_cgroup_memory_max(std::string_view text) {
  text = trim(text);
  uint64_t n = 0;
  if (text == "max" || !to_number(text, n)) return 0;
  return n;
}

uint32_t parse_pci_vendor(std::string_view text) {
  text = trim(text);
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) text.remove_prefix(2);
  uint32_t v = 0;
  return to_number(text, v, 16) ? v : 0;
}

// ---- NVIDIA, through the driver API and NVML, both loaded at run time --------------------------

namespace {

// The few driver API and NVML entry points used here, declared with their documented C ABI.
using CuResult = int;
using CuDevice = int;
using CuContext = void*;
using FnCuInit = CuResult (*)(unsigned);
using FnCuDeviceGetCount = CuResult (*)(int*);
using FnCuDeviceGet = CuResult (*)(CuDevice*, int);
using FnCuDeviceGetName = CuResult (*)(char*, int, CuDevice);
using FnCuDeviceTotalMem = CuResult (*)(size_t*, CuDevice);
using FnCuDeviceGetAttribute = CuResult (*)(int*, int, CuDevice);
using FnCuDeviceGetPciBusId = CuResult (*)(char*, int, CuDevice);
using FnCuCtxCreate = CuResult (*)(CuContext*, unsigned, CuDevice);
using FnCuCtxDestroy = CuResult (*)(CuContext);
using FnCuMemGetInfo = CuResult (*)(size_t*, size_t*);
constexpr int kCuAttrCcMajor = 75;  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
constexpr int kCuAttrCcMinor = 76;  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR

struct NvmlMemory {
  unsigned long long total, free, used;
};
using NvmlDevice = void*;
using FnNvmlInit = int (*)();
using FnNvmlShutdown = int (*)();
using FnNvmlByBusId = int (*)(const char*, NvmlDevice*);
using FnNvmlMemInfo = int (*)(NvmlDevice, NvmlMemory*);

template <class F>
F sym(void* lib, const char* name) {
  return reinterpret_cast<F>(dlsym(lib, name));
}

// Free memory per PCI bus id from NVML, which (unlike cuMemGetInfo) needs no CUDA context.
bool nvml_free_memory(const std::vector<std::string>& bus_ids, std::vector<uint64_t>& free_bytes) {
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return false;
  auto init = sym<FnNvmlInit>(lib, "nvmlInit_v2");
  auto shutdown = sym<FnNvmlShutdown>(lib, "nvmlShutdown");
  auto by_bus = sym<FnNvmlByBusId>(lib, "nvmlDeviceGetHandleByPciBusId_v2");
  auto mem = sym<FnNvmlMemInfo>(lib, "nvmlDeviceGetMemoryInfo");
  bool ok = false;
  if (init && shutdown && by_bus && mem && init() == 0) {
    ok = true;
    free_bytes.assign(bus_ids.size(), 0);
    for (size_t i = 0; i < bus_ids.size(); ++i) {
      NvmlDevice d = nullptr;
      NvmlMemory m{};
      if (by_bus(bus_ids[i].c_str(), &d) == 0 && mem(d, &m) == 0) {
        free_bytes[i] = m.free;
      } else {
        ok = false;
      }
    }
    shutdown();
  }
  dlclose(lib);
  return ok;
}

}  // namespace

std::vector<GpuInfo> detect_nvidia_gpus(std::string* note) {
  std::vector<GpuInfo> out;
  // The driver library stays loaded: unloading libcuda after cuInit is not supported by NVIDIA.
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return out;
  auto cu_init = sym<FnCuInit>(lib, "cuInit");
  auto get_count = sym<FnCuDeviceGetCount>(lib, "cuDeviceGetCount");
  auto get = sym<FnCuDeviceGet>(lib, "cuDeviceGet");
  auto get_name = sym<FnCuDeviceGetName>(lib, "cuDeviceGetName");
  auto total_mem = sym<FnCuDeviceTotalMem>(lib, "cuDeviceTotalMem_v2");
  auto get_attr = sym<FnCuDeviceGetAttribute>(lib, "cuDeviceGetAttribute");
  auto bus_id = sym<FnCuDeviceGetPciBusId>(lib, "cuDeviceGetPCIBusId");
  auto ctx_create = sym<FnCuCtxCreate>(lib, "cuCtxCreate_v2");
  auto ctx_destroy = sym<FnCuCtxDestroy>(lib, "cuCtxDestroy_v2");
  auto mem_info = sym<FnCuMemGetInfo>(lib, "cuMemGetInfo_v2");
  if (!cu_init || !get_count || !get || !get_name || !total_mem || !get_attr) {
    if (note) *note = "libcuda.so.1 found but lacks the expected driver API symbols";
    return out;
  }
  if (const CuResult r = cu_init(0); r != 0) {
    if (note)
      *note =
          "libcuda.so.1 found but cuInit failed (error " + std::to_string(r) + "; no usable NVIDIA device)";
    return out;
  }
  int n = 0;
  if (get_count(&n) != 0) return out;
  std::vector<std::string> bus_ids;
  for (int i = 0; i < n; ++i) {
    CuDevice dev = 0;
    if (get(&dev, i) != 0) continue;
    GpuInfo g;
    g.vendor = "nvidia";
    g.index = i;
    char name[256] = {};
    if (get_name(name, sizeof(name) - 1, dev) == 0) g.name = name;
    size_t total = 0;
    if (total_mem(&total, dev) == 0) g.vram_total = total;
    get_attr(&g.cc_major, kCuAttrCcMajor, dev);
    get_attr(&g.cc_minor, kCuAttrCcMinor, dev);
    char bus[64] = {};
    if (bus_id && bus_id(bus, sizeof(bus) - 1, dev) == 0)
      bus_ids.push_back(bus);
    else
      bus_ids.push_back("");
    // The CUDA backend is built for sm_80 and newer.
    g.supported = g.cc_major >= 8;
    if (!g.supported) g.note = "compute capability below 8.0: not targeted by the CUDA backend";
    out.push_back(std::move(g));
  }
  std::vector<uint64_t> free_bytes;
  if (nvml_free_memory(bus_ids, free_bytes)) {
    for (size_t i = 0; i < out.size(); ++i) out[i].vram_free = free_bytes[i];
  } else if (ctx_create && ctx_destroy && mem_info) {
    // Without NVML a short-lived context answers the question (costs a few hundred ms per GPU).
    for (auto& g : out) {
      CuDevice dev = 0;
      CuContext ctx = nullptr;
      if (get(&dev, g.index) != 0 || ctx_create(&ctx, 0, dev) != 0) continue;
      size_t fr = 0, tot = 0;
      if (mem_info(&fr, &tot) == 0) g.vram_free = fr;
      ctx_destroy(ctx);
      g.note += g.note.empty() ? "free memory from cuMemGetInfo" : "; free memory from cuMemGetInfo";
    }
  }
  return out;
}

std::vector<GpuInfo> detect_amd_gpus(const std::string& root) {
  namespace fs = std::filesystem;
  std::vector<GpuInfo> out;
  const fs::path drm = fs::path(root) / "sys/class/drm";
  std::error_code ec;
  if (!fs::is_directory(drm, ec)) return out;
  std::vector<fs::path> cards;
  for (const auto& e : fs::directory_iterator(drm, ec)) {
    const std::string n = e.path().filename().string();
    // "card0", not the connector entries such as "card0-DP-1".
    if (n.rfind("card", 0) == 0 && n.find('-') == std::string::npos) cards.push_back(e.path());
  }
  std::sort(cards.begin(), cards.end());
  const bool kfd = fs::exists(fs::path(root) / "dev/kfd", ec);
  for (const auto& c : cards) {
    if (parse_pci_vendor(read_text((c / "device/vendor").string())) != 0x1002) continue;
    GpuInfo g;
    g.vendor = "amd";
    g.index = int(out.size());
    g.name = std::string(trim(read_text((c / "device/product_name").string())));
    if (g.name.empty()) g.name = "AMD GPU (" + c.filename().string() + ")";
    uint64_t total = 0, used = 0;
    if (to_number(trim(read_text((c / "device/mem_info_vram_total").string())), total)) g.vram_total = total;
    if (total && to_number(trim(read_text((c / "device/mem_info_vram_used").string())), used)) {
      g.vram_free = total > used ? total - used : 0;
    }
    g.supported = false;
    g.note = std::string("detected, unsupported (no ROCm backend)") + (kfd ? "; /dev/kfd present" : "");
    out.push_back(std::move(g));
  }
  return out;
}

const GpuInfo* HardwareInfo::best_gpu() const {
  const GpuInfo* best = nullptr;
  for (const auto& g : gpus) {
    if (!g.supported) continue;
    const uint64_t mem = g.vram_free ? g.vram_free : g.vram_total;
    const uint64_t best_mem = best ? (best->vram_free ? best->vram_free : best->vram_total) : 0;
    if (!best || mem > best_mem) best = &g;
  }
  return best;
}

HardwareInfo detect_hardware(const DetectOptions& opt) {
  HardwareInfo hw;
  const CpuInfoText cpu = parse_proc_cpuinfo(read_text("/proc/cpuinfo"));
  hw.cpu_model = cpu.model_name.empty() ? cpu_model_name() : cpu.model_name;
  hw.logical_cpus = std::max(1, cpu.logical);
  // default_thread_count() applies the affinity mask as well as the core topology.
  hw.physical_cores = default_thread_count();
  hw.isa = isa_name(isa_level());

  const MemInfoText mem = parse_proc_meminfo(read_text("/proc/meminfo"));
  hw.ram_total = mem.total;
  hw.ram_available = mem.available ? mem.available : mem.total;
  // A container's memory limit is what this process can really use.
  if (const uint64_t limit = parse_cgroup_memory_max(read_text("/sys/fs/cgroup/memory.max")); limit) {
    uint64_t used = 0;
    to_number(trim(read_text("/sys/fs/cgroup/memory.current")), used);
    if (limit < hw.ram_total) {
      hw.ram_total = limit;
      hw.notes.push_back("RAM limited by cgroup memory.max");
    }
    hw.ram_available = std::min(hw.ram_available, limit > used ? limit - used : 0);
  }

  if (opt.measure_bandwidth) {
    ThreadPool pool(hw.physical_cores);
    // Several short probes, the best kept: one slow pass (another process's burst) does not count.
    const BandwidthResult bw = measure_read_bandwidth(pool, size_t(128) << 20, 5);
    hw.mem_bw_gbps = hw.mem_bw_probe_gbps = bw.read_gbps;
    hw.mem_bw_source = "measured";
    hw.mem_bw_busy = bw.busy;
    if (bw.busy) hw.notes.push_back("memory bandwidth probe: the machine looked busy (" + bw.note + ")");
  }

  if (opt.detect_gpus) {
    std::string note;
    auto nv = detect_nvidia_gpus(&note);
    if (!note.empty()) hw.notes.push_back(note);
    hw.gpus.insert(hw.gpus.end(), nv.begin(), nv.end());
    auto amd = detect_amd_gpus("/");
    hw.gpus.insert(hw.gpus.end(), amd.begin(), amd.end());
#if defined(__APPLE__)
    GpuInfo g;
    g.vendor = "apple";
    g.name = "Apple GPU (Metal)";
    g.note = "detected, unsupported (no Metal backend)";
    hw.gpus.push_back(g);
#endif
  }
  if (opt.measure_bandwidth && opt.use_remembered_bandwidth) {
    const auto r = load_machine_bandwidth(tune_store_path(), machine_identity(hw));
    if (r && r->gbps > hw.mem_bw_gbps) {
      hw.notes.push_back(
          fmt::format("memory bandwidth: {:.1f} GB/s remembered for this machine by `qleap tune` ({}); the "
                      "probe now read "
                      "{:.1f} GB/s",
                      r->gbps, r->measured_at, hw.mem_bw_probe_gbps));
      hw.mem_bw_gbps = r->gbps;
      hw.mem_bw_source = "remembered";
    }
  }
  return hw;
}

nlohmann::json to_json(const HardwareInfo& hw) {
  nlohmann::json j;
  j["cpu"] = {{"model", hw.cpu_model},
              {"physical_cores", hw.physical_cores},
              {"logical_cpus", hw.logical_cpus},
              {"isa", hw.isa}};
  j["ram"] = {{"total_bytes", hw.ram_total}, {"available_bytes", hw.ram_available}};
  j["mem_bw_gbps"] = hw.mem_bw_gbps;
  j["mem_bw_source"] = hw.mem_bw_source;
  j["mem_bw_probe_gbps"] = hw.mem_bw_probe_gbps;
  j["mem_bw_busy"] = hw.mem_bw_busy;
  j["gpus"] = nlohmann::json::array();
  for (const auto& g : hw.gpus) {
    nlohmann::json gj = {{"vendor", g.vendor},
                         {"index", g.index},
                         {"name", g.name},
                         {"vram_total_bytes", g.vram_total},
                         {"vram_free_bytes", g.vram_free},
                         {"supported", g.supported},
                         {"note", g.note}};
    if (g.vendor == "nvidia")
      gj["compute_capability"] = std::to_string(g.cc_major) + "." + std::to_string(g.cc_minor);
    j["gpus"].push_back(gj);
  }
  j["notes"] = hw.notes;
  return j;
}

HardwareInfo hardware_from_json(const nlohmann::json& j) {
  HardwareInfo hw;
  const auto& c = j.at("cpu");
  hw.cpu_model = c.value("model", "");
  hw.physical_cores = c.value("physical_cores", 1);
  hw.logical_cpus = c.value("logical_cpus", hw.physical_cores);
  hw.isa = c.value("isa", "scalar");
  hw.ram_total = j.at("ram").value("total_bytes", uint64_t(0));
  hw.ram_available = j.at("ram").value("available_bytes", hw.ram_total);
  hw.mem_bw_gbps = j.value("mem_bw_gbps", 0.0);
  hw.mem_bw_source = j.value("mem_bw_source", "");
  hw.mem_bw_probe_gbps = j.value("mem_bw_probe_gbps", hw.mem_bw_gbps);
  hw.mem_bw_busy = j.value("mem_bw_busy", false);
  for (const auto& gj : j.value("gpus", nlohmann::json::array())) {
    GpuInfo g;
    g.vendor = gj.value("vendor", "");
    g.index = gj.value("index", 0);
    g.name = gj.value("name", "");
    g.vram_total = gj.value("vram_total_bytes", uint64_t(0));
    g.vram_free = gj.value("vram_free_bytes", uint64_t(0));
    g.supported = gj.value("supported", false);
    g.note = gj.value("note", "");
    const std::string cc = gj.value("compute_capability", "");
    if (const size_t dot = cc.find('.'); dot != std::string::npos) {
      to_number(std::string_view(cc).substr(0, dot), g.cc_major);
      to_number(std::string_view(cc).substr(dot + 1), g.cc_minor);
    }
    hw.gpus.push_back(g);
  }
  return hw;
}

}  // namespace qleap
