// Weights repacked at load into the layout the x86 kernels want: groups of 16 rows interleaved 4
// bytes at a time, so that one 64-byte load holds 4 consecutive weights of 16 rows (one 32-byte
// half of it, 8 rows, on AVX2). Every lane of a vector then accumulates its own row: decode needs no
// horizontal sums and unpacks each weight byte once for 16 rows' worth of work, and prefill reuses
// the same unpacked vectors for a tile of tokens.
//
// The layout keeps the format's bits (same size as GGUF within ~4%: the K-quants' 6-bit scales
// and IQ4_XS's are stored as bytes), so decode reads as many bytes as before. The original pages are released
// after repacking when the model file is memory-mapped (they are re-read from the file if anything
// else touches them).
//
// Formats: Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K (AVX2 level only, for now), Q8_0, Q4_K, Q5_K (its own
// layout at the AVX2 level), Q6_K, IQ4_XS, IQ4_NL, MXFP4, NVFP4. Others keep the GGUF layout (row
// kernels for decode, panels decoded per call for prefill).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "quant/ggml_type.h"

namespace qleap {

// One repacked matrix. Per group of 16 rows (rows past the end are zero): the scales of every
// super-block of the row group in k order (s_bytes each), then, 64-byte aligned, their quants
// (q_bytes each, a multiple of 64). Layouts in packed_weights.cpp, read by matmul_packed_x86.h.
struct PackedMatrix {
  GgmlType type = GgmlType::F32;
  int64_t rows = 0, cols = 0;
  int64_t groups = 0;      // ceil(rows / 16)
  int64_t sb_values = 0;   // values per super-block: 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) or 256 (K-quants)
  size_t s_bytes = 0;      // scale bytes per super-block of a group
  size_t q_bytes = 0;      // quant bytes per super-block of a group
  size_t q_offset = 0;     // offset of the quants within a group
  size_t group_bytes = 0;  // bytes of one group (all k), a multiple of 64
  // Q5_K's fifth bits as bit planes, for the AVX2 kernels (packed_weights.cpp); the AVX-512 and AMX
  // kernels read 64-bit masks and leave a copy with planes to the GGUF-layout kernels.
  bool fifth_planes = false;
  const uint8_t* data = nullptr;  // 64-byte aligned
  const void* source = nullptr;   // the GGUF bytes it was made from
};

constexpr int kPackRows = 16;

// Whether matrices of type t can be repacked.
bool packable(GgmlType t);
// False for the formats repacked only below the AVX-512 level (their AVX-512 / AMX kernels keep the
// GGUF layout until they run on such a CPU).
bool packed_at_every_level(GgmlType t);
// Bytes of the repacked form of a rows x cols matrix of type t (0: not packable).
size_t packed_bytes(GgmlType t, int64_t rows, int64_t cols);
// Repacks w into dst (packed_bytes() bytes, 64-byte aligned) and describes it in out, laid out for
// the kernels of the ISA level in effect (isa_level(): Q5_K differs between AVX2 and AVX-512).
void repack(const WeightView& w, uint8_t* dst, PackedMatrix* out);

// Repacking is on unless QLEAP_REPACK=0 or set_repack_enabled(false) (CLI --no-repack); it also
// needs AVX2 (the kernels that read the layout).
bool repack_enabled();
void set_repack_enabled(bool on);

// The repacked copies of a model's matrices, owned with the model: prepare() points each view's
// `packed` at its copy.
class PreparedWeights {
 public:
  // Repacks every view whose type is packable (views sharing data share one copy). With
  // release_source, the source pages of matrices that are no longer read in GGUF layout are
  // returned to the OS (only for read-only file mappings: they are re-read from the file on access).
  static std::unique_ptr<PreparedWeights> prepare(std::span<WeightView* const> views, bool release_source);

  // Takes over the matrices of `other` (views keep pointing at them).
  void merge(std::unique_ptr<PreparedWeights> other);

  size_t bytes() const { return bytes_; }
  int matrices() const { return int(mats_.size()); }
  size_t released_bytes() const { return released_; }
  // "12 matrices, 85.3 MiB (Q4_0: 10, Q6_K: 2)" style summary.
  std::string describe() const;

 private:
  struct Block {
    struct Free {
      size_t mapped;  // bytes of an anonymous mapping (0: operator new; value-initialized by unique_ptr)
      void operator()(uint8_t* p) const;
    };
    std::unique_ptr<uint8_t[], Free> mem;
    size_t n = 0;
  };
  static Block alloc_arena(size_t n);
  std::vector<Block> blocks_;
  std::vector<std::unique_ptr<PackedMatrix>> mats_;
  size_t bytes_ = 0;
  size_t released_ = 0;
};

}  // namespace qleap
