#include "gguf/gguf.h"

#include <fmt/format.h>

#include <cstring>
#include <limits>

#include "core/error.h"

namespace qleap {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr int kMaxDims = 4;
constexpr int kMaxNesting = 8;

// Bounds-checked little-endian cursor over the mapped bytes.
class Cursor {
 public:
  Cursor(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return n_ - pos_; }

  void need(size_t k, const char* what) const {
    if (k > remaining()) {
      throw FormatError(fmt::format("GGUF truncated at byte {}: need {} bytes for {}, file has {} left", pos_,
                                    k, what, remaining()));
    }
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    const uint64_t len = read<uint64_t>(what);
    need(len, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
    pos_ += size_t(len);
    return s;
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
};

size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::BOOL:
      return 1;
    case GgufType::UINT16:
    case GgufType::INT16:
      return 2;
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::FLOAT32:
      return 4;
    case GgufType::UINT64:
    case GgufType::INT64:
    case GgufType::FLOAT64:
      return 8;
    default:
      return 0;
  }
}

bool valid_type(uint32_t t) { return t <= uint32_t(GgufType::FLOAT64); }

// Reads one scalar of type t into v (v.type is set by the caller).
void read_scalar(Cursor& c, GgufType t, GgufValue& v) {
  switch (t) {
    case GgufType::UINT8:
      v.u = c.read<uint8_t>("uint8");
      break;
    case GgufType::INT8:
      v.i = c.read<int8_t>("int8");
      break;
    case GgufType::UINT16:
      v.u = c.read<uint16_t>("uint16");
      break;
    case GgufType::INT16:
      v.i = c.read<int16_t>("int16");
      break;
    case GgufType::UINT32:
      v.u = c.read<uint32_t>("uint32");
      break;
    case GgufType::INT32:
      v.i = c.read<int32_t>("int32");
      break;
    case GgufType::FLOAT32:
      v.f = c.read<float>("float32");
      break;
    case GgufType::BOOL: {
      const uint8_t b = c.read<uint8_t>("bool");
      if (b > 1) throw FormatError(fmt::format("GGUF bool value {} at byte {} is not 0 or 1", b, c.pos() - 1));
      v.u = b;
      break;
    }
    case GgufType::UINT64:
      v.u = c.read<uint64_t>("uint64");
      break;
    case GgufType::INT64:
      v.i = c.read<int64_t>("int64");
      break;
    case GgufType::FLOAT64:
      v.f = c.read<double>("float64");
      break;
    case GgufType::STRING:
      v.s = c.read_string("string");
      break;
    default:
      throw FormatError("GGUF: unexpected value type");
  }
}

GgufValue read_value(Cursor& c, GgufType t, int depth) {
  GgufValue v;
  v.type = t;
  if (t != GgufType::ARRAY) {
    read_scalar(c, t, v);
    return v;
  }
  if (depth >= kMaxNesting) throw FormatError(fmt::format("GGUF array nesting too deep at byte {}", c.pos()));
  const uint32_t et = c.read<uint32_t>("array element type");
  if (!valid_type(et)) throw FormatError(fmt::format("GGUF array element type {} invalid at byte {}", et, c.pos() - 4));
  v.elem_type = GgufType(et);
  const uint64_t n = c.read<uint64_t>("array length");
  // Every element takes at least one byte (strings at least 8), so a count beyond the remaining
  // bytes is corrupt; checking first keeps a hostile count from triggering a huge allocation.
  const size_t min_elem = v.elem_type == GgufType::STRING ? 8 : v.elem_type == GgufType::ARRAY ? 12
                                                                                             : scalar_size(v.elem_type);
  if (n > c.remaining() / min_elem) {
    throw FormatError(fmt::format("GGUF array of {} elements at byte {} exceeds the file size", n, c.pos()));
  }
  GgufValue tmp;
  switch (v.elem_type) {
    case GgufType::STRING:
      v.arr_s.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.arr_s.push_back(c.read_string("array string"));
      break;
    case GgufType::ARRAY:
      v.arr_v.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.arr_v.push_back(read_value(c, GgufType::ARRAY, depth + 1));
      break;
    case GgufType::FLOAT32:
    case GgufType::FLOAT64:
      v.arr_f.reserve(n);
      for (uint64_t k = 0; k < n; ++k) {
        read_scalar(c, v.elem_type, tmp);
        v.arr_f.push_back(tmp.f);
      }
      break;
    case GgufType::INT8:
    case GgufType::INT16:
    case GgufType::INT32:
    case GgufType::INT64:
      v.arr_i.reserve(n);
      for (uint64_t k = 0; k < n; ++k) {
        read_scalar(c, v.elem_type, tmp);
        v.arr_i.push_back(tmp.i);
      }
      break;
    default:
      v.arr_u.reserve(n);
      for (uint64_t k = 0; k < n; ++k) {
        read_scalar(c, v.elem_type, tmp);
        v.arr_u.push_back(tmp.u);
      }
      break;
  }
  return v;
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"u8",  "i8",   "u16",   "i16", "u32", "i32", "f32",
                                "bool", "str", "array", "u64", "i64", "f64"};
  return valid_type(uint32_t(t)) ? names[uint32_t(t)] : "?";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::UINT16:
    case GgufType::INT16:
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::UINT64:
    case GgufType::INT64:
    case GgufType::BOOL:
      return true;
    default:
      return false;
  }
}

size_t GgufValue::array_size() const {
  return arr_u.size() + arr_i.size() + arr_f.size() + arr_s.size() + arr_v.size();
}

int64_t GgufValue::as_int() const {
  switch (type) {
    case GgufType::INT8:
    case GgufType::INT16:
    case GgufType::INT32:
    case GgufType::INT64:
      return i;
    case GgufType::FLOAT32:
    case GgufType::FLOAT64:
      // Converting NaN or an out-of-range double to an integer is undefined behaviour.
      if (!(f >= -9.2e18 && f <= 9.2e18)) {
        throw FormatError(fmt::format("GGUF value {} is not representable as an integer", f));
      }
      return int64_t(f);
    default:
      if (is_integer()) return int64_t(u);
  }
  throw FormatError(fmt::format("GGUF value of type {} is not a number", gguf_type_name(type)));
}

uint64_t GgufValue::as_uint() const {
  const int64_t v = as_int();
  if (type == GgufType::UINT64) return u;
  if (v < 0) throw FormatError("GGUF value is negative where an unsigned number is expected");
  return uint64_t(v);
}

double GgufValue::as_double() const {
  if (is_float()) return f;
  if (type == GgufType::UINT64) return double(u);
  return double(as_int());
}

bool GgufValue::as_bool() const { return as_int() != 0; }

const std::string& GgufValue::as_string() const {
  if (type != GgufType::STRING) {
    throw FormatError(fmt::format("GGUF value of type {} is not a string", gguf_type_name(type)));
  }
  return s;
}

std::string GgufValue::to_display(size_t max_items) const {
  switch (type) {
    case GgufType::STRING: {
      std::string t = s.size() > 80 ? s.substr(0, 77) + "..." : s;
      for (auto& ch : t) {
        if (ch == '\n') ch = ' ';
      }
      return "\"" + t + "\"";
    }
    case GgufType::FLOAT32:
    case GgufType::FLOAT64:
      return fmt::format("{:g}", f);
    case GgufType::BOOL:
      return u ? "true" : "false";
    case GgufType::ARRAY: {
      const size_t n = array_size();
      std::string out = fmt::format("[{} x {}]", gguf_type_name(elem_type), n);
      if (n == 0) return out;
      out += " {";
      for (size_t k = 0; k < n && k < max_items; ++k) {
        if (k) out += ", ";
        if (!arr_s.empty()) out += "\"" + (arr_s[k].size() > 16 ? arr_s[k].substr(0, 16) + "..." : arr_s[k]) + "\"";
        if (!arr_u.empty()) out += std::to_string(arr_u[k]);
        if (!arr_i.empty()) out += std::to_string(arr_i[k]);
        if (!arr_f.empty()) out += fmt::format("{:g}", arr_f[k]);
        if (!arr_v.empty()) out += arr_v[k].to_display(2);
      }
      if (n > max_items) out += ", ...";
      return out + "}";
    }
    default:
      return is_integer() ? (type == GgufType::INT8 || type == GgufType::INT16 || type == GgufType::INT32 ||
                                     type == GgufType::INT64
                                 ? std::to_string(i)
                                 : std::to_string(u))
                          : "?";
  }
}

int64_t GgufTensor::n_elements() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::shared_ptr<GgufFile> GgufFile::open(const std::string& path) {
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->map_ = MappedFile(path);
  f->base_ = f->map_.data();
  f->size_ = f->map_.size();
  try {
    f->parse_all(f->size_, false);
  } catch (const FormatError& e) {
    throw FormatError("'" + path + "': " + e.what());
  }
  return f;
}

std::shared_ptr<GgufFile> GgufFile::parse(const uint8_t* data, size_t size) {
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->base_ = data;
  f->size_ = size;
  f->parse_all(size, false);
  return f;
}

std::shared_ptr<GgufFile> GgufFile::parse_header(const uint8_t* data, size_t size, uint64_t file_size) {
  if (size > file_size) throw FormatError("GGUF header prefix is longer than the file");
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->base_ = data;
  f->size_ = size;
  f->parse_all(file_size, true);
  f->base_ = nullptr;  // the caller's buffer may go: nothing points into it any more
  f->size_ = size_t(file_size);
  return f;
}

void GgufFile::parse_all(uint64_t file_size, bool header_only) {
  Cursor c(base_, size_);
  if (size_ < 4) throw FormatError("not a GGUF file: smaller than the 4-byte magic");
  const uint32_t magic = c.read<uint32_t>("magic");
  if (magic != kMagic) throw FormatError("not a GGUF file: bad magic (expected 'GGUF')");
  version_ = c.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    throw FormatError(fmt::format("unsupported GGUF version {} (supported: 2, 3)", version_));
  }
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  // Each KV takes >= 13 bytes and each tensor info >= 24: reject impossible counts up front.
  if (n_kv > c.remaining() / 13) throw FormatError(fmt::format("GGUF metadata count {} exceeds the file size", n_kv));
  if (n_tensors > c.remaining() / 24) {
    throw FormatError(fmt::format("GGUF tensor count {} exceeds the file size", n_tensors));
  }

  kv_.reserve(n_kv);
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.read_string("metadata key");
    const uint32_t t = c.read<uint32_t>("metadata value type");
    if (!valid_type(t)) {
      throw FormatError(fmt::format("GGUF metadata '{}' has invalid value type {} at byte {}", key, t, c.pos() - 4));
    }
    GgufValue v = read_value(c, GgufType(t), 0);
    if (kv_index_.count(key)) throw FormatError(fmt::format("GGUF metadata key '{}' appears twice", key));
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find("general.alignment")) {
    const uint64_t al = a->as_uint();
    if (al == 0 || (al & (al - 1)) != 0 || al > (1u << 20)) {
      throw FormatError(fmt::format("GGUF general.alignment {} is not a power of two", al));
    }
    alignment_ = size_t(al);
  }

  tensors_.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    t.name = c.read_string("tensor name");
    const uint32_t nd = c.read<uint32_t>("tensor dims");
    if (nd == 0 || nd > kMaxDims) {
      throw FormatError(fmt::format("tensor '{}' has {} dimensions (1..{} allowed)", t.name, nd, kMaxDims));
    }
    uint64_t n_el = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t ne = c.read<uint64_t>("tensor dim");
      if (ne == 0 || ne > (uint64_t(1) << 40) || n_el > (uint64_t(1) << 48) / ne) {
        throw FormatError(fmt::format("tensor '{}' has an invalid dimension {}", t.name, ne));
      }
      n_el *= ne;
      t.shape.push_back(int64_t(ne));
    }
    const uint32_t ty = c.read<uint32_t>("tensor type");
    const TypeTraits& tr = type_traits(ty);
    if (tr.name == nullptr) throw FormatError(fmt::format("tensor '{}' has unknown type id {}", t.name, ty));
    t.type = GgmlType(ty);
    if (t.shape[0] % tr.block_size != 0) {
      throw FormatError(fmt::format("tensor '{}': row length {} is not a multiple of the {} block size {}", t.name,
                                    t.shape[0], tr.name, tr.block_size));
    }
    t.nbytes = n_el / uint64_t(tr.block_size) * tr.type_size;
    t.offset = c.read<uint64_t>("tensor offset");
    if (t.offset % alignment_ != 0) {
      throw FormatError(fmt::format("tensor '{}' offset {} is not aligned to {}", t.name, t.offset, alignment_));
    }
    if (tensor_index_.count(t.name)) throw FormatError(fmt::format("tensor '{}' appears twice", t.name));
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  data_offset_ = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (data_offset_ > file_size && !tensors_.empty()) {
    throw FormatError(
        fmt::format("GGUF data section starts at {} beyond the end of the file ({})", data_offset_, file_size));
  }
  for (auto& t : tensors_) {
    const uint64_t avail = file_size - std::min<uint64_t>(file_size, data_offset_);
    if (t.offset > avail || t.nbytes > avail - t.offset) {
      throw FormatError(fmt::format("tensor '{}' ({} bytes at data offset {}) extends past the end of the file "
                                    "(data section has {} bytes): file truncated?",
                                    t.name, t.nbytes, t.offset, avail));
    }
    t.data = header_only ? nullptr : base_ + data_offset_ + t.offset;
  }
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(std::string(key));
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufValue* GgufFile::find_arch(std::string_view suffix) const {
  return find(architecture() + "." + std::string(suffix));
}

std::string GgufFile::get_string(std::string_view key, const std::string& def) const {
  const GgufValue* v = find(key);
  return v ? v->as_string() : def;
}

int64_t GgufFile::get_int(std::string_view key, int64_t def) const {
  const GgufValue* v = find(key);
  return v ? v->as_int() : def;
}

double GgufFile::get_float(std::string_view key, double def) const {
  const GgufValue* v = find(key);
  return v ? v->as_double() : def;
}

bool GgufFile::get_bool(std::string_view key, bool def) const {
  const GgufValue* v = find(key);
  return v ? v->as_bool() : def;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::tensor(std::string_view name) const {
  const GgufTensor* t = find_tensor(name);
  if (!t) throw FormatError(fmt::format("model is missing tensor '{}'", name));
  return *t;
}

uint64_t GgufFile::tensor_bytes() const {
  uint64_t n = 0;
  for (const auto& t : tensors_) n += t.nbytes;
  return n;
}

}  // namespace qleap
