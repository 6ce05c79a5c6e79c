// GGUF reader (memory-mapped, versions 2 and 3). Every length, count and offset read from the file
// is checked against the file size before use: a truncated or corrupt file raises FormatError with
// the byte offset where parsing failed, never a crash.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/mapped_file.h"
#include "quant/ggml_type.h"

namespace qleap {

enum class GgufType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};
const char* gguf_type_name(GgufType t);

// One metadata value. Scalars keep their declared type; arrays keep their element type and are
// stored as a typed vector (numbers widened to int64/uint64/double, strings as std::string), nested
// arrays as a vector of values.
struct GgufValue {
  GgufType type = GgufType::UINT8;
  GgufType elem_type = GgufType::UINT8;  // arrays only

  uint64_t u = 0;  // UINT8..UINT64, BOOL
  int64_t i = 0;   // INT8..INT64
  double f = 0;    // FLOAT32, FLOAT64
  std::string s;   // STRING

  std::vector<uint64_t> arr_u;
  std::vector<int64_t> arr_i;
  std::vector<double> arr_f;
  std::vector<std::string> arr_s;
  std::vector<GgufValue> arr_v;

  bool is_array() const { return type == GgufType::ARRAY; }
  bool is_integer() const;
  bool is_float() const { return type == GgufType::FLOAT32 || type == GgufType::FLOAT64; }
  size_t array_size() const;
  // Numeric conversions; throw FormatError when the value is not numeric.
  int64_t as_int() const;
  uint64_t as_uint() const;
  double as_double() const;
  bool as_bool() const;
  // Throws FormatError when the value is not a string.
  const std::string& as_string() const;
  // Short human-readable rendering (arrays abbreviated), for `qleap info`.
  std::string to_display(size_t max_items = 8) const;
};

struct GgufTensor {
  std::string name;
  std::vector<int64_t> shape;  // ne[0] is the contiguous (fastest) dimension, as in ggml
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;  // relative to the data section
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;  // points into the mapping

  int64_t n_elements() const;
  int64_t ne(size_t d) const { return d < shape.size() ? shape[d] : 1; }
};

class GgufFile {
 public:
  // Maps and parses a file. Throws IoError / FormatError.
  static std::shared_ptr<GgufFile> open(const std::string& path);
  // Parses a buffer the caller keeps alive (fuzzing, tests). Throws FormatError.
  static std::shared_ptr<GgufFile> parse(const uint8_t* data, size_t size);
  // Parses metadata and tensor infos from the first `size` bytes of a file of `file_size` bytes
  // (a ranged download): tensor extents are checked against file_size and tensors have no data.
  // Throws FormatError, also when the prefix ends before the tensor infos do.
  static std::shared_ptr<GgufFile> parse_header(const uint8_t* data, size_t size, uint64_t file_size);

  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  size_t data_offset() const { return data_offset_; }
  size_t file_size() const { return size_; }
  const std::string& path() const { return map_.path(); }

  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }
  // Typed getters: return `def` when the key is absent, throw FormatError on a type mismatch.
  std::string get_string(std::string_view key, const std::string& def = "") const;
  int64_t get_int(std::string_view key, int64_t def) const;
  double get_float(std::string_view key, double def) const;
  bool get_bool(std::string_view key, bool def) const;
  // The architecture prefix ("llama", "qwen2", ...) from general.architecture.
  std::string architecture() const { return get_string("general.architecture"); }
  // Shortcut for "<arch>.<suffix>".
  const GgufValue* find_arch(std::string_view suffix) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(std::string_view name) const;
  // Throws FormatError naming the missing tensor.
  const GgufTensor& tensor(std::string_view name) const;
  uint64_t tensor_bytes() const;  // sum of all tensor sizes

 private:
  GgufFile() = default;
  void parse_all(uint64_t file_size, bool header_only);

  MappedFile map_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  size_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::unordered_map<std::string, size_t> kv_index_;
  std::vector<GgufTensor> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace qleap
