// The model store: a directory of GGUF files (default ~/.qleap/models, $QLEAP_MODELS) addressed by
// Ollama-style names "name:tag". A file "<name>.gguf" is "<name>:latest"; "<name>@<tag>.gguf" is
// "<name>:<tag>"; '/' in a name (e.g. "hf.co/owner/repo") is stored as "%2F". Metadata (family,
// parameter size, quantization) is read from the GGUF header. Shared by `qleap serve` and the
// list / pull / rm commands.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace qleap::server {

// A request named a model the store does not have (HTTP 404).
struct ModelNotFound : InvalidArgument {
  using InvalidArgument::InvalidArgument;
};

struct ModelName {
  std::string name;
  std::string tag = "latest";
  std::string full() const { return name + ":" + tag; }
};
// "name[:tag]" -> {name, tag or "latest"}. Names may hold letters, digits, '.', '_', '-', '/', and
// must not start with '.', '/' or '-'. Throws InvalidArgument on anything else.
ModelName parse_model_name(std::string_view s);
std::string file_name_for(const ModelName& n);
// nullopt for files that are not "*.gguf" or do not decode to a valid name.
std::optional<ModelName> name_from_file(std::string_view file_name);

struct ModelInfo {
  std::string name;  // "name:tag"
  std::string path;
  uint64_t size = 0;
  int64_t modified_unix = 0;
  std::string digest;              // hex; derived from path, size and mtime (not a content hash)
  std::string family;              // general.architecture
  std::string parameter_size;      // "135M", "7.2B"
  std::string quantization_level;  // "Q4_1", "Q4_K_M", "F16"
  int64_t n_params = 0;
  int64_t context_length = 0;
  int64_t embedding_length = 0;
  std::string chat_template;  // tokenizer.chat_template ("" when absent)
  std::string license;
};

// Reads a GGUF header. Throws IoError / FormatError.
ModelInfo read_model_info(const std::string& path, const std::string& name);
std::string format_parameter_size(int64_t n_params);
// llama.cpp's general.file_type enum to its name ("" when unknown).
std::string file_type_name(int64_t file_type);

// "name:tag" pieces of a pull reference: hf.co/owner/repo[:quant], owner/repo/file.gguf, or a
// local file path. Exposed for tests.
struct PullRef {
  enum Kind { kLocalFile, kHfRepo, kHfFile } kind = kLocalFile;
  std::string path;      // kLocalFile
  std::string repo;      // owner/repo
  std::string file;      // kHfFile: file in the repo
  std::string quant;     // kHfRepo: wanted quantization ("" = pick Q4_K_M, else the first GGUF)
  ModelName store_name;  // name it gets in the store
};
// Throws InvalidArgument when s is none of the three forms.
PullRef parse_pull_ref(const std::string& s);

struct PullProgress {
  std::string status;
  std::string digest;
  uint64_t total = 0;
  uint64_t completed = 0;
};
// Returns false to cancel.
using ProgressFn = std::function<bool(const PullProgress&)>;

class ModelStore {
 public:
  explicit ModelStore(std::string dir);
  const std::string& dir() const { return dir_; }

  // Every valid model file (unreadable GGUFs are skipped), sorted by name.
  std::vector<ModelInfo> list() const;
  // name or name:tag (tag defaults to latest); also accepts a file name ("x.gguf") in the store.
  std::optional<ModelInfo> find(std::string_view name) const;
  // Throws ModelNotFound.
  ModelInfo get(std::string_view name) const;
  // Throws ModelNotFound / InvalidArgument / IoError.
  void copy(std::string_view source, std::string_view destination);
  void remove(std::string_view name);
  // Imports a local file (hard link when possible, else copy) under `as`.
  ModelInfo import_file(const std::string& path, const ModelName& as, const ProgressFn& progress);
  // Local path or Hugging Face reference; throws IoError with a clear message when offline.
  ModelInfo pull(const std::string& ref, const ProgressFn& progress);

 private:
  std::string path_for(const ModelName& n) const;
  // read_model_info with a cache keyed by path, size and mtime (every request looks its model up).
  ModelInfo info_for(const std::string& path, const std::string& name) const;
  std::string dir_;
  mutable std::mutex cache_mu_;
  mutable std::map<std::string, ModelInfo> cache_;
};

// $QLEAP_MODELS or ~/.qleap/models.
std::string default_models_dir();

}  // namespace qleap::server
