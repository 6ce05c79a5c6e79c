// TeX math to MathML, written for qleap: the browser lays the formula out (MathML Core, in Chromium
// since 109 and in Firefox), so no fonts or library ship with the binary. Elements are created one by
// one with fixed names and attributes; text goes in as text: nothing from the formula becomes markup.
//
// Covered: letters, numbers, operators, ^ and _, {groups}, \frac \dfrac \tfrac \binom \sqrt[n],
// Greek letters, relations, arrows, big operators with limits (\sum \prod \int \lim ...), function
// names (\sin \log ...), \left ... \right, accents (\hat \bar \vec \tilde \dot \overline
// \underline), fonts (\mathbb \mathcal \mathbf \mathrm \text \operatorname), spacing, and the
// environments matrix, pmatrix, bmatrix, Bmatrix, vmatrix, Vmatrix, cases, aligned, align, array,
// gathered. Anything else is shown as the TeX source, marked as an error.

const NS = "http://www.w3.org/1998/Math/MathML";

const GREEK = {
  alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ϵ", varepsilon: "ε", zeta: "ζ", eta: "η",
  theta: "θ", vartheta: "ϑ", iota: "ι", kappa: "κ", lambda: "λ", mu: "μ", nu: "ν", xi: "ξ", pi: "π",
  varpi: "ϖ", rho: "ρ", varrho: "ϱ", sigma: "σ", varsigma: "ς", tau: "τ", upsilon: "υ", phi: "ϕ",
  varphi: "φ", chi: "χ", psi: "ψ", omega: "ω", Gamma: "Γ", Delta: "Δ", Theta: "Θ", Lambda: "Λ",
  Xi: "Ξ", Pi: "Π", Sigma: "Σ", Upsilon: "Υ", Phi: "Φ", Psi: "Ψ", Omega: "Ω",
  infty: "∞", partial: "∂", nabla: "∇", hbar: "ℏ", ell: "ℓ", Re: "ℜ", Im: "ℑ", aleph: "ℵ",
  emptyset: "∅", varnothing: "∅", forall: "∀", exists: "∃", nexists: "∄", neg: "¬", lnot: "¬",
  angle: "∠", triangle: "△", prime: "′", dagger: "†", top: "⊤", bot: "⊥", imath: "ı", jmath: "ȷ",
};

const OPS = {
  times: "×", cdot: "⋅", pm: "±", mp: "∓", div: "÷", ast: "∗", star: "⋆", circ: "∘", bullet: "∙",
  oplus: "⊕", otimes: "⊗", ominus: "⊖", odot: "⊙", wedge: "∧", land: "∧", vee: "∨", lor: "∨",
  cap: "∩", cup: "∪", setminus: "∖", leq: "≤", le: "≤", geq: "≥", ge: "≥", neq: "≠", ne: "≠",
  approx: "≈", equiv: "≡", sim: "∼", simeq: "≃", cong: "≅", propto: "∝", ll: "≪", gg: "≫",
  prec: "≺", succ: "≻", preceq: "⪯", succeq: "⪰", in: "∈", notin: "∉", ni: "∋", subset: "⊂",
  supset: "⊃", subseteq: "⊆", supseteq: "⊇", perp: "⊥", parallel: "∥", mid: "∣", nmid: "∤",
  to: "→", rightarrow: "→", leftarrow: "←", gets: "←", leftrightarrow: "↔", Rightarrow: "⇒",
  Leftarrow: "⇐", Leftrightarrow: "⇔", implies: "⟹", impliedby: "⟸", iff: "⟺", mapsto: "↦",
  longrightarrow: "⟶", longleftarrow: "⟵", uparrow: "↑", downarrow: "↓", hookrightarrow: "↪",
  ldots: "…", cdots: "⋯", dots: "…", vdots: "⋮", ddots: "⋱", colon: ":", vert: "|", Vert: "‖",
  langle: "⟨", rangle: "⟩", lfloor: "⌊", rfloor: "⌋", lceil: "⌈", rceil: "⌉", lbrace: "{",
  rbrace: "}", backslash: "∖", therefore: "∴", because: "∵", models: "⊨", vdash: "⊢",
};

// Large operators: limits go below/above in display style.
const BIG = {
  sum: "∑", prod: "∏", coprod: "∐", int: "∫", iint: "∬", iiint: "∭", oint: "∮", bigcup: "⋃",
  bigcap: "⋂", bigoplus: "⨁", bigotimes: "⨂", bigvee: "⋁", bigwedge: "⋀",
};
const FUNCS = "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln lg exp det dim ker deg gcd hom arg Pr";
const LIMFUNCS = "lim liminf limsup max min sup inf argmax argmin";
const ACCENTS = { hat: "^", widehat: "^", bar: "¯", overline: "¯", vec: "→", tilde: "~", widetilde: "~", dot: "˙", ddot: "¨", check: "ˇ", breve: "˘", acute: "´", grave: "`" };
const SPACES = { ",": "0.1667em", ":": "0.2222em", ";": "0.2778em", "!": "-0.1667em", " ": "0.25em", quad: "1em", qquad: "2em", enspace: "0.5em", thinspace: "0.1667em" };
const ENVS = { matrix: ["", ""], pmatrix: ["(", ")"], bmatrix: ["[", "]"], Bmatrix: ["{", "}"], vmatrix: ["|", "|"], Vmatrix: ["‖", "‖"], cases: ["{", ""], aligned: ["", ""], align: ["", ""], "align*": ["", ""], array: ["", ""], gathered: ["", ""], split: ["", ""] };
const DELIMS = { "(": "(", ")": ")", "[": "[", "]": "]", "\\{": "{", "\\}": "}", "|": "|", "\\|": "‖", ".": "", "\\langle": "⟨", "\\rangle": "⟩", "\\lfloor": "⌊", "\\rfloor": "⌋", "\\lceil": "⌈", "\\rceil": "⌉", "\\vert": "|", "\\Vert": "‖", "/": "/" };

function m(tag, attrs, ...kids) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(typeof k === "string" ? document.createTextNode(k) : k);
  return e;
}

// Unicode mathematical alphabets (MathML Core renders mathvariant only on single letters).
function mapAlphabet(text, font) {
  const special = {
    bb: { C: "ℂ", H: "ℍ", N: "ℕ", P: "ℙ", Q: "ℚ", R: "ℝ", Z: "ℤ" },
    cal: { B: "ℬ", E: "ℰ", F: "ℱ", H: "ℋ", I: "ℐ", L: "ℒ", M: "ℳ", R: "ℛ", e: "ℯ", g: "ℊ", o: "ℴ" },
    frak: { C: "ℭ", H: "ℌ", I: "ℑ", R: "ℜ", Z: "ℨ" },
  };
  const base = { bb: [0x1d538, 0x1d552, 0x1d7d8], cal: [0x1d49c, 0x1d4b6, null], bf: [0x1d400, 0x1d41a, 0x1d7ce], frak: [0x1d504, 0x1d51e, null] }[font];
  let out = "";
  for (const ch of text) {
    if (special[font] && special[font][ch]) { out += special[font][ch]; continue; }
    const c = ch.codePointAt(0);
    if (c >= 65 && c <= 90) out += String.fromCodePoint(base[0] + c - 65);
    else if (c >= 97 && c <= 122) out += String.fromCodePoint(base[1] + c - 97);
    else if (c >= 48 && c <= 57 && base[2]) out += String.fromCodePoint(base[2] + c - 48);
    else out += ch;
  }
  return out;
}

class TexError extends Error {}

class Parser {
  constructor(src, display) {
    this.s = src;
    this.i = 0;
    this.display = display;
  }

  peek() { return this.s[this.i]; }
  skipSpace() { while (this.i < this.s.length && /\s/.test(this.s[this.i])) this.i++; }

  // A command name after "\" (letters, or one other character).
  command() {
    const r = /[A-Za-z]+\*?|./y;
    r.lastIndex = this.i + 1;
    const x = r.exec(this.s);
    if (!x) throw new TexError("lone backslash");
    this.i = r.lastIndex;
    return x[0];
  }

  // {...} or one token, as text (for \text, \begin, \mathbb...).
  rawArg() {
    this.skipSpace();
    if (this.peek() !== "{") {
      if (this.i >= this.s.length) throw new TexError("missing argument");
      return this.s[this.i++];
    }
    let depth = 0;
    const start = this.i + 1;
    for (; this.i < this.s.length; this.i++) {
      if (this.s[this.i] === "\\") { this.i++; continue; }
      if (this.s[this.i] === "{") depth++;
      else if (this.s[this.i] === "}" && --depth === 0) { this.i++; return this.s.slice(start, this.i - 1); }
    }
    throw new TexError("unbalanced braces");
  }

  optArg() {
    this.skipSpace();
    if (this.peek() !== "[") return null;
    const end = this.s.indexOf("]", this.i);
    if (end < 0) throw new TexError("unclosed [");
    const v = this.s.slice(this.i + 1, end);
    this.i = end + 1;
    return v;
  }

  arg() {
    this.skipSpace();
    if (this.i >= this.s.length) throw new TexError("missing argument");
    const a = this.atom();
    if (!a) throw new TexError("missing argument");
    return a;
  }

  // Parses until one of stops ("}", "&", "\\\\", "\\end", "\\right") or the end; returns an mrow.
  list(stops) {
    const row = [];
    for (;;) {
      this.skipSpace();
      if (this.i >= this.s.length) break;
      const rest = this.s.slice(this.i, this.i + 6);
      if (stops.some((st) => rest.startsWith(st))) break;
      let a = this.atom();
      if (a === null) continue;
      a = this.scripts(a);
      row.push(a);
    }
    return row.length === 1 ? row[0] : m("mrow", {}, ...row);
  }

  scripts(base) {
    let sub = null, sup = null;
    for (;;) {
      this.skipSpace();
      const c = this.peek();
      if (c === "^" && !sup) { this.i++; sup = this.arg(); }
      else if (c === "_" && !sub) { this.i++; sub = this.arg(); }
      else if (c === "'" && !sup) { let p = ""; while (this.peek() === "'") { p += "′"; this.i++; } sup = m("mo", {}, p); }
      else break;
    }
    if (!sub && !sup) return base;
    const under = base.getAttribute("data-limits") === "1" && this.display;
    if (under) {
      if (sub && sup) return m("munderover", {}, base, sub, sup);
      return sub ? m("munder", {}, base, sub) : m("mover", {}, base, sup);
    }
    if (sub && sup) return m("msubsup", {}, base, sub, sup);
    return sub ? m("msub", {}, base, sub) : m("msup", {}, base, sup);
  }

  atom() {
    const c = this.peek();
    if (c === "{") {
      this.i++;
      const inner = this.list(["}"]);
      if (this.peek() !== "}") throw new TexError("unbalanced braces");
      this.i++;
      return inner.tagName === "mrow" ? inner : m("mrow", {}, inner);
    }
    if (c === "}") throw new TexError("unexpected }");
    if (c === "\\") return this.macro();
    if (c === "&") throw new TexError("& outside a table");
    if (c === "~") { this.i++; return m("mspace", { width: SPACES[" "] }); }
    if (/[0-9.]/.test(c)) {
      const r = /[0-9]*\.?[0-9]+|[0-9]+\.?/y;
      r.lastIndex = this.i;
      const x = r.exec(this.s);
      this.i = r.lastIndex;
      return m("mn", {}, x[0]);
    }
    if (/\p{L}/u.test(c)) { this.i++; return m("mi", {}, c); }
    this.i++;
    if (c === "^" || c === "_") throw new TexError("misplaced " + c);
    const op = c === "-" ? "−" : c === "*" ? "∗" : c;
    return m("mo", /[()[\]|]/.test(c) ? { stretchy: "false" } : {}, op);
  }

  macro() {
    const name = this.command();
    if (name in GREEK) return m("mi", GREEK[name].match(/[Α-Ω]/) ? { mathvariant: "normal" } : {}, GREEK[name]);
    if (name in OPS) return m("mo", {}, OPS[name]);
    if (name in BIG) {
      const e = m("mo", { largeop: "true", movablelimits: "true" }, BIG[name]);
      if (!name.includes("int")) e.setAttribute("data-limits", "1");
      return e;
    }
    if (FUNCS.split(" ").includes(name)) return m("mi", { mathvariant: "normal" }, name);
    if (LIMFUNCS.split(" ").includes(name)) {
      const e = m("mo", { movablelimits: "true", form: "prefix" }, name.replace("arg", "arg "));
      e.setAttribute("data-limits", "1");
      return e;
    }
    if (name in SPACES) return m("mspace", { width: SPACES[name] });
    if (name in ACCENTS) {
      const base = this.arg();
      if (name === "underline") return m("munder", { accentunder: "true" }, base, m("mo", {}, "_"));
      return m("mover", { accent: "true" }, base, m("mo", { stretchy: name.startsWith("wide") || name === "overline" ? "true" : "false" }, ACCENTS[name]));
    }
    switch (name) {
      case "frac": case "dfrac": case "tfrac": case "cfrac": {
        const a = this.arg(), b = this.arg();
        const f = m("mfrac", {}, a, b);
        return name === "dfrac" ? m("mstyle", { displaystyle: "true" }, f) : name === "tfrac" ? m("mstyle", { displaystyle: "false" }, f) : f;
      }
      case "binom": case "dbinom": case "tbinom": {
        const a = this.arg(), b = this.arg();
        return m("mrow", {}, m("mo", {}, "("), m("mfrac", { linethickness: "0" }, a, b), m("mo", {}, ")"));
      }
      case "sqrt": {
        const n = this.optArg();
        const a = this.arg();
        return n === null ? m("msqrt", {}, a) : m("mroot", {}, a, new Parser(n, false).parse());
      }
      case "text": case "textrm": case "textit": case "textbf": case "mbox": case "textsf": case "texttt":
        return m("mtext", {}, this.rawArg());
      case "mathrm": case "operatorname": case "mathsf": case "mathtt": case "mathit":
        return m("mi", { mathvariant: name === "mathit" ? "italic" : "normal" }, this.rawArg());
      case "mathbb": return m("mi", { mathvariant: "normal" }, mapAlphabet(this.rawArg(), "bb"));
      case "mathcal": case "mathscr": return m("mi", { mathvariant: "normal" }, mapAlphabet(this.rawArg(), "cal"));
      case "mathfrak": return m("mi", { mathvariant: "normal" }, mapAlphabet(this.rawArg(), "frak"));
      case "mathbf": case "boldsymbol": case "bm": return m("mi", { mathvariant: "normal" }, mapAlphabet(this.rawArg(), "bf"));
      case "left": {
        const open = this.delim();
        const inner = this.list(["\\right"]);
        if (!this.s.startsWith("\\right", this.i)) throw new TexError("\\left without \\right");
        this.i += 6;
        const close = this.delim();
        return m("mrow", {}, m("mo", { fence: "true", stretchy: "true" }, open), inner, m("mo", { fence: "true", stretchy: "true" }, close));
      }
      case "big": case "Big": case "bigg": case "Bigg": case "bigl": case "bigr": case "Bigl": case "Bigr": case "biggl": case "biggr":
        return m("mo", { stretchy: "false" }, this.delim());
      case "begin": return this.env(this.rawArg());
      case "displaystyle": case "textstyle": case "limits": case "nolimits": case "nonumber": case "notag":
        return null;
      case "{": return m("mo", {}, "{");
      case "}": return m("mo", {}, "}");
      case "|": return m("mo", {}, "‖");
      case "\\": return null;  // a line break outside a table: ignored
      case "%": case "$": case "#": case "&": case "_": return m("mo", {}, name);
      default: throw new TexError("\\" + name + " is not supported");
    }
  }

  delim() {
    this.skipSpace();
    const c = this.peek();
    if (c === "\\") {
      const save = this.i;
      const name = "\\" + this.command();
      if (name in DELIMS) return DELIMS[name];
      this.i = save;
      throw new TexError("bad delimiter " + name);
    }
    this.i++;
    if (c in DELIMS) return DELIMS[c];
    throw new TexError("bad delimiter " + c);
  }

  env(name) {
    if (!(name in ENVS)) throw new TexError("environment " + name + " is not supported");
    if (name === "array") this.rawArg();  // column spec: alignment is left to the layout
    const rows = [];
    let row = [];
    for (;;) {
      const cell = this.list(["&", "\\\\", "\\end"]);
      row.push(m("mtd", {}, cell));
      if (this.s.startsWith("&", this.i)) { this.i++; continue; }
      if (this.s.startsWith("\\\\", this.i)) { this.i += 2; this.optArg(); rows.push(row); row = []; continue; }
      if (this.s.startsWith("\\end", this.i)) {
        this.i += 4;
        const end = this.rawArg();
        if (end !== name) throw new TexError("\\begin{" + name + "} ended by \\end{" + end + "}");
        break;
      }
      throw new TexError("\\begin{" + name + "} without \\end");
    }
    if (row.length > 1 || (row.length === 1 && row[0].childNodes.length && row[0].firstChild.childNodes.length)) rows.push(row);
    const align = name === "cases" || name.startsWith("align") || name === "split" ? { columnalign: "left" } : {};
    const table = m("mtable", align, ...rows.map((r) => m("mtr", {}, ...r)));
    const [l, r] = ENVS[name];
    if (!l && !r) return table;
    return m("mrow", {}, m("mo", { fence: "true", stretchy: "true" }, l), table, r ? m("mo", { fence: "true", stretchy: "true" }, r) : m("mrow"));
  }

  parse() {
    const r = this.list([]);
    if (this.i < this.s.length) throw new TexError("unexpected " + this.s[this.i]);
    return r;
  }
}

// A <math> element for tex, or, when the formula uses something unsupported, a <code class=
// "math-error"> holding the source (with the reason as its title).
export function renderTex(tex, display) {
  try {
    const body = new Parser(tex.trim(), display).parse();
    const attrs = display ? { display: "block" } : {};
    const e = m("math", attrs, m("semantics", {}, body.tagName === "mrow" ? body : m("mrow", {}, body), m("annotation", { encoding: "application/x-tex" }, tex)));
    return e;
  } catch (e) {
    const code = document.createElement("code");
    code.className = "math-error";
    code.title = e instanceof TexError ? "TeX: " + e.message : "TeX: " + String(e);
    code.textContent = display ? "$$" + tex + "$$" : "$" + tex + "$";
    return code;
  }
}
