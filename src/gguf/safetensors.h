// Safetensors reader (memory-mapped). Layout: u64 header length, a JSON header mapping tensor names
// to {dtype, shape, data_offsets}, then the raw little-endian data. Every offset is checked against
// the file; F32/F16/BF16 are supported (others raise Unsupported when their data is requested).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "quant/ggml_type.h"

namespace qleap {

struct SafeTensor {
  std::string name;
  std::string dtype;           // as written in the header ("F32", "BF16", "I64", ...)
  std::vector<int64_t> shape;  // row-major, outermost first (PyTorch order; reverse of ggml's ne)
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  int64_t n_elements() const;
  // GgmlType of the dtype; throws Unsupported for dtypes other than F32/F16/BF16.
  GgmlType ggml_type() const;
  // Decodes elements [first, first + n) to float. Throws Unsupported / InvalidArgument.
  void to_f32(float* dst, int64_t first, int64_t n) const;
  std::vector<float> to_f32() const;
};

class SafetensorsFile {
 public:
  // Throws IoError / FormatError.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  // Parses a buffer the caller keeps alive. Throws FormatError.
  static std::shared_ptr<SafetensorsFile> parse(const uint8_t* data, size_t size,
                                                const std::string& label = "");

  const std::vector<SafeTensor>& tensors() const { return tensors_; }
  const SafeTensor* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  void parse_all(const std::string& label);

  MappedFile map_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  std::vector<SafeTensor> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a Hugging Face checkpoint directory: model.safetensors, or the shards listed in
// model.safetensors.index.json (weight_map). Throws IoError / FormatError.
class SafetensorsModel {
 public:
  static SafetensorsModel open_dir(const std::string& dir);

  // Sorted by name.
  std::vector<std::string> names() const;
  const SafeTensor* find(const std::string& name) const;
  // Throws FormatError naming the missing tensor.
  const SafeTensor& get(const std::string& name) const;

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafeTensor*> by_name_;
};

}  // namespace qleap
