// The web UI: files of src/server/webui, embedded at build time (cmake/embed_webui.cmake), served
// at "/" (index.html) and "/ui/<file>".
#include "server/webui.h"

#include <cstddef>
#include <string>
#include <unordered_map>

namespace qleap::webui {

namespace detail {
struct EmbeddedFile {
  std::string_view name;
  std::string_view body;
};
extern const EmbeddedFile kEmbeddedFiles[];
extern const size_t kEmbeddedCount;
}  // namespace detail

namespace {

std::string_view content_type_of(std::string_view name) {
  auto ends = [&](std::string_view ext) {
    return name.size() >= ext.size() && name.substr(name.size() - ext.size()) == ext;
  };
  if (ends(".html")) return "text/html; charset=utf-8";
  if (ends(".js")) return "text/javascript; charset=utf-8";
  if (ends(".css")) return "text/css; charset=utf-8";
  if (ends(".svg")) return "image/svg+xml";
  if (ends(".json")) return "application/json";
  return "text/plain; charset=utf-8";
}

const std::unordered_map<std::string, Asset>& assets() {
  static const std::unordered_map<std::string, Asset> map = [] {
    std::unordered_map<std::string, Asset> m;
    for (size_t i = 0; i < detail::kEmbeddedCount; ++i) {
      const auto& f = detail::kEmbeddedFiles[i];
      const Asset a{f.body, content_type_of(f.name)};
      m.emplace("/ui/" + std::string(f.name), a);
      if (f.name == "index.html") {
        m.emplace("/", a);
        m.emplace("/ui", a);
        m.emplace("/ui/", a);
      }
    }
    return m;
  }();
  return map;
}

}  // namespace

const Asset* find_asset(std::string_view path) {
  const auto& m = assets();
  const auto it = m.find(std::string(path));
  return it == m.end() ? nullptr : &it->second;
}

}  // namespace qleap::webui
