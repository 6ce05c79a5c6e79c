// Placeholder: no web UI in this build (the UI is developed separately and replaces this file).
#include "server/webui.h"

namespace qleap::webui {

const Asset* find_asset(std::string_view) { return nullptr; }

}  // namespace qleap::webui
