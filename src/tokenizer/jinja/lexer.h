// Splits a Jinja template into text and tag tokens, applying the whitespace rules transformers uses
// for chat templates: trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False, and the
// explicit {%- -%} / {{- -}} / {#- -#} and {%+ +%} markers.
#pragma once
#include <string>
#include <vector>

namespace qleap::jinja {

enum class Tok { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof };

struct Token {
  Tok type;
  std::string text;  // text, name, decoded string literal, number spelling or operator
  int line = 1;
  int col = 1;
};

// Throws ChatTemplateError with "line L, column C" on unterminated tags/strings or bad characters.
std::vector<Token> tokenize(const std::string& source);

}  // namespace qleap::jinja
