#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "autoconf/hardware.h"
#include "autoconf/memory_bandwidth.h"
#include "autoconf/readiness.h"
#include "autoconf/tuner.h"
#include "core/thread_pool.h"

namespace qleap {
namespace {

// Two sockets, two cores each, SMT: 8 logical CPUs on 4 physical cores.
constexpr const char* kCpuinfoSmt = R"(processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Test CPU @ 2.00GHz
physical id	: 0
core id		: 0
cpu cores	: 2

processor	: 1
model name	: Intel(R) Xeon(R) Test CPU @ 2.00GHz
physical id	: 0
core id		: 1

processor	: 2
model name	: Intel(R) Xeon(R) Test CPU @ 2.00GHz
physical id	: 0
core id		: 0

processor	: 3
model name	: Intel(R) Xeon(R) Test CPU @ 2.00GHz
physical id	: 0
core id		: 1

processor	: 4
model name	: Intel(R) Xeon(R) Test CPU @ 2.00GHz
physical id	: 1
core id		: 0

processor	: 5
model name	: Intel(R) Xeon(R) Test CPU @ 2.00GHz
physical id	: 1
core id		: 1

processor	: 6
model name	: Intel(R) Xeon(R) Test CPU @ 2.00GHz
physical id	: 1
core id		: 0

processor	: 7
model name	: Intel(R) Xeon(R) Test CPU @ 2.00GHz
physical id	: 1
core id		: 1
)";

TEST(AutoconfHardware, CpuinfoCountsPhysicalCoresAcrossSockets) {
  const CpuInfoText c = parse_proc_cpuinfo(kCpuinfoSmt);
  EXPECT_EQ(c.model_name, "Intel(R) Xeon(R) Test CPU @ 2.00GHz");
  EXPECT_EQ(c.logical, 8);
  EXPECT_EQ(c.physical_cores, 4);
}

TEST(AutoconfHardware, CpuinfoWithoutTopologyReportsZeroPhysical) {
  // Some VMs and non-x86 kernels give no physical id / core id lines.
  const CpuInfoText c =
      parse_proc_cpuinfo("processor : 0\nmodel name : Foo\n\nprocessor : 1\nmodel name : Foo\n");
  EXPECT_EQ(c.logical, 2);
  EXPECT_EQ(c.physical_cores, 0);
  EXPECT_EQ(c.model_name, "Foo");
}

TEST(AutoconfHardware, CpuinfoToleratesGarbage) {
  const CpuInfoText c = parse_proc_cpuinfo("no colon here\ncore id : x\n:\n\n");
  EXPECT_EQ(c.logical, 0);
  EXPECT_EQ(c.physical_cores, 0);
  EXPECT_TRUE(c.model_name.empty());
}

TEST(AutoconfHardware, MeminfoKiloBytesAreKibibytes) {
  const MemInfoText m = parse_proc_meminfo(
      "MemTotal:       16329928 kB\nMemFree:         1000000 kB\nMemAvailable:   12000000 kB\nBuffers: 1 "
      "kB\n");
  EXPECT_EQ(m.total, uint64_t(16329928) * 1024);
  EXPECT_EQ(m.available, uint64_t(12000000) * 1024);
}

TEST(AutoconfHardware, MeminfoMissingFieldsAreZero) {
  const MemInfoText m = parse_proc_meminfo("MemTotal: 2048 kB\n");
  EXPECT_EQ(m.total, 2048u * 1024);
  EXPECT_EQ(m.available, 0u);
  EXPECT_EQ(parse_proc_meminfo("").total, 0u);
}

TEST(AutoconfHardware, CgroupMemoryMax) {
  EXPECT_EQ(parse_cgroup_memory_max("max\n"), 0u);
  EXPECT_EQ(parse_cgroup_memory_max("8589934592\n"), uint64_t(8) << 30);
  EXPECT_EQ(parse_cgroup_memory_max(""), 0u);
}

TEST(AutoconfHardware, PciVendor) {
  EXPECT_EQ(parse_pci_vendor("0x1002\n"), 0x1002u);
  EXPECT_EQ(parse_pci_vendor("0x10de"), 0x10deu);
  EXPECT_EQ(parse_pci_vendor("junk"), 0u);
}

TEST(AutoconfHardware, AmdGpuFromFakeSysfs) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / ("qleap_sysfs_" + std::to_string(::getpid()));
  fs::create_directories(root / "sys/class/drm/card0/device");
  fs::create_directories(root / "sys/class/drm/card1/device");
  fs::create_directories(root / "sys/class/drm/card1-DP-1");
  fs::create_directories(root / "dev");
  std::ofstream(root / "sys/class/drm/card0/device/vendor") << "0x8086\n";  // Intel iGPU: ignored
  std::ofstream(root / "sys/class/drm/card1/device/vendor") << "0x1002\n";
  std::ofstream(root / "sys/class/drm/card1/device/product_name") << "Radeon Test\n";
  std::ofstream(root / "sys/class/drm/card1/device/mem_info_vram_total") << "17163091968\n";
  std::ofstream(root / "sys/class/drm/card1/device/mem_info_vram_used") << "163091968\n";
  std::ofstream(root / "dev/kfd") << "";
  const auto gpus = detect_amd_gpus(root.string());
  fs::remove_all(root);
  ASSERT_EQ(gpus.size(), 1u);
  EXPECT_EQ(gpus[0].vendor, "amd");
  EXPECT_EQ(gpus[0].name, "Radeon Test");
  EXPECT_EQ(gpus[0].vram_total, 17163091968u);
  EXPECT_EQ(gpus[0].vram_free, 17000000000u);
  EXPECT_FALSE(gpus[0].supported);
  EXPECT_NE(gpus[0].note.find("no ROCm backend"), std::string::npos);
  EXPECT_NE(gpus[0].note.find("/dev/kfd"), std::string::npos);
}

TEST(AutoconfHardware, DetectionOnThisMachineIsSane) {
  DetectOptions opt;
  opt.measure_bandwidth = false;
  const HardwareInfo hw = detect_hardware(opt);
  EXPECT_GE(hw.physical_cores, 1);
  EXPECT_GE(hw.logical_cpus, hw.physical_cores);
  EXPECT_GT(hw.ram_total, uint64_t(64) << 20);
  EXPECT_LE(hw.ram_available, hw.ram_total);
  // Without a driver this is empty; with one, every NVIDIA entry has a name and memory.
  for (const auto& g : hw.gpus) {
    EXPECT_FALSE(g.name.empty());
    if (g.vendor == "nvidia") {
      EXPECT_GT(g.vram_total, 0u);
    }
  }
  // JSON round trip keeps what the planner reads.
  const HardwareInfo back = hardware_from_json(to_json(hw));
  EXPECT_EQ(back.cpu_model, hw.cpu_model);
  EXPECT_EQ(back.physical_cores, hw.physical_cores);
  EXPECT_EQ(back.ram_total, hw.ram_total);
  EXPECT_EQ(back.gpus.size(), hw.gpus.size());
}

}  // namespace
}  // namespace qleap

namespace qleap {
namespace {

TEST(AutoconfBandwidth, ProbeReportsBestMedianAndLoad) {
  ThreadPool pool(2);
  const BandwidthResult r = measure_read_bandwidth(pool, size_t(16) << 20, 3);
  EXPECT_EQ(r.probes, 3);
  EXPECT_EQ(r.threads, 2);
  EXPECT_GE(r.buffer_bytes, size_t(16) << 20);
  // Beyond the last-level cache (capped at 1 GiB) so the probe does not measure the cache.
  EXPECT_GE(r.buffer_bytes, std::min(size_t(1) << 30, 2 * last_level_cache_bytes()) - 64);
  EXPECT_GT(r.read_gbps, 0.0);
  EXPECT_LE(r.median_gbps, r.read_gbps);
  EXPECT_GT(r.cpu_share, 0.0);
  EXPECT_LE(r.cpu_share, 1.0);
  EXPECT_EQ(r.busy, !r.note.empty());
}

// A figure remembered by `qleap tune` for this machine wins over a lower probe (a busy machine),
// and the probe's own figure is kept next to it.
TEST(AutoconfBandwidth, RememberedFigureOverridesALowerProbe) {
  const std::string store =
      (std::filesystem::temp_directory_path() / ("qleap_hw_bw_" + std::to_string(::getpid()) + ".json"))
          .string();
  const char* old = std::getenv("QLEAP_TUNE_FILE");
  const std::string saved = old ? old : "";
  setenv("QLEAP_TUNE_FILE", store.c_str(), 1);
  DetectOptions opt;
  opt.detect_gpus = false;
  opt.measure_bandwidth = false;
  const HardwareInfo probe_less = detect_hardware(opt);
  save_machine_bandwidth(store, machine_identity(probe_less),
                         RememberedBandwidth{1e6, "2026-01-01T00:00:00Z"});
  opt.measure_bandwidth = true;
  const HardwareInfo hw = detect_hardware(opt);
  EXPECT_EQ(hw.mem_bw_source, "remembered");
  EXPECT_DOUBLE_EQ(hw.mem_bw_gbps, 1e6);
  EXPECT_GT(hw.mem_bw_probe_gbps, 0.0);
  EXPECT_LT(hw.mem_bw_probe_gbps, 1e6);
  opt.use_remembered_bandwidth = false;
  const HardwareInfo fresh = detect_hardware(opt);
  EXPECT_EQ(fresh.mem_bw_source, "measured");
  EXPECT_DOUBLE_EQ(fresh.mem_bw_gbps, fresh.mem_bw_probe_gbps);
  const HardwareInfo back = hardware_from_json(to_json(hw));
  EXPECT_EQ(back.mem_bw_source, "remembered");
  EXPECT_DOUBLE_EQ(back.mem_bw_probe_gbps, hw.mem_bw_probe_gbps);
  std::filesystem::remove(store);
  if (old) {
    setenv("QLEAP_TUNE_FILE", saved.c_str(), 1);
  } else {
    unsetenv("QLEAP_TUNE_FILE");
  }
}

TEST(AutoconfReadiness, WarnsAboutScalarCpuLowMemoryAndBusyPort) {
  HardwareInfo hw;
  hw.isa = "avx2";
  hw.ram_available = uint64_t(8) << 30;
  ReadinessInput in;
  in.hw = &hw;
  in.default_model_bytes = 100 << 20;
  in.default_kv_bytes = 90 << 20;
  in.serve_addr = "127.0.0.1:11435";
  EXPECT_TRUE(readiness_warnings(in).empty());

  hw.isa = "scalar";
  hw.ram_available = 150 << 20;  // below (100 + 90) MiB x 1.25
  in.port_in_use = true;
  const auto w = readiness_warnings(in);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_NE(w[0].find("no AVX2"), std::string::npos);
  EXPECT_NE(w[1].find("the default model needs about 0.23 GiB"), std::string::npos) << w[1];
  EXPECT_NE(w[2].find("127.0.0.1:11435 is already in use"), std::string::npos);
}

TEST(AutoconfReadiness, DetectsAPortInUse) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof a;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const int port = ntohs(a.sin_port);
  EXPECT_TRUE(tcp_port_in_use("127.0.0.1", port));
  ::close(fd);
  EXPECT_FALSE(tcp_port_in_use("127.0.0.1", port));
  EXPECT_FALSE(tcp_port_in_use("not-an-address", port));
}

}  // namespace
}  // namespace qleap
