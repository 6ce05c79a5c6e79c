#pragma once
#include <string>

#include "tokenizer/jinja/ast.h"

namespace qleap::jinja {

// Parses a whole template. Throws ChatTemplateError("... line L, column C: ...") on syntax errors;
// nesting deeper than kMaxParseDepth is rejected instead of overflowing the stack.
Body parse_template(const std::string& source);

inline constexpr int kMaxParseDepth = 200;

}  // namespace qleap::jinja
