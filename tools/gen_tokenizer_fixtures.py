#!/usr/bin/env python3
"""Writes tokenizer test fixtures under tests/fixtures/tokenizer/:

  <name>.gguf  vocab-only GGUF files (tokenizer.ggml.* metadata, no tensors), written with gguf-py
  <name>.json  {"gguf" (null for *_full.json: run against the real model, SmolLM2 or Gemma 3 270M), "model", "pre", "cases": [{"text", "ids", "ids_plain", "ids_nobos", "decoded"}]}

Reference ids come from independent implementations, never from qleap:
  - SPM (stories260K, Gemma 3's 262k vocabulary): Hugging Face transformers loading the GGUF
    (AutoTokenizer gguf_file=...).
  - byte-level BPE: the `tokenizers` library with the vocab/merges from the GGUF and the model's
    official pre-tokenizer (SmolLM2: Digits(individual_digits) + ByteLevel; Qwen2 / Llama 3: their
    Split regex + ByteLevel(use_regex=False); GPT-2: ByteLevel(use_regex=True)).

ids: add_bos=True, parse_special=True; ids_plain: add_bos=True, parse_special=False (special-token
text tokenized as plain text); ids_nobos: add_bos=False, parse_special=True; decoded: decode(ids)
skipping special tokens.

Usage: python3 tools/gen_tokenizer_fixtures.py [--stories PATH] [--smollm PATH] [--gemma PATH] [--only gemma]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# DeepSeek LLM's Split regexes (tokenizer.json), with the character classes as explicit code point
# ranges: some endpoints (U+1F7D, U+1FBE, U+1FD3, U+1FDB, U+2126, U+212A) are not NFC and would be
# silently changed by tools that normalize text.
DS_LETTERS = [(0x41, 0x5A), (0x61, 0x7A), (0xB5, 0xB5), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x1BA), (0x1BC, 0x1BF),
              (0x1C4, 0x293), (0x295, 0x2AF), (0x370, 0x373), (0x376, 0x377), (0x37B, 0x37D), (0x37F, 0x37F),
              (0x386, 0x386), (0x388, 0x38A), (0x38C, 0x38C), (0x38E, 0x3A1), (0x3A3, 0x3F5), (0x3F7, 0x481),
              (0x48A, 0x52F), (0x531, 0x556), (0x10A0, 0x10C5), (0x13A0, 0x13F5), (0x13F8, 0x13FD),
              (0x1C90, 0x1CBA), (0x1CBD, 0x1CBF), (0x1D00, 0x1D2B), (0x1D6B, 0x1D77), (0x1D79, 0x1D9A),
              (0x1E00, 0x1F15), (0x1F18, 0x1F1D), (0x1F20, 0x1F45), (0x1F48, 0x1F4D), (0x1F50, 0x1F57),
              (0x1F59, 0x1F59), (0x1F5B, 0x1F5B), (0x1F5D, 0x1F5D), (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4),
              (0x1FB6, 0x1FBC), (0x1FBE, 0x1FBE), (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC), (0x1FD0, 0x1FD3),
              (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC), (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC), (0x2102, 0x2102),
              (0x2107, 0x2107), (0x210A, 0x2113), (0x2115, 0x2115), (0x2119, 0x211D), (0x2124, 0x2124),
              (0x2126, 0x2126), (0x2128, 0x2128), (0x212A, 0x212D), (0x212F, 0x2134), (0x2139, 0x2139),
              (0x213C, 0x213F), (0x2145, 0x2149), (0x214E, 0x214E), (0x2183, 0x2184), (0x2C00, 0x2C7B),
              (0x2C7E, 0x2CE4), (0x2CEB, 0x2CEE), (0x2CF2, 0x2CF3), (0xA640, 0xA66D), (0xA680, 0xA69B),
              (0xA722, 0xA76F), (0xA771, 0xA787), (0xA78B, 0xA78E), (0xAB70, 0xABBF), (0xFB00, 0xFB06),
              (0xFB13, 0xFB17), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0x10400, 0x1044F), (0x104B0, 0x104D3),
              (0x104D8, 0x104FB), (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x118A0, 0x118DF), (0x1E900, 0x1E943)]
DS_PUNCT = [(0x21, 0x2F), (0x3A, 0x7E), (0xFF01, 0xFF0F), (0xFF1A, 0xFF5E), (0x2018, 0x201F), (0x3000, 0x3002)]
DS_CJK = [(0x4E00, 0x9FA5), (0x800, 0x4E00), (0xAC00, 0xD7FF)]


def char_class(ranges):
    return "[" + "".join("\\x{%X}-\\x{%X}" % r for r in ranges) + "]"


def deepseek_splits():
    regexes = [r"[\r\n]", r"\s?" + char_class(DS_LETTERS) + "+", r"\s?" + char_class(DS_PUNCT) + "+", r"\s+$",
               char_class(DS_CJK) + "+", r"\p{N}+"]
    return [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in regexes]


TEXTS = [
    "",
    " ",
    "Hello world",
    "Hello, World! How are you?",
    "héllo café naïve résumé Ångström",
    "e\u0301 combining accent",
    "日本語のテキスト、中文测试。한국어 텍스트",
    "emoji 😀👍🏽 and ❤️ and 🇺🇸 family 👨‍👩‍👧",
    "mixed Русский ελληνικά العربية हिन्दी text",
    "multiple   spaces    here",
    "tabs\tand\t\ttabs",
    "newlines\n\n\nthree",
    "crlf\r\nline\r\n",
    "  leading and trailing spaces  ",
    " single leading",
    "trailing\n",
    "\n\n",
    "   ",
    "1234567",
    "3.14159",
    "abc123def 2024-11-23 1,000,000",
    "a  1 x 12 y   345",
    "don't I'M we'll you've they'RE it's 'hello' 'S",
    "def foo(x):\n    if x > 0:\n        return x ** 2\n    return -x  # done\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>assistant\n",
    "<s>hi</s> x",
    "<unk> and <|im_start",
    "<|tool|>call<|tool|>",
    "punctuation!!! ??? ... --- (parens) [brackets] {braces}",
    "nbsp\u00a0here and ideographic\u3000space",
    "URL: https://example.com/path?q=1&r=2#frag",
    "a\u2581b literal lower-one-eighth block",
    "control\x04char and plane-4 \U00040000 character",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!",
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
]


def read_vocab(path):
    r = gguf.GGUFReader(path)
    f = r.fields

    def arr(key):
        if key not in f:
            return None
        fld = f[key]
        return [fld.contents(i) for i in range(len(fld.data))]

    def scalar(key):
        return f[key].contents() if key in f else None

    return {
        "tokens": arr("tokenizer.ggml.tokens"),
        "scores": arr("tokenizer.ggml.scores"),
        "types": arr("tokenizer.ggml.token_type"),
        "merges": arr("tokenizer.ggml.merges"),
        "bos": scalar("tokenizer.ggml.bos_token_id"),
        "eos": scalar("tokenizer.ggml.eos_token_id"),
        "unk": scalar("tokenizer.ggml.unknown_token_id"),
    }


def write_gguf(path, model, v, pre=None, add_bos=None):
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("qleap tokenizer fixture")
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(v["tokens"])
    if v.get("scores") is not None:
        w.add_token_scores(v["scores"])
    w.add_token_types(v["types"])
    if v.get("merges") is not None:
        w.add_token_merges(v["merges"])
    for key, fn in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id)):
        if v.get(key) is not None and 0 <= v[key] < len(v["tokens"]):
            fn(v[key])
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def truncate_bpe(v, n_tokens, first_merged):
    """Keeps tokens [0, n_tokens) and the merges whose parts and result all stay in range. In
    SmolLM2's vocab merge i produces token first_merged + i, so this is a consistent smaller BPE."""
    toks = v["tokens"][:n_tokens]
    index = {t: i for i, t in enumerate(toks)}
    merges = []
    for m in v["merges"][: n_tokens - first_merged]:
        a, b = m.split(" ", 1)
        if a in index and b in index and (a + b) in index:
            merges.append(m)
    return dict(v, tokens=toks, types=v["types"][:n_tokens], merges=merges, scores=None)


def hf_bpe(v, pre_tokenizer, ignore_merges=False):
    vocab = {}
    for i, t in enumerate(v["tokens"]):
        vocab.setdefault(t, i)
    merges = [tuple(m.split(" ", 1)) for m in v["merges"]]
    tk = Tokenizer(BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tk.pre_tokenizer = pre_tokenizer
    tk.decoder = decoders.ByteLevel()
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(v["tokens"], v["types"]) if ty == 4]
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(v["tokens"], v["types"]) if ty == 3]
    if user:
        tk.add_tokens(user)
    if special:
        tk.add_special_tokens(special)
    return tk


def random_texts(n, seed):
    """Word-like random strings: frequent merges, specials, digits, whitespace runs and multi-byte
    characters next to each other, to exercise merge order and byte fallback."""
    import random
    rng = random.Random(seed)
    frags = ["the", "The", " the", "and", " and", "ing", "ed", "Lily", " was", "a", "e", "t", "h", " ", " ", "  ",
             "\n", "\n\n", "\t", "1", "23", "456", ".", ",", "!", "'s", "'", "don", "é", "日本", "😀", "ü", "ß",
             "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|tool|>", "\u2581", "x", "qu", "zz", "ab", "-", "()"]
    return ["".join(rng.choice(frags) for _ in range(rng.randint(1, 14))) for _ in range(n)]


def cases_for(tk, extra=(), keep=lambda text: True):
    out = []
    for text in TEXTS + list(extra) + random_texts(150, 99):
        if not keep(text):
            continue
        tk.encode_special_tokens = False
        ids = tk.encode(text, add_special_tokens=True).ids
        nobos = tk.encode(text, add_special_tokens=False).ids
        tk.encode_special_tokens = True
        plain = tk.encode(text, add_special_tokens=True).ids
        tk.encode_special_tokens = False
        decoded = tk.decode(ids, skip_special_tokens=True)
        out.append({"text": text, "ids": ids, "ids_plain": plain, "ids_nobos": nobos, "decoded": decoded})
    return out


def save(name, model, pre, cases, gguf_name=""):
    if gguf_name == "":
        gguf_name = None if name.endswith("_full") else name + ".gguf"
    head = json.dumps({"gguf": gguf_name, "model": model, "pre": pre}, ensure_ascii=False)[:-1]
    with open(os.path.join(OUT, name + ".json"), "w", encoding="utf-8") as fp:
        fp.write(head + ', "cases": [\n')  # one case per line keeps diffs readable
        fp.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in cases))
        fp.write("\n]}\n")


def gen_spm(stories):
    v = read_vocab(stories)
    name = "spm_stories260k"
    path = os.path.join(OUT, name + ".gguf")
    write_gguf(path, "llama", v)
    # transformers' GGUF loader builds the reference tokenizer from the file we just wrote.
    from transformers import AutoTokenizer
    from tokenizers import normalizers
    tmp = tempfile.mkdtemp()
    try:
        shutil.copy(path, os.path.join(tmp, "t.gguf"))
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file="t.gguf")
    finally:
        shutil.rmtree(tmp)
    bt = tok.backend_tokenizer
    # As loaded: Metaspace(prepend_scheme="first") -> qleap SpmPrefixMode::kFirstOnly.
    cases = cases_for(bt)
    save(name + "_first", "llama", "", cases, gguf_name=name + ".gguf")
    # The official Llama 2 tokenizer.json layout (SentencePiece/llama.cpp behaviour): a Prepend("▁")
    # + Replace(" ", "▁") normalizer on every text fragment and no pre-tokenizer, same BPE model and
    # decoder -> qleap's default SpmPrefixMode::kEveryFragment.
    bt.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    bt.pre_tokenizer = None
    save(name, "llama", "", cases_for(bt))


def gen_gemma(path):
    """Gemma 3's SentencePiece-style vocabulary (tokenizer.ggml.model "llama", 262144 tokens, no space
    prefix): ids only, checked against the real model file (too large to commit a vocab-only copy)."""
    from transformers import AutoTokenizer
    tmp = tempfile.mkdtemp()
    try:
        os.symlink(os.path.abspath(path), os.path.join(tmp, "g.gguf"))
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file="g.gguf")
    finally:
        shutil.rmtree(tmp)
    extra = ["<start_of_turn>user\nWrite a haiku.<end_of_turn>\n<start_of_turn>model\n",
             "<bos>twice <eos> and <pad> <mask> <start_of_image>", "\n\n\n\n    indented\n\t\ttabs"]
    # Texts with a literal U+2581: SentencePiece (and this reference) matches Gemma's multi-space
    # user-defined pieces on the normalized text, where U+2581 is a space; llama.cpp and qleap match
    # them on the raw text ("  " as GGUF stores them). Known divergence (docs/models.md), not tested.
    save("gemma3_full", "llama", "default", cases_for(tok.backend_tokenizer, extra, lambda t: "\u2581" not in t))


def gen_bpe(smollm):
    v = read_vocab(smollm)
    smol_pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    # Full SmolLM2 vocabulary: ids only (the test runs them against the real model file when present);
    # the committed GGUF keeps the first 24000 tokens to stay under ~1 MB.
    smol = hf_bpe(v, smol_pre)
    save("smollm2_full", "gpt2", "smollm", cases_for(smol))
    compare_with_transformers(smollm, smol)
    smol_small = truncate_bpe(v, 24000, 252)
    write_gguf(os.path.join(OUT, "bpe_smollm.gguf"), "gpt2", smol_small, pre="smollm", add_bos=False)
    save("bpe_smollm", "gpt2", "smollm", cases_for(hf_bpe(smol_small, smol_pre)))

    small = truncate_bpe(v, 6000, 252)
    variants = [
        ("bpe_gpt2", "gpt2", pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False),
        ("bpe_llama3", "llama-bpe",
         pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
                                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), True),
        ("bpe_qwen2", "qwen2",
         pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
                                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), False),
        ("bpe_deepseek_llm", "deepseek-llm",
         pre_tokenizers.Sequence(deepseek_splits() + [pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                use_regex=False)]), False),
    ]
    for name, pre, pt, ignore_merges in variants:
        vv = small
        if name == "bpe_qwen2":
            # One user-defined token: split out even when parse_special is off.
            vv = dict(small, tokens=small["tokens"] + ["<|tool|>"], types=small["types"] + [4])
        write_gguf(os.path.join(OUT, name + ".gguf"), "gpt2", vv, pre=pre, add_bos=False)
        save(name, "gpt2", pre, cases_for(hf_bpe(vv, pt, ignore_merges)))


def compare_with_transformers(smollm, ref):
    """Informational: transformers' own GGUF loader for SmolLM2 uses the plain GPT-2 ByteLevel regex
    (no digit splitting), so it can differ from the official tokenizer where digits follow spaces."""
    try:
        from transformers import AutoTokenizer
        tmp = tempfile.mkdtemp()
        os.symlink(os.path.abspath(smollm), os.path.join(tmp, "m.gguf"))
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file="m.gguf")
        shutil.rmtree(tmp)
    except Exception as e:  # noqa: BLE001 - informational only
        print("transformers GGUF load of SmolLM2 failed:", e, file=sys.stderr)
        return
    diff = [t for t in TEXTS + ["a  1", "x 12"] if tok.backend_tokenizer.encode(t).ids != ref.encode(t).ids]
    print("SmolLM2: transformers-GGUF vs official pre-tokenizer differ on %d texts: %r" % (len(diff), diff[:5]),
          file=sys.stderr)


def byte_level_to_text(piece):
    inv = {}
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    inv = {chr(c): b for b, c in zip(bs, cs)}
    return bytes(inv[ch] for ch in piece).decode("utf-8")


def gen_pretokenize():
    """pretokenize.json: {kind: [[text, [pieces]], ...]} from the tokenizers pre-tokenizers, on the
    fixture texts plus seeded random strings over an alphabet chosen to stress the regex branches."""
    import random
    rng = random.Random(1234)
    alphabet = [" ", " ", " ", "\n", "\r", "\t", "a", "b", "Z", "s", "M", "L", "1", "2", "3", "'", ".", "-", "_",
                "\u00e9", "\u65e5", "\U0001F600", "\u00a0", "\u3000", "\u0301", "\u2581", "\u0661", "\u00bd",
                "\u017f", "!", "\u200b", "\u2126", "\u1f7d", "\u041a", "\u3002", "\uff01", "\uac00",
                "\u30fc"]
    texts = list(TEXTS)
    for _ in range(400):
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))))
    kinds = {
        "gpt2": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
        "llama-bpe": pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        "qwen2": pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
        "deepseek-llm": pre_tokenizers.Sequence(deepseek_splits()),
    }
    out = {}
    for kind, pt in kinds.items():
        rows = []
        for t in texts:
            pieces = [p for p, _ in pt.pre_tokenize_str(t)]
            if kind in ("gpt2", "smollm"):
                pieces = [byte_level_to_text(p) for p in pieces]
            assert "".join(pieces) == t, (kind, t, pieces)
            rows.append([t, pieces])
        out[kind] = rows
    # Lossy UTF-8 decoding reference (Python's errors="replace" uses the maximal-subpart rule), as hex.
    lossy = []
    for _ in range(300):
        raw = bytes(rng.choice([rng.randrange(256), rng.randrange(0x80, 0xC0), rng.choice([0xE0, 0xED, 0xF0, 0xF4]),
                                ord("a")]) for _ in range(rng.randint(1, 12)))
        lossy.append([raw.hex(), raw.decode("utf-8", errors="replace").encode("utf-8").hex()])
    out["utf8_lossy"] = lossy
    with open(os.path.join(OUT, "pretokenize.json"), "w", encoding="utf-8") as fp:
        json.dump(out, fp, ensure_ascii=False)
        fp.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stories", default=os.path.join(ROOT, "..", "shared", "models", "stories260K.gguf"))
    ap.add_argument("--smollm", default="/work/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--gemma", default="/work/models/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--only", default="", help="gemma: only the Gemma 3 cases")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if a.only == "gemma":
        gen_gemma(a.gemma)
        return
    gen_pretokenize()
    gen_spm(a.stories)
    gen_bpe(a.smollm)
    if os.path.exists(a.gemma):
        gen_gemma(a.gemma)


if __name__ == "__main__":
    main()
