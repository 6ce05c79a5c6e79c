// GGUF writer (version 3). Metadata is kept in insertion order; tensor data is streamed to disk at
// write() time one tensor at a time, so converting a model never holds a second full copy of its
// weights in memory. Round-trips with GgufFile (gguf.h) and with gguf-py.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "quant/ggml_type.h"

namespace qleap {

class GgufWriter {
 public:
  // Fills exactly nbytes of dst with the tensor's encoded data (called once, during write()).
  using Producer = std::function<void(uint8_t* dst, size_t nbytes)>;

  // Generic setter: v must be a well-formed value (arrays: elem_type set, the matching arr_* vector
  // filled; nested arrays: arr_v of ARRAY values). Replaces an existing key in place.
  void set(const std::string& key, GgufValue v);
  void set_u8(const std::string& key, uint8_t v);
  void set_i8(const std::string& key, int8_t v);
  void set_u16(const std::string& key, uint16_t v);
  void set_i16(const std::string& key, int16_t v);
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_u64(const std::string& key, uint64_t v);
  void set_i64(const std::string& key, int64_t v);
  void set_f32(const std::string& key, float v);
  void set_f64(const std::string& key, double v);
  void set_bool(const std::string& key, bool v);
  void set_string(const std::string& key, const std::string& v);
  void set_array_string(const std::string& key, std::vector<std::string> v);
  void set_array_i32(const std::string& key, const std::vector<int32_t>& v);
  void set_array_u32(const std::string& key, const std::vector<uint32_t>& v);
  void set_array_f32(const std::string& key, const std::vector<float>& v);
  bool has(const std::string& key) const;
  void remove(const std::string& key);
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }

  // Data alignment (power of two). A non-default value is also written as general.alignment.
  void set_alignment(uint32_t alignment);
  uint32_t alignment() const { return alignment_; }

  // shape is in ggml order (ne[0] = contiguous row length). `data` must stay valid until write().
  void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape, const void* data);
  void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape,
                  std::vector<uint8_t> owned);
  // The bytes are produced lazily during write(); only one produced tensor is in memory at a time.
  void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape, Producer producer);
  size_t n_tensors() const { return tensors_.size(); }

  // Writes the whole file (to path + ".tmp", renamed on success). Throws IoError / InvalidArgument.
  void write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> shape;
    uint64_t nbytes = 0;
    const void* data = nullptr;
    std::vector<uint8_t> owned;
    Producer producer;
  };
  Tensor& new_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape);

  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<Tensor> tensors_;
  uint32_t alignment_ = 32;
};

}  // namespace qleap
