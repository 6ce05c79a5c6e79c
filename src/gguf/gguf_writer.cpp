#include "gguf/gguf_writer.h"

#include <fmt/format.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <unordered_set>

#include "core/error.h"

namespace qleap {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF"
constexpr uint32_t kVersion = 3;

GgufValue scalar(GgufType t) {
  GgufValue v;
  v.type = t;
  return v;
}

// Buffered file output; every failure becomes an IoError naming the file.
class Out {
 public:
  explicit Out(const std::string& path) : path_(path) {
    f_ = std::fopen(path.c_str(), "wb");
    if (!f_) throw IoError(fmt::format("cannot create '{}': {}", path, std::strerror(errno)));
    std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
  }
  ~Out() {
    if (f_) std::fclose(f_);
  }
  Out(const Out&) = delete;
  Out& operator=(const Out&) = delete;

  void bytes(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n) {
      throw IoError(fmt::format("write to '{}' failed: {}", path_, std::strerror(errno)));
    }
    pos_ += n;
  }
  template <typename T>
  void put(T v) {
    bytes(&v, sizeof(T));
  }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    bytes(s.data(), s.size());
  }
  void pad_to(size_t align) {
    static const uint8_t zeros[64] = {};
    size_t n = (align - pos_ % align) % align;
    while (n > 0) {
      const size_t k = std::min(n, sizeof(zeros));
      bytes(zeros, k);
      n -= k;
    }
  }
  void close() {
    std::FILE* f = f_;
    f_ = nullptr;
    if (std::fclose(f) != 0)
      throw IoError(fmt::format("closing '{}' failed: {}", path_, std::strerror(errno)));
  }
  uint64_t pos() const { return pos_; }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  uint64_t pos_ = 0;
};

void write_scalar(Out& o, GgufType t, uint64_t u, int64_t i, double f, const std::string* s) {
  switch (t) {
    case GgufType::UINT8:
      return o.put<uint8_t>(uint8_t(u));
    case GgufType::INT8:
      return o.put<int8_t>(int8_t(i));
    case GgufType::UINT16:
      return o.put<uint16_t>(uint16_t(u));
    case GgufType::INT16:
      return o.put<int16_t>(int16_t(i));
    case GgufType::UINT32:
      return o.put<uint32_t>(uint32_t(u));
    case GgufType::INT32:
      return o.put<int32_t>(int32_t(i));
    case GgufType::FLOAT32:
      return o.put<float>(float(f));
    case GgufType::BOOL:
      return o.put<uint8_t>(u ? 1 : 0);
    case GgufType::UINT64:
      return o.put<uint64_t>(u);
    case GgufType::INT64:
      return o.put<int64_t>(i);
    case GgufType::FLOAT64:
      return o.put<double>(f);
    case GgufType::STRING:
      return o.str(*s);
    default:
      throw InvalidArgument("GGUF writer: not a scalar type");
  }
}

enum class Store { U, I, F, S, V };
Store store_of(GgufType t) {
  switch (t) {
    case GgufType::INT8:
    case GgufType::INT16:
    case GgufType::INT32:
    case GgufType::INT64:
      return Store::I;
    case GgufType::FLOAT32:
    case GgufType::FLOAT64:
      return Store::F;
    case GgufType::STRING:
      return Store::S;
    case GgufType::ARRAY:
      return Store::V;
    default:
      return Store::U;
  }
}

// Checks that an array value stores its elements where its element type says (the writer would
// otherwise silently emit an empty or mistyped array).
void validate(const std::string& key, const GgufValue& v, int depth) {
  if (uint32_t(v.type) > uint32_t(GgufType::FLOAT64)) {
    throw InvalidArgument(fmt::format("GGUF writer: key '{}' has invalid type {}", key, uint32_t(v.type)));
  }
  if (!v.is_array()) return;
  if (depth > 8) throw InvalidArgument(fmt::format("GGUF writer: key '{}' nests arrays too deeply", key));
  if (uint32_t(v.elem_type) > uint32_t(GgufType::FLOAT64)) {
    throw InvalidArgument(fmt::format("GGUF writer: key '{}' has invalid element type", key));
  }
  const size_t n = v.array_size();
  size_t in_store = 0;
  switch (store_of(v.elem_type)) {
    case Store::U:
      in_store = v.arr_u.size();
      break;
    case Store::I:
      in_store = v.arr_i.size();
      break;
    case Store::F:
      in_store = v.arr_f.size();
      break;
    case Store::S:
      in_store = v.arr_s.size();
      break;
    case Store::V:
      in_store = v.arr_v.size();
      break;
  }
  if (in_store != n) {
    throw InvalidArgument(fmt::format("GGUF writer: array '{}' of {} keeps elements in the wrong vector", key,
                                      gguf_type_name(v.elem_type)));
  }
  for (const auto& e : v.arr_v) {
    if (!e.is_array())
      throw InvalidArgument(fmt::format("GGUF writer: nested element of '{}' is not an array", key));
    validate(key, e, depth + 1);
  }
}

void write_value(Out& o, const GgufValue& v) {
  if (!v.is_array()) return write_scalar(o, v.type, v.u, v.i, v.f, &v.s);
  o.put<uint32_t>(uint32_t(v.elem_type));
  o.put<uint64_t>(v.array_size());
  switch (store_of(v.elem_type)) {
    case Store::U:
      for (auto x : v.arr_u) write_scalar(o, v.elem_type, x, 0, 0, nullptr);
      break;
    case Store::I:
      for (auto x : v.arr_i) write_scalar(o, v.elem_type, 0, x, 0, nullptr);
      break;
    case Store::F:
      for (auto x : v.arr_f) write_scalar(o, v.elem_type, 0, 0, x, nullptr);
      break;
    case Store::S:
      for (const auto& x : v.arr_s) o.str(x);
      break;
    case Store::V:
      for (const auto& x : v.arr_v) write_value(o, x);
      break;
  }
}

}  // namespace

void GgufWriter::set(const std::string& key, GgufValue v) {
  validate(key, v, 0);
  for (auto& kv : kv_) {
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  }
  kv_.emplace_back(key, std::move(v));
}

#define QLEAP_SETTER(fn, T, gt, field)               \
  void GgufWriter::fn(const std::string& key, T x) { \
    GgufValue v = scalar(GgufType::gt);              \
    v.field = x;                                     \
    set(key, std::move(v));                          \
  }
QLEAP_SETTER(set_u8, uint8_t, UINT8, u)
QLEAP_SETTER(set_i8, int8_t, INT8, i)
QLEAP_SETTER(set_u16, uint16_t, UINT16, u)
QLEAP_SETTER(set_i16, int16_t, INT16, i)
QLEAP_SETTER(set_u32, uint32_t, UINT32, u)
QLEAP_SETTER(set_i32, int32_t, INT32, i)
QLEAP_SETTER(set_u64, uint64_t, UINT64, u)
QLEAP_SETTER(set_i64, int64_t, INT64, i)
QLEAP_SETTER(set_f32, float, FLOAT32, f)
QLEAP_SETTER(set_f64, double, FLOAT64, f)
QLEAP_SETTER(set_bool, bool, BOOL, u)
QLEAP_SETTER(set_string, const std::string&, STRING, s)
#undef QLEAP_SETTER

void GgufWriter::set_array_string(const std::string& key, std::vector<std::string> a) {
  GgufValue v = scalar(GgufType::ARRAY);
  v.elem_type = GgufType::STRING;
  v.arr_s = std::move(a);
  set(key, std::move(v));
}

void GgufWriter::set_array_i32(const std::string& key, const std::vector<int32_t>& a) {
  GgufValue v = scalar(GgufType::ARRAY);
  v.elem_type = GgufType::INT32;
  v.arr_i.assign(a.begin(), a.end());
  set(key, std::move(v));
}

void GgufWriter::set_array_u32(const std::string& key, const std::vector<uint32_t>& a) {
  GgufValue v = scalar(GgufType::ARRAY);
  v.elem_type = GgufType::UINT32;
  v.arr_u.assign(a.begin(), a.end());
  set(key, std::move(v));
}

void GgufWriter::set_array_f32(const std::string& key, const std::vector<float>& a) {
  GgufValue v = scalar(GgufType::ARRAY);
  v.elem_type = GgufType::FLOAT32;
  v.arr_f.assign(a.begin(), a.end());
  set(key, std::move(v));
}

bool GgufWriter::has(const std::string& key) const {
  for (const auto& kv : kv_) {
    if (kv.first == key) return true;
  }
  return false;
}

void GgufWriter::remove(const std::string& key) {
  std::erase_if(kv_, [&](const auto& kv) { return kv.first == key; });
}

void GgufWriter::set_alignment(uint32_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    throw InvalidArgument(fmt::format("GGUF alignment {} is not a power of two", alignment));
  }
  alignment_ = alignment;
  if (alignment == 32) {
    remove("general.alignment");
  } else {
    set_u32("general.alignment", alignment);
  }
}

GgufWriter::Tensor& GgufWriter::new_tensor(const std::string& name, GgmlType type,
                                           std::vector<int64_t> shape) {
  const TypeTraits& tr = type_traits(type);
  if (tr.name == nullptr)
    throw InvalidArgument(fmt::format("tensor '{}': unknown type id {}", name, uint32_t(type)));
  if (shape.empty() || shape.size() > 4) {
    throw InvalidArgument(fmt::format("tensor '{}' has {} dimensions (1..4 allowed)", name, shape.size()));
  }
  uint64_t n = 1;
  for (auto d : shape) {
    if (d <= 0) throw InvalidArgument(fmt::format("tensor '{}' has a non-positive dimension", name));
    n *= uint64_t(d);
  }
  if (shape[0] % tr.block_size != 0) {
    throw InvalidArgument(fmt::format("tensor '{}': row length {} is not a multiple of the {} block size {}",
                                      name, shape[0], tr.name, tr.block_size));
  }
  for (const auto& t : tensors_) {
    if (t.name == name) throw InvalidArgument(fmt::format("tensor '{}' added twice", name));
  }
  Tensor t;
  t.name = name;
  t.type = type;
  t.shape = std::move(shape);
  t.nbytes = n / uint64_t(tr.block_size) * tr.type_size;
  tensors_.push_back(std::move(t));
  return tensors_.back();
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape,
                            const void* data) {
  new_tensor(name, type, std::move(shape)).data = data;
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape,
                            std::vector<uint8_t> owned) {
  Tensor& t = new_tensor(name, type, std::move(shape));
  if (owned.size() != t.nbytes) {
    const std::string msg =
        fmt::format("tensor '{}': {} bytes given, {} expected", name, owned.size(), t.nbytes);
    tensors_.pop_back();
    throw InvalidArgument(msg);
  }
  t.owned = std::move(owned);
  t.data = t.owned.data();
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape,
                            Producer producer) {
  new_tensor(name, type, std::move(shape)).producer = std::move(producer);
}

void GgufWriter::write(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  try {
    Out o(tmp);
    o.put<uint32_t>(kMagic);
    o.put<uint32_t>(kVersion);
    o.put<uint64_t>(tensors_.size());
    o.put<uint64_t>(kv_.size());
    for (const auto& [key, v] : kv_) {
      o.str(key);
      o.put<uint32_t>(uint32_t(v.type));
      write_value(o, v);
    }
    uint64_t off = 0;
    for (const auto& t : tensors_) {
      o.str(t.name);
      o.put<uint32_t>(uint32_t(t.shape.size()));
      for (auto d : t.shape) o.put<uint64_t>(uint64_t(d));
      o.put<uint32_t>(uint32_t(t.type));
      o.put<uint64_t>(off);
      off += (t.nbytes + alignment_ - 1) / alignment_ * alignment_;
    }
    o.pad_to(alignment_);
    std::vector<uint8_t> buf;
    for (const auto& t : tensors_) {
      if (t.producer) {
        buf.resize(t.nbytes);
        t.producer(buf.data(), t.nbytes);
        o.bytes(buf.data(), t.nbytes);
      } else {
        o.bytes(t.data, t.nbytes);
      }
      o.pad_to(alignment_);
    }
    o.close();
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    std::remove(tmp.c_str());
    throw IoError(fmt::format("cannot rename '{}' to '{}': {}", tmp, path, err));
  }
}

}  // namespace qleap
