#include "moe/transfer_compression.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/timer.h"

#ifdef QLEAP_HAVE_ZSTD
#include <zstd.h>
#endif
#ifdef QLEAP_HAVE_LZ4
#include <lz4.h>
#include <lz4hc.h>
#endif

namespace qleap {
namespace {

struct Codec {
  std::string name;
  size_t (*bound)(size_t);
  size_t (*compress)(const uint8_t*, size_t, uint8_t*, size_t, int);
  size_t (*decompress)(const uint8_t*, size_t, uint8_t*, size_t);
  int level;
};

#ifdef QLEAP_HAVE_ZSTD
size_t zstd_bound(size_t n) {
  return ZSTD_compressBound(n);
}
size_t zstd_compress(const uint8_t* s, size_t n, uint8_t* d, size_t cap, int level) {
  const size_t r = ZSTD_compress(d, cap, s, n, level);
  if (ZSTD_isError(r)) throw IoError(fmt::format("zstd: {}", ZSTD_getErrorName(r)));
  return r;
}
size_t zstd_decompress(const uint8_t* s, size_t n, uint8_t* d, size_t cap) {
  const size_t r = ZSTD_decompress(d, cap, s, n);
  if (ZSTD_isError(r)) throw IoError(fmt::format("zstd: {}", ZSTD_getErrorName(r)));
  return r;
}
#endif
#ifdef QLEAP_HAVE_LZ4
size_t lz4_bound(size_t n) {
  return size_t(LZ4_compressBound(int(n)));
}
size_t lz4_compress(const uint8_t* s, size_t n, uint8_t* d, size_t cap, int level) {
  const int r = level > 0 ? LZ4_compress_HC(reinterpret_cast<const char*>(s), reinterpret_cast<char*>(d),
                                            int(n), int(cap), level)
                          : LZ4_compress_default(reinterpret_cast<const char*>(s), reinterpret_cast<char*>(d),
                                                 int(n), int(cap));
  if (r <= 0) throw IoError("lz4 compression failed");
  return size_t(r);
}
size_t lz4_decompress(const uint8_t* s, size_t n, uint8_t* d, size_t cap) {
  const int r =
      LZ4_decompress_safe(reinterpret_cast<const char*>(s), reinterpret_cast<char*>(d), int(n), int(cap));
  if (r < 0) throw IoError("lz4 decompression failed");
  return size_t(r);
}
#endif

std::vector<Codec> codecs() {
  std::vector<Codec> c;
#ifdef QLEAP_HAVE_ZSTD
  for (int level : {1, 3, 9})
    c.push_back({fmt::format("zstd-{}", level), zstd_bound, zstd_compress, zstd_decompress, level});
#endif
#ifdef QLEAP_HAVE_LZ4
  c.push_back({"lz4", lz4_bound, lz4_compress, lz4_decompress, 0});
  c.push_back({"lz4hc-9", lz4_bound, lz4_compress, lz4_decompress, 9});
#endif
  return c;
}

}  // namespace

std::vector<std::string> available_codecs() {
  std::vector<std::string> out;
  for (const Codec& c : codecs()) out.push_back(c.name);
  return out;
}

std::vector<CompressionResult> measure_compression(const uint8_t* data, size_t n, size_t chunk_bytes) {
  if (chunk_bytes == 0 || n == 0) throw InvalidArgument("measure_compression: empty input");
  std::vector<CompressionResult> out;
  for (const Codec& c : codecs()) {
    CompressionResult r;
    r.codec = c.name;
    r.in_bytes = n;
    std::vector<std::vector<uint8_t>> packed;
    Stopwatch sw;
    for (size_t off = 0; off < n; off += chunk_bytes) {
      const size_t len = std::min(chunk_bytes, n - off);
      std::vector<uint8_t> buf(c.bound(len));
      buf.resize(c.compress(data + off, len, buf.data(), buf.size(), c.level));
      r.out_bytes += buf.size();
      packed.push_back(std::move(buf));
    }
    r.compress_mbps = double(n) / 1e6 / sw.elapsed();
    std::vector<uint8_t> plain(chunk_bytes);
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {  // best of 3: the machine is shared
      Stopwatch d;
      size_t off = 0;
      for (const auto& p : packed) {
        const size_t len = std::min(chunk_bytes, n - off);
        if (c.decompress(p.data(), p.size(), plain.data(), len) != len ||
            (rep == 0 && std::memcmp(plain.data(), data + off, len) != 0)) {
          throw IoError(fmt::format("{}: round trip mismatch", c.name));
        }
        off += len;
      }
      best = std::min(best, d.elapsed());
    }
    r.decompress_gbps = double(n) / 1e9 / best;
    out.push_back(r);
  }
  return out;
}

}  // namespace qleap
