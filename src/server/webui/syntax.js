// Syntax highlighting for fenced code blocks, written for qleap: one small scanner driven by a table
// of languages (comments, strings, numbers, keywords, literals, types, function calls), plus markup
// (HTML/XML) and diff modes. It appends text nodes and <span class="tok-X"> to a parent: no HTML.
// Token classes: c comment, s string, n number, k keyword, l literal, t type, f function, b builtin,
// v variable, p property / attribute, ins / del (diff).

const words = (s) => new Set(s.split(/\s+/).filter(Boolean));

const C_KW = "auto break case char const continue default do double else enum extern float for goto if inline int long register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while";
const CPP_KW = C_KW + " alignas alignof and bool catch class concept consteval constexpr constinit co_await co_return co_yield decltype delete explicit export friend mutable namespace new noexcept not operator or override final private protected public requires static_assert static_cast dynamic_cast reinterpret_cast const_cast template this thread_local throw try typeid typename using virtual";
const JS_KW = "async await break case catch class const continue debugger default delete do else export extends finally for from function if import in instanceof let new of return static super switch this throw try typeof var void while with yield as implements interface type enum declare readonly keyof namespace abstract private protected public";
const PY_KW = "and as assert async await break class continue def del elif else except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield match case";
const RUST_KW = "as async await break const continue crate dyn else enum extern fn for if impl in let loop match mod move mut pub ref return self Self static struct super trait type unsafe use where while";
const GO_KW = "break case chan const continue default defer else fallthrough for func go goto if import interface map package range return select struct switch type var";
const JAVA_KW = "abstract assert break case catch class const continue default do else enum extends final finally for goto if implements import instanceof interface native new package private protected public return static strictfp super switch synchronized this throw throws transient try var void volatile while record sealed permits yield";
const CS_KW = JAVA_KW + " as base checked decimal delegate event explicit fixed foreach implicit in internal is lock namespace operator out override params readonly ref sizeof stackalloc struct typeof unchecked unsafe using virtual async await get set init";
const SH_KW = "if then else elif fi for while until do done case esac in function select return exit local export readonly declare unset shift source alias set";
const SQL_KW = "select from where and or not insert into values update set delete create table drop alter add column index primary key foreign references join inner left right outer full on as group by order having limit offset distinct union all case when then else end is null like in between exists with returning default unique check view begin commit rollback transaction asc desc";

const LANGS = {};
function def(names, spec) {
  const s = { line: [], block: [], quotes: ['"', "'"], kw: new Set(), lit: new Set(), types: new Set(), builtins: new Set(), ...spec };
  for (const n of names.split(" ")) LANGS[n] = s;
}

def("c h", { line: ["//"], block: [["/*", "*/"]], kw: words(C_KW), lit: words("NULL true false"), types: words("size_t int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t FILE bool"), pre: true });
def("cpp c++ cc cxx hpp hh cu cuda", { line: ["//"], block: [["/*", "*/"]], kw: words(CPP_KW), lit: words("nullptr NULL true false"), types: words("size_t int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t std string vector map unique_ptr shared_ptr"), pre: true, caps: true });
def("js javascript mjs cjs jsx ts typescript tsx", { line: ["//"], block: [["/*", "*/"]], quotes: ['"', "'", "`"], kw: words(JS_KW), lit: words("true false null undefined NaN Infinity"), builtins: words("console window document Math JSON Object Array String Number Promise Map Set Error"), caps: true });
def("python py python3", { line: ["#"], triple: true, kw: words(PY_KW), lit: words("True False None"), builtins: words("print len range int float str list dict set tuple open enumerate zip map filter sum min max abs sorted isinstance super self"), caps: true, decorators: true });
def("rust rs", { line: ["//"], block: [["/*", "*/"]], kw: words(RUST_KW), lit: words("true false None Some Ok Err"), types: words("i8 i16 i32 i64 i128 isize u8 u16 u32 u64 u128 usize f32 f64 bool char str String Vec Option Result Box"), caps: true, macros: true });
def("go golang", { line: ["//"], block: [["/*", "*/"]], quotes: ['"', "'", "`"], kw: words(GO_KW), lit: words("true false nil iota"), types: words("int int8 int16 int32 int64 uint uint8 uint16 uint32 uint64 float32 float64 string bool byte rune error any"), builtins: words("make new len cap append copy delete panic recover print println") });
def("java kotlin kt scala", { line: ["//"], block: [["/*", "*/"]], kw: words(JAVA_KW + " fun val when object companion data"), lit: words("true false null"), types: words("int long short byte char float double boolean"), caps: true });
def("cs csharp c#", { line: ["//"], block: [["/*", "*/"]], kw: words(CS_KW), lit: words("true false null"), types: words("int long short byte char float double bool string object var void"), caps: true });
def("bash sh shell zsh console", { line: ["#"], kw: words(SH_KW), lit: words("true false"), builtins: words("echo printf cd ls cat grep sed awk curl wget git make cmake sudo apt pip python3 mkdir rm cp mv chmod export test"), vars: true, hashAtWord: true });
def("json jsonc json5", { line: ["//"], quotes: ['"'], lit: words("true false null"), props: true });
def("yaml yml", { line: ["#"], lit: words("true false null yes no on off"), yamlKeys: true, hashAtWord: true });
def("toml ini cfg conf", { line: ["#", ";"], lit: words("true false"), iniKeys: true });
def("sql mysql postgres postgresql sqlite", { line: ["--"], block: [["/*", "*/"]], kw: words(SQL_KW), lit: words("true false null"), nocase: true, types: words("int integer bigint smallint text varchar char boolean float real double numeric date timestamp serial") });
def("css scss less", { block: [["/*", "*/"]], line: ["//"], props: true, cssy: true });
def("markup html xml svg xhtml vue", { markup: true });
def("diff patch", { diff: true });

const RE_NUM = /(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|(?:\d[\d_']*\.?[\d_']*|\.\d[\d_]*)(?:[eE][+-]?\d+)?)(?:[a-zA-Z]{0,4}\d{0,3})?/y;
const RE_ID = /[\p{L}_$][\p{L}\p{N}_$]*/uy;

function span(parent, cls, text) {
  const s = document.createElement("span");
  s.className = "tok-" + cls;
  s.textContent = text;
  parent.append(s);
}

export function highlight(code, lang, parent) {
  const spec = LANGS[String(lang || "").toLowerCase()];
  if (!spec) { parent.append(document.createTextNode(code)); return; }
  if (spec.markup) { markup(code, parent); return; }
  if (spec.diff) { diff(code, parent); return; }
  let plain = "";
  const flush = () => { if (plain) { parent.append(document.createTextNode(plain)); plain = ""; } };
  const tok = (cls, text) => { flush(); span(parent, cls, text); };
  const n = code.length;
  let i = 0;
  let lineStart = true;
  while (i < n) {
    const c = code[i];
    if (c === "\n") { plain += c; i++; lineStart = true; continue; }
    const atLine = lineStart;
    if (!/\s/.test(c)) lineStart = false;
    // Comments.
    let done = false;
    for (const lc of spec.line) {
      if (code.startsWith(lc, i) && (!spec.hashAtWord || lc !== "#" || i === 0 || /\s/.test(code[i - 1]))) {
        let e = code.indexOf("\n", i);
        if (e < 0) e = n;
        tok("c", code.slice(i, e));
        i = e;
        done = true;
        break;
      }
    }
    if (done) continue;
    for (const [open, close] of spec.block) {
      if (code.startsWith(open, i)) {
        let e = code.indexOf(close, i + open.length);
        e = e < 0 ? n : e + close.length;
        tok("c", code.slice(i, e));
        i = e;
        done = true;
        break;
      }
    }
    if (done) continue;
    if (spec.pre && c === "#" && atLine) {
      let e = code.indexOf("\n", i);
      if (e < 0) e = n;
      tok("k", code.slice(i, e));
      i = e;
      continue;
    }
    // Strings.
    if (spec.triple && (code.startsWith('"""', i) || code.startsWith("'''", i))) {
      const q = code.slice(i, i + 3);
      let e = code.indexOf(q, i + 3);
      e = e < 0 ? n : e + 3;
      tok("s", code.slice(i, e));
      i = e;
      continue;
    }
    if (spec.quotes.includes(c) && !(c === "'" && (spec.macros || spec.yamlKeys) && isWordChar(code[i - 1]))) {
      let e = i + 1;
      const multiline = c === "`";
      while (e < n && code[e] !== c && (multiline || code[e] !== "\n")) e += code[e] === "\\" ? 2 : 1;
      e = Math.min(n, e + 1);
      const s = code.slice(i, e);
      let k = e;
      while (k < n && (code[k] === " " || code[k] === "\t")) k++;
      tok(spec.props && code[k] === ":" ? "p" : "s", s);
      i = e;
      continue;
    }
    // Keys of YAML / INI lines.
    if (atLine && (spec.yamlKeys || spec.iniKeys)) {
      const m = (spec.yamlKeys ? /[\w.\-]+(?=\s*:(\s|$))/y : /\[[^\]\n]*\]|[\w.\-]+(?=\s*=)/y);
      m.lastIndex = i;
      const r = m.exec(code);
      if (r) { tok(r[0].startsWith("[") ? "k" : "p", r[0]); i += r[0].length; continue; }
    }
    if (spec.vars && c === "$") {
      const m = /\$(?:\{[^}\n]*\}|[A-Za-z_]\w*|[0-9@#?*$!-])/y;
      m.lastIndex = i;
      const r = m.exec(code);
      if (r) { tok("v", r[0]); i += r[0].length; continue; }
    }
    if (spec.decorators && c === "@" && atLine) {
      const m = /@[\w.]+/y;
      m.lastIndex = i;
      const r = m.exec(code);
      if (r) { tok("b", r[0]); i += r[0].length; continue; }
    }
    if (spec.cssy && (c === "#" || c === "@" || c === "-" || c === ".")) {
      const m = c === "#" ? /#[0-9a-fA-F]{3,8}\b/y : c === "@" ? /@[\w-]+/y : /(?!)/y;
      m.lastIndex = i;
      const r = m.exec(code);
      if (r) { tok(c === "#" ? "n" : "k", r[0]); i += r[0].length; continue; }
    }
    // Numbers (not inside identifiers).
    if (/[0-9]/.test(c) || (c === "." && /[0-9]/.test(code[i + 1] || ""))) {
      if (!isWordChar(code[i - 1])) {
        RE_NUM.lastIndex = i;
        const r = RE_NUM.exec(code);
        if (r && r[0]) { tok("n", r[0]); i += r[0].length; continue; }
      }
    }
    // Identifiers.
    RE_ID.lastIndex = i;
    const r = /[\p{L}_$]/u.test(c) ? RE_ID.exec(code) : null;
    if (r) {
      const w = r[0];
      const key = spec.nocase ? w.toLowerCase() : w;
      let k = i + w.length;
      let cls = null;
      if (spec.kw.has(key)) cls = "k";
      else if (spec.lit.has(key)) cls = "l";
      else if (spec.types.has(key)) cls = "t";
      else if (spec.macros && code[k] === "!") { cls = "b"; k++; }
      else if (spec.builtins.has(key)) cls = "b";
      else if (spec.cssy && /^\s*:/.test(code.slice(k, k + 40)) && !/^\s*:[a-z-]+\s*[({,]/.test(code.slice(k, k + 40))) cls = "p";
      else if (/^\s*\(/.test(code.slice(k, k + 20)) && !spec.props) cls = "f";
      else if (spec.caps && /^[A-Z][a-z0-9]/.test(w)) cls = "t";
      if (cls) tok(cls, code.slice(i, k));
      else plain += w;
      i = k;
      continue;
    }
    plain += c;
    i++;
  }
  flush();
}

function isWordChar(c) { return c !== undefined && /[\p{L}\p{N}_$]/u.test(c); }

function markup(code, parent) {
  let plain = "";
  const flush = () => { if (plain) { parent.append(document.createTextNode(plain)); plain = ""; } };
  const tok = (cls, text) => { flush(); span(parent, cls, text); };
  let i = 0;
  while (i < code.length) {
    if (code.startsWith("<!--", i)) {
      let e = code.indexOf("-->", i + 4);
      e = e < 0 ? code.length : e + 3;
      tok("c", code.slice(i, e));
      i = e;
      continue;
    }
    const m = /<\/?[A-Za-z][\w:.-]*|<[!?][\w-]*/y;
    m.lastIndex = i;
    const r = code[i] === "<" ? m.exec(code) : null;
    if (!r) { plain += code[i++]; continue; }
    tok("k", r[0]);
    i += r[0].length;
    // Attributes up to the end of the tag.
    while (i < code.length && code[i] !== ">") {
      const a = /\s+|[^\s=>"'/]+|=|"[^"]*"?|'[^']*'?|\//y;
      a.lastIndex = i;
      const t = a.exec(code);
      if (!t) { plain += code[i++]; continue; }
      const s = t[0];
      if (s[0] === '"' || s[0] === "'") tok("s", s);
      else if (/^\s|^=|^\//.test(s)) plain += s;
      else tok("p", s);
      i += s.length;
    }
    if (i < code.length) { tok("k", ">"); i++; }
  }
  flush();
}

function diff(code, parent) {
  const lines = code.split("\n");
  lines.forEach((l, k) => {
    const nl = k < lines.length - 1 ? "\n" : "";
    if (l.startsWith("+") && !l.startsWith("+++")) span(parent, "ins", l + nl);
    else if (l.startsWith("-") && !l.startsWith("---")) span(parent, "del", l + nl);
    else if (l.startsWith("@@")) span(parent, "k", l + nl);
    else if (/^(diff |index |\+\+\+|---)/.test(l)) span(parent, "c", l + nl);
    else parent.append(document.createTextNode(l + nl));
  });
}

export const highlightedLanguages = () => Object.keys(LANGS);
