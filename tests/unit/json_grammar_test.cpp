// The JSON-schema grammar (src/sampling/json_grammar*): escapes decoded before comparing names and
// enum values, UTF-8, unions, references, bounds, lengths, and the completion budget (every
// prefix it allows can still be finished, in min_remaining() bytes).
#include "sampling/json_grammar.h"

#include <gtest/gtest.h>

#include <random>

namespace qleap {
namespace {

using nlohmann::json;

bool accepts(const json& schema, const std::string& s) {
  JsonMatcher m(&schema);
  return m.feed(s) && m.complete();
}
bool prefix_ok(const json& schema, const std::string& s) {
  JsonMatcher m(&schema);
  return m.feed(s);
}

const json kPerson = json::parse(R"({"type":"object","properties":{
  "name":{"type":"string"},"age":{"type":"integer"},"color":{"enum":["red","green"]}},
  "required":["name","age"]})");

TEST(JsonGrammar, KeysAreComparedDecoded) {
  const json s = json::parse(R"({"type":"object","properties":{"caf\u00e9":{"enum":["cr\u00e8me","a\"b"]},
      "tab\tkey":{"type":"integer"}},"required":["café"]})");
  EXPECT_TRUE(accepts(s, R"({"caf\u00e9":"cr\u00e8me"})"));
  EXPECT_TRUE(accepts(s, R"({"caf\u00E9":"crème","tab\tkey":1})"));
  EXPECT_TRUE(accepts(s, R"({"tab\u0009key":2,"café":"a\"b"})"));
  EXPECT_TRUE(accepts(s, R"({"café":"a\u0022b"})"));
  EXPECT_FALSE(prefix_ok(s, R"({"caf\u00e9":"a\"b","caf\u00e9")"));  // the same key twice
  // The old bug: escapes that decode to nothing the schema has kept the key open forever.
  EXPECT_TRUE(prefix_ok(s, R"({"caf\u00)"));
  EXPECT_FALSE(prefix_ok(s, R"({"caf\u03)"));
  EXPECT_FALSE(prefix_ok(s, R"({"caf\u03b9r)"));
  EXPECT_FALSE(prefix_ok(kPerson, R"({"name":"x","colo\u03b9r)"));
  EXPECT_FALSE(prefix_ok(kPerson, R"({"color":"gr\u0065y")"));
  // Printable ASCII in names and enum values is written as itself (free strings may escape it).
  EXPECT_FALSE(prefix_ok(kPerson, R"({"nam\u0065)"));
  EXPECT_FALSE(prefix_ok(kPerson, R"({"\/)"));
  EXPECT_TRUE(accepts(kPerson, R"({"name":"B\u006f","age":3})"));
}

TEST(JsonGrammar, StringEnumsWithEscapes) {
  const json s = json::parse(R"({"enum":["say \"hi\"","naïve","tab\there","😀","a\\b"]})");
  for (const char* ok :
       {R"("say \"hi\"")", R"("say \u0022hi\u0022")", R"("na\u00efve")", R"("na\u00EFve")", "\"naïve\"",
        R"("tab\there")", R"("tab\u0009here")", R"("\ud83d\ude00")", "\"😀\"", R"("a\\b")", R"("a\u005cb")"}) {
    EXPECT_TRUE(accepts(s, ok)) << ok;
  }
  for (const char* bad : {R"("say "hi")", R"("\ud83d\ude01")", R"("\ude00")", R"("nai)", R"("tab	here")"}) {
    EXPECT_FALSE(accepts(s, bad)) << bad;
  }
}

TEST(JsonGrammar, StringsAreValidUtf8) {
  const json any = json::object();
  EXPECT_TRUE(accepts(any, "\"h\xC3\xA9llo \xF0\x9F\x98\x80\""));
  EXPECT_FALSE(prefix_ok(any, "\"\xC0\x80"));        // overlong
  EXPECT_FALSE(prefix_ok(any, "\"\xED\xA0\x80"));    // a surrogate in UTF-8
  EXPECT_FALSE(prefix_ok(any, "\"\x80"));            // a stray continuation byte
  EXPECT_FALSE(prefix_ok(any, "\"\xC3\""));          // cut sequence
  EXPECT_FALSE(prefix_ok(any, R"("\ud800\u0041)"));  // high surrogate without its low half
  EXPECT_TRUE(accepts(any, R"("\ud800\udc00")"));
}

TEST(JsonGrammar, AnyOfRefAndRecursion) {
  const json u = json::parse(R"({"anyOf":[{"type":"integer"},
      {"type":"object","properties":{"a":{"type":"string"}},"required":["a"]}]})");
  EXPECT_TRUE(accepts(u, "12 "));
  EXPECT_TRUE(accepts(u, R"({"a":"x"})"));
  EXPECT_FALSE(prefix_ok(u, R"("s)"));
  EXPECT_FALSE(accepts(u, "{}"));
  const json opt =
      json::parse(R"({"type":"object","properties":{"v":{"anyOf":[{"type":"string"},{"type":"null"}],
      "title":"V"}},"required":["v"]})");
  EXPECT_TRUE(accepts(opt, R"({"v":null})"));
  EXPECT_TRUE(accepts(opt, R"({"v":"x"})"));
  EXPECT_FALSE(prefix_ok(opt, R"({"v":1)"));
  const json defs = json::parse(R"({"$defs":{"P":{"type":"object","properties":{"n":{"type":"integer"}},
      "required":["n"]}},"type":"array","items":{"$ref":"#/$defs/P"},"minItems":1})");
  EXPECT_TRUE(accepts(defs, R"([{"n":1},{"n":2}])"));
  EXPECT_FALSE(prefix_ok(defs, R"([{"m")"));
  EXPECT_FALSE(accepts(defs, "[]"));
  const json tree = json::parse(R"({"type":"object","properties":{"v":{"type":"integer"},
      "kids":{"type":"array","items":{"$ref":"#"}}},"required":["v"]})");
  EXPECT_TRUE(accepts(tree, R"({"v":1,"kids":[{"v":2,"kids":[{"v":3}]},{"v":4}]})"));
  EXPECT_TRUE(prefix_ok(tree, R"({"v":1,"kids":[{"kids")"));  // fine so far...
  EXPECT_FALSE(accepts(tree, R"({"v":1,"kids":[{}]})"));      // ...but v is required
}

TEST(JsonGrammar, NumberBounds) {
  const json age = json::parse(R"({"type":"object","properties":{"age":{"type":"integer","minimum":18,
      "maximum":99}},"required":["age"]})");
  EXPECT_TRUE(accepts(age, R"({"age":25})"));
  EXPECT_TRUE(accepts(age, R"({"age":18})"));
  EXPECT_TRUE(prefix_ok(age, R"({"age":1)"));  // 18, 19 still possible
  EXPECT_FALSE(accepts(age, R"({"age":1})"));
  EXPECT_FALSE(prefix_ok(age, R"({"age":100)"));
  EXPECT_FALSE(prefix_ok(age, R"({"age":-)"));
  EXPECT_FALSE(prefix_ok(age, R"({"age":2.)"));
  const json pct = json::parse(R"({"type":"integer","minimum":0,"maximum":100})");
  EXPECT_FALSE(prefix_ok(pct, "7."));  // an integer has no fraction, even one within the bounds
  const json p = json::parse(R"({"type":"object","properties":{"p":{"type":"number","exclusiveMinimum":0,
      "maximum":1}},"required":["p"]})");
  EXPECT_TRUE(accepts(p, R"({"p":0.5})"));
  EXPECT_TRUE(accepts(p, R"({"p":1})"));
  EXPECT_TRUE(accepts(p, R"({"p":0.000001})"));
  EXPECT_FALSE(accepts(p, R"({"p":0})"));
  EXPECT_TRUE(accepts(p, R"({"p":1.0})"));
  EXPECT_FALSE(prefix_ok(p, R"({"p":1.1)"));
  EXPECT_FALSE(prefix_ok(p, R"({"p":0.0000001)"));  // more than 6 fraction digits
  EXPECT_FALSE(prefix_ok(p, R"({"p":1e)"));
  const json neg = json::parse(R"({"type":"integer","minimum":-20,"maximum":-10})");
  EXPECT_TRUE(accepts(neg, "-15 "));
  EXPECT_FALSE(prefix_ok(neg, "-3"));
  EXPECT_FALSE(prefix_ok(neg, "5"));
  EXPECT_THROW(validate_json_schema(json::parse(R"({"type":"integer","minimum":5,"maximum":4})")),
               std::invalid_argument);
  EXPECT_THROW(validate_json_schema(json::parse(R"({"type":"integer","minimum":0.2,"maximum":0.8})")),
               std::invalid_argument);
}

TEST(JsonGrammar, LengthsItemsAndProperties) {
  const json s = json::parse(R"({"type":"string","minLength":2,"maxLength":3})");
  EXPECT_TRUE(accepts(s, R"("ab")"));
  EXPECT_TRUE(accepts(s, R"("a\u00e9")"));  // code points, not bytes
  EXPECT_FALSE(accepts(s, R"("a")"));
  EXPECT_FALSE(prefix_ok(s, R"("abcd)"));
  const json a = json::parse(R"({"type":"array","items":{"type":"boolean"},"minItems":1,"maxItems":2})");
  EXPECT_TRUE(accepts(a, "[true]"));
  EXPECT_FALSE(accepts(a, "[]"));
  EXPECT_FALSE(prefix_ok(a, "[true,false,"));
  const json closed = json::parse(R"({"type":"object","additionalProperties":false})");
  EXPECT_TRUE(accepts(closed, "{}"));
  EXPECT_FALSE(prefix_ok(closed, "{\""));
  const json dict =
      json::parse(R"({"type":"object","additionalProperties":{"type":"integer"},"minProperties":1})");
  EXPECT_TRUE(accepts(dict, R"({"x":1,"y":2})"));
  EXPECT_FALSE(prefix_ok(dict, R"({"x":"s)"));
  EXPECT_FALSE(accepts(dict, "{}"));
}

TEST(JsonGrammar, RefusesWhatItCannotEnforce) {
  for (const char* s : {R"({"type":"string","pattern":"^a"})", R"({"oneOf":[{"type":"string"}]})",
                        R"({"type":"array","uniqueItems":true})", R"({"not":{}})", R"({"type":5})",
                        R"({"$ref":"http://example.com/s.json"})", R"({"$ref":"#/nowhere"})",
                        R"({"type":"object","properties":{},"required":["a"],"additionalProperties":false})",
                        R"({"enum":[]})", R"({"type":"array","items":[{"type":"string"}]})"}) {
    EXPECT_THROW(validate_json_schema(json::parse(s)), std::invalid_argument) << s;
  }
  // Annotations and unknown keywords are fine.
  validate_json_schema(json::parse(R"({"type":"string","format":"date-time","title":"t","x-foo":1,
      "description":"d","default":"x","examples":["a"]})"));
}

TEST(JsonGrammar, MinRemainingIsTheShortestCompletion) {
  JsonMatcher m(&kPerson);
  const std::string shortest = R"({"age":0,"name":""})";
  EXPECT_EQ(m.min_remaining(), int(shortest.size()));
  for (size_t i = 0; i < shortest.size(); ++i) {
    ASSERT_TRUE(m.feed(shortest[i]));
    EXPECT_EQ(m.min_remaining(), int(shortest.size() - i - 1)) << shortest.substr(0, i + 1);
  }
  EXPECT_TRUE(m.complete());
  JsonMatcher e(&kPerson);
  ASSERT_TRUE(e.feed(R"({"col)"));
  EXPECT_EQ(e.min_remaining(), int(std::string(R"(or":"red","age":0,"name":""})").size()));
}

// The budget invariant the sampler relies on: from any prefix the grammar allows, following bytes
// that keep min_remaining() within the bytes left always ends in a complete document, whatever
// else is chosen on the way.
TEST(JsonGrammar, BudgetAlwaysCompletes) {
  const std::vector<json> schemas = {
      json::object(),
      kPerson,
      json::parse(R"({"type":"object","properties":{"items":{"type":"array","items":{"type":"object",
          "properties":{"id":{"type":"integer","minimum":1,"maximum":500},"tag":{"enum":["a\"b","ü","x"]}},
          "required":["id","tag"]},"minItems":2,"maxItems":4},"ok":{"type":"boolean"},
          "score":{"type":"number","minimum":-1.5,"maximum":2.25},"note":{"anyOf":[{"type":"string",
          "maxLength":5},{"type":"null"}]}},"required":["items","score","note"]})"),
      json::parse(R"({"$defs":{"n":{"type":"object","properties":{"v":{"type":"integer"},"next":{"anyOf":[
          {"$ref":"#/$defs/n"},{"type":"null"}]}},"required":["v","next"]}},"$ref":"#/$defs/n"})"),
  };
  std::mt19937 rng(7);
  for (size_t si = 0; si < schemas.size(); ++si) {
    for (int run = 0; run < 60; ++run) {
      JsonMatcher m(&schemas[si]);
      const int budget = m.min_remaining() + int(rng() % 40);
      std::string out;
      for (int left = budget; left > 0 && !m.complete(); --left) {
        std::vector<char> ok;
        for (int b = 0; b < 256; ++b) {
          const char c = char(b);
          int need = 0;
          if (m.probe(std::string_view(&c, 1), &need) && need <= left - 1) ok.push_back(c);
        }
        ASSERT_FALSE(ok.empty()) << "dead end after " << out;
        // Prefer structure-opening and long-winded bytes to stress the budget.
        const char c = ok[rng() % ok.size()];
        ASSERT_TRUE(m.feed(c));
        out += c;
      }
      ASSERT_TRUE(m.complete()) << "schema " << si << ": " << out;
      EXPECT_FALSE(json::parse(out, nullptr, false).is_discarded()) << out;
    }
  }
}

}  // namespace
}  // namespace qleap
