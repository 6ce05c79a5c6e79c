// Web UI assets served at "/" (browsers) and "/ui/...". The UI itself lives in webui.cpp.
#pragma once
#include <string_view>

namespace qleap::webui {

struct Asset {
  std::string_view body;
  std::string_view content_type;
};

// path is "/" or "/ui/..."; nullptr when there is no such asset (then "/" answers plain text).
const Asset* find_asset(std::string_view path);

}  // namespace qleap::webui
