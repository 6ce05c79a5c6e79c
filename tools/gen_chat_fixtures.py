#!/usr/bin/env python3
"""Generates tests/fixtures/chat/cases.json: expected chat-template renderings from HF transformers.

Every template in tests/fixtures/chat/templates/*.jinja is rendered with transformers' own
renderer (transformers.utils.chat_template_utils.render_jinja_template, the function behind
tokenizer.apply_chat_template(..., tokenize=False)) for a set of conversations, with and without
add_generation_prompt. Renderings that raise (raise_exception in the template) record the error
text instead. A second list, "jinja", holds small templates exercising single interpreter features,
rendered by the same compiled Jinja environment transformers uses.

    python3 tools/gen_chat_fixtures.py    # rewrites tests/fixtures/chat/cases.json

Needs transformers (5.x) and jinja2; the C++ tests only need the committed JSON.
"""

import json
import pathlib
import sys

import jinja2
from transformers.utils.chat_template_utils import _compile_jinja_template, render_jinja_template

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "chat"

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "City name, e.g. Paris"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        },
    }
]

# Exercises nested schemas: arrays, union types, additionalProperties, return types.
RICH_TOOLS = TOOLS + [
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": "  Search the documentation. ",
            "parameters": {
                "type": "object",
                "properties": {
                    "terms": {"type": "array", "items": {"type": "string"}, "description": "Search terms"},
                    "limit": {"type": ["integer", "number"], "description": "Max hits"},
                    "filters": {"type": "object", "additionalProperties": {"type": "number"}, "description": "Weights"},
                    "exact": {"type": "boolean", "description": "Exact match"},
                },
                "required": ["terms"],
            },
            "return": {"type": "array", "description": "Matching document ids"},
        },
    },
]

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hello!"}],
    "system_multi_turn": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    "multi_turn_no_system": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
    ],
    "unicode_whitespace": [
        {"role": "user", "content": "  Héllo wörld — 你好 🌍\n\n"},
        {"role": "assistant", "content": "\tОтвет: ✓ «ok» \u00a0"},
        {"role": "user", "content": "Quotes: \"double\" 'single' \\ backslash {{ not a tag }}"},
    ],
    "roles_not_alternating": [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ],
}

TOOL_CONVERSATION = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}},
            }
        ],
    },
    {"role": "tool", "name": "get_weather", "content": "{\"temperature\": 22, \"sky\": \"clear ☀\"}"},
    {"role": "assistant", "content": "It is 22 °C and clear in Paris."},
]

PARALLEL_TOOLS = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": "Let me check both.",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"location": "Paris"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"location\": \"Rome\"}"}},
        ],
    },
    {"role": "tool", "content": "sunny"},
    {"role": "tool", "content": "rainy"},
]

THINKING = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>\nsimple sum\n</think>\n\n4"},
    {"role": "user", "content": "times 3?"},
    {"role": "assistant", "content": "12", "reasoning_content": "4*3"},
]

BUILTIN_TOOL_CALL = [
    {"role": "user", "content": "Search the news"},
    {
        "role": "assistant",
        "tool_calls": [{"type": "function", "function": {"name": "brave_search", "arguments": {"query": "news today"}}}],
    },
    {"role": "ipython", "content": {"results": ["a", "b"]}},
]

MISTRAL_TOOL_CONVERSATION = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {
        "role": "assistant",
        "tool_calls": [
            {"id": "call12345", "type": "function",
             "function": {"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}},
            {"id": "call67890", "type": "function", "function": {"name": "get_weather", "arguments": {"location": "Nice"}}},
        ],
    },
    {"role": "tool", "tool_call_id": "call12345", "content": "{\"temperature\": 22}"},
    {"role": "tool", "tool_call_id": "call67890", "content": {"content": "sunny, 25 °C"}},
    {"role": "assistant", "content": " It is 22 °C in Paris. "},
    {"role": "user", "content": "Thanks!"},
]

# (template, conversation name, messages, extra variables, tools)
SPECIAL_CASES = [
    ("qwen2.5-instruct", "parallel_tools", PARALLEL_TOOLS, {}, TOOLS),
    ("qwen3", "parallel_tools", PARALLEL_TOOLS, {}, TOOLS),
    ("qwen3", "thinking", THINKING, {}, None),
    ("qwen3", "thinking_disabled", CONVERSATIONS["single_user"], {"enable_thinking": False}, None),
    ("llama3.1-instruct", "builtin_tools", BUILTIN_TOOL_CALL, {"builtin_tools": ["brave_search", "wolfram_alpha", "code_interpreter"]}, None),
    ("llama3.1-instruct", "tools_in_system", TOOL_CONVERSATION, {"tools_in_user_message": False}, TOOLS),
    ("llama3.2-instruct", "parallel_tools_rejected", PARALLEL_TOOLS, {"date_string": "01 Jan 2025"}, TOOLS),
    ("hermes-3-tool-use", "tools", TOOL_CONVERSATION, {}, RICH_TOOLS),
    ("hermes-3-tool-use", "parallel_tools", PARALLEL_TOOLS, {}, RICH_TOOLS),
    ("hermes-3-tool-use", "multi_turn_no_system", CONVERSATIONS["multi_turn_no_system"], {}, RICH_TOOLS),
    ("hermes-3-tool-use", "no_tools_is_an_error", CONVERSATIONS["single_user"], {}, None),
    # A "null" member of a union type recurses forever in this template ("null" is iterable).
    ("hermes-3-tool-use", "recursive_schema_bug", CONVERSATIONS["single_user"], {},
     [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {
         "type": "object", "properties": {"x": {"type": ["null"], "description": "x"}}}}}]),
    ("qwen3", "rich_tools", TOOL_CONVERSATION, {}, RICH_TOOLS),
    ("mistral-instruct-v0.3", "tools_with_ids", MISTRAL_TOOL_CONVERSATION, {}, RICH_TOOLS),
    ("mistral-instruct-v0.3", "tools_with_ids_no_tool_list", MISTRAL_TOOL_CONVERSATION, {}, None),
    ("llama3.1-instruct", "rich_tools", TOOL_CONVERSATION, {}, RICH_TOOLS),
]

# name -> (bos, eos, tool capable)
TEMPLATES = {
    "chatml": ("", "<|im_end|>", False),
    "smollm2-instruct": ("<|im_start|>", "<|im_end|>", False),
    "qwen2.5-instruct": ("", "<|im_end|>", True),
    "qwen3": ("", "<|im_end|>", True),
    "llama3.1-instruct": ("<|begin_of_text|>", "<|eot_id|>", True),
    "llama3-instruct": ("<|begin_of_text|>", "<|eot_id|>", False),
    "llama3.2-instruct": ("<|begin_of_text|>", "<|eot_id|>", True),
    "llama2-chat": ("<s>", "</s>", False),
    "mistral-instruct-v0.1": ("<s>", "</s>", False),
    "mistral-instruct-v0.3": ("<s>", "</s>", True),
    "gemma-it": ("<bos>", "<eos>", False),
    "gemma3-it": ("<bos>", "<eos>", False),
    "hermes-3-tool-use": ("<|begin_of_text|>", "<|im_end|>", None),  # only in SPECIAL_CASES
    "community-phi-3": ("<s>", "<|endoftext|>", False),
    "community-granite-3.0-instruct": ("", "<|end_of_text|>", True),
    "community-zephyr": ("<s>", "</s>", False),
    "community-falcon-instruct": ("", "<|endoftext|>", False),
    "community-vicuna": ("<s>", "</s>", False),
    "community-mistral-instruct": ("<s>", "</s>", False),
}

# Small templates, one feature each. (name, template, variables)
JINJA_CASES = [
    ("text", "plain text\n", {}),
    ("output", "a{{ x }}b", {"x": "X"}),
    ("undefined prints nothing", "[{{ missing }}]", {}),
    ("literals", "{{ none }} {{ true }} {{ false }} {{ True }} {{ None }}", {}),
    ("arithmetic", "{{ 1 + 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 * 3 - 1 }} {{ -4 }} {{ 1.5 + 1 }} {{ 3 / 2 }} {{ 4 / 2 }} {{ 2 ** 10 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }}", {}),
    ("floats", "{{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-5 }} {{ 1e16 }} {{ 1e15 }} {{ 123.456 }} {{ 0.0001 }} {{ 2.0 }} {{ x }}", {"x": 1.0}),
    ("string escapes", "{{ 'a\\nb\\t\"c\"' }}|{{ \"it's\" }}|{{ '\\u00e9\\x41' }}", {}),
    ("comment", "a{# gone #}b", {}),
    ("trim_blocks", "{% if true %}\nx\n{% endif %}\ny", {}),
    ("lstrip_blocks", "a\n    {% if true %}\n    b\n    {% endif %}\nc", {}),
    ("lstrip comment", "a\n  {# c #}\nb", {}),
    ("lstrip not for output", "a\n  {{ 'x' }}\nb", {}),
    ("minus trims", "a   {{- 'b' -}}   c  {%- if true -%}  d  {%- endif %}  \n e", {}),
    ("plus keeps", "a\n  {%+ if true %}b{% endif +%}\nc", {}),
    ("output keeps newline", "{{ 'a' }}\n{{ 'b' }}\n", {}),
    ("trailing newline dropped once", "x\n\n", {}),
    ("crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\n", {}),
    ("raw", "{% raw %}{{ not rendered }}{% endraw %}", {}),
    ("if elif else", "{% for n in [1, 2, 3] %}{% if n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %},{% endfor %}", {}),
    ("loop vars", "{% for x in items %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}", {"items": ["a", "b", "c"]}),
    ("loop prev next", "{% for x in items %}[{{ loop.previtem }}|{{ loop.nextitem }}]{% endfor %}", {"items": ["a", "b", "c"]}),
    ("loop cycle", "{% for x in range(5) %}{{ loop.cycle('a', 'b') }}{% endfor %}", {}),
    ("for filter", "{% for x in range(10) if x % 3 == 0 %}{{ x }}/{{ loop.length }} {% endfor %}", {}),
    ("for else", "{% for x in [] %}x{% else %}empty{% endfor %}", {}),
    ("for over dict", "{% for k in d %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("for over string", "{% for c in 'héllo' %}{{ c }}.{% endfor %}", {}),
    ("nested loops", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{{ loop.index }}|{% endfor %}", {}),
    ("break continue", "{% for n in [1, 2, 3, 4] %}{% if n == 2 %}{% continue %}{% endif %}{% if n == 4 %}{% break %}{% endif %}{{ n }}{% endfor %}", {}),
    ("loop scoping", "{% set a = 1 %}{% for x in [1, 2, 3] %}{{ a }}{% set a = a + x %}{{ a }},{% endfor %}{{ a }}", {}),
    ("if does not scope", "{% if true %}{% set b = 3 %}{% endif %}{{ b }}", {}),
    ("namespace", "{% set ns = namespace(found=false, n=0) %}{% for x in [1, 2, 3] %}{% if x == 2 %}{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.found }} {{ ns.n }}", {}),
    ("set block", "{% set body %}Hello {{ name }}!{% endset %}[{{ body }}]", {"name": "Ann"}),
    ("set block filter", "{% set body | upper %}Hello {{ name }}{% endset %}[{{ body }}]", {"name": "Ann"}),
    ("filter block", "{% filter upper %}abc{{ 'd' }}{% endfilter %}", {}),
    ("tuple unpacking", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% set a, b = [1, 2] %}{{ a }}{{ b }}", {"d": {"x": 1, "y": "z"}}),
    ("macro", "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(name='C', punct='.') }}", {}),
    ("macro recursion", "{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}", {}),
    ("call block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold{% endcall %}", {}),
    ("call block args", "{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}{% call(item) each([1, 2]) %}<{{ item }}>{% endcall %}", {}),
    ("comparisons", "{{ 1 < 2 }}{{ 2 <= 1 }}{{ 'a' == 'a' }}{{ 'a' != 'a' }}{{ 3 > 2 }}{{ 1 >= 1 }}{{ 1 == 1.0 }}{{ 1 < 2 < 3 }}{{ 'b' > 'a' }}{{ [1, 2] == [1, 2] }}", {}),
    ("logic", "{{ true and false }}{{ true or false }}{{ not true }}{{ not (1 == 2) }}{{ 0 or 'x' }}{{ '' and 'y' }}{{ none or [] }}", {}),
    ("in", "{{ 'b' in 'abc' }}{{ 2 in [1, 2] }}{{ 'k' in d }}{{ 'q' not in d }}{{ 3 not in [1] }}", {"d": {"k": 1}}),
    ("tests", "{{ x is defined }}{{ y is defined }}{{ y is not defined }}{{ y is undefined }}{{ n is none }}{{ s is string }}{{ d is mapping }}{{ l is iterable }}{{ s is iterable }}{{ d is iterable }}{{ 3 is number }}{{ l is sequence }}{{ true is boolean }}{{ 3 is integer }}{{ 3.0 is integer }}{{ true is true }}{{ false is false }}{{ 1 is true }}{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 'a' is equalto 'a' }}{{ 2 is in [1, 2] }}{{ 3 is eq 3 }}", {"x": 1, "n": None, "s": "s", "d": {}, "l": [1]}),
    ("not binds looser than is", "{{ not x is defined }}{{ not y is none }}", {"y": 1}),
    ("conditional expression", "{{ 'yes' if flag else 'no' }}[{{ 'a' if false }}]{{ 1 if false else 2 if true else 3 }}", {"flag": True}),
    ("concat operator", "{{ 'n=' ~ 3 ~ true ~ none ~ 1.5 }}", {}),
    ("string and list ops", "{{ 'ab' * 3 }}{{ [1] * 2 }}{{ [1] + [2] }}{{ 'a' + 'b' }}", {}),
    ("subscript and slices", "{{ xs[0] }}{{ xs[-1] }}{{ xs[1:] }}{{ xs[:2] }}{{ xs[::-1] }}{{ xs[::2] }}{{ xs[-2:] }}{{ 'hello'[1:3] }}{{ 'héllo'[::-1] }}{{ d['k'] }}{{ d.k }}{{ xs.0 }}", {"xs": [1, 2, 3], "d": {"k": "v"}}),
    ("missing index is undefined", "[{{ xs[5] }}][{{ d['nope'] }}][{{ d.nope }}]", {"xs": [1], "d": {}}),
    ("list dict tuple literals", "{{ [1, 'a', none, true, 1.5] }}{{ {'k': 1, 'j': 'x'} }}{{ (1, 'a') }}{{ (1,) }}{{ {'k': 1}['k'] }}", {}),
    ("print nested data", "{{ d }}|{{ l }}", {"d": {"a": [1, {"b": None}], "q": "it's"}, "l": ["x\ny", "say \"hi\""]}),
    ("filters basic", "{{ '  x  ' | trim }}|{{ xs | length }}|{{ 'Ab' | upper }}{{ 'Ab' | lower }}|{{ xs | join('-') }}|{{ xs | first }}{{ xs | last }}|{{ missing | default('d') }}|{{ '' | default('e', true) }}|{{ none | default('f') }}|{{ 5 | string }}|{{ 'hello world' | capitalize }}|{{ 'hello big-world (x)' | title }}", {"xs": [1, 2, 3]}),
    ("filter precedence", "{{ 'a' + ' b ' | trim + 'c' }}{{ -3 | abs }}{{ xs | length + 1 }}", {"xs": [1]}),
    ("filters numbers", "{{ '3' | int + 1 }} {{ 'x' | int }} {{ '2.5' | float }} {{ 3.7 | int }} {{ 2.5 | round }} {{ 3.5 | round }} {{ 2.567 | round(2) }} {{ 2.675 | round(2) }} {{ 2.1 | round(0, 'ceil') }} {{ -3.5 | abs }} {{ 7 | float }}", {}),
    ("filters lists", "{{ [3, 1, 2] | sort }}{{ ['b', 'A', 'c'] | sort }}{{ [3, 1, 2] | sort(reverse=true) }}{{ [1, 2, 1, 3] | unique | list }}{{ [1, 2] | reverse | list }}{{ 'abc' | reverse }}{{ d | items | list }}{{ 'ab' | list }}{{ [1, 2, 3] | sum }}{{ [4, 2, 8] | max }}{{ [4, 2, 8] | min }}", {"d": {"a": 1, "b": 2}}),
    ("selectattr map", "{{ users | selectattr('active') | map(attribute='name') | join(',') }}|{{ users | rejectattr('active') | map(attribute='name') | list }}|{{ users | selectattr('role', 'equalto', 'admin') | list | length }}|{{ users | map(attribute='missing', default='?') | join }}|{{ ['a', 'b'] | map('upper') | join }}|{{ [0, 1, 2] | select | list }}|{{ [1, 2, 3, 4] | select('odd') | list }}", {"users": [{"name": "a", "active": True, "role": "admin"}, {"name": "b", "active": False, "role": "user"}, {"name": "c", "active": True, "role": "user"}]}),
    ("tojson", "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'é\"\\n' | tojson }}|{{ [] | tojson }}|{{ {} | tojson(indent=4) }}|{{ 1.5 | tojson }}|{{ none | tojson }}", {"x": {"b": [1, 2.5, "é\n\"", None, True], "a": {}, "c": []}}),
    ("tojson options", "{{ x | tojson(sort_keys=true) }}|{{ x | tojson(separators=(',', ':')) }}|{{ x | tojson(ensure_ascii=true) }}", {"x": {"z": "ü😀", "a": [1, 2]}}),
    ("string methods", "{{ ' x '.strip() }}{{ 'xxaxx'.strip('x') }}{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('x') }}{{ 'abc'.endswith(('x', 'c')) }}{{ 'ab'.upper() }}{{ 'hello world'.title() }}{{ ' x '.lstrip() }}|{{ ' x '.rstrip() }}|{{ 'a,b,,c'.split(',') }}{{ '  a  b '.split() }}{{ 'a b c'.split(' ', 1) }}{{ 'aXbXc'.replace('X', '-') }}{{ 'aXbXc'.replace('X', '-', 1) }}{{ 'hello'.capitalize() }}{{ 'banana'.count('a') }}{{ 'banana'.find('n') }}{{ '-'.join(['a', 'b']) }}{{ '{} and {}'.format(1, 'b') }}{{ '{0}{name}'.format('x', name='y') }}{{ '12'.isdigit() }}", {}),
    ("unicode strip", "[{{ s.strip() }}][{{ s | trim }}][{{ s | length }}]", {"s": "\u00a0\u3000 héllo 🌍\u2003\n"}),
    ("dict methods", "{{ d.get('k') }}{{ d.get('q', 'dflt') }}{{ d.get('q') }}{{ d.keys() | list }}{{ d.values() | list }}{% for k, v in d.items() %}{{ k }}{{ v }}{% endfor %}", {"d": {"k": "v", "j": 2}}),
    ("range", "{% for i in range(3) %}{{ i }}{% endfor %}{% for i in range(1, 7, 2) %}{{ i }}{% endfor %}{% for i in range(5, 0, -2) %}{{ i }}{% endfor %}", {}),
    ("dict global", "{{ dict(a=1, b='x') }}", {}),
    ("whitespace-controlled chat loop", "{%- for m in messages -%}\n  {{- m.role }}: {{ m.content | trim }}\n{% endfor -%}\n{{- 'END' -}}", {"messages": [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}]}),
    ("raise_exception", "{% if true %}{{ raise_exception('Bad role: ' ~ 'x') }}{% endif %}", {}),
    ("indent filter", "{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}", {}),
    ("lstrip at template start", "  {% if true %}x{% endif %}", {}),
    ("no lstrip after output on same line", "{{ 'a' }}  {% if true %}x{% endif %}\n  {% if true %}y{% endif %}", {}),
    ("lstrip after trimmed block", "{% if true %}\n  {% if true %}z{% endif %}\n{% endif %}", {}),
    ("minus then lstrip", "a  \n  {%- if true %}\n b{% endif %}", {}),
    ("generation block", "a{% generation %}b{{ 1 }}{% endgeneration %}c", {}),
    ("nested namespace and macro", "{% set ns = namespace(out=[]) %}{% macro item(x) %}<{{ x }}>{% endmacro %}{% for x in xs %}{% set ns.out = ns.out + [item(x)] %}{% endfor %}{{ ns.out | join(',') }}", {"xs": ["a", "b"]}),
    ("string comparison and sort by attribute", "{{ users | sort(attribute='age') | map(attribute='name') | join }}{{ 'abc' < 'abd' }}", {"users": [{"name": "x", "age": 30}, {"name": "y", "age": 20}]}),
    ("ints and floats mixing", "{{ 1 + true }}{{ 10 / 4 }}{{ 10 // 4 }}{{ 2 ** -1 }}{{ 1e3 | int }}{{ (3 / 3) | string }}", {}),
    ("wordcount", "{{ 'hello big  world' | wordcount }}", {}),
]


def render_chat(template, messages, add_generation_prompt, bos, eos, tools=None, extra=None):
    kwargs = {"bos_token": bos, "eos_token": eos}
    kwargs.update(extra or {})
    try:
        out, _ = render_jinja_template(
            conversations=[messages],
            tools=tools,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )
        return {"output": out[0]}
    except Exception as e:  # noqa: BLE001 - any failure is an expected error case
        # raise_exception() raises exactly TemplateError: its text must match. Other failures
        # (TypeError, UndefinedError) only need to be rejected.
        return {"error": str(e), "error_exact": type(e) is jinja2.exceptions.TemplateError}


def main():
    chat_cases = []
    for name, (bos, eos, tool_capable) in TEMPLATES.items():
        if tool_capable is None:
            continue
        template = (FIX / "templates" / f"{name}.jinja").read_text(encoding="utf-8")
        extra = {"date_string": "26 Jul 2024"} if "llama3.2" in name else {}
        convs = dict(CONVERSATIONS)
        if tool_capable:
            convs["tools"] = TOOL_CONVERSATION
        for conv_name, messages in convs.items():
            for agp in (False, True):
                for with_tools in ([False, True] if tool_capable else [False]):
                    if conv_name == "tools" and not with_tools:
                        continue
                    tools = TOOLS if with_tools else None
                    vars_ = {"bos_token": bos, "eos_token": eos, **extra}
                    if tools is not None:
                        vars_["tools"] = tools
                    case = {
                        "template": name,
                        "conversation": conv_name,
                        "add_generation_prompt": agp,
                        "messages": messages,
                        "variables": vars_,
                    }
                    case.update(render_chat(template, messages, agp, bos, eos, tools, extra))
                    chat_cases.append(case)

    for name, conv_name, messages, extra, tools in SPECIAL_CASES:
        bos, eos, _ = TEMPLATES[name]
        template = (FIX / "templates" / f"{name}.jinja").read_text(encoding="utf-8")
        for agp in (False, True):
            vars_ = {"bos_token": bos, "eos_token": eos, **extra}
            if tools is not None:
                vars_["tools"] = tools
            case = {"template": name, "conversation": conv_name, "add_generation_prompt": agp,
                    "messages": messages, "variables": vars_}
            case.update(render_chat(template, messages, agp, bos, eos, tools, extra))
            chat_cases.append(case)

    jinja_cases = []
    for name, template, variables in JINJA_CASES:
        case = {"name": name, "template": template, "variables": variables}
        try:
            case["output"] = _compile_jinja_template(template).render(**variables)
        except jinja2.exceptions.TemplateError as e:
            case["error"] = str(e)
        jinja_cases.append(case)

    out = {
        "generator": "tools/gen_chat_fixtures.py (transformers render_jinja_template / jinja2 " + jinja2.__version__ + ")",
        "chat": chat_cases,
        "jinja": jinja_cases,
    }
    path = FIX / "cases.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    n_err = sum(1 for c in chat_cases if "error" in c)
    print(f"wrote {path}: {len(chat_cases)} chat cases ({n_err} errors), {len(jinja_cases)} jinja cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
