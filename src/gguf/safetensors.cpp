#include "gguf/safetensors.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/fp16.h"

namespace qleap {
namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // the format's own limit is 100 MB

size_t dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

}  // namespace

int64_t SafeTensor::n_elements() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

GgmlType SafeTensor::ggml_type() const {
  if (dtype == "F32") return GgmlType::F32;
  if (dtype == "F16") return GgmlType::F16;
  if (dtype == "BF16") return GgmlType::BF16;
  throw Unsupported(fmt::format("tensor '{}' has dtype {} (supported: F32, F16, BF16)", name, dtype));
}

void SafeTensor::to_f32(float* dst, int64_t first, int64_t n) const {
  const GgmlType t = ggml_type();
  if (first < 0 || n < 0 || first + n > n_elements()) {
    throw InvalidArgument(
        fmt::format("tensor '{}': element range [{}, {}) out of bounds", name, first, first + n));
  }
  const uint8_t* p = data + size_t(first) * (t == GgmlType::F32 ? 4 : 2);
  // The data need not be aligned (headers have arbitrary length), so every element goes via memcpy.
  if (t == GgmlType::F32) {
    std::memcpy(dst, p, size_t(n) * 4);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, p + 2 * i, 2);
    dst[i] = t == GgmlType::F16 ? fp16_to_fp32_ref(h) : bf16_to_fp32(h);
  }
}

std::vector<float> SafeTensor::to_f32() const {
  std::vector<float> out(static_cast<size_t>(n_elements()));
  to_f32(out.data(), 0, n_elements());
  return out;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->map_ = MappedFile(path);
  f->base_ = f->map_.data();
  f->size_ = f->map_.size();
  f->parse_all(path);
  return f;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::parse(const uint8_t* data, size_t size,
                                                        const std::string& label) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->base_ = data;
  f->size_ = size;
  f->parse_all(label.empty() ? "<buffer>" : label);
  return f;
}

void SafetensorsFile::parse_all(const std::string& label) {
  auto fail = [&](const std::string& msg) {
    return FormatError(fmt::format("safetensors '{}': {}", label, msg));
  };
  if (size_ < 8) throw fail("file smaller than the 8-byte header length");
  uint64_t hlen;
  std::memcpy(&hlen, base_, 8);
  if (hlen > kMaxHeader || hlen > size_ - 8) {
    throw fail(fmt::format("header length {} exceeds the file size {}", hlen, size_));
  }
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(reinterpret_cast<const char*>(base_) + 8,
                              reinterpret_cast<const char*>(base_) + 8 + hlen);
  } catch (const nlohmann::json::exception& e) {
    throw fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!h.is_object()) throw fail("header is not a JSON object");
  const uint8_t* data = base_ + 8 + hlen;
  const uint64_t data_size = size_ - 8 - hlen;
  try {
    for (auto it = h.begin(); it != h.end(); ++it) {
      if (it.key() == "__metadata__") {
        if (it->is_object()) {
          for (auto m = it->begin(); m != it->end(); ++m) {
            if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
          }
        }
        continue;
      }
      const auto& e = *it;
      if (!e.is_object()) throw fail(fmt::format("entry '{}' is not an object", it.key()));
      SafeTensor t;
      t.name = it.key();
      t.dtype = e.at("dtype").get<std::string>();
      const size_t es = dtype_size(t.dtype);
      if (es == 0) throw fail(fmt::format("tensor '{}' has unknown dtype '{}'", t.name, t.dtype));
      uint64_t n = 1;
      for (const auto& d : e.at("shape")) {
        // Integers only: nlohmann stores a literal beyond 64 bits as a double, and get<int64_t> of an
        // out-of-range double is undefined behaviour (found by safetensors_fuzz).
        if (!d.is_number_integer())
          throw fail(fmt::format("tensor '{}' has a non-integer dimension", t.name));
        const int64_t v = d.get<int64_t>();
        if (v < 0 || v > (int64_t(1) << 40) || (v > 0 && n > (uint64_t(1) << 48) / uint64_t(v))) {
          throw fail(fmt::format("tensor '{}' has an invalid dimension {}", t.name, v));
        }
        n *= uint64_t(v);
        t.shape.push_back(v);
      }
      const auto& offs = e.at("data_offsets");
      if (!offs.is_array() || offs.size() != 2 || !offs[0].is_number_unsigned() ||
          !offs[1].is_number_unsigned())
        throw fail(fmt::format("tensor '{}': bad data_offsets (two non-negative integers expected)", t.name));
      const uint64_t b = offs[0].get<uint64_t>();
      const uint64_t en = offs[1].get<uint64_t>();
      if (b > en || en > data_size) {
        throw fail(fmt::format("tensor '{}': data [{}, {}) lies outside the {}-byte data section", t.name, b,
                               en, data_size));
      }
      if (en - b != n * es) {
        throw fail(
            fmt::format("tensor '{}': {} bytes of data for {} elements of {}", t.name, en - b, n, t.dtype));
      }
      t.data = data + b;
      t.nbytes = size_t(en - b);
      index_[t.name] = tensors_.size();
      tensors_.push_back(std::move(t));
    }
  } catch (const nlohmann::json::exception& e) {
    throw fail(std::string("malformed header entry: ") + e.what());
  }
}

const SafeTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

SafetensorsModel SafetensorsModel::open_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  SafetensorsModel m;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::vector<std::string> shards;
  if (fs::exists(index)) {
    std::ifstream in(index);
    if (!in) throw IoError(fmt::format("cannot open '{}'", index.string()));
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
      std::set<std::string> uniq;
      for (const auto& [name, file] : j.at("weight_map").items()) uniq.insert(file.get<std::string>());
      shards.assign(uniq.begin(), uniq.end());
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(fmt::format("'{}': {}", index.string(), e.what()));
    }
    for (const auto& s : shards) {
      if (s.find('/') != std::string::npos || s.find("..") != std::string::npos) {
        throw FormatError(fmt::format("'{}': shard name '{}' is not a plain file name", index.string(), s));
      }
    }
  } else if (fs::exists(fs::path(dir) / "model.safetensors")) {
    shards.push_back("model.safetensors");
  } else {
    throw IoError(fmt::format("'{}' has neither model.safetensors nor model.safetensors.index.json", dir));
  }
  for (const auto& s : shards) {
    m.files_.push_back(SafetensorsFile::open((fs::path(dir) / s).string()));
    for (const auto& t : m.files_.back()->tensors()) {
      if (!m.by_name_.emplace(t.name, &t).second) {
        throw FormatError(fmt::format("tensor '{}' appears in more than one shard of '{}'", t.name, dir));
      }
    }
  }
  return m;
}

std::vector<std::string> SafetensorsModel::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : by_name_) out.push_back(k);
  return out;
}

const SafeTensor* SafetensorsModel::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const SafeTensor& SafetensorsModel::get(const std::string& name) const {
  const SafeTensor* t = find(name);
  if (!t) throw FormatError(fmt::format("checkpoint is missing tensor '{}'", name));
  return *t;
}

}  // namespace qleap
