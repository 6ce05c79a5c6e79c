#include "tokenizer/jinja/lexer.h"

#include <cstdio>
#include <cstring>

#include "tokenizer/jinja/value.h"

namespace qleap::jinja {

namespace {

[[noreturn]] void fail(int line, int col, const std::string& msg) {
  throw ChatTemplateError("chat template syntax error at line " + std::to_string(line) + ", column " +
                          std::to_string(col) + ": " + msg);
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_name_char(char c) {
  return is_name_start(c) || (c >= '0' && c <= '9');
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

class Lexer {
 public:
  explicit Lexer(const std::string& src) {
    // Jinja normalizes newlines and drops one trailing newline (keep_trailing_newline=False).
    src_.reserve(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      if (src[i] == '\r') {
        src_ += '\n';
        if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
      } else {
        src_ += src[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    bool line_starting = true;
    bool strip_next = false;  // a "-" closed the previous tag
    while (pos_ < src_.size()) {
      size_t tag = find_tag(pos_);
      std::string text = src_.substr(pos_, tag - pos_);
      if (strip_next) {
        size_t k = 0;
        while (k < text.size() && is_space(text[k])) ++k;
        text.erase(0, k);
      }
      if (tag < src_.size()) {
        const char kind = src_[tag + 1];
        const char marker = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
        if (marker == '-') {
          size_t e = text.size();
          while (e > 0 && is_space(text[e - 1])) --e;
          text.resize(e);
        } else if (marker != '+' && kind != '{') {
          // lstrip_blocks: drop spaces between the line start and a block or comment tag.
          const size_t nl = text.rfind('\n');
          const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
          if (l_pos > 0 || line_starting) {
            bool blank = true;
            for (size_t k = l_pos; k < text.size(); ++k) blank &= is_space(text[k]);
            if (blank) text.resize(l_pos);
          }
        }
      }
      const size_t text_start = pos_;
      if (!text.empty()) push(Tok::kText, text, text_start);
      if (tag >= src_.size()) break;
      pos_ = tag;
      const char kind = src_[tag + 1];
      if (kind == '#') {
        lex_comment(strip_next, line_starting);
      } else {
        lex_tag(kind == '{', strip_next, line_starting);
      }
    }
    push(Tok::kEof, "", pos_);
    return std::move(toks_);
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i) {
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return src_.size();
  }

  void where(size_t p, int& line, int& col) const {
    // Incremental: tokens are produced in order, so advance a cursor instead of rescanning.
    while (cursor_ < p && cursor_ < src_.size()) {
      if (src_[cursor_] == '\n') {
        ++cur_line_;
        cur_col_ = 1;
      } else {
        ++cur_col_;
      }
      ++cursor_;
    }
    line = cur_line_;
    col = cur_col_;
  }

  void push(Tok t, std::string text, size_t p) {
    Token tok{t, std::move(text), 1, 1};
    where(p, tok.line, tok.col);
    toks_.push_back(std::move(tok));
  }

  // After a closing delimiter at pos_: trim_blocks eats one newline after block and comment tags.
  void after_close(bool minus, bool plus, bool is_block, bool& strip_next, bool& line_starting) {
    strip_next = minus;
    line_starting = false;
    if (minus) {
      size_t k = pos_;
      while (k < src_.size() && is_space(src_[k])) ++k;
      line_starting = k > pos_ && src_[k - 1] == '\n';
      return;
    }
    if (is_block && !plus && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
      line_starting = true;
    }
  }

  void lex_comment(bool& strip_next, bool& line_starting) {
    const size_t start = pos_;
    const size_t end = src_.find("#}", pos_ + 2);
    if (end == std::string::npos) {
      int l, c;
      where(start, l, c);
      fail(l, c, "unterminated comment");
    }
    const bool minus = end > start + 2 && src_[end - 1] == '-';
    const bool plus = end > start + 2 && src_[end - 1] == '+';
    pos_ = end + 2;
    after_close(minus, plus, true, strip_next, line_starting);
  }

  void lex_tag(bool is_var, bool& strip_next, bool& line_starting) {
    const size_t start = pos_;
    push(is_var ? Tok::kVarBegin : Tok::kBlockBegin, "", start);
    pos_ += 2;
    if (pos_ < src_.size() && (src_[pos_] == '-' || src_[pos_] == '+')) ++pos_;
    const char close = is_var ? '}' : '%';
    int depth = 0;
    // {% raw %} ... {% endraw %}: everything inside is text.
    if (!is_var) {
      size_t k = pos_;
      while (k < src_.size() && is_space(src_[k])) ++k;
      if (src_.compare(k, 3, "raw") == 0 && (k + 3 >= src_.size() || !is_name_char(src_[k + 3]))) {
        lex_raw(start, strip_next, line_starting);
        return;
      }
    }
    while (true) {
      while (pos_ < src_.size() && is_space(src_[pos_])) ++pos_;
      if (pos_ >= src_.size()) {
        int l, c;
        where(start, l, c);
        fail(l, c, is_var ? "unterminated '{{' (missing '}}')" : "unterminated '{%' (missing '%}')");
      }
      const char c = src_[pos_];
      if (depth == 0) {
        bool minus = false, plus = false;
        size_t k = pos_;
        const std::string closer{close, '}'};
        if ((c == '-' || c == '+') && src_.compare(k + 1, 2, closer) == 0) {
          minus = c == '-';
          plus = c == '+';
          ++k;
        }
        if (src_.compare(k, 2, closer) == 0) {
          push(is_var ? Tok::kVarEnd : Tok::kBlockEnd, "", pos_);
          pos_ = k + 2;
          after_close(minus, plus, !is_var, strip_next, line_starting);
          return;
        }
      }
      const size_t tok_start = pos_;
      if (is_name_start(c)) {
        while (pos_ < src_.size() && is_name_char(src_[pos_])) ++pos_;
        push(Tok::kName, src_.substr(tok_start, pos_ - tok_start), tok_start);
      } else if (is_digit(c)) {
        bool is_float = false;
        while (pos_ < src_.size() && (is_digit(src_[pos_]) || src_[pos_] == '_')) ++pos_;
        if (pos_ + 1 < src_.size() && src_[pos_] == '.' && is_digit(src_[pos_ + 1])) {
          is_float = true;
          ++pos_;
          while (pos_ < src_.size() && is_digit(src_[pos_])) ++pos_;
        }
        if (pos_ < src_.size() && (src_[pos_] == 'e' || src_[pos_] == 'E')) {
          size_t k = pos_ + 1;
          if (k < src_.size() && (src_[k] == '+' || src_[k] == '-')) ++k;
          if (k < src_.size() && is_digit(src_[k])) {
            is_float = true;
            pos_ = k;
            while (pos_ < src_.size() && is_digit(src_[pos_])) ++pos_;
          }
        }
        std::string num;
        for (size_t k = tok_start; k < pos_; ++k) {
          if (src_[k] != '_') num += src_[k];
        }
        push(is_float ? Tok::kFloat : Tok::kInt, num, tok_start);
      } else if (c == '\'' || c == '"') {
        push(Tok::kString, lex_string(c), tok_start);
      } else {
        static const char* kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
                                     ">",  "=",  "(",  ")",  "[",  "]",  "{", "}", ",", ".", ":", "|"};
        const char* found = nullptr;
        for (const char* op : kOps) {
          if (src_.compare(pos_, std::strlen(op), op) == 0) {
            found = op;
            break;
          }
        }
        if (!found) {
          int l, cc;
          where(pos_, l, cc);
          fail(l, cc, std::string("unexpected character '") + c + "'");
        }
        if (found[0] == '(' || found[0] == '[' || found[0] == '{') ++depth;
        if ((found[0] == ')' || found[0] == ']' || found[0] == '}') && depth > 0) --depth;
        pos_ += std::strlen(found);
        push(Tok::kOp, found, tok_start);
      }
    }
  }

  void lex_raw(size_t start, bool& strip_next, bool& line_starting) {
    // Skip "raw" and the closing delimiter of the opening tag.
    size_t close = src_.find("%}", pos_);
    if (close == std::string::npos) {
      int l, c;
      where(start, l, c);
      fail(l, c, "unterminated '{%'");
    }
    toks_.pop_back();  // the BlockBegin: raw content becomes plain text
    const bool minus_open = src_[close - 1] == '-';
    pos_ = close + 2;
    bool dummy_strip = false;
    after_close(minus_open, false, true, dummy_strip, line_starting);
    if (minus_open) {
      while (pos_ < src_.size() && is_space(src_[pos_])) ++pos_;
    }
    size_t search = pos_;
    while (true) {
      const size_t tag = src_.find("{%", search);
      if (tag == std::string::npos) {
        int l, c;
        where(start, l, c);
        fail(l, c, "missing endraw");
      }
      size_t k = tag + 2;
      const bool minus = k < src_.size() && src_[k] == '-';
      if (minus || (k < src_.size() && src_[k] == '+')) ++k;
      while (k < src_.size() && is_space(src_[k])) ++k;
      if (src_.compare(k, 6, "endraw") == 0) {
        std::string body = src_.substr(pos_, tag - pos_);
        if (minus) {
          while (!body.empty() && is_space(body.back())) body.pop_back();
        }
        if (!body.empty()) push(Tok::kText, body, pos_);
        const size_t end = src_.find("%}", k);
        if (end == std::string::npos) {
          int l, c;
          where(tag, l, c);
          fail(l, c, "unterminated '{%'");
        }
        const bool minus_close = src_[end - 1] == '-';
        pos_ = end + 2;
        after_close(minus_close, false, true, strip_next, line_starting);
        return;
      }
      search = tag + 2;
    }
  }

  std::string lex_string(char quote) {
    const size_t start = pos_;
    ++pos_;
    std::string out;
    while (true) {
      if (pos_ >= src_.size()) {
        int l, c;
        where(start, l, c);
        fail(l, c, "unterminated string literal");
      }
      const char c = src_[pos_++];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= src_.size()) continue;
      const char e = src_[pos_++];
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '0':
          out += '\0';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '\\':
        case '\'':
        case '"':
          out += e;
          break;
        case '\n':
          break;  // line continuation
        case 'x':
        case 'u':
        case 'U': {
          const size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          size_t k = 0;
          for (; k < n && pos_ < src_.size(); ++k, ++pos_) {
            const char h = src_[pos_];
            int d = (h >= '0' && h <= '9')   ? h - '0'
                    : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                    : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                             : -1;
            if (d < 0) break;
            cp = cp * 16 + static_cast<uint32_t>(d);
          }
          if (k != n || cp > 0x10FFFF) {
            int l, cc;
            where(pos_, l, cc);
            fail(l, cc, "bad escape in string literal");
          }
          append_utf8(out, cp);
          break;
        }
        default:
          out += '\\';
          out += e;
      }
    }
    return out;
  }

  std::string src_;
  size_t pos_ = 0;
  std::vector<Token> toks_;
  mutable size_t cursor_ = 0;
  mutable int cur_line_ = 1;
  mutable int cur_col_ = 1;
};

}  // namespace

std::vector<Token> tokenize(const std::string& source) {
  return Lexer(source).run();
}

}  // namespace qleap::jinja
