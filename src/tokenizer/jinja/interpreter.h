// Renders a parsed template over Values. Scoping follows Jinja: {% for %} iterations, macros and
// call blocks get their own scope; {% if %} does not; {% set ns.attr %} mutates a namespace().
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/value.h"

namespace qleap::jinja {

struct RenderLimits {
  int max_depth = 256;                      // expression / statement / macro recursion
  size_t max_output = size_t{64} << 20;     // bytes of rendered text
  int64_t max_steps = 2'000'000;            // statements executed + loop iterations
  size_t max_collection = size_t{1} << 20;  // elements produced by range(), "*" and friends
};

// raise_exception(msg) from a template: what() is exactly msg.
struct RaisedError : ChatTemplateError {
  using ChatTemplateError::ChatTemplateError;
};

struct Frame {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Frame> parent;
};

class Interpreter {
 public:
  explicit Interpreter(RenderLimits limits = {}) : limits_(limits) {}

  // Renders `tmpl` with the given top-level variables (a dict) and Jinja's globals.
  std::string render(const Body& tmpl, const Value& vars, std::optional<int64_t> now_unix = std::nullopt);

  // Calls a callable Value (macro, global function, loop.cycle).
  Value call(const Value& fn, const CallArgs& args);
  const RenderLimits& limits() const { return limits_; }
  std::optional<int64_t> now_unix() const { return now_unix_; }
  void check_collection(size_t n) const;

 private:
  enum class Flow { kNormal, kBreak, kContinue };
  using FramePtr = std::shared_ptr<Frame>;

  struct DepthGuard {
    Interpreter& in;
    explicit DepthGuard(Interpreter& i);
    ~DepthGuard() { --in.depth_; }
  };

  Flow exec_body(const Body& body, const FramePtr& frame, std::string& out);
  Flow exec(const Stmt& s, const FramePtr& frame, std::string& out);
  void exec_for(const Stmt& s, const FramePtr& frame, std::string& out);
  void exec_set(const Stmt& s, const FramePtr& frame);
  Value make_macro(const Stmt& s, const FramePtr& frame);
  Value eval(const Expr& e, const FramePtr& frame);
  Value eval_call(const Expr& e, const FramePtr& frame);
  Value eval_binary(const Expr& e, const FramePtr& frame);
  Value eval_compare(const Expr& e, const FramePtr& frame);
  CallArgs eval_args(const Expr& e, const FramePtr& frame, size_t first);
  Value lookup(const std::string& name, const FramePtr& frame) const;
  void emit(std::string& out, const std::string& text);
  void step();
  [[noreturn]] void fail_at(int line, const std::string& msg) const;

  RenderLimits limits_;
  int depth_ = 0;
  int64_t steps_ = 0;
  std::optional<int64_t> now_unix_;
  FramePtr globals_;
  // Frames holding macros: a macro captures its defining frame, so frame -> macro -> frame is a
  // reference cycle; render() clears these frames when it ends to free them.
  std::vector<FramePtr> macro_frames_;
};

// Builtins (builtins.cpp).
Value apply_filter(Interpreter& in, const std::string& name, const Value& v, const CallArgs& args);
bool apply_test(Interpreter& in, const std::string& name, const Value& v, const CallArgs& args);
// Python methods of str / dict / list; returns false when `name` is not one.
bool call_method(Interpreter& in, const Value& obj, const std::string& name, const CallArgs& args,
                 Value& out);
void install_globals(Frame& frame);
// Python operators on Values (throw ChatTemplateError on type errors).
Value binary_op(const std::string& op, const Value& a, const Value& b, const Interpreter& in);
bool contains(const Value& container, const Value& item);
// Python subscripting: list/str index (negative allowed) or dict key; Undefined when missing.
Value get_item(const Value& obj, const Value& key);
Value get_attr(const Value& obj, const std::string& name);
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
// Iteration as a for loop sees it: list items, dict keys, string characters.
std::vector<Value> iterate(const Value& v);

}  // namespace qleap::jinja
