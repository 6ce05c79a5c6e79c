// What this machine offers to the planner: CPU (model, cores, SIMD level), RAM and its measured
// bandwidth, and accelerators. GPUs are found at run time (dlopen of the NVIDIA driver and NVML),
// never linked, so detection works in every build and costs nothing on a machine without a GPU.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace qleap {

struct GpuInfo {
  std::string vendor;  // "nvidia", "amd", "apple"
  int index = 0;       // device ordinal within its vendor's API
  std::string name;
  uint64_t vram_total = 0;
  uint64_t vram_free = 0;          // 0 when unknown
  int cc_major = 0, cc_minor = 0;  // NVIDIA compute capability
  bool supported = false;          // a backend of this build family can use it
  std::string note;                // why not supported, or how the figures were obtained
};

struct HardwareInfo {
  std::string cpu_model;
  int physical_cores = 1;
  int logical_cpus = 1;
  std::string isa;         // "scalar", "avx2", "avx512"
  uint64_t ram_total = 0;  // bytes usable by this process (cgroup limit applied)
  uint64_t ram_available = 0;
  double mem_bw_gbps = 0;  // read bandwidth for planning; 0 when not measured
  // How mem_bw_gbps was obtained: "measured" (probe now), "remembered" (`qleap tune` on this
  // machine measured more than the probe did now), "" when not measured.
  std::string mem_bw_source;
  double mem_bw_probe_gbps = 0;  // what the probe in this process measured
  bool mem_bw_busy = false;      // the probe saw a busy machine (its figure may be low)
  std::vector<GpuInfo> gpus;
  std::vector<std::string> notes;  // detection problems worth showing

  // The supported GPU with the most free memory, or nullptr.
  const GpuInfo* best_gpu() const;
};

// Fields of /proc/cpuinfo that matter here. physical_cores counts distinct (physical id, core id)
// pairs; it is 0 when the file has no topology lines (some VMs), so the caller falls back to logical.
struct CpuInfoText {
  std::string model_name;
  int logical = 0;
  int physical_cores = 0;
};
CpuInfoText parse_proc_cpuinfo(std::string_view text);

// MemTotal / MemAvailable from /proc/meminfo, in bytes (0 when absent).
struct MemInfoText {
  uint64_t total = 0;
  uint64_t available = 0;
};
MemInfoText parse_proc_meminfo(std::string_view text);

// A cgroup v2 memory.max ("max" or a byte count); 0 means no limit.
uint64_t parse_cgroup_memory_max(std::string_view text);

// PCI vendor file content ("0x1002\n") -> vendor id, or 0.
uint32_t parse_pci_vendor(std::string_view text);

// NVIDIA GPUs through libcuda.so.1 (+ libnvidia-ml.so.1 for free memory); empty when absent.
// note receives a reason when the driver is present but fails.
std::vector<GpuInfo> detect_nvidia_gpus(std::string* note = nullptr);
// AMD GPUs from sysfs (root normally "/"): reported, but unsupported (no ROCm backend).
std::vector<GpuInfo> detect_amd_gpus(const std::string& root = "/");

struct DetectOptions {
  bool measure_bandwidth = true;
  // Use the machine's bandwidth remembered by `qleap tune` when it exceeds the probe's figure.
  bool use_remembered_bandwidth = true;
  bool detect_gpus = true;
};
HardwareInfo detect_hardware(const DetectOptions& opt = {});

nlohmann::json to_json(const HardwareInfo& hw);
HardwareInfo hardware_from_json(const nlohmann::json& j);

}  // namespace qleap
