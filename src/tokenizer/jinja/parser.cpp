#include "tokenizer/jinja/parser.h"

#include <charconv>
#include <cstdlib>
#include <set>

#include "tokenizer/jinja/lexer.h"

namespace qleap::jinja {

namespace {

// Name bound to the rendered body of {% filter %} / {% set x | f %} blocks; not a valid identifier.
constexpr const char* kBodyName = "\x01body";

class Parser {
 public:
  explicit Parser(std::vector<Token> toks) : toks_(std::move(toks)) {}

  Body parse_all() {
    std::string end;
    Body body = parse_body({}, end);
    return body;
  }

 private:
  struct DepthGuard {
    Parser& p;
    explicit DepthGuard(Parser& parser) : p(parser) {
      if (++p.depth_ > kMaxParseDepth) p.fail(p.cur(), "template nesting too deep");
    }
    ~DepthGuard() { --p.depth_; }
  };

  [[noreturn]] void fail(const Token& t, const std::string& msg) {
    throw ChatTemplateError("chat template syntax error at line " + std::to_string(t.line) + ", column " +
                            std::to_string(t.col) + ": " + msg);
  }

  const Token& cur() const { return toks_[pos_]; }
  const Token& peek(size_t k = 1) const { return toks_[std::min(pos_ + k, toks_.size() - 1)]; }
  void advance() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  bool is_op(const char* op) const { return cur().type == Tok::kOp && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::kName && cur().text == n; }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(cur(), std::string("expected '") + op + "', got " + describe(cur()));
    advance();
  }
  std::string expect_name() {
    if (cur().type != Tok::kName) fail(cur(), "expected a name, got " + describe(cur()));
    std::string n = cur().text;
    advance();
    return n;
  }
  void expect_block_end() {
    if (cur().type != Tok::kBlockEnd) fail(cur(), "expected end of statement '%}', got " + describe(cur()));
    advance();
  }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::kEof:
        return "end of template";
      case Tok::kBlockEnd:
        return "'%}'";
      case Tok::kVarEnd:
        return "'}}'";
      case Tok::kText:
        return "template text";
      case Tok::kString:
        return "string";
      default:
        return "'" + t.text + "'";
    }
  }

  ExprPtr node(Expr::Type type, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->type = type;
    e->line = at.line;
    e->col = at.col;
    return e;
  }
  StmtPtr stmt(Stmt::Type type, const Token& at) {
    auto s = std::make_unique<Stmt>();
    s->type = type;
    s->line = at.line;
    s->col = at.col;
    return s;
  }

  // Parses statements until a block tag starting with one of `ends` (left unconsumed after "{%"),
  // or the end of input when `ends` is empty.
  Body parse_body(const std::set<std::string>& ends, std::string& found) {
    DepthGuard g(*this);
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::kEof) {
        if (!ends.empty()) {
          std::string want;
          for (const auto& e : ends) want += (want.empty() ? "'" : " or '") + e + "'";
          fail(t, "unexpected end of template, expected " + want);
        }
        return body;
      }
      if (t.type == Tok::kText) {
        auto s = stmt(Stmt::kText, t);
        s->text = t.text;
        body.push_back(std::move(s));
        advance();
      } else if (t.type == Tok::kVarBegin) {
        auto s = stmt(Stmt::kOutput, t);
        advance();
        s->expr = parse_expression();
        if (cur().type != Tok::kVarEnd) fail(cur(), "expected '}}', got " + describe(cur()));
        advance();
        body.push_back(std::move(s));
      } else if (t.type == Tok::kBlockBegin) {
        advance();
        const Token& kw = cur();
        if (kw.type != Tok::kName) fail(kw, "expected a statement name, got " + describe(kw));
        if (ends.count(kw.text)) {
          found = kw.text;
          return body;
        }
        body.push_back(parse_statement());
      } else {
        fail(t, "unexpected " + describe(t));
      }
    }
  }

  StmtPtr parse_statement() {
    const Token kw = cur();
    const std::string& k = kw.text;
    if (k == "if") return parse_if();
    if (k == "for") return parse_for();
    if (k == "set") return parse_set();
    if (k == "macro") return parse_macro();
    if (k == "call") return parse_call_block();
    if (k == "filter") return parse_filter_block();
    if (k == "break" || k == "continue") {
      advance();
      expect_block_end();
      return stmt(k == "break" ? Stmt::kBreak : Stmt::kContinue, kw);
    }
    if (k == "generation") {  // transformers' assistant-mask extension: renders its body unchanged
      advance();
      expect_block_end();
      auto s = stmt(Stmt::kScope, kw);
      std::string found;
      s->body = parse_body({"endgeneration"}, found);
      advance();
      expect_block_end();
      return s;
    }
    fail(kw, "unknown statement '" + k + "'");
  }

  StmtPtr parse_if() {
    auto s = stmt(Stmt::kIf, cur());
    advance();
    ExprPtr cond = parse_expression();
    expect_block_end();
    while (true) {
      std::string found;
      Body body = parse_body({"elif", "else", "endif"}, found);
      s->branches.emplace_back(std::move(cond), std::move(body));
      advance();
      if (found == "elif") {
        cond = parse_expression();
        expect_block_end();
      } else if (found == "else") {
        expect_block_end();
        std::string f2;
        Body eb = parse_body({"endif"}, f2);
        s->branches.emplace_back(nullptr, std::move(eb));
        advance();
        expect_block_end();
        return s;
      } else {
        expect_block_end();
        return s;
      }
    }
  }

  StmtPtr parse_for() {
    auto s = stmt(Stmt::kFor, cur());
    advance();
    s->targets.push_back(expect_name());
    while (is_op(",")) {
      advance();
      s->targets.push_back(expect_name());
    }
    if (!is_name("in")) fail(cur(), "expected 'in' in for loop, got " + describe(cur()));
    advance();
    s->expr = parse_or();  // no conditional expression here: "if" introduces the loop filter
    if (is_name("if")) {
      advance();
      s->filter_cond = parse_expression();
    }
    if (is_name("recursive")) fail(cur(), "recursive loops are not supported");
    expect_block_end();
    std::string found;
    s->body = parse_body({"else", "endfor"}, found);
    advance();
    expect_block_end();
    if (found == "else") {
      s->else_body = parse_body({"endfor"}, found);
      advance();
      expect_block_end();
    }
    return s;
  }

  StmtPtr parse_set() {
    const Token at = cur();
    advance();
    std::vector<std::string> names{expect_name()};
    std::string attr;
    if (is_op(".")) {
      advance();
      attr = expect_name();
    } else {
      while (is_op(",")) {
        advance();
        names.push_back(expect_name());
      }
    }
    if (is_op("=")) {
      advance();
      auto s = stmt(Stmt::kSet, at);
      s->targets = std::move(names);
      s->attr = std::move(attr);
      s->expr = parse_tuple_or_expression();
      expect_block_end();
      return s;
    }
    if (names.size() != 1 || !attr.empty()) fail(cur(), "expected '=' in set");
    auto s = stmt(Stmt::kSetBlock, at);
    s->targets = std::move(names);
    if (is_op("|")) s->filter = parse_filter_chain(at);
    expect_block_end();
    std::string found;
    s->body = parse_body({"endset"}, found);
    advance();
    expect_block_end();
    return s;
  }

  ExprPtr parse_filter_chain(const Token& at) {
    ExprPtr base = node(Expr::kName, at);
    base->name = kBodyName;
    while (is_op("|")) base = parse_filter(std::move(base));
    return base;
  }

  StmtPtr parse_filter_block() {
    const Token at = cur();
    advance();
    auto s = stmt(Stmt::kFilterBlock, at);
    ExprPtr base = node(Expr::kName, at);
    base->name = kBodyName;
    s->filter = parse_filter_after_pipe(std::move(base));
    while (is_op("|")) s->filter = parse_filter(std::move(s->filter));
    expect_block_end();
    std::string found;
    s->body = parse_body({"endfilter"}, found);
    advance();
    expect_block_end();
    return s;
  }

  void parse_params(Stmt& s) {
    expect_op("(");
    while (!is_op(")")) {
      s.targets.push_back(expect_name());
      if (is_op("=")) {
        advance();
        s.defaults.push_back(parse_expression());
      } else {
        s.defaults.push_back(nullptr);
      }
      if (!is_op(",")) break;
      advance();
    }
    expect_op(")");
  }

  StmtPtr parse_macro() {
    auto s = stmt(Stmt::kMacro, cur());
    advance();
    s->text = expect_name();
    parse_params(*s);
    expect_block_end();
    std::string found;
    s->body = parse_body({"endmacro"}, found);
    advance();
    expect_block_end();
    return s;
  }

  StmtPtr parse_call_block() {
    auto s = stmt(Stmt::kCallBlock, cur());
    advance();
    if (is_op("(")) parse_params(*s);
    s->expr = parse_expression();
    if (s->expr->type != Expr::kCall) fail(cur(), "expected a macro call after 'call'");
    expect_block_end();
    std::string found;
    s->body = parse_body({"endcall"}, found);
    advance();
    expect_block_end();
    return s;
  }

  // ---- expressions ----

  ExprPtr parse_tuple_or_expression() {
    const Token at = cur();
    ExprPtr first = parse_expression();
    if (!is_op(",")) return first;
    auto t = node(Expr::kTuple, at);
    t->args.push_back(std::move(first));
    while (is_op(",")) {
      advance();
      if (cur().type == Tok::kBlockEnd || cur().type == Tok::kVarEnd) break;
      t->args.push_back(parse_expression());
    }
    return t;
  }

  ExprPtr parse_expression() {
    DepthGuard g(*this);
    const Token at = cur();
    ExprPtr e = parse_or();
    while (is_name("if")) {
      advance();
      auto c = node(Expr::kCond, at);
      ExprPtr cond = parse_or();
      ExprPtr other;
      if (is_name("else")) {
        advance();
        other = parse_expression();
      }
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(e));
      c->args.push_back(std::move(other));
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(const Token& at, const std::string& op, ExprPtr a, ExprPtr b) {
    auto e = node(Expr::kBinary, at);
    e->name = op;
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      const Token at = cur();
      advance();
      e = binary(at, "or", std::move(e), parse_and());
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      const Token at = cur();
      advance();
      e = binary(at, "and", std::move(e), parse_not());
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      DepthGuard g(*this);
      const Token at = cur();
      advance();
      auto e = node(Expr::kUnary, at);
      e->name = "not";
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token at = cur();
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::kOp && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                     cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
        op = cur().text;
        advance();
      } else if (is_name("in")) {
        op = "in";
        advance();
      } else if (is_name("not") && peek().type == Tok::kName && peek().text == "in") {
        op = "notin";
        advance();
        advance();
      } else {
        break;
      }
      if (!cmp) {
        cmp = node(Expr::kCompare, at);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token at = cur();
      advance();
      e = binary(at, at.text, std::move(e), parse_concat());
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const Token at = cur();
      advance();
      e = binary(at, "~", std::move(e), parse_math2());
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token at = cur();
      advance();
      e = binary(at, at.text, std::move(e), parse_pow());
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      const Token at = cur();
      advance();
      e = binary(at, "**", std::move(e), parse_unary(true));
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard g(*this);
    const Token at = cur();
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      advance();
      e = node(Expr::kUnary, at);
      e->name = at.text;
      e->args.push_back(parse_unary(false));
    } else {
      e = parse_primary();
      e = parse_postfix(std::move(e));
    }
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token t = cur();
    switch (t.type) {
      case Tok::kName: {
        advance();
        if (t.text == "true" || t.text == "True") return literal(t, Value::boolean(true));
        if (t.text == "false" || t.text == "False") return literal(t, Value::boolean(false));
        if (t.text == "none" || t.text == "None") return literal(t, Value::none());
        auto e = node(Expr::kName, t);
        e->name = t.text;
        return e;
      }
      case Tok::kString: {
        std::string s = t.text;
        advance();
        while (cur().type == Tok::kString) {  // adjacent literals concatenate
          s += cur().text;
          advance();
        }
        return literal(t, Value::string(std::move(s)));
      }
      case Tok::kInt: {
        advance();
        int64_t v = 0;
        auto r = std::from_chars(t.text.data(), t.text.data() + t.text.size(), v);
        if (r.ec != std::errc()) return literal(t, Value::number(std::strtod(t.text.c_str(), nullptr)));
        return literal(t, Value::integer(v));
      }
      case Tok::kFloat:
        advance();
        return literal(t, Value::number(std::strtod(t.text.c_str(), nullptr)));
      case Tok::kOp:
        if (t.text == "(") {
          advance();
          if (is_op(")")) {
            advance();
            return node(Expr::kTuple, t);
          }
          ExprPtr e = parse_expression();
          if (is_op(",")) {
            auto tup = node(Expr::kTuple, t);
            tup->args.push_back(std::move(e));
            while (is_op(",")) {
              advance();
              if (is_op(")")) break;
              tup->args.push_back(parse_expression());
            }
            e = std::move(tup);
          }
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          advance();
          auto e = node(Expr::kList, t);
          while (!is_op("]")) {
            e->args.push_back(parse_expression());
            if (!is_op(",")) break;
            advance();
          }
          expect_op("]");
          return e;
        }
        if (t.text == "{") {
          advance();
          auto e = node(Expr::kDict, t);
          while (!is_op("}")) {
            e->args.push_back(parse_expression());
            expect_op(":");
            e->args.push_back(parse_expression());
            if (!is_op(",")) break;
            advance();
          }
          expect_op("}");
          return e;
        }
        break;
      default:
        break;
    }
    fail(t, "unexpected " + describe(t));
  }

  ExprPtr literal(const Token& t, Value v) {
    auto e = node(Expr::kLiteral, t);
    e->value = std::move(v);
    return e;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      const Token at = cur();
      if (is_op(".")) {
        advance();
        auto g = node(Expr::kGetAttr, at);
        if (cur().type == Tok::kName) {
          g->name = cur().text;
          advance();
          g->args.push_back(std::move(e));
          e = std::move(g);
        } else if (cur().type == Tok::kInt) {  // foo.0 is foo[0]
          auto gi = node(Expr::kGetItem, at);
          gi->args.push_back(std::move(e));
          gi->args.push_back(parse_primary());
          e = std::move(gi);
        } else {
          fail(cur(), "expected an attribute name after '.'");
        }
      } else if (is_op("[")) {
        advance();
        e = parse_subscript(at, std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(const Token& at, ExprPtr obj) {
    ExprPtr parts[3];
    bool is_slice = false;
    for (int k = 0; k < 3; ++k) {
      if (!is_op(":") && !is_op("]")) parts[k] = parse_expression();
      if (k < 2 && is_op(":")) {
        is_slice = true;
        advance();
        continue;
      }
      break;
    }
    expect_op("]");
    if (!is_slice) {
      if (!parts[0]) fail(at, "empty subscript");
      auto g = node(Expr::kGetItem, at);
      g->args.push_back(std::move(obj));
      g->args.push_back(std::move(parts[0]));
      return g;
    }
    auto s = node(Expr::kSlice, at);
    s->args.push_back(std::move(obj));
    for (auto& p : parts) s->args.push_back(std::move(p));
    return s;
  }

  void parse_args(Expr& call) {
    expect_op("(");
    while (!is_op(")")) {
      if (cur().type == Tok::kName && peek().type == Tok::kOp && peek().text == "=") {
        std::string n = cur().text;
        advance();
        advance();
        call.kwargs.emplace_back(std::move(n), parse_expression());
      } else {
        if (!call.kwargs.empty()) fail(cur(), "positional argument after keyword argument");
        call.args.push_back(parse_expression());
      }
      if (!is_op(",")) break;
      advance();
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    DepthGuard g(*this);
    auto c = node(Expr::kCall, cur());
    c->args.push_back(std::move(callee));
    parse_args(*c);
    return c;
  }

  ExprPtr parse_filter(ExprPtr base) {
    expect_op("|");
    return parse_filter_after_pipe(std::move(base));
  }

  ExprPtr parse_filter_after_pipe(ExprPtr base) {
    DepthGuard g(*this);
    auto f = node(Expr::kFilter, cur());
    f->name = expect_name();
    while (is_op(".")) {  // dotted filter names
      advance();
      f->name += "." + expect_name();
    }
    f->args.push_back(std::move(base));
    if (is_op("(")) parse_args(*f);
    return f;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        e = parse_filter(std::move(e));
      } else if (is_name("is")) {
        DepthGuard g(*this);
        auto t = node(Expr::kTest, cur());
        advance();
        if (is_name("not")) {
          t->negate = true;
          advance();
        }
        t->name = expect_name();
        t->args.push_back(std::move(e));
        if (is_op("(")) {
          parse_args(*t);
        } else if ((cur().type == Tok::kName && !is_name("else") && !is_name("or") && !is_name("and") &&
                    !is_name("if") && !is_name("is") && !is_name("in") && !is_name("not")) ||
                   cur().type == Tok::kString || cur().type == Tok::kInt || cur().type == Tok::kFloat ||
                   is_op("[") || is_op("{")) {
          t->args.push_back(parse_postfix(parse_primary()));  // "is divisibleby 3"
        }
        e = std::move(t);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  std::vector<Token> toks_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace

Body parse_template(const std::string& source) {
  return Parser(tokenize(source)).parse_all();
}

}  // namespace qleap::jinja
