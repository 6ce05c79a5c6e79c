#include "server/hf_search.h"

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <cctype>
#include <future>
#include <map>
#include <mutex>
#include <regex>

#include "gguf/gguf.h"
#include "model/blocks.h"
#include "server/hf_hub.h"
#include "server/http_server.h"
#include "server/model_store.h"

namespace qleap::server {

using nlohmann::json;

namespace {

constexpr int kDefaultLimit = 10;
constexpr int kMaxLimit = 20;
constexpr size_t kMaxQuery = 200;
// First read of a header: enough for models with a small vocabulary; larger vocabularies (150k+
// tokens with merges) need a few MiB, and no header we know of needs more than kMaxHeader.
constexpr uint64_t kFirstRead = uint64_t(1) << 20;
constexpr uint64_t kMaxHeader = uint64_t(32) << 20;
constexpr size_t kMaxCached = 512;

std::string upper(std::string s) {
  for (char& c : s) c = char(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

bool ends_with_gguf(const std::string& p) {
  return p.size() > 5 && upper(p.substr(p.size() - 5)) == ".GGUF";
}

// One model file of a repository: a single .gguf, or the parts of a split one
// ("name-00001-of-00003.gguf"), which `pull` cannot fetch.
struct GgufEntry {
  std::string name;         // the file, or the first part of a split set
  uint64_t size = 0;        // all parts together
  uint64_t first_size = 0;  // of `name` alone
  int parts = 1;
};

std::vector<GgufEntry> gguf_entries(const json& tree) {
  static const std::regex split_re(R"((.*)-(\d{5})-of-(\d{5})\.gguf)", std::regex::icase);
  std::vector<GgufEntry> out;
  std::map<std::string, size_t> groups;  // split prefix -> index in out
  for (const auto& e : tree) {
    if (!e.is_object() || !e.contains("type") || e["type"] != "file") continue;
    if (!e.contains("path") || !e["path"].is_string()) continue;
    const std::string path = e["path"].get<std::string>();
    if (!ends_with_gguf(path)) continue;
    // Vision projectors are not language models to pull on their own.
    if (upper(path).find("MMPROJ") != std::string::npos) continue;
    uint64_t size = 0;
    if (e.contains("lfs") && e["lfs"].is_object() && e["lfs"].contains("size") &&
        e["lfs"]["size"].is_number_unsigned()) {
      size = e["lfs"]["size"].get<uint64_t>();
    } else if (e.contains("size") && e["size"].is_number_unsigned()) {
      size = e["size"].get<uint64_t>();
    }
    std::smatch m;
    if (std::regex_match(path, m, split_re)) {
      const std::string key = m[1].str() + "/" + m[3].str();
      auto it = groups.find(key);
      if (it == groups.end()) {
        groups.emplace(key, out.size());
        out.push_back({path, size, size, 1});
      } else {
        GgufEntry& g = out[it->second];
        g.size += size;
        ++g.parts;
        if (path < g.name) g.name = path, g.first_size = size;  // the first part holds the metadata
      }
      continue;
    }
    out.push_back({path, size, size, 1});
  }
  std::sort(out.begin(), out.end(), [](const GgufEntry& a, const GgufEntry& b) { return a.size < b.size; });
  return out;
}

// The model's shape from one file's header, or why it could not be read. Cached: headers of a
// published file do not change (the key holds its size).
struct Header {
  std::shared_ptr<const qleap::ModelInfo> info;
  uint64_t file_size = 0;
  std::string error;
};

std::mutex g_cache_mu;
std::map<std::string, Header> g_cache;

Header read_header(const std::string& repo, const std::string& file, uint64_t size) {
  const std::string key = fmt::format("{}/{}@{}", repo, file, size);
  {
    std::lock_guard<std::mutex> lk(g_cache_mu);
    if (auto it = g_cache.find(key); it != g_cache.end()) return it->second;
  }
  Header h;
  h.file_size = size;
  const std::string path = "/" + hf::url_encode(repo, true) + "/resolve/main/" + hf::url_encode(file, true);
  std::string buf;
  uint64_t want = std::min(kFirstRead, size);
  for (;;) {
    buf += hf::get_range(path, buf.size(), want);
    std::shared_ptr<GgufFile> f;
    try {
      f = GgufFile::parse_header(reinterpret_cast<const uint8_t*>(buf.data()), buf.size(), size);
    } catch (const FormatError& e) {
      // Most likely the header goes on past what was read: read more, up to a limit.
      const uint64_t limit = std::min(kMaxHeader, size);
      if (buf.size() < want || want >= limit) {
        h.error = e.what();
        break;
      }
      want = std::min(want * 8, limit);
      continue;
    }
    // A complete header whose model qleap cannot size (missing hyper-parameters, say) is final.
    try {
      h.info = std::make_shared<const qleap::ModelInfo>(model_info_from_gguf(*f));
    } catch (const Error& e) {
      h.error = e.what();
    }
    break;
  }
  std::lock_guard<std::mutex> lk(g_cache_mu);
  if (g_cache.size() >= kMaxCached) g_cache.clear();
  g_cache.emplace(key, h);
  return h;
}

// The shape of `m` with every byte count scaled by ratio: another quantization of the same model.
qleap::ModelInfo scaled(const qleap::ModelInfo& m, double ratio) {
  qleap::ModelInfo s = m;
  auto sc = [ratio](uint64_t& b) { b = uint64_t(double(b) * ratio); };
  for (auto& b : s.layer_bytes) sc(b);
  for (auto& b : s.layer_expert_bytes) sc(b);
  sc(s.token_embd_bytes);
  sc(s.output_bytes);
  sc(s.other_bytes);
  sc(s.file_bytes);
  return s;
}

json file_json(const std::string& repo, const GgufEntry& e, const Header& h, const std::string& header_file,
               const HardwareInfo& hw, const PlanRequest& req) {
  json f = {{"name", e.name}, {"size", e.size}, {"quant", quant_of_file(e.name)}, {"parts", e.parts}};
  if (e.parts == 1) {
    f["pull"] = repo + "/" + e.name;
    const size_t slash = e.name.rfind('/');
    if (auto n = name_from_file(slash == std::string::npos ? e.name : e.name.substr(slash + 1)))
      f["store_name"] = n->full();
  } else {
    f["pull"] = nullptr;
    f["note"] = fmt::format("split into {} parts: qleap pull fetches single-file models only", e.parts);
  }
  f["fits"] = nullptr;
  if (!h.info) return f;
  try {
    const bool exact = e.name == header_file && e.parts == 1;
    const double ratio = h.file_size ? double(e.size) / double(h.file_size) : 1.0;
    const Plan p = make_plan(hw, exact ? *h.info : scaled(*h.info, ratio), req);
    f["fits"] = p.fits;
    f["plan"] = {{"n_ctx", p.n_ctx},
                 {"kv_type", p.kv_type},
                 {"gpu_layers", p.gpu_layers},
                 {"ram_bytes", p.ram_bytes},
                 {"vram_bytes", p.vram_bytes},
                 {"ram_budget", p.ram_budget},
                 {"vram_budget", p.vram_budget},
                 {"kv_bytes", p.kv_bytes},
                 {"exact", exact},
                 {"reasons", p.reasons}};
  } catch (const Error& ex) {
    f["fit_error"] = ex.what();
  }
  return f;
}

json repo_json(const json& item, const HardwareInfo& hw, const PlanRequest& req) {
  std::string repo;
  for (const char* k : {"id", "modelId"}) {
    if (repo.empty() && item.contains(k) && item[k].is_string()) repo = item[k].get<std::string>();
  }
  json r = {{"repo", repo}};
  for (const char* k : {"downloads", "likes"}) {
    if (item.contains(k) && item[k].is_number()) r[k] = item[k];
  }
  for (const char* k : {"lastModified", "createdAt"}) {
    if (item.contains(k) && item[k].is_string()) {
      r["updated"] = item[k];
      break;
    }
  }
  if (item.contains("pipeline_tag") && item["pipeline_tag"].is_string())
    r["pipeline_tag"] = item["pipeline_tag"];
  r["files"] = json::array();
  if (repo.empty() || repo.find("..") != std::string::npos) {
    r["error"] = "the Hub listed a model without a valid id";
    return r;
  }
  try {
    const hf::Response t = hf::get("/api/models/" + hf::url_encode(repo, true) + "/tree/main?recursive=true");
    if (t.status != 200) throw IoError(fmt::format("listing its files answered HTTP {}", t.status));
    json tree;
    try {
      tree = json::parse(t.body);
    } catch (const json::exception&) {
      throw IoError("listing its files answered something that is not JSON");
    }
    if (!tree.is_array()) throw IoError("listing its files answered JSON that is not a list");
    const std::vector<GgufEntry> entries = gguf_entries(tree);
    if (entries.empty()) {
      r["error"] = "no .gguf file in this repository";
      return r;
    }
    // The header of the smallest single-file model (the cheapest to read, and exact for itself).
    const GgufEntry* rep = &entries.front();
    for (const auto& e : entries) {
      if (e.parts == 1) {
        rep = &e;
        break;
      }
    }
    Header h;
    try {
      h = read_header(repo, rep->name, rep->first_size);
    } catch (const Error& e) {
      h.error = e.what();
    }
    if (h.info) {
      r["arch"] = h.info->arch;
      r["arch_supported"] = find_arch(h.info->arch) != nullptr;
      r["n_layers"] = h.info->n_layers;
      r["n_ctx_train"] = h.info->n_ctx_train;
      if (h.info->is_moe()) r["experts"] = {h.info->n_experts_used, h.info->n_experts};
    } else {
      r["fit_error"] = fmt::format("cannot read the header of {}: {}", rep->name, h.error);
    }
    for (const auto& e : entries) r["files"].push_back(file_json(repo, e, h, rep->name, hw, req));
  } catch (const std::exception& e) {
    // Whatever the Hub answered for one repository, the others are still shown.
    r["error"] = e.what();
  }
  return r;
}

}  // namespace

std::string quant_of_file(const std::string& file) {
  static const std::regex quant_re(R"(I?Q[0-9]+(_[A-Z0-9]+)*|BF16|F16|F32|FP16|FP32|MXFP4(_MOE)?|TQ[12]_0)");
  std::string stem = file.substr(file.rfind('/') == std::string::npos ? 0 : file.rfind('/') + 1);
  if (ends_with_gguf(stem)) stem.resize(stem.size() - 5);
  stem = upper(stem);
  // The last "-" or "." separated token that looks like a quantization ("Q4_K_M", "IQ2_XS", "F16").
  std::string best;
  size_t start = 0;
  for (size_t i = 0; i <= stem.size(); ++i) {
    if (i == stem.size() || stem[i] == '-' || stem[i] == '.') {
      const std::string tok = stem.substr(start, i - start);
      if (std::regex_match(tok, quant_re)) best = tok;
      start = i + 1;
    }
  }
  return best;
}

json search_hf_models(const std::string& query, int limit, const HardwareInfo& hw, const PlanRequest& req) {
  const std::string path = fmt::format(
      "/api/models?search={}&filter=gguf&sort=downloads&direction=-1&limit={}", hf::url_encode(query), limit);
  hf::Response r;
  try {
    r = hf::get(path, {}, 20);
  } catch (const hf::Unreachable& e) {
    throw SearchError(502, e.what());
  }
  if (r.status != 200) {
    throw SearchError(502, fmt::format("the Hugging Face Hub at {} answered HTTP {} to the search",
                                       hf::endpoint(), r.status));
  }
  json list;
  try {
    list = json::parse(r.body);
  } catch (const json::exception&) {
    throw SearchError(502,
                      fmt::format("the Hugging Face Hub at {} answered the search with something that is "
                                  "not JSON",
                                  hf::endpoint()));
  }
  if (!list.is_array()) {
    throw SearchError(502,
                      fmt::format("the Hugging Face Hub at {} answered the search with JSON that is not a "
                                  "list",
                                  hf::endpoint()));
  }
  std::vector<json> items;
  for (const auto& it : list) {
    if (it.is_object() && int(items.size()) < limit) items.push_back(it);
  }
  // One repository's files and header do not depend on another's: ask for them all at once.
  std::vector<std::future<json>> futs;
  for (const auto& it : items) {
    futs.push_back(std::async(std::launch::async, [&it, &hw, &req] { return repo_json(it, hw, req); }));
  }
  json models = json::array();
  for (auto& f : futs) models.push_back(f.get());
  const GpuInfo* gpu = hw.best_gpu();
  return json{{"query", query},
              {"endpoint", hf::endpoint()},
              {"machine",
               {{"ram_total", hw.ram_total},
                {"ram_available", hw.ram_available},
                {"gpu", gpu ? json(gpu->name) : json(nullptr)},
                {"parallel", req.parallel},
                {"n_ctx", req.n_ctx}}},
              {"models", models}};
}

namespace {

// A query parameter of an application/x-www-form-urlencoded query ("" when absent; present tells).
std::string query_param(const std::string& query, std::string_view name, bool* present) {
  if (present) *present = false;
  size_t at = 0;
  while (at <= query.size()) {
    const size_t end = std::min(query.find('&', at), query.size());
    const std::string_view pair(query.data() + at, end - at);
    const size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name) {
      if (present) *present = true;
      std::string out;
      const std::string_view v = eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
      for (size_t i = 0; i < v.size(); ++i) {
        if (v[i] == '+') {
          out += ' ';
        } else if (v[i] == '%' && i + 2 < v.size() && std::isxdigit(static_cast<unsigned char>(v[i + 1])) &&
                   std::isxdigit(static_cast<unsigned char>(v[i + 2]))) {
          out += char(std::stoi(std::string(v.substr(i + 1, 2)), nullptr, 16));
          i += 2;
        } else {
          out += v[i];
        }
      }
      return out;
    }
    at = end + 1;
  }
  return "";
}

}  // namespace

void register_search_routes(Router& srv, ApiContext& ctx) {
  srv.get("/api/qleap/search", [&ctx](const HttpRequest& req, HttpResponse& res) {
    try {
      std::string q = query_param(req.query, "q", nullptr);
      while (!q.empty() && std::isspace(static_cast<unsigned char>(q.back()))) q.pop_back();
      while (!q.empty() && std::isspace(static_cast<unsigned char>(q.front()))) q.erase(q.begin());
      if (q.empty()) throw SearchError(400, "search: the query parameter q is missing or empty");
      if (q.size() > kMaxQuery) throw SearchError(400, fmt::format("search: q is longer than {} bytes", kMaxQuery));
      int limit = kDefaultLimit;
      bool has_limit = false;
      const std::string l = query_param(req.query, "limit", &has_limit);
      if (has_limit) {
        char* end = nullptr;
        const long v = std::strtol(l.c_str(), &end, 10);
        if (l.empty() || *end || v < 1 || v > kMaxLimit)
          throw SearchError(400, fmt::format("search: limit must be a number from 1 to {}", kMaxLimit));
        limit = int(v);
      }
      DetectOptions dopt;
      dopt.measure_bandwidth = false;
      const HardwareInfo hw = detect_hardware(dopt);
      PlanRequest pr;
      pr.parallel = std::max(1, ctx.opt.sched.runner.parallel);
      pr.n_ctx = ctx.opt.sched.runner.n_ctx;
      send_json(res, 200, search_hf_models(q, limit, hw, pr));
    } catch (const SearchError& e) {
      send_json(res, e.status, json{{"error", e.what()}});
    } catch (const std::exception& e) {
      send_json(res, 500, json{{"error", fmt::format("search failed: {}", e.what())}});
    }
  });
}

}  // namespace qleap::server
