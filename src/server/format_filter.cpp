#include <fmt/format.h>

#include "server/api_common.h"

namespace qleap::server {

std::unique_ptr<TokenFilter> make_format_filter(const nlohmann::json& format, const Tokenizer&) {
  if (format.is_null() || (format.is_string() && format.get<std::string>().empty())) return nullptr;
  throw RequestError(400, "format: JSON-constrained output is not supported yet");
}

}  // namespace qleap::server
