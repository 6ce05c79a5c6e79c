// The Jinja-subset interpreter behind chat templates: feature cases checked byte-exactly against
// jinja2 (fixtures), plus error reporting and resource limits.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "tokenizer/chat_template.h"
#include "tokenizer/jinja/value.h"

namespace qleap {
namespace {

std::string source_dir() {
  const char* env = std::getenv("QLEAP_SOURCE_DIR");
  return env ? env : QLEAP_SOURCE_DIR;
}

std::string render(const std::string& tmpl,
                   const nlohmann::ordered_json& vars = nlohmann::ordered_json::object()) {
  return render_template(tmpl, vars);
}

std::string error_of(const std::string& tmpl,
                     const nlohmann::ordered_json& vars = nlohmann::ordered_json::object()) {
  try {
    render(tmpl, vars);
  } catch (const ChatTemplateError& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Jinja, FeatureCasesMatchJinja2) {
  std::ifstream f(source_dir() + "/tests/fixtures/chat/cases.json", std::ios::binary);
  ASSERT_TRUE(f) << "missing fixture";
  std::stringstream ss;
  ss << f.rdbuf();
  const auto all = nlohmann::ordered_json::parse(ss.str())["jinja"];
  ASSERT_GT(all.size(), 40u);
  for (const auto& c : all) {
    const std::string name = c["name"].get<std::string>();
    const std::string tmpl = c["template"].get<std::string>();
    if (c.contains("output")) {
      try {
        EXPECT_EQ(render(tmpl, c["variables"]), c["output"].get<std::string>()) << name << "\n" << tmpl;
      } catch (const std::exception& e) {
        ADD_FAILURE() << name << ": threw " << e.what() << "\n" << tmpl;
      }
    } else {
      EXPECT_EQ(error_of(tmpl, c["variables"]), c["error"].get<std::string>()) << name;
    }
  }
}

TEST(Jinja, UndefinedIsLenient) {
  EXPECT_EQ(render("[{{ a }}][{{ a.b }}][{{ a['x'].y }}][{{ a | length }}]{% for x in a %}x{% endfor %}"),
            "[][][][0]");
  EXPECT_EQ(render("{{ a is defined }}{{ a.b is defined }}{{ not a }}{{ a or 'd' }}"), "FalseFalseTrued");
  // Calling or doing arithmetic with an undefined value is an error.
  EXPECT_NE(error_of("{{ a() }}").find("'a' is undefined"), std::string::npos);
  EXPECT_NE(error_of("{{ a + 1 }}").find("'a' is undefined"), std::string::npos);
}

TEST(Jinja, RaiseExceptionTextIsExact) {
  EXPECT_EQ(
      error_of("line1\n{% if x %}{{ raise_exception('Only ' + x + ' roles') }}{% endif %}", {{"x", "user"}}),
      "Only user roles");
}

TEST(Jinja, SyntaxErrorsReportLineAndColumn) {
  const std::string e1 = error_of("a\nb {% if x %}\nc");
  EXPECT_NE(e1.find("line 3"), std::string::npos) << e1;  // end of template reached inside the if
  EXPECT_NE(e1.find("endif"), std::string::npos) << e1;
  const std::string e2 = error_of("ok\n\n  {{ 1 + }}");
  EXPECT_NE(e2.find("line 3, column 10"), std::string::npos) << e2;
  const std::string e3 = error_of("{% for x in %}{% endfor %}");
  EXPECT_NE(e3.find("line 1"), std::string::npos) << e3;
  const std::string e4 = error_of("x\n{% bogus %}");
  EXPECT_NE(e4.find("line 2, column 4"), std::string::npos) << e4;
  EXPECT_NE(e4.find("unknown statement 'bogus'"), std::string::npos) << e4;
  const std::string e5 = error_of("{% endif %}");
  EXPECT_NE(e5.find("unknown statement 'endif'"), std::string::npos) << e5;
}

TEST(Jinja, RuntimeErrorsReportLine) {
  const std::string e = error_of("a\n\n{{ 1 // 0 }}");
  EXPECT_NE(e.find("line 3"), std::string::npos) << e;
  EXPECT_NE(e.find("division or modulo by zero"), std::string::npos) << e;
  EXPECT_NE(error_of("{{ 'a' + 1 }}").find("can only concatenate str"), std::string::npos);
  EXPECT_NE(error_of("{{ x | nosuchfilter }}").find("no filter named 'nosuchfilter'"), std::string::npos);
  EXPECT_NE(error_of("{{ x is nosuchtest }}").find("no test named 'nosuchtest'"), std::string::npos);
  EXPECT_NE(error_of("{% for x in none %}{% endfor %}").find("not iterable"), std::string::npos);
  EXPECT_NE(error_of("{% set x = 1 %}{% set x.y = 2 %}").find("non-namespace"), std::string::npos);
  EXPECT_NE(error_of("{{ [1].append(2) }}").find("unsafe"), std::string::npos);
}

TEST(Jinja, MalformedTemplatesFailCleanly) {
  const char* bad[] = {
      "{{",
      "{{ x",
      "{%",
      "{% if x %}",
      "{% for %}",
      "{# open",
      "{{ 'abc }}",
      "{{ (1 }}",
      "{{ [1, 2 }}",
      "{{ {'a' }}",
      "{% set %}",
      "{% macro %}",
      "{% endfor %}",
      "{% else %}",
      "{{ x. }}",
      "{{ x[ }}",
      "{{ x | }}",
      "{{ 1 if }}",
      "{% raw %}x",
      "{{ @ }}",
      "{{ x is }}",
      "{% if x %}{% elif %}{% endif %}",
      "{% for x in y %}{% endif %}",
      "{% call %}{% endcall %}",
      "{{ '\\u12' }}",
  };
  for (const char* t : bad) {
    EXPECT_THROW(render(t), ChatTemplateError) << t;
  }
}

TEST(Jinja, DeepNestingIsRejectedNotCrashing) {
  std::string parens = "{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}";
  EXPECT_THROW(render(parens), ChatTemplateError);
  std::string ifs;
  for (int i = 0; i < 5000; ++i) ifs += "{% if true %}";
  EXPECT_THROW(render(ifs), ChatTemplateError);
  std::string nots = "{{ " + std::string(0, ' ');
  for (int i = 0; i < 100000; ++i) nots += "not ";
  EXPECT_THROW(render(nots + "x }}"), ChatTemplateError);
  // Moderate nesting is fine.
  EXPECT_EQ(render("{{ " + std::string(50, '(') + "1" + std::string(50, ')') + " }}"), "1");
}

TEST(Jinja, RecursionAndRunawayLoopsAreBounded) {
  const std::string e = error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  EXPECT_NE(e.find("recursion too deep"), std::string::npos) << e;
  EXPECT_THROW(render("{% for i in range(100000000) %}{% endfor %}"), ChatTemplateError);
  EXPECT_THROW(render("{{ 'x' * 1000000000 }}"), ChatTemplateError);
  jinja::RenderLimits small;
  small.max_steps = 20000;  // the default (2M) takes too long under sanitizers
  const std::string nested =
      "{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}"
      "{% endfor %}{% endfor %}{% endfor %}";
  const std::string e2 = [&] {
    try {
      render_template(nested, nlohmann::ordered_json::object(), std::nullopt, small);
    } catch (const ChatTemplateError& err) {
      return std::string(err.what());
    }
    return std::string("<no error>");
  }();
  EXPECT_NE(e2.find("too many steps"), std::string::npos) << e2;
  small.max_output = 1000;
  EXPECT_THROW(render_template("{% for i in range(100) %}0123456789ABCDEF{% endfor %}",
                               nlohmann::ordered_json::object(), std::nullopt, small),
               ChatTemplateError);
  EXPECT_THROW(render("{{ 2 ** 100 }}"), ChatTemplateError);  // int64 overflow is an error, not UB
}

TEST(Jinja, FloatFormattingMatchesPython) {
  using jinja::format_float;
  EXPECT_EQ(format_float(1.0), "1.0");
  EXPECT_EQ(format_float(0.1), "0.1");
  EXPECT_EQ(format_float(1e16), "1e+16");
  EXPECT_EQ(format_float(1234567890123456.0), "1234567890123456.0");
  EXPECT_EQ(format_float(1e-5), "1e-05");
  EXPECT_EQ(format_float(0.0001), "0.0001");
  EXPECT_EQ(format_float(-2.5e-7), "-2.5e-07");
  EXPECT_EQ(format_float(1.5e300), "1.5e+300");
  EXPECT_EQ(format_float(-0.0), "-0.0");
}

TEST(Jinja, WhitespaceControlDetails) {
  EXPECT_EQ(render("  {%- if true %}x{% endif -%}  \n\n y"), "xy");
  EXPECT_EQ(render("a\n  {% if true %}\n  b\n  {% endif %}\n"), "a\n  b\n");
  EXPECT_EQ(render("{{ 'a' -}}\n\n{{- 'b' }}"), "ab");
  EXPECT_EQ(render("{# c -#}  x"), "x");
}

}  // namespace
}  // namespace qleap

namespace qleap {
namespace {

// Deterministic mutation fuzzing over the real fixture templates: every mutated template must
// either render or throw ChatTemplateError - never crash, hang or leak another exception type.
TEST(Jinja, MutatedTemplatesNeverCrash) {
  const std::string dir = source_dir() + "/tests/fixtures/chat/templates/";
  const char* names[] = {"qwen2.5-instruct",      "qwen3",
                         "llama3.1-instruct",     "gemma3-it",
                         "mistral-instruct-v0.1", "community-granite-3.0-instruct"};
  const auto msgs = nlohmann::ordered_json::parse(
      R"([{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
          {"role": "assistant", "content": "a", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
          {"role": "tool", "content": "r"}, {"role": "user", "content": "u2"}])");
  const auto extra = nlohmann::ordered_json::parse(R"({"bos_token": "<s>", "tools": [{"name": "f"}]})");
  const char kAlphabet[] = "{}%#-+()[]'\"|.,:=~ \nifendforsetx0123456789";
  uint64_t state = 12345;
  auto rnd = [&state](uint64_t n) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (state >> 33) % n;
  };
  int rendered = 0, rejected = 0;
  for (const char* name : names) {
    std::ifstream f(dir + std::string(name) + ".jinja", std::ios::binary);
    ASSERT_TRUE(f) << name;
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string base = ss.str();
    for (int iter = 0; iter < 150; ++iter) {
      std::string t = base;
      const int edits = 1 + static_cast<int>(rnd(4));
      for (int e = 0; e < edits && !t.empty(); ++e) {
        const size_t pos = rnd(t.size());
        switch (rnd(3)) {
          case 0:
            t.erase(pos, 1 + rnd(8));
            break;
          case 1:
            t.insert(pos, 1, kAlphabet[rnd(sizeof(kAlphabet) - 1)]);
            break;
          default:
            t[pos] = kAlphabet[rnd(sizeof(kAlphabet) - 1)];
        }
      }
      try {
        ChatTemplate(t).apply(msgs, true, extra);
        ++rendered;
      } catch (const ChatTemplateError&) {
        ++rejected;
      } catch (const std::exception& e) {
        ADD_FAILURE() << name << " iter " << iter << ": non-ChatTemplateError exception: " << e.what() << "\n"
                      << t;
      }
    }
  }
  EXPECT_GT(rendered, 0);
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace qleap
