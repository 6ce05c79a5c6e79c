#include "server/hf_hub.h"

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace qleap::server::hf {

std::string endpoint() {
  std::string e = "https://huggingface.co";
  if (const char* env = std::getenv("QLEAP_HF_ENDPOINT"); env && *env) e = env;
  while (!e.empty() && e.back() == '/') e.pop_back();
  return e;
}

namespace {

httplib::Client make_client(const std::string& base, int read_timeout_s) {
  httplib::Client cli(base);
  if (!cli.is_valid()) {
    throw Unreachable(
        fmt::format("the Hugging Face endpoint '{}' is not a valid http(s):// address "
                    "(check QLEAP_HF_ENDPOINT)",
                    base));
  }
  cli.set_connection_timeout(5);
  cli.set_read_timeout(read_timeout_s);
  cli.set_follow_location(true);
  return cli;
}

httplib::Headers base_headers() {
  httplib::Headers h = {{"User-Agent", "qleap/0.1"}};
  if (const char* t = std::getenv("HF_TOKEN"); t && *t)
    h.emplace("Authorization", std::string("Bearer ") + t);
  return h;
}

[[noreturn]] void unreachable(const std::string& base, httplib::Error e) {
  throw Unreachable(
      fmt::format("cannot reach the Hugging Face Hub at {} ({}): this needs internet access, "
                  "or QLEAP_HF_ENDPOINT set to a reachable mirror",
                  base, httplib::to_string(e)));
}

}  // namespace

Response get(const std::string& path, const std::vector<std::pair<std::string, std::string>>& headers,
             int read_timeout_s) {
  const std::string base = endpoint();
  httplib::Client cli = make_client(base, read_timeout_s);
  httplib::Headers h = base_headers();
  h.emplace("Accept", "application/json");
  for (const auto& [k, v] : headers) h.emplace(k, v);
  auto res = cli.Get(path.c_str(), h);
  if (!res) unreachable(base, res.error());
  Response r;
  r.status = res->status;
  r.body = std::move(res->body);
  r.content_range = res->get_header_value("Content-Range");
  return r;
}

std::string get_range(const std::string& path, uint64_t begin, uint64_t end) {
  if (end <= begin) return {};
  const std::string base = endpoint();
  httplib::Client cli = make_client(base, 30);
  httplib::Headers h = base_headers();
  h.emplace("Range", fmt::format("bytes={}-{}", begin, end - 1));
  int status = 0;
  uint64_t pos = 0;  // absolute offset of the next byte received
  std::string out;
  bool enough = false;
  auto res = cli.Get(
      path.c_str(), h,
      [&](const httplib::Response& r) {
        status = r.status;
        if (r.status == 206) pos = begin;  // else a 200 answer starts at byte 0
        return r.status == 200 || r.status == 206 || (r.status >= 300 && r.status < 400);
      },
      [&](const char* data, size_t n) {
        // Keep only [begin, end) of what arrives; stop once it is there (a server that ignores Range
        // would otherwise send the whole multi-gigabyte file).
        const uint64_t lo = std::max(pos, begin), hi = std::min(pos + n, end);
        if (hi > lo) out.append(data + (lo - pos), size_t(hi - lo));
        pos += n;
        enough = pos >= end;
        return !enough;
      });
  if (!res && !(enough && res.error() == httplib::Error::Canceled)) {
    if (status >= 400) throw IoError(fmt::format("HTTP {} reading {}{}", status, base, path));
    unreachable(base, res.error());
  }
  if (res && res->status >= 400) throw IoError(fmt::format("HTTP {} reading {}{}", res->status, base, path));
  return out;
}

std::string url_encode(std::string_view s, bool keep_slash) {
  std::string out;
  for (const unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += char(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

}  // namespace qleap::server::hf
