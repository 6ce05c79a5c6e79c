#include "backend/cpu/packed_weights.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <thread>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "core/cpu_features.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/block_common.h"
#include "quant/block_iq4_nl.h"
#include "quant/block_iq4_xs.h"
#include "quant/block_mxfp4.h"
#include "quant/block_nvfp4.h"
#include "quant/block_q2_k.h"
#include "quant/block_q3_k.h"
#include "quant/block_q4_0.h"
#include "quant/block_q4_1.h"
#include "quant/block_q4_k.h"
#include "quant/block_q5_0.h"
#include "quant/block_q5_1.h"
#include "quant/block_q5_k.h"
#include "quant/block_q6_k.h"
#include "quant/block_q8_0.h"

namespace qleap {

// Layouts per super-block of one 16-row group ("vector" = 64 bytes: 4 bytes of each of the 16
// rows, row n at bytes 4n .. 4n + 3; fp16 values stay fp16), scales | quants:
//   Q4_0 (32 values): d[16] | 4 vectors: vector j holds qs[4j .. 4j+3] of every row (low
//                     nibbles: values 4j.., high nibbles: values 16 + 4j..)          32 | 256 bytes
//   Q4_1:             d[16] m[16] | 4 vectors as Q4_0                                64 | 256
//   Q5_0 (32 values): d[16] | 1 vector of fifth bits, then the 4 nibble vectors of Q4_0: byte
//                     4n + i of the bit vector holds in bit j the fifth bit of the value that
//                     unpacked vector j (0-3: low nibbles, 4-7: high) has in byte 4n + i, i.e.
//                     bit 4j + i of the block's qh (one shift by 4 - j and an AND put it at
//                     0x10 in every byte: no per-byte expansion of a bit mask) 32 | 320
//   Q5_1:             d[16] m[16] | as Q5_0                                          64 | 320
//   Q8_0:             d[16] | 8 vectors: vector g holds qs[4g .. 4g+3] (signed)      32 | 512
//   Q4_K (256):       d[16] dmin[16] sc[8][16] mn[8][16] (6-bit scales as bytes,
//                     [sub-block][row]) | 4 pairs x 8 vectors: pair c vector v holds
//                     qs[32c + 4v ..] (low nibbles: sub-block 2c, high: 2c + 1)     320 | 2048
//   Q5_K:             as Q4_K | first 4 pairs x 8 vectors x 2 64-bit masks, bit 4n + i = 5th
//                     bit of value 4v + i of row n in sub-block 2c (mask 0) or 2c + 1
//                     (mask 1), then the nibbles as Q4_K                             320 | 2560
//     (AVX2 level:    PackedMatrix::fifth_planes) the masks' 512 bytes hold 4 pairs x 2 vectors of
//                     bit planes instead: byte 4n + i of pair c's vector k holds in bit v the fifth
//                     bit of the value that nibble vector v of pair c has in byte 4n + i for
//                     sub-block 2c + k (as Q5_0: a shift by 4 - v and an AND put it at 0x10, where
//                     a mask costs a shuffle, a compare and two more ops per 32 bytes on AVX2)
//   Q6_K (256):       d[16] sc[16][16] (int8, [sub-block][row]) | 2 halves x 8 x 3 vectors: in
//                     half h, triple v, vector c (c = 0, 1, 2) holds for values 128h + 32c + 4v ..
//                     + 3 their 6-bit quants (low 6 bits) and bits 2c, 2c + 1 of the quants of
//                     values 128h + 96 + 4v .. + 3 (top 2 bits)                         288 | 3072
//   Q2_K (256):       d[16] dmin[16] sm[16][16] (GGUF's byte per sub-block, scale | min << 4,
//                     [sub-block][row]) | 16 vectors: vector v holds qs[4v .. 4v + 3] (the GGUF
//                     order: bits 2k of byte 32hh + 16vq + 4i + c are value 128hh + 32k + 16vq + 4i
//                     + c, so vector 8hh + 4vq + i unpacks to the 4 vectors of sub-blocks
//                     8hh + 2k + vq)                                                  320 | 1024
//   Q3_K (256):       d[16] sc[16][16] (int8, as Q6_K) | per (hh, vq) two triples of vectors a, b, c
//                     of 3-bit fields u = q + 4 (0..7): triple p, byte 4n + c holds u(k, ii) of value
//                     128hh + 32k + 16vq + 4(2p + ii) + c of row n as a = u(0,0) | u(1,0) << 3 |
//                     bit 2 of u(2,1) << 6 | bit 2 of u(3,1) << 7, b = u(2,0) | u(3,0) << 3 | low
//                     bits of u(3,1) << 6, c = u(0,1) | u(1,1) << 3 | low bits of u(2,1) << 6
//                     (19 operations unpack 8 vectors, where low bits and a bit plane took 40)
//                                                                                    288 | 1536
//   IQ4_XS (256):     d[16] sc[8][16] (ls - 32 as int8, [sub-block][row]) | 8 sub-blocks x
//                     4 vectors: sub-block ib vector j holds qs[16ib + 4j ..] (low nibbles:
//                     values 4j .., high: 16 + 4j .., codes into the IQ4_NL codebook)  160 | 2048
//   IQ4_NL (32):      d[16] | 4 vectors as Q4_0 (codes into the IQ4_NL codebook)     32 | 256
//   MXFP4 (32):       e[16] (the E8M0 exponent bytes) | 4 vectors as Q4_0 (E2M1 codes) 16 | 256
//   NVFP4 (64):       sc[4][16] (UE4M3 bytes, [group][row]) | 4 groups x 2 vectors: group s vector
//                     j holds qs[8s + 4j ..] (low nibbles: values 16s + 4j .., high: 16s + 8 + 4j ..)
//                                                                                   64 | 512
namespace {

constexpr int kR = kPackRows;

size_t s_bytes_of(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0:
      return 32;
    case GgmlType::Q4_1:
      return 64;
    case GgmlType::Q5_0:
      return 32;
    case GgmlType::Q5_1:
      return 64;
    case GgmlType::Q8_0:
      return 32;
    case GgmlType::Q4_K:
      return 320;
    case GgmlType::Q5_K:
      return 320;
    case GgmlType::Q6_K:
      return 288;
    case GgmlType::Q2_K:
      return 320;
    case GgmlType::Q3_K:
      return 288;
    case GgmlType::IQ4_XS:
      return 160;
    case GgmlType::IQ4_NL:
      return 32;
    case GgmlType::MXFP4:
      return 16;
    case GgmlType::NVFP4:
      return 64;
    default:
      return 0;
  }
}

size_t q_bytes_of(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0:
      return 256;
    case GgmlType::Q4_1:
      return 256;
    case GgmlType::Q5_0:
      return 320;
    case GgmlType::Q5_1:
      return 320;
    case GgmlType::Q8_0:
      return 512;
    case GgmlType::Q4_K:
      return 2048;
    case GgmlType::Q5_K:
      return 2560;
    case GgmlType::Q6_K:
      return 3072;
    case GgmlType::Q2_K:
      return 1024;
    case GgmlType::Q3_K:
      return 1536;
    case GgmlType::IQ4_XS:
      return 2048;
    case GgmlType::IQ4_NL:
    case GgmlType::MXFP4:
      return 256;
    case GgmlType::NVFP4:
      return 512;
    default:
      return 0;
  }
}

size_t pad64(size_t n) {
  return (n + 63) / 64 * 64;
}

// A super-block is one block of the format (32 values, 64 for NVFP4, 256 for the K-quants and IQ4_XS).
int64_t sb_values_of(GgmlType t) {
  return type_traits(t).block_size;
}

// Copies 4 bytes of each row into one interleaved vector.
inline void put_vector(uint8_t* dst, const uint8_t* const* rows, size_t off) {
  for (int n = 0; n < kR; ++n) {
    uint32_t v;
    __builtin_memcpy(&v, rows[n] + off, 4);
    __builtin_memcpy(dst + 4 * n, &v, 4);
  }
}

// src[n]: super-block sb of row n (zeros for padding rows); dst: its scales, qd: its quants;
// planes: Q5_K's fifth bits as bit planes.
void pack_sb(GgmlType t, const uint8_t* const* src, uint8_t* dst, uint8_t* qd, bool planes) {
  switch (t) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1: {
      const bool q41 = t == GgmlType::Q4_1;
      const size_t qs_off = q41 ? offsetof(BlockQ4_1, qs) : offsetof(BlockQ4_0, qs);
      for (int n = 0; n < kR; ++n) {
        std::memcpy(dst + 2 * n, src[n], 2);                    // d
        if (q41) std::memcpy(dst + 32 + 2 * n, src[n] + 2, 2);  // m
      }
      for (int j = 0; j < 4; ++j) put_vector(qd + 64 * j, src, qs_off + 4 * j);
      return;
    }
    case GgmlType::Q5_0:
    case GgmlType::Q5_1: {
      const bool q51 = t == GgmlType::Q5_1;
      const size_t qh_off = q51 ? offsetof(BlockQ5_1, qh) : offsetof(BlockQ5_0, qh);
      const size_t qs_off = q51 ? offsetof(BlockQ5_1, qs) : offsetof(BlockQ5_0, qs);
      for (int n = 0; n < kR; ++n) {
        std::memcpy(dst + 2 * n, src[n], 2);                    // d
        if (q51) std::memcpy(dst + 32 + 2 * n, src[n] + 2, 2);  // m
        uint32_t qh;
        std::memcpy(&qh, src[n] + qh_off, 4);
        for (int i = 0; i < 4; ++i) {
          uint8_t b = 0;
          for (int j = 0; j < 8; ++j) b = uint8_t(b | (((qh >> (4 * j + i)) & 1) << j));
          qd[4 * n + i] = b;
        }
      }
      for (int j = 0; j < 4; ++j) put_vector(qd + 64 + 64 * j, src, qs_off + 4 * j);
      return;
    }
    case GgmlType::Q8_0: {
      for (int n = 0; n < kR; ++n) std::memcpy(dst + 2 * n, src[n], 2);
      for (int g = 0; g < 8; ++g) put_vector(qd + 64 * g, src, offsetof(BlockQ8_0, qs) + 4 * g);
      return;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      const bool q5 = t == GgmlType::Q5_K;
      for (int n = 0; n < kR; ++n) {
        std::memcpy(dst + 2 * n, src[n], 2);           // d
        std::memcpy(dst + 32 + 2 * n, src[n] + 2, 2);  // dmin
        const uint8_t* scales = src[n] + 4;
        for (int j = 0; j < 8; ++j) {
          uint8_t sc, m;
          get_scale_min_k4(j, scales, &sc, &m);
          dst[64 + 16 * j + n] = sc;
          dst[192 + 16 * j + n] = m;
        }
      }
      uint8_t* q = qd;
      if (q5 && planes) {
        for (int c = 0; c < 4; ++c) {
          for (int k = 0; k < 2; ++k) {
            for (int n = 0; n < kR; ++n) {
              const uint8_t* qh = src[n] + offsetof(BlockQ5_K, qh);
              for (int i = 0; i < 4; ++i) {
                uint8_t b = 0;
                for (int v = 0; v < 8; ++v) b = uint8_t(b | (((qh[4 * v + i] >> (2 * c + k)) & 1) << v));
                qd[64 * (2 * c + k) + 4 * n + i] = b;
              }
            }
          }
        }
        q = qd + 512;
      } else if (q5) {
        auto* hb = reinterpret_cast<uint64_t*>(qd);
        for (int c = 0; c < 4; ++c) {
          for (int v = 0; v < 8; ++v) {
            uint64_t m0 = 0, m1 = 0;
            for (int n = 0; n < kR; ++n) {
              const uint8_t* qh = src[n] + offsetof(BlockQ5_K, qh);
              for (int i = 0; i < 4; ++i) {
                const uint8_t h = qh[4 * v + i];
                m0 |= uint64_t((h >> (2 * c)) & 1) << (4 * n + i);
                m1 |= uint64_t((h >> (2 * c + 1)) & 1) << (4 * n + i);
              }
            }
            hb[(c * 8 + v) * 2] = m0;
            hb[(c * 8 + v) * 2 + 1] = m1;
          }
        }
        q = qd + 512;
      }
      const size_t qs_off = q5 ? offsetof(BlockQ5_K, qs) : offsetof(BlockQ4_K, qs);
      for (int c = 0; c < 4; ++c)
        for (int v = 0; v < 8; ++v) put_vector(q + 64 * (c * 8 + v), src, qs_off + 32 * c + 4 * v);
      return;
    }
    case GgmlType::Q6_K: {
      for (int n = 0; n < kR; ++n) {
        std::memcpy(dst + 2 * n, src[n] + offsetof(BlockQ6_K, d), 2);
        for (int s = 0; s < 16; ++s) dst[32 + 16 * s + n] = src[n][offsetof(BlockQ6_K, scales) + s];
      }
      // Three bytes per 4 values: values k = 0, 1, 2 of a half whole in the low 6 bits, value k = 3
      // split 2 + 2 + 2 bits over their top bits.
      for (int n = 0; n < kR; ++n) {
        BlockQ6_K b;
        std::memcpy(&b, src[n], sizeof(b));
        for (int h = 0; h < 2; ++h) {
          for (int l = 0; l < 32; ++l) {
            int u[4];
            for (int k = 0; k < 4; ++k) u[k] = q6_k_value(b, 128 * h + 32 * k + l) + 32;
            const int v = l / 4, i = l % 4;
            uint8_t* o = qd + 64 * 3 * (8 * h + v) + 4 * n + i;
            for (int c = 0; c < 3; ++c) o[64 * c] = uint8_t(u[c] | (((u[3] >> (2 * c)) & 3) << 6));
          }
        }
      }
      return;
    }
    case GgmlType::Q2_K: {
      for (int n = 0; n < kR; ++n) {
        std::memcpy(dst + 2 * n, src[n] + offsetof(BlockQ2_K, d), 2);
        std::memcpy(dst + 32 + 2 * n, src[n] + offsetof(BlockQ2_K, dmin), 2);
        for (int j = 0; j < 16; ++j) dst[64 + 16 * j + n] = src[n][offsetof(BlockQ2_K, scales) + size_t(j)];
      }
      for (int v = 0; v < 16; ++v) put_vector(qd + 64 * v, src, offsetof(BlockQ2_K, qs) + 4 * size_t(v));
      return;
    }
    case GgmlType::Q3_K: {
      for (int n = 0; n < kR; ++n) {
        std::memcpy(dst + 2 * n, src[n] + offsetof(BlockQ3_K, d), 2);
        int8_t sc[16];
        q3_k_scales(src[n] + offsetof(BlockQ3_K, scales), sc);
        for (int j = 0; j < 16; ++j) dst[32 + 16 * j + n] = uint8_t(sc[j]);
      }
      for (int n = 0; n < kR; ++n) {
        const uint8_t* qs = src[n] + offsetof(BlockQ3_K, qs);
        const uint8_t* hm = src[n] + offsetof(BlockQ3_K, hmask);
        for (int hh = 0; hh < 2; ++hh) {
          for (int vq = 0; vq < 2; ++vq) {
            uint8_t* o = qd + 64 * 6 * (2 * hh + vq);
            for (int p = 0; p < 2; ++p) {
              for (int c = 0; c < 4; ++c) {
                // u(k, ii): value 128 hh + 32 k + l, l = 16 vq + 4 (2p + ii) + c (block_q3_k.h).
                int u[4][2];
                for (int ii = 0; ii < 2; ++ii) {
                  const int l = 16 * vq + 4 * (2 * p + ii) + c;
                  for (int k = 0; k < 4; ++k)
                    u[k][ii] = ((qs[32 * hh + l] >> (2 * k)) & 3) | (((hm[l] >> (4 * hh + k)) & 1) << 2);
                }
                uint8_t* t = o + 192 * p + 4 * n + c;
                t[0] = uint8_t(u[0][0] | (u[1][0] << 3) | ((u[2][1] >> 2) << 6) | ((u[3][1] >> 2) << 7));
                t[64] = uint8_t(u[2][0] | (u[3][0] << 3) | ((u[3][1] & 3) << 6));
                t[128] = uint8_t(u[0][1] | (u[1][1] << 3) | ((u[2][1] & 3) << 6));
              }
            }
          }
        }
      }
      return;
    }
    case GgmlType::IQ4_XS: {
      for (int n = 0; n < kR; ++n) {
        BlockIq4Xs b;
        std::memcpy(&b, src[n], sizeof(b));
        std::memcpy(dst + 2 * n, &b.d, 2);
        for (int ib = 0; ib < 8; ++ib) dst[32 + 16 * ib + n] = uint8_t(int8_t(iq4xs_scale(b, ib)));
      }
      for (int ib = 0; ib < 8; ++ib)
        for (int j = 0; j < 4; ++j)
          put_vector(qd + 64 * (4 * ib + j), src, offsetof(BlockIq4Xs, qs) + 16 * ib + 4 * j);
      return;
    }
    case GgmlType::IQ4_NL: {
      for (int n = 0; n < kR; ++n) std::memcpy(dst + 2 * n, src[n] + offsetof(BlockIq4Nl, d), 2);
      for (int j = 0; j < 4; ++j) put_vector(qd + 64 * j, src, offsetof(BlockIq4Nl, qs) + 4 * j);
      return;
    }
    case GgmlType::MXFP4: {
      for (int n = 0; n < kR; ++n) dst[n] = src[n][offsetof(BlockMxfp4, e)];
      for (int j = 0; j < 4; ++j) put_vector(qd + 64 * j, src, offsetof(BlockMxfp4, qs) + 4 * j);
      return;
    }
    case GgmlType::NVFP4: {
      for (int n = 0; n < kR; ++n)
        for (int g = 0; g < 4; ++g) dst[16 * g + n] = src[n][offsetof(BlockNvfp4, d) + size_t(g)];
      for (int v = 0; v < 8; ++v) put_vector(qd + 64 * v, src, offsetof(BlockNvfp4, qs) + 4 * size_t(v));
      return;
    }
    default:
      throw Unsupported(fmt::format("repack: type {} not packable", type_name(t)));
  }
}

// The repacked MXFP4 kernels compute a (code + 12) - 12 a (packed::PMXFP4): -12 a passes FLT_MAX for
// exponents above 252, which no finite weight quantizes to (2^(e - 128) * 6 >= 2^127 * 1.5). Such a
// matrix keeps the GGUF kernels, which handle any byte. Checked by the repacking worker, so the
// check's reads are spread over the threads like the repacking's own.
bool exponents_in_range(const WeightView& w) {
  if (w.type != GgmlType::MXFP4) return true;
  const auto* p = static_cast<const uint8_t*>(w.data);
  const size_t n = w.row_bytes * size_t(w.rows) / sizeof(BlockMxfp4);
  for (size_t i = 0; i < n; ++i)
    if (p[i * sizeof(BlockMxfp4) + offsetof(BlockMxfp4, e)] > 252) return false;
  return true;
}

std::atomic<int>& repack_flag() {
  static std::atomic<int> f{[] {
    const char* e = std::getenv("QLEAP_REPACK");
    return e != nullptr && e[0] == '0' ? 0 : 1;
  }()};
  return f;
}

}  // namespace

bool packable(GgmlType t) {
  return s_bytes_of(t) != 0;
}

bool packed_at_every_level(GgmlType t) {
  return t != GgmlType::Q5_0 && t != GgmlType::Q5_1 && t != GgmlType::Q2_K && t != GgmlType::Q3_K;
}

size_t packed_bytes(GgmlType t, int64_t rows, int64_t cols) {
  if (!packable(t) || cols % sb_values_of(t) != 0) return 0;
  const size_t nsb = size_t(cols / sb_values_of(t));
  return size_t((rows + kR - 1) / kR) * (pad64(nsb * s_bytes_of(t)) + nsb * q_bytes_of(t));
}

void repack(const WeightView& w, uint8_t* dst, PackedMatrix* out) {
  const int64_t sbv = sb_values_of(w.type);
  if (!packable(w.type) || w.cols % sbv != 0) throw Unsupported("repack: matrix not packable");
  const int64_t nsb = w.cols / sbv;
  const size_t in_sb = size_t(type_traits(w.type).type_size);  // a super-block is one source block
  out->type = w.type;
  out->rows = w.rows;
  out->cols = w.cols;
  out->groups = (w.rows + kR - 1) / kR;
  out->sb_values = sbv;
  out->s_bytes = s_bytes_of(w.type);
  out->q_bytes = q_bytes_of(w.type);
  out->q_offset = pad64(size_t(nsb) * out->s_bytes);
  out->group_bytes = out->q_offset + size_t(nsb) * out->q_bytes;
  // The AVX2 kernels read Q5_K's fifth bits as planes; AVX-512 and AMX keep the masks (planes are not
  // yet run on such a CPU). Nothing reads the copy at the scalar level: planes there too.
  out->fifth_planes = w.type == GgmlType::Q5_K && isa_level() < IsaLevel::kAvx512;
  out->data = dst;
  out->source = w.data;
  std::vector<uint8_t> zero(in_sb, 0);
  // Padding between the scales and the quants of a group.
  std::memset(dst, 0, size_t(out->groups) * out->group_bytes);
  for (int64_t g = 0; g < out->groups; ++g) {
    for (int64_t s = 0; s < nsb; ++s) {
      const uint8_t* src[kR];
      for (int n = 0; n < kR; ++n) {
        const int64_t r = g * kR + n;
        src[n] = r < w.rows
                     ? static_cast<const uint8_t*>(w.data) + size_t(r) * w.row_bytes + size_t(s) * in_sb
                     : zero.data();
      }
      uint8_t* gb = dst + size_t(g) * out->group_bytes;
      pack_sb(w.type, src, gb + size_t(s) * out->s_bytes, gb + out->q_offset + size_t(s) * out->q_bytes,
              out->fifth_planes);
    }
  }
}

bool repack_enabled() {
  return repack_flag().load(std::memory_order_relaxed) != 0 && max_isa_level() >= IsaLevel::kAvx2;
}

void set_repack_enabled(bool on) {
  repack_flag().store(on ? 1 : 0, std::memory_order_relaxed);
}

void PreparedWeights::Block::Free::operator()(uint8_t* p) const {
#if defined(__linux__)
  if (mapped != 0) {
    munmap(p, mapped);
    return;
  }
#endif
  ::operator delete[](p, std::align_val_t(64));
}

constexpr size_t kHugePage = size_t(2) << 20;

// Memory for the repacked matrices of one prepare() call. Decode streams all of it once per token:
// with 4 KiB pages that is a TLB miss (and a hardware-prefetch stop) every 64 cache lines, so on
// Linux the arena is a 2 MiB-aligned anonymous mapping asking for transparent huge pages (granted
// or not, the memory works the same).
PreparedWeights::Block PreparedWeights::alloc_arena(size_t n) {
  Block b;
  b.n = n;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (n >= kHugePage / 2) {
    const size_t len = (n + kHugePage - 1) / kHugePage * kHugePage;
    void* raw = mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw != MAP_FAILED) {
      const auto r = reinterpret_cast<uintptr_t>(raw);
      const uintptr_t a = (r + kHugePage - 1) / kHugePage * kHugePage;
      if (a > r) munmap(raw, a - r);
      if (r + kHugePage > a) munmap(reinterpret_cast<void*>(a + len), r + kHugePage - a);
      madvise(reinterpret_cast<void*>(a), len, MADV_HUGEPAGE);
      b.mem = std::unique_ptr<uint8_t[], Block::Free>(reinterpret_cast<uint8_t*>(a), Block::Free{len});
      return b;
    }
  }
#endif
  b.mem.reset(static_cast<uint8_t*>(::operator new[](n, std::align_val_t(64))));
  return b;
}

std::unique_ptr<PreparedWeights> PreparedWeights::prepare(std::span<WeightView* const> views,
                                                          bool release_source) {
  auto pw = std::make_unique<PreparedWeights>();
  if (!repack_enabled()) return pw;
  // One copy per distinct source (tied embeddings: token_embd and output share their bytes).
  std::map<const void*, PackedMatrix*> done;
  struct Todo {
    WeightView view;
    uint8_t* dst;
    PackedMatrix* pm;
    bool dropped = false;  // not repacked after all (exponents_in_range)
  };
  std::vector<Todo> todo;
  for (WeightView* v : views) {
    if (v == nullptr || v->data == nullptr) continue;
    if (auto it = done.find(v->data); it != done.end()) {
      v->packed = it->second;
      continue;
    }
    // The AVX-512 and AMX kernels keep the GGUF layout for Q5_0 / Q5_1 / Q2_K / Q3_K
    // (matmul_packed_x86.h: not yet run on such a CPU), so a copy there would only cost memory.
    if (!packed_at_every_level(v->type) && isa_level() >= IsaLevel::kAvx512) continue;
    const size_t n = packed_bytes(v->type, v->rows, v->cols);
    if (n == 0 || v->row_bytes != row_size(v->type, v->cols)) continue;
    auto pm = std::make_unique<PackedMatrix>();
    // dst holds the matrix's offset in the arena until the arena exists.
    todo.push_back({*v, reinterpret_cast<uint8_t*>(uintptr_t(pw->bytes_)), pm.get(), false});
    v->packed = pm.get();
    done[v->data] = pm.get();
    pw->bytes_ += (n + 63) / 64 * 64;
    pw->mats_.push_back(std::move(pm));
  }
  if (todo.empty()) return pw;
  // One arena for all of them, in the order given (the forward's order): decode then reads one
  // sequential stream per layer.
  Block arena = alloc_arena(pw->bytes_);
  for (Todo& t : todo) t.dst = arena.mem.get() + reinterpret_cast<uintptr_t>(t.dst);
  pw->blocks_.push_back(std::move(arena));
  ThreadPool pool(std::max(1, std::min<int>(int(todo.size()), default_thread_count())));
  pool.parallel_for(int64_t(todo.size()), 1, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      Todo& t = todo[size_t(i)];
      if (exponents_in_range(t.view)) {
        repack(t.view, t.dst, t.pm);
      } else {
        t.dropped = true;
      }
    }
  });
  // A dropped matrix's views keep the GGUF layout (its arena bytes stay unused).
  for (const Todo& t : todo) {
    if (!t.dropped) continue;
    for (WeightView* v : views)
      if (v != nullptr && v->packed == t.pm) v->packed = nullptr;
    std::erase_if(pw->mats_, [&](const auto& m) { return m.get() == t.pm; });
  }
#if defined(__linux__) && defined(MADV_DONTNEED)
  if (release_source) {
    // The GGUF copy of a repacked matrix is no longer read (the token embedding table is: get_row;
    // it is released only when it was not also a view left unpacked).
    std::map<const void*, bool> still_read;
    for (WeightView* v : views) {
      if (v != nullptr && v->data != nullptr && v->packed == nullptr) still_read[v->data] = true;
    }
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    for (const Todo& t : todo) {
      if (still_read.count(t.view.data)) continue;
      const auto b = reinterpret_cast<uintptr_t>(t.view.data);
      const uintptr_t e = b + t.view.row_bytes * size_t(t.view.rows);
      const uintptr_t pb = (b + page - 1) / page * page, pe = e / page * page;
      if (pe > pb && madvise(reinterpret_cast<void*>(pb), pe - pb, MADV_DONTNEED) == 0)
        pw->released_ += pe - pb;
    }
  }
#else
  (void)release_source;
#endif
  return pw;
}

void PreparedWeights::merge(std::unique_ptr<PreparedWeights> other) {
  for (Block& b : other->blocks_) blocks_.push_back(std::move(b));
  for (auto& m : other->mats_) mats_.push_back(std::move(m));
  bytes_ += other->bytes_;
  released_ += other->released_;
}

std::string PreparedWeights::describe() const {
  if (mats_.empty()) return "none";
  std::map<std::string, int> by;
  for (const auto& m : mats_) by[type_name(m->type)]++;
  std::string s = fmt::format("{} matrices, {:.1f} MiB (", mats_.size(), double(bytes_) / double(1 << 20));
  bool first = true;
  for (const auto& [k, v] : by) {
    s += fmt::format("{}{}: {}", first ? "" : ", ", k, v);
    first = false;
  }
  return s + ")";
}

}  // namespace qleap
