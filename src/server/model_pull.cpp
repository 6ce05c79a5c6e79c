// `pull`: local GGUF import, or a download from a Hugging Face GGUF repository over HTTPS
// (cpp-httplib + OpenSSL when the build has it). Writes to "<file>.partial" and renames when done.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "server/hf_hub.h"
#include "server/model_store.h"

#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
#include <httplib.h>
#endif

namespace qleap::server {

namespace fs = std::filesystem;

namespace {

bool starts_with(std::string_view s, std::string_view p) {
  return s.substr(0, p.size()) == p;
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
httplib::Headers auth_headers() {
  httplib::Headers h = {{"User-Agent", "qleap/0.1"}};
  if (const char* t = std::getenv("HF_TOKEN"); t && *t)
    h.emplace("Authorization", std::string("Bearer ") + t);
  return h;
}

[[noreturn]] void network_error(const std::string& what, httplib::Error e) {
  throw IoError(
      fmt::format("pull failed: cannot reach the Hugging Face Hub at {} ({}: {}); check the network "
                  "connection (or QLEAP_HF_ENDPOINT), or pull a local .gguf file by path",
                  hf::endpoint(), what, httplib::to_string(e)));
}

std::string pick_repo_file(const std::string& repo, const std::string& quant) {
  httplib::Client cli(hf::endpoint());
  cli.set_connection_timeout(10);
  cli.set_read_timeout(30);
  cli.set_follow_location(true);
  auto res = cli.Get(("/api/models/" + repo).c_str(), auth_headers());
  if (!res) network_error("listing " + repo, res.error());
  if (res->status == 401 || res->status == 404) {
    throw ModelNotFound(
        fmt::format("pull failed: Hugging Face repository '{}' not found (HTTP {})", repo, res->status));
  }
  if (res->status != 200) throw IoError(fmt::format("pull failed: HTTP {} listing '{}'", res->status, repo));
  std::vector<std::string> ggufs;
  try {
    for (const auto& s : nlohmann::json::parse(res->body).at("siblings")) {
      const std::string f = s.at("rfilename").get<std::string>();
      if (f.size() > 5 && lower(f.substr(f.size() - 5)) == ".gguf") ggufs.push_back(f);
    }
  } catch (const std::exception& e) {
    throw IoError(fmt::format("pull failed: unexpected answer listing '{}': {}", repo, e.what()));
  }
  if (ggufs.empty()) throw ModelNotFound(fmt::format("pull failed: '{}' holds no .gguf file", repo));
  const std::string want = lower(quant.empty() ? "q4_k_m" : quant);
  for (const auto& f : ggufs) {
    if (lower(f).find(want) != std::string::npos) return f;
  }
  if (quant.empty()) return ggufs.front();
  throw ModelNotFound(fmt::format("pull failed: no .gguf file in '{}' matches '{}'", repo, quant));
}

void download(const std::string& repo, const std::string& file, const std::string& to,
              const ProgressFn& progress) {
  httplib::Client cli(hf::endpoint());
  cli.set_connection_timeout(10);
  cli.set_read_timeout(60);
  cli.set_follow_location(true);
  const std::string tmp = to + ".partial";
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  if (!out) throw IoError(fmt::format("cannot write '{}'", tmp));
  uint64_t total = 0, done = 0, reported = 0;
  bool cancelled = false;
  int http_status = 0;
  const std::string status = "pulling " + file;
  auto res = cli.Get(("/" + repo + "/resolve/main/" + file).c_str(), auth_headers(),
                     [&](const httplib::Response& r) {
                       http_status = r.status;
                       if (r.has_header("Content-Length"))
                         total = std::strtoull(r.get_header_value("Content-Length").c_str(), nullptr, 10);
                       return r.status == 200 || (r.status >= 300 && r.status < 400);
                     },
                     [&](const char* data, size_t n) {
                       out.write(data, std::streamsize(n));
                       done += n;
                       // About 200 updates per file (none under 256 KiB apart): a smooth bar for
                       // any size without flooding the stream.
                       if (progress && done - reported >= std::max<uint64_t>(256 << 10, total / 200)) {
                         reported = done;
                         if (progress({status, "", total, done})) return bool(out);
                         cancelled = true;
                         return false;
                       }
                       return bool(out);
                     });
  out.close();
  std::error_code ec;
  if (cancelled) {
    fs::remove(tmp, ec);
    throw InvalidArgument("pull cancelled");
  }
  if (!res && http_status >= 400) {
    fs::remove(tmp, ec);
    const std::string msg = fmt::format("pull failed: HTTP {} downloading '{}/{}'", http_status, repo, file);
    if (http_status == 401 || http_status == 404) throw ModelNotFound(msg);
    throw IoError(msg);
  }
  if (!res) {
    fs::remove(tmp, ec);
    network_error("downloading " + file, res.error());
  }
  if (res->status != 200) {
    fs::remove(tmp, ec);
    throw IoError(fmt::format("pull failed: HTTP {} downloading '{}/{}'", res->status, repo, file));
  }
  if (progress) progress({status, "", total ? total : done, done});
  fs::rename(tmp, to, ec);
  if (ec) throw IoError(fmt::format("cannot move '{}' into place: {}", to, ec.message()));
}
#endif

}  // namespace

PullRef parse_pull_ref(const std::string& s) {
  PullRef r;
  std::error_code ec;
  if (s.empty()) throw InvalidArgument("pull: empty model reference");
  if (starts_with(s, "/") || starts_with(s, "./") || starts_with(s, "../") || starts_with(s, "~") ||
      fs::is_regular_file(s, ec)) {
    r.kind = PullRef::kLocalFile;
    r.path = s;
    if (starts_with(s, "~/")) {
      const char* home = std::getenv("HOME");
      r.path = std::string(home ? home : "") + s.substr(1);
    }
    const auto n = name_from_file(fs::path(r.path).filename().string());
    if (!n) throw InvalidArgument(fmt::format("pull: '{}' is not a .gguf file with a valid model name", s));
    r.store_name = *n;
    return r;
  }
  std::string rest = s;
  for (const char* prefix : {"https://huggingface.co/", "https://hf.co/", "huggingface.co/", "hf.co/"}) {
    if (starts_with(rest, prefix)) {
      rest = rest.substr(std::string_view(prefix).size());
      std::string quant;
      if (const size_t c = rest.rfind(':'); c != std::string::npos) {
        quant = rest.substr(c + 1);
        rest.resize(c);
      }
      if (std::count(rest.begin(), rest.end(), '/') != 1) {
        throw InvalidArgument(fmt::format("pull: '{}' is not hf.co/<owner>/<repo>[:<quant>]", s));
      }
      r.kind = PullRef::kHfRepo;
      r.repo = rest;
      r.quant = quant;
      r.store_name = parse_model_name("hf.co/" + rest + ":" + (quant.empty() ? "latest" : quant));
      return r;
    }
  }
  // owner/repo/file.gguf
  const size_t a = rest.find('/');
  const size_t b = a == std::string::npos ? a : rest.find('/', a + 1);
  if (b != std::string::npos && rest.size() > 5 && lower(rest.substr(rest.size() - 5)) == ".gguf") {
    r.kind = PullRef::kHfFile;
    r.repo = rest.substr(0, b);
    r.file = rest.substr(b + 1);
    const auto n = name_from_file(fs::path(r.file).filename().string());
    if (!n) throw InvalidArgument(fmt::format("pull: cannot name a model after '{}'", r.file));
    r.store_name = *n;
    return r;
  }
  throw InvalidArgument(fmt::format(
      "pull: '{}' is not a local .gguf path, hf.co/<owner>/<repo>[:<quant>] or <owner>/<repo>/<file>.gguf",
      s));
}

ModelInfo ModelStore::pull(const std::string& ref, const ProgressFn& progress) {
  const PullRef r = parse_pull_ref(ref);
  if (r.kind == PullRef::kLocalFile) return import_file(r.path, r.store_name, progress);
#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
  if (progress) progress({"pulling manifest", "", 0, 0});
  const std::string file = r.kind == PullRef::kHfFile ? r.file : pick_repo_file(r.repo, r.quant);
  std::error_code ec;
  fs::create_directories(dir_, ec);
  const std::string to = path_for(r.store_name);
  download(r.repo, file, to, progress);
  if (progress) progress({"verifying", "", 0, 0});
  try {
    return read_model_info(to, r.store_name.full());
  } catch (const Error& e) {
    fs::remove(to, ec);
    throw FormatError(fmt::format("pull failed: downloaded '{}' is not a readable GGUF: {}", file, e.what()));
  }
#else
  throw Unsupported("pull from Hugging Face needs a build with OpenSSL; pull a local .gguf file by path");
#endif
}

}  // namespace qleap::server
