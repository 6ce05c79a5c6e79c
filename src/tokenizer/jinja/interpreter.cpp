#include "tokenizer/jinja/interpreter.h"

#include <algorithm>

namespace qleap::jinja {

namespace {

constexpr const char* kBodyName = "\x01body";
constexpr const char* kLocPrefix = "chat template ";

}  // namespace

Interpreter::DepthGuard::DepthGuard(Interpreter& i) : in(i) {
  if (++in.depth_ > in.limits_.max_depth) {
    --in.depth_;
    throw ChatTemplateError("chat template error: recursion too deep (limit " +
                            std::to_string(in.limits_.max_depth) + ")");
  }
}

void Interpreter::fail_at(int line, const std::string& msg) const {
  throw ChatTemplateError("chat template error at line " + std::to_string(line) + ": " + msg);
}

void Interpreter::check_collection(size_t n) const {
  if (n > limits_.max_collection) {
    throw ChatTemplateError("chat template error: collection too large (" + std::to_string(n) + " elements)");
  }
}

void Interpreter::step() {
  if (++steps_ > limits_.max_steps)
    throw ChatTemplateError("chat template error: too many steps (runaway loop?)");
}

void Interpreter::emit(std::string& out, const std::string& text) {
  if (out.size() + text.size() > limits_.max_output) {
    throw ChatTemplateError("chat template error: output exceeds " + std::to_string(limits_.max_output) +
                            " bytes");
  }
  out += text;
}

std::string Interpreter::render(const Body& tmpl, const Value& vars, std::optional<int64_t> now_unix) {
  now_unix_ = now_unix;
  depth_ = 0;
  steps_ = 0;
  globals_ = std::make_shared<Frame>();
  install_globals(*globals_);
  auto root = std::make_shared<Frame>();
  root->parent = globals_;
  if (vars.is_dict()) {
    for (const auto& kv : vars.dict->items) root->vars[kv.first] = kv.second;
  }
  std::string out;
  struct CycleBreaker {
    Interpreter& in;
    FramePtr root;
    ~CycleBreaker() {
      for (auto& f : in.macro_frames_) f->vars.clear();
      in.macro_frames_.clear();
      root->vars.clear();
      in.globals_.reset();
    }
  } breaker{*this, root};
  // break/continue outside a loop are ignored at the top level, as nothing encloses them.
  exec_body(tmpl, root, out);
  return out;
}

Value Interpreter::lookup(const std::string& name, const FramePtr& frame) const {
  for (const Frame* f = frame.get(); f; f = f->parent.get()) {
    auto it = f->vars.find(name);
    if (it != f->vars.end()) return it->second;
  }
  return Value::undefined(name);
}

Interpreter::Flow Interpreter::exec_body(const Body& body, const FramePtr& frame, std::string& out) {
  for (const auto& s : body) {
    Flow f = exec(*s, frame, out);
    if (f != Flow::kNormal) return f;
  }
  return Flow::kNormal;
}

Interpreter::Flow Interpreter::exec(const Stmt& s, const FramePtr& frame, std::string& out) {
  DepthGuard g(*this);
  step();
  try {
    switch (s.type) {
      case Stmt::kText:
        emit(out, s.text);
        return Flow::kNormal;
      case Stmt::kOutput:
        emit(out, to_str(eval(*s.expr, frame)));
        return Flow::kNormal;
      case Stmt::kIf:
        for (const auto& [cond, body] : s.branches) {
          if (!cond || eval(*cond, frame).truthy()) return exec_body(body, frame, out);
        }
        return Flow::kNormal;
      case Stmt::kFor:
        exec_for(s, frame, out);
        return Flow::kNormal;
      case Stmt::kSet:
        exec_set(s, frame);
        return Flow::kNormal;
      case Stmt::kSetBlock:
      case Stmt::kFilterBlock: {
        std::string inner;
        auto scope = std::make_shared<Frame>();
        scope->parent = frame;
        exec_body(s.body, s.type == Stmt::kSetBlock ? frame : scope, inner);
        Value v = Value::string(std::move(inner));
        if (s.filter) {
          scope->vars[kBodyName] = v;
          v = eval(*s.filter, scope);
        }
        if (s.type == Stmt::kSetBlock) {
          frame->vars[s.targets[0]] = v;
        } else {
          emit(out, to_str(v));
        }
        return Flow::kNormal;
      }
      case Stmt::kMacro:
        frame->vars[s.text] = make_macro(s, frame);
        return Flow::kNormal;
      case Stmt::kCallBlock: {
        // The body becomes `caller`, a macro taking the block's parameters.
        Value caller = make_macro(s, frame);
        const Expr& call = *s.expr;
        Value callee = eval(*call.args[0], frame);
        CallArgs args = eval_args(call, frame, 1);
        args.kw.emplace_back("caller", caller);
        emit(out, to_str(this->call(callee, args)));
        return Flow::kNormal;
      }
      case Stmt::kBreak:
        return Flow::kBreak;
      case Stmt::kContinue:
        return Flow::kContinue;
      case Stmt::kScope:
        return exec_body(s.body, frame, out);
    }
  } catch (const RaisedError&) {
    throw;
  } catch (const ChatTemplateError& e) {
    if (std::string(e.what()).rfind(kLocPrefix, 0) == 0) throw;
    fail_at(s.line, e.what());
  }
  return Flow::kNormal;
}

void Interpreter::exec_for(const Stmt& s, const FramePtr& frame, std::string& out) {
  Value seq = eval(*s.expr, frame);
  if (seq.is_none() || seq.kind == Kind::kInt || seq.kind == Kind::kFloat || seq.kind == Kind::kBool) {
    fail_at(s.line, std::string("'") + type_name(seq) + "' object is not iterable");
  }
  std::vector<Value> items = iterate(seq);
  auto bind = [&](Frame& f, const Value& item) {
    if (s.targets.size() == 1) {
      f.vars[s.targets[0]] = item;
      return;
    }
    std::vector<Value> parts = item.is_list()     ? *item.list
                               : item.is_string() ? iterate(item)
                                                  : std::vector<Value>{};
    if (parts.size() != s.targets.size()) {
      fail_at(s.line, "cannot unpack " + std::to_string(parts.size()) + " values into " +
                          std::to_string(s.targets.size()) + " loop variables");
    }
    for (size_t k = 0; k < parts.size(); ++k) f.vars[s.targets[k]] = parts[k];
  };
  if (s.filter_cond) {
    std::vector<Value> kept;
    for (auto& item : items) {
      step();
      auto probe = std::make_shared<Frame>();
      probe->parent = frame;
      bind(*probe, item);
      if (eval(*s.filter_cond, probe).truthy()) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    exec_body(s.else_body, frame, out);
    return;
  }
  const int64_t n = static_cast<int64_t>(items.size());
  // One loop object per loop, updated in place each iteration (Jinja's LoopContext is one object too).
  Value loop = Value::make_dict();
  Dict& d = *loop.dict;
  std::weak_ptr<Dict> weak = loop.dict;
  d.set("cycle", Value::callable("cycle", [weak](Interpreter&, const CallArgs& a) {
          if (a.pos.empty()) throw ChatTemplateError("loop.cycle() needs at least one argument");
          auto dict = weak.lock();
          const Value* i0 = dict ? dict->find("index0") : nullptr;
          const int64_t k = i0 ? i0->as_int() : 0;
          return a.pos[static_cast<size_t>(k) % a.pos.size()];
        }));
  for (int64_t k = 0; k < n; ++k) {
    step();
    auto iter = std::make_shared<Frame>();
    iter->parent = frame;
    bind(*iter, items[k]);
    d.set("index", Value::integer(k + 1));
    d.set("index0", Value::integer(k));
    d.set("revindex", Value::integer(n - k));
    d.set("revindex0", Value::integer(n - k - 1));
    d.set("first", Value::boolean(k == 0));
    d.set("last", Value::boolean(k == n - 1));
    d.set("length", Value::integer(n));
    d.set("depth", Value::integer(1));
    d.set("depth0", Value::integer(0));
    d.set("previtem", k > 0 ? items[k - 1] : Value::undefined("previtem"));
    d.set("nextitem", k + 1 < n ? items[k + 1] : Value::undefined("nextitem"));
    iter->vars["loop"] = loop;
    Flow f = exec_body(s.body, iter, out);
    if (f == Flow::kBreak) break;
  }
}

void Interpreter::exec_set(const Stmt& s, const FramePtr& frame) {
  Value v = eval(*s.expr, frame);
  if (!s.attr.empty()) {
    Value ns = lookup(s.targets[0], frame);
    if (ns.kind != Kind::kNamespace) {
      fail_at(s.line, "cannot assign attribute on non-namespace object '" + s.targets[0] + "'");
    }
    ns.dict->set(s.attr, std::move(v));
    return;
  }
  if (s.targets.size() == 1) {
    frame->vars[s.targets[0]] = std::move(v);
    return;
  }
  std::vector<Value> parts = v.is_list() ? *v.list : iterate(v);
  if (parts.size() != s.targets.size()) fail_at(s.line, "cannot unpack values in set");
  for (size_t k = 0; k < parts.size(); ++k) frame->vars[s.targets[k]] = parts[k];
}

Value Interpreter::make_macro(const Stmt& s, const FramePtr& frame) {
  macro_frames_.push_back(frame);
  const Stmt* def = &s;
  FramePtr captured = frame;
  const std::string name = s.type == Stmt::kMacro ? s.text : "caller";
  return Value::callable(name, [def, captured, name](Interpreter& in, const CallArgs& args) {
    DepthGuard g(in);
    auto f = std::make_shared<Frame>();
    f->parent = captured;
    const auto& params = def->targets;
    if (args.pos.size() > params.size()) {
      // Extra positional arguments go to `varargs`, as in Jinja.
      f->vars["varargs"] =
          Value::make_list(std::vector<Value>(args.pos.begin() + params.size(), args.pos.end()));
    } else {
      f->vars["varargs"] = Value::make_list();
    }
    Value extra_kw = Value::make_dict();
    for (const auto& kv : args.kw) {
      if (kv.first == "caller") {
        f->vars["caller"] = kv.second;
      } else if (std::find(params.begin(), params.end(), kv.first) == params.end()) {
        extra_kw.dict->set(kv.first, kv.second);
      }
    }
    f->vars["kwargs"] = extra_kw;
    for (size_t k = 0; k < params.size(); ++k) {
      const Value* a = args.get(params[k], k);
      if (a) {
        f->vars[params[k]] = *a;
      } else if (def->defaults[k]) {
        f->vars[params[k]] = in.eval(*def->defaults[k], f);
      } else {
        f->vars[params[k]] = Value::undefined(params[k]);
      }
    }
    std::string out;
    in.exec_body(def->body, f, out);
    return Value::string(std::move(out));
  });
}

Value Interpreter::call(const Value& fn, const CallArgs& args) {
  if (fn.kind != Kind::kCallable) {
    if (fn.is_undefined()) throw ChatTemplateError("'" + fn.s + "' is undefined");
    throw ChatTemplateError(std::string("'") + type_name(fn) + "' object is not callable");
  }
  return fn.fn->fn(*this, args);
}

CallArgs Interpreter::eval_args(const Expr& e, const FramePtr& frame, size_t first) {
  CallArgs a;
  for (size_t k = first; k < e.args.size(); ++k) a.pos.push_back(eval(*e.args[k], frame));
  for (const auto& kv : e.kwargs) a.kw.emplace_back(kv.first, eval(*kv.second, frame));
  return a;
}

Value Interpreter::eval_call(const Expr& e, const FramePtr& frame) {
  const Expr& callee = *e.args[0];
  if (callee.type == Expr::kGetAttr) {
    Value obj = eval(*callee.args[0], frame);
    CallArgs args = eval_args(e, frame, 1);
    Value out;
    if (call_method(*this, obj, callee.name, args, out)) return out;
    Value fn = get_attr(obj, callee.name);
    if (fn.is_undefined()) {
      throw ChatTemplateError(std::string("'") + type_name(obj) + "' object has no attribute '" +
                              callee.name + "'");
    }
    return call(fn, args);
  }
  Value fn = eval(callee, frame);
  CallArgs args = eval_args(e, frame, 1);
  return call(fn, args);
}

Value Interpreter::eval(const Expr& e, const FramePtr& frame) {
  DepthGuard g(*this);
  switch (e.type) {
    case Expr::kLiteral:
      return e.value;
    case Expr::kName:
      return lookup(e.name, frame);
    case Expr::kGetAttr:
      return get_attr(eval(*e.args[0], frame), e.name);
    case Expr::kGetItem:
      return get_item(eval(*e.args[0], frame), eval(*e.args[1], frame));
    case Expr::kSlice: {
      Value obj = eval(*e.args[0], frame);
      Value parts[3];
      for (int k = 0; k < 3; ++k) parts[k] = e.args[k + 1] ? eval(*e.args[k + 1], frame) : Value::none();
      return slice(obj, parts[0], parts[1], parts[2]);
    }
    case Expr::kCall:
      return eval_call(e, frame);
    case Expr::kFilter: {
      Value v = eval(*e.args[0], frame);
      CallArgs args = eval_args(e, frame, 1);
      return apply_filter(*this, e.name, v, args);
    }
    case Expr::kTest: {
      // `x is defined` must not fail on a missing x: lookups already yield Undefined.
      Value v = eval(*e.args[0], frame);
      CallArgs args = eval_args(e, frame, 1);
      return Value::boolean(apply_test(*this, e.name, v, args) != e.negate);
    }
    case Expr::kUnary: {
      Value v = eval(*e.args[0], frame);
      if (e.name == "not") return Value::boolean(!v.truthy());
      if (v.kind == Kind::kFloat) return Value::number(e.name == "-" ? -v.f : v.f);
      if (v.is_integer()) return Value::integer(e.name == "-" ? -v.as_int() : v.as_int());
      throw ChatTemplateError(std::string("bad operand type for unary ") + e.name + ": '" + type_name(v) +
                              "'");
    }
    case Expr::kBinary:
      return eval_binary(e, frame);
    case Expr::kCompare:
      return eval_compare(e, frame);
    case Expr::kCond: {
      if (eval(*e.args[0], frame).truthy()) return eval(*e.args[1], frame);
      return e.args[2] ? eval(*e.args[2], frame) : Value::undefined();
    }
    case Expr::kList:
    case Expr::kTuple: {
      std::vector<Value> items;
      for (const auto& a : e.args) items.push_back(eval(*a, frame));
      Value v = Value::make_list(std::move(items));
      v.is_tuple = e.type == Expr::kTuple;
      return v;
    }
    case Expr::kDict: {
      Value d = Value::make_dict();
      for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
        Value key = eval(*e.args[k], frame);
        if (!key.is_string()) key = Value::string(to_str(key));
        d.dict->set(key.s, eval(*e.args[k + 1], frame));
      }
      return d;
    }
  }
  return Value::undefined();
}

Value Interpreter::eval_binary(const Expr& e, const FramePtr& frame) {
  if (e.name == "and") {
    Value a = eval(*e.args[0], frame);
    return a.truthy() ? eval(*e.args[1], frame) : a;
  }
  if (e.name == "or") {
    Value a = eval(*e.args[0], frame);
    return a.truthy() ? a : eval(*e.args[1], frame);
  }
  Value a = eval(*e.args[0], frame);
  Value b = eval(*e.args[1], frame);
  return binary_op(e.name, a, b, *this);
}

Value Interpreter::eval_compare(const Expr& e, const FramePtr& frame) {
  Value left = eval(*e.args[0], frame);
  for (size_t k = 0; k < e.ops.size(); ++k) {
    Value right = eval(*e.args[k + 1], frame);
    const std::string& op = e.ops[k];
    bool r;
    if (op == "==") {
      r = equals(left, right);
    } else if (op == "!=") {
      r = !equals(left, right);
    } else if (op == "<") {
      r = less_than(left, right);
    } else if (op == "<=") {
      r = !less_than(right, left);
    } else if (op == ">") {
      r = less_than(right, left);
    } else if (op == ">=") {
      r = !less_than(left, right);
    } else if (op == "in") {
      r = contains(right, left);
    } else {
      r = !contains(right, left);
    }
    if (!r) return Value::boolean(false);
    left = std::move(right);
  }
  return Value::boolean(true);
}

}  // namespace qleap::jinja
