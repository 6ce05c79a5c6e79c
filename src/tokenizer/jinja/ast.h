// Syntax tree of a parsed template.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace qleap::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum Type {
    kLiteral,  // value
    kName,     // name
    kGetAttr,  // args[0].name
    kGetItem,  // args[0][args[1]]
    kSlice,    // args[0][args[1]:args[2]:args[3]] (null parts allowed)
    kCall,     // args[0](args[1..], kwargs)
    kFilter,   // args[0] | name(args[1..], kwargs)
    kTest,     // args[0] is [not] name(args[1..])
    kUnary,    // name in {"-", "+", "not"}
    kBinary,   // name in {"+","-","*","/","//","%","**","~","and","or"}
    kCompare,  // args[0] ops[k] args[k+1] ...
    kCond,     // args[1] if args[0] else args[2] (args[2] may be null)
    kList,
    kTuple,
    kDict,  // args alternate key, value
  };
  Type type;
  int line = 0;
  int col = 0;
  std::string name;
  Value value;
  bool negate = false;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum Type {
    kText,
    kOutput,
    kIf,
    kFor,
    kSet,
    kSetBlock,
    kMacro,
    kCallBlock,
    kBreak,
    kContinue,
    kFilterBlock,
    kScope
  };
  Type type;
  int line = 0;
  int col = 0;
  std::string text;                                // kText
  ExprPtr expr;                                    // kOutput, kSet value, kFor iterable, kCallBlock call
  std::vector<std::pair<ExprPtr, Body>> branches;  // kIf: (cond, body); last cond may be null (else)
  std::vector<std::string> targets;  // kFor loop vars, kSet names, kMacro params, kCallBlock params
  std::string attr;                  // kSet on a namespace: targets[0].attr
  std::vector<ExprPtr> defaults;     // kMacro / kCallBlock parameter defaults (null = none)
  ExprPtr filter_cond;               // kFor ... if cond
  ExprPtr filter;                    // kSetBlock / kFilterBlock: a kFilter chain on a null base
  Body body;
  Body else_body;
};

}  // namespace qleap::jinja
