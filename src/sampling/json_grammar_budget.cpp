// JsonMatcher::min_remaining: the fewest bytes that complete the document from the matcher's state,
// which the sampler compares with the tokens left (format_filter.cpp).
#include "sampling/json_grammar_state.h"

namespace qleap {

using namespace jg;

// ---- fewest bytes to completion ----

int JsonMatcher::min_remaining() const {
  return min_remaining(threads_);
}

int JsonMatcher::min_remaining(const std::vector<Thread>& threads) const {
  int best = kNever;
  for (const auto& t : threads) best = std::min(best, stack_remaining(t.st));
  return best;
}

// Shortest text of a top-level value: like JsonSchema::shortest, but a number there needs a byte
// after it to end (an enum literal too, when a longer one starts the same way).
int JsonMatcher::root_value_cost(int id, int depth) const {
  const JsonSchema& S = *schema_;
  if (id < 0) return 2;  // {}
  const Node& n = S.node(id);
  if (!n.any_of.empty()) {
    int best = kNever;
    if (depth < 16) {
      for (int b : n.any_of) best = std::min(best, root_value_cost(b, depth + 1));
    }
    return best;
  }
  if (n.types == 0) return kNever;
  if (n.has_enum) {
    int best = kNever;
    for (const auto& s : n.enum_strings) best = std::min(best, encoded_len(s) + 2);
    for (const auto& s : n.enum_literals) best = std::min(best, int(s.size()) + (enum_extends(n, s) ? 1 : 0));
    return best;
  }
  const uint8_t nums = n.types & (kInt | kFrac);
  const int others = shortest_of_types(n, uint8_t(n.types & ~nums), S.nodes_);
  return nums ? std::min(others, add_sat(shortest_number(n), 1)) : others;
}

int JsonMatcher::stack_remaining(const Stack& st) const {
  if (st.empty()) return 0;
  const JsonSchema& S = *schema_;
  auto L = [&](int id) { return S.shortest(id); };
  auto close_cost = [&](const Frame& obj, uint64_t seen, int count, bool first) {
    if (obj.node < 0) return 1;  // '}'
    return object_close_cost(S.node(obj.node), seen, count, first, S.nodes_);
  };
  auto array_rest = [&](const Frame& a, int done) {
    const Node* n = node_of(S, a.node);
    const int need = n ? std::max(0, n->min_items - done) : 0;
    int c = 1;
    for (int i = 0; i < need; ++i) c = add_sat(c, add_sat(1, L(n ? n->items : -1)));
    return c;
  };
  int total = 0;
  const size_t top = st.size() - 1;
  bool skip_parent = false;
  for (size_t k = st.size(); k-- > 0;) {
    const Frame& f = st[k];
    if (k != top) {
      if (skip_parent) {
        skip_parent = false;
        continue;
      }
      if (f.kind == Kind::kObject) {
        total = add_sat(total, close_cost(f, f.seen, f.count, false));
      } else if (f.kind == Kind::kArray) {
        total = add_sat(total, array_rest(f, f.count + 1));
      }
      continue;
    }
    int cost = 0;
    switch (f.kind) {
      case Kind::kValue:
        cost = k == 0 ? root_value_cost(f.node, 0) : L(f.node);
        break;
      case Kind::kLiteral:
        cost = int(f.text.size()) - f.state;
        break;
      case Kind::kEnumLit: {
        const Node& n = S.node(f.node);
        cost = kNever;
        for (const auto& s : n.enum_literals) {
          if (s.size() >= f.text.size() && s.compare(0, f.text.size(), f.text) == 0) {
            // A top-level literal another candidate extends needs a byte to end it.
            const bool ambiguous = k == 0 && enum_extends(n, s);
            cost = std::min(cost, int(s.size() - f.text.size()) + (ambiguous ? 1 : 0));
          }
        }
        break;
      }
      case Kind::kNumber: {
        const Node* n = node_of(S, f.node);
        if (n && n->bounded()) {
          cost = number_remaining(*n, f.text);
        } else {
          cost = number_terminal(S, f) ? 0 : 1;
        }
        if (k == 0) cost = add_sat(cost, 1);  // a top-level number ends with whitespace
        break;
      }
      case Kind::kObject:
        switch (f.state) {
          case kObjFirst:
            cost = close_cost(f, f.seen, f.count, true);
            break;
          case kObjKey: {
            // A key must follow the comma.
            cost = kNever;
            if (f.node < 0) {
              cost = 2 + 1 + 1 + 1;  // "":0}
            } else {
              const Node& n = S.node(f.node);
              if (n.props.empty()) {
                if (key_possible(S, f))
                  cost = add_sat(3 + L(n.additional), close_cost(f, f.seen, f.count + 1, false));
              } else {
                for (size_t i = 0; i < n.props.size(); ++i) {
                  if ((f.seen >> i & 1u) || (n.max_props >= 0 && f.count >= n.max_props)) continue;
                  const int c = add_sat(add_sat(n.props[i].encoded_len + 1, L(n.props[i].node)),
                                        close_cost(f, f.seen | (uint64_t(1) << i), f.count + 1, false));
                  cost = std::min(cost, c);
                }
              }
            }
            break;
          }
          case kObjColon:
            cost = add_sat(1 + 0, add_sat(L(f.value_node), close_cost(f, f.seen, f.count, false)));
            break;
          default:
            cost = close_cost(f, f.seen, f.count, false);
            break;
        }
        break;
      case Kind::kArray: {
        const Node* n = node_of(S, f.node);
        const int items = n ? n->items : -1;
        if (f.state == kArrFirst) {
          const int need = n ? n->min_items : 0;
          cost = need == 0 ? 1 : add_sat(array_rest(f, 1), L(items));
        } else if (f.state == kArrValue) {
          cost = add_sat(L(items), array_rest(f, f.count + 1));
        } else {
          cost = array_rest(f, f.count);
        }
        break;
      }
      case Kind::kString: {
        if (f.track) {
          cost = kNever;
          if (f.is_key) {
            const Frame& obj = st[k - 1];
            const Node& on = S.node(obj.node);
            for (size_t i = 0; i < on.props.size(); ++i) {
              if ((obj.seen >> i & 1u) || !viable(S, on.props[i].node) || !candidate_ok(f, on.props[i].name))
                continue;
              const int c = add_sat(add_sat(candidate_cost(f, on.props[i].name) + 1, L(on.props[i].node)),
                                    close_cost(obj, obj.seen | (uint64_t(1) << i), obj.count + 1, false));
              cost = std::min(cost, c);
            }
            skip_parent = true;
          } else {
            for (const auto& s : S.node(f.node).enum_strings) {
              if (candidate_ok(f, s)) cost = std::min(cost, candidate_cost(f, s));
            }
          }
          break;
        }
        // A free string: finish the escape or UTF-8 sequence, reach minLength, close.
        int esc = 0;
        bool pending = f.utf8_left > 0;
        if (f.state == kStrEscape) {
          esc = 1, pending = true;
        } else if (f.state == kStrNeedBackslash) {
          esc = 6, pending = true;
        } else if (f.state == kStrNeedU) {
          esc = 5, pending = true;
        } else if (f.state >= kStrHex0) {
          const int d = f.state - kStrHex0;
          esc = 4 - d;
          // "\uD8".."\uDB" starts a high surrogate, which needs its low half.
          if (f.high == 0 && d >= 2 && (f.acc >> (4 * (d - 2))) >= 0xD8 && (f.acc >> (4 * (d - 2))) <= 0xDB)
            esc += 6;
          pending = true;
        }
        const Node* n = f.is_key ? nullptr : node_of(S, f.node);
        const int have = f.count + (pending && f.utf8_left == 0 ? 1 : 0);
        const int more = n ? std::max(0, n->min_len - have) : 0;
        cost = esc + f.utf8_left + more + 1;
        if (f.is_key) {
          const Frame& obj = st[k - 1];
          const int vs = obj.node >= 0 ? S.node(obj.node).additional : -1;
          cost = add_sat(cost, add_sat(1 + L(vs), close_cost(obj, obj.seen, obj.count + 1, false)));
          skip_parent = true;
        }
        break;
      }
    }
    total = add_sat(total, cost);
  }
  return total;
}

}  // namespace qleap
