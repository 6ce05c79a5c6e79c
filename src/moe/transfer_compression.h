// Does compressing expert weights pay for a host -> GPU transfer? Measures the ratio and the
// single-thread decompression speed that zstd and LZ4 (LZ77 family) reach on quantized weight bytes.
// Available codecs depend on the build (QLEAP_HAVE_ZSTD / QLEAP_HAVE_LZ4).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace qleap {

struct CompressionResult {
  std::string codec;  // "zstd-1", "zstd-3", "zstd-9", "lz4", "lz4hc-9"
  size_t in_bytes = 0, out_bytes = 0;
  double compress_mbps = 0;    // single thread, MB/s of input
  double decompress_gbps = 0;  // single thread, GB/s of output
  double ratio() const { return out_bytes ? double(in_bytes) / double(out_bytes) : 0.0; }
};

// Compresses data in independent chunks of chunk_bytes (one expert's slice is the natural unit)
// with every available codec; decompresses and checks the round trip (throws on mismatch).
std::vector<CompressionResult> measure_compression(const uint8_t* data, size_t n, size_t chunk_bytes);
std::vector<std::string> available_codecs();

}  // namespace qleap
