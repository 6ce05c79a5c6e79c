#include "server/model_store.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>

#include "gguf/gguf.h"

namespace qleap::server {

namespace fs = std::filesystem;

namespace {

bool valid_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '-' || c == '/';
}

bool valid_tag_char(char c) {
  return valid_name_char(c) && c != '/';
}

std::string replace_all(const std::string& s, std::string_view from, std::string_view to) {
  std::string out;
  size_t i = 0;
  for (size_t p; (p = s.find(from, i)) != std::string::npos; i = p + from.size()) {
    out.append(s, i, p - i);
    out.append(to);
  }
  out.append(s, i, std::string::npos);
  return out;
}

}  // namespace

ModelName parse_model_name(std::string_view s) {
  if (s.empty()) throw InvalidArgument("model name is empty");
  if (s.size() > 256) throw InvalidArgument("model name is longer than 256 characters");
  ModelName n;
  const size_t colon = s.rfind(':');
  // "hf.co/x/y:Q4" has its tag after the last ':'; a ':' inside the path part is invalid anyway.
  if (colon != std::string_view::npos) {
    n.name = std::string(s.substr(0, colon));
    n.tag = std::string(s.substr(colon + 1));
    if (n.tag.empty()) throw InvalidArgument(fmt::format("model name '{}' has an empty tag", s));
  } else {
    n.name = std::string(s);
  }
  if (n.name.empty()) throw InvalidArgument(fmt::format("model name '{}' has an empty name", s));
  if (n.name[0] == '.' || n.name[0] == '/' || n.name[0] == '-' || n.name.find("..") != std::string::npos ||
      n.name.back() == '/') {
    throw InvalidArgument(fmt::format("invalid model name '{}'", s));
  }
  for (char c : n.name) {
    if (!valid_name_char(c)) throw InvalidArgument(fmt::format("invalid character in model name '{}'", s));
  }
  for (char c : n.tag) {
    if (!valid_tag_char(c)) throw InvalidArgument(fmt::format("invalid character in model tag '{}'", s));
  }
  return n;
}

std::string file_name_for(const ModelName& n) {
  std::string base = replace_all(n.name, "/", "%2F");
  if (n.tag != "latest") base += "@" + n.tag;
  return base + ".gguf";
}

std::optional<ModelName> name_from_file(std::string_view fn) {
  if (fn.size() <= 5 || fn.substr(fn.size() - 5) != ".gguf") return std::nullopt;
  std::string stem(fn.substr(0, fn.size() - 5));
  std::string tag = "latest";
  if (const size_t at = stem.rfind('@'); at != std::string::npos) {
    tag = stem.substr(at + 1);
    stem.resize(at);
  }
  stem = replace_all(stem, "%2F", "/");
  try {
    return parse_model_name(stem + ":" + tag);
  } catch (const InvalidArgument&) {
    return std::nullopt;
  }
}

std::string format_parameter_size(int64_t n) {
  if (n >= 1'000'000'000) return fmt::format("{:.1f}B", double(n) / 1e9);
  if (n >= 1'000'000) return fmt::format("{:.0f}M", double(n) / 1e6);
  if (n >= 1'000) return fmt::format("{:.0f}K", double(n) / 1e3);
  return std::to_string(n);
}

std::string file_type_name(int64_t t) {
  static const std::map<int64_t, const char*> kNames = {
      {0, "F32"},     {1, "F16"},     {2, "Q4_0"},     {3, "Q4_1"},    {7, "Q8_0"},     {8, "Q5_0"},
      {9, "Q5_1"},    {10, "Q2_K"},   {11, "Q3_K_S"},  {12, "Q3_K_M"}, {13, "Q3_K_L"},  {14, "Q4_K_S"},
      {15, "Q4_K_M"}, {16, "Q5_K_S"}, {17, "Q5_K_M"},  {18, "Q6_K"},   {19, "IQ2_XXS"}, {20, "IQ2_XS"},
      {21, "Q2_K_S"}, {22, "IQ3_XS"}, {23, "IQ3_XXS"}, {24, "IQ1_S"},  {25, "IQ4_NL"},  {26, "IQ3_S"},
      {27, "IQ3_M"},  {28, "IQ2_S"},  {29, "IQ2_M"},   {30, "IQ4_XS"}, {31, "IQ1_M"},   {32, "BF16"}};
  auto it = kNames.find(t);
  return it == kNames.end() ? "" : it->second;
}

ModelInfo read_model_info(const std::string& path, const std::string& name) {
  ModelInfo m;
  m.name = name;
  m.path = path;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw IoError(fmt::format("cannot stat '{}'", path));
  m.size = uint64_t(st.st_size);
  m.modified_unix = int64_t(st.st_mtime);
  const uint64_t h1 = std::hash<std::string>{}(path) ^ (uint64_t(st.st_size) * 0x9E3779B97F4A7C15ull);
  const uint64_t h2 = std::hash<std::string>{}(name + std::to_string(st.st_mtime)) * 0xC2B2AE3D27D4EB4Full;
  m.digest = fmt::format("{:016x}{:016x}{:016x}{:016x}", h1, h2, h1 ^ (h2 >> 7), h2 ^ (h1 << 3));
  auto f = GgufFile::open(path);
  m.family = f->architecture();
  for (const auto& t : f->tensors()) m.n_params += t.n_elements();
  m.parameter_size = format_parameter_size(m.n_params);
  m.quantization_level = file_type_name(f->get_int("general.file_type", -1));
  if (m.quantization_level.empty()) {
    // The type holding most bytes.
    std::map<std::string, uint64_t> bytes;
    for (const auto& t : f->tensors()) bytes[type_name(t.type)] += t.nbytes;
    uint64_t best = 0;
    for (const auto& [k, v] : bytes) {
      if (v > best) best = v, m.quantization_level = k;
    }
  }
  if (const GgufValue* v = f->find_arch(".context_length"); v && v->is_integer())
    m.context_length = v->as_int();
  if (const GgufValue* v = f->find_arch(".embedding_length"); v && v->is_integer())
    m.embedding_length = v->as_int();
  m.chat_template = f->get_string("tokenizer.chat_template", "");
  m.license = f->get_string("general.license", "");
  return m;
}

std::string default_models_dir() {
  if (const char* env = std::getenv("QLEAP_MODELS"); env && *env) return env;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : ".") + "/.qleap/models";
}

ModelStore::ModelStore(std::string dir) : dir_(std::move(dir)) {}

std::string ModelStore::path_for(const ModelName& n) const {
  return (fs::path(dir_) / file_name_for(n)).string();
}

ModelInfo ModelStore::info_for(const std::string& path, const std::string& name) const {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw IoError(fmt::format("cannot stat '{}'", path));
  const std::string key =
      fmt::format("{}|{}|{}.{}|{}|{}", path, uint64_t(st.st_size), int64_t(st.st_mtim.tv_sec),
                  int64_t(st.st_mtim.tv_nsec), uint64_t(st.st_ino), name);
  {
    std::lock_guard<std::mutex> lk(cache_mu_);
    if (auto it = cache_.find(key); it != cache_.end()) return it->second;
  }
  ModelInfo m = read_model_info(path, name);
  std::lock_guard<std::mutex> lk(cache_mu_);
  if (cache_.size() > 1024) cache_.clear();
  cache_[key] = m;
  return m;
}

std::vector<ModelInfo> ModelStore::list() const {
  std::vector<ModelInfo> out;
  std::error_code ec;
  if (!fs::is_directory(dir_, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const auto n = name_from_file(e.path().filename().string());
    if (!n || !e.is_regular_file(ec)) continue;
    try {
      out.push_back(info_for(e.path().string(), n->full()));
    } catch (const Error&) {
      // A partial download or a corrupt file is not a model.
    }
  }
  std::sort(out.begin(), out.end(), [](const ModelInfo& a, const ModelInfo& b) { return a.name < b.name; });
  return out;
}

std::optional<ModelInfo> ModelStore::find(std::string_view name) const {
  std::string s(name);
  if (s.size() > 5 && s.substr(s.size() - 5) == ".gguf") {
    if (auto n = name_from_file(s)) s = n->full();
  }
  ModelName n;
  try {
    n = parse_model_name(s);
  } catch (const InvalidArgument&) {
    return std::nullopt;
  }
  const std::string p = path_for(n);
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return std::nullopt;
  try {
    return info_for(p, n.full());
  } catch (const Error&) {
    return std::nullopt;
  }
}

ModelInfo ModelStore::get(std::string_view name) const {
  auto m = find(name);
  if (!m) throw ModelNotFound(fmt::format("model '{}' not found", name));
  return *m;
}

void ModelStore::copy(std::string_view source, std::string_view destination) {
  const ModelInfo src = get(source);
  const ModelName dst = parse_model_name(destination);
  const std::string to = path_for(dst);
  if (to == src.path) return;
  std::error_code ec;
  fs::remove(to, ec);
  fs::create_hard_link(src.path, to, ec);
  if (ec) {
    ec.clear();
    fs::copy_file(src.path, to, fs::copy_options::overwrite_existing, ec);
    if (ec) throw IoError(fmt::format("cannot copy '{}' to '{}': {}", src.path, to, ec.message()));
  }
}

void ModelStore::remove(std::string_view name) {
  const ModelInfo m = get(name);
  std::error_code ec;
  if (!fs::remove(m.path, ec) || ec)
    throw IoError(fmt::format("cannot delete '{}': {}", m.path, ec.message()));
}

ModelInfo ModelStore::import_file(const std::string& path, const ModelName& as, const ProgressFn& progress) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw InvalidArgument(fmt::format("'{}' is not a file", path));
  // Validate before taking it in: a file the engine cannot read is not a model.
  read_model_info(path, as.full());
  fs::create_directories(dir_, ec);
  const std::string to = path_for(as);
  const uint64_t total = fs::file_size(path, ec);
  if (progress && !progress({"copying " + fs::path(path).filename().string(), "", total, 0})) {
    throw InvalidArgument("pull cancelled");
  }
  // Already there (the same file, e.g. linked by an earlier pull): nothing to do. rename() of a
  // link onto another link of the same file succeeds without removing the source, which used to
  // leave "<name>.partial" behind on every repeated pull.
  const bool same = fs::exists(to, ec) && fs::equivalent(path, to, ec) && !ec;
  ec.clear();
  if (!same && fs::weakly_canonical(path, ec) != fs::weakly_canonical(to, ec)) {
    const std::string tmp = to + ".partial";
    fs::remove(tmp, ec);
    ec.clear();
    fs::create_hard_link(path, tmp, ec);
    if (ec) {
      ec.clear();
      fs::copy_file(path, tmp, fs::copy_options::overwrite_existing, ec);
      if (ec) {
        fs::remove(tmp, ec);
        throw IoError(fmt::format("cannot copy '{}' into the store: {}", path, ec.message()));
      }
    }
    fs::rename(tmp, to, ec);
    std::error_code ec2;
    fs::remove(tmp, ec2);  // still there when `to` already was a link to the same file
    if (ec) throw IoError(fmt::format("cannot move '{}' into place: {}", to, ec.message()));
  }
  if (progress) progress({"copying " + fs::path(path).filename().string(), "", total, total});
  return read_model_info(to, as.full());
}

}  // namespace qleap::server
