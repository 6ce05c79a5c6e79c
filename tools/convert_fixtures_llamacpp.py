#!/usr/bin/env python3
"""Converts the golden fixtures with llama.cpp's own converter, for tests/golden/llamacpp_files_test.cpp.

The files users download are written by llama.cpp's `convert_hf_to_gguf.py`, not by ours: its tensor
names, fused layouts, row orders (the llama q/k rotary permutation, qwen35's value-head order, MLA's
split of kv_b), norm offsets and metadata keys are what the loader must read. This script runs that
converter (from a llama.cpp checkout you name; nothing of it is copied here) on every fixture of
tests/golden/fixtures with F32 output, so the test can hold the engine to transformers' golden
logits on the converter's files as it does on ours.

Each fixture gets a 256-token byte-level tokenizer.json (byte b = token b below 255, no merges) so the
converter can write a vocabulary; its pre-tokenizer hash is unknown to llama.cpp, so the script
answers "gpt-2" for it (the logits tests feed token ids, not text).

Needs torch + transformers (tools/requirements-gen.txt) and a llama.cpp checkout recent enough for
the architectures (qwen35 / qwen3next / gpt-oss / gemma3 need 2025-2026 sources).

    python3 tools/convert_fixtures_llamacpp.py LLAMA_CPP_DIR [--out tests/golden/llamacpp] [--only a,b]

Prints, per fixture, the converter's verdict and the written file's size.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from make_random_model import byte_chars  # noqa: E402

# Runs llama.cpp's converter in a child process with its own gguf-py first on the path.
DRIVER = r"""
import sys
lcpp, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, lcpp + "/gguf-py")
sys.path.insert(0, lcpp)
import convert_hf_to_gguf as conv
base = getattr(conv, "TextModel", None)
if base is None:
    from conversion.base import TextModel as base
base.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = ["convert_hf_to_gguf.py", src, "--outfile", out, "--outtype", "f32"]
conv.main()
"""


def add_byte_tokenizer(d):
    # The last id is <|endoftext|>, not byte 255: transformers' Qwen2 tokenizer adds that token when the
    # vocabulary lacks it, past the fixtures' 256 ids.
    vocab = {c: i for i, c in enumerate(byte_chars()[:255])}
    vocab["<|endoftext|>"] = 255
    eot = {"id": 255, "content": "<|endoftext|>", "single_word": False, "lstrip": False, "rstrip": False,
           "normalized": False, "special": True}
    tok = {"version": "1.0", "added_tokens": [eot], "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": True},
           "post_processor": None,
           "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "vocab": vocab, "merges": []}}
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tok, f, ensure_ascii=False)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": False, "tokenizer_class": "PreTrainedTokenizerFast"}, f)


# Architectures whose llama.cpp converter reads only a SentencePiece model (tokenizer.model).
SPM_TYPES = {"gemma2", "phi3"}


def add_sentencepiece(d, vocab_size):
    """A SentencePiece model trained here on a few lines of text, as large as the fixture's vocabulary."""
    import sentencepiece as spm

    text = os.path.join(d, "spm_text.txt")
    with open(text, "w") as f:
        for i in range(200):
            f.write(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7919 % 1000} times\n")
    spm.SentencePieceTrainer.train(input=text, model_prefix=os.path.join(d, "tokenizer"), vocab_size=vocab_size,
                                   model_type="bpe", character_coverage=1.0, hard_vocab_limit=False,
                                   minloglevel=2)
    os.remove(text)
    os.remove(os.path.join(d, "tokenizer.vocab"))


# Fixtures whose settings llama.cpp's keys cannot describe, so its file of them is another model.
NOT_DESCRIBABLE = {
    # A layer pattern other than five local to one global, query_pre_attn_scalar != head_dim:
    # llama.cpp's gemma3 files carry neither (gemma3_std is the describable one).
    "gemma3": "gemma3's layer pattern and score scale are not in llama.cpp's keys",
}


def add_released_keys(cfg):
    """Keys the released checkpoints' config.json files carry and llama.cpp's converter reads, which
    transformers 5 leaves out when it saves the fixtures' configs (it keeps the derived forms): without
    them the converter writes its defaults, which describe the released models, not these fixtures."""
    text = cfg.get("text_config", cfg)
    types = text.get("layer_types")
    if types and "linear_attention" in types and "full_attention_interval" not in text:
        # Qwen3-Next / Qwen3.5: every n-th layer is full attention (the converter's default is 4).
        n = types.index("full_attention") + 1
        assert all((t == "full_attention") == ((i + 1) % n == 0) for i, t in enumerate(types)), types
        text["full_attention_interval"] = n
    if cfg.get("model_type") == "deepseek_v3":
        # DeepSeek-V3's router: sigmoid scores (files without the key are read as softmax, DeepSeek-V2).
        cfg.setdefault("scoring_func", "sigmoid")
        cfg.setdefault("topk_method", "noaux_tc")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("llama_cpp_dir")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "golden", "llamacpp"))
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    conv = os.path.join(args.llama_cpp_dir, "convert_hf_to_gguf.py")
    if not os.path.exists(conv):
        sys.exit(f"error: {conv} not found (give the root of a llama.cpp checkout)")
    fixtures = os.path.join(ROOT, "tests", "golden", "fixtures")
    names = sorted(n for n in os.listdir(fixtures) if os.path.exists(os.path.join(fixtures, n, "golden.json")))
    if args.only:
        want = set(args.only.split(","))
        unknown = want - set(names)
        if unknown:
            sys.exit(f"error: no fixture named {', '.join(sorted(unknown))}")
        names = [n for n in names if n in want]
    else:
        for n, why in NOT_DESCRIBABLE.items():
            print(f"{n}: skipped ({why})")
        names = [n for n in names if n not in NOT_DESCRIBABLE]
    os.makedirs(args.out, exist_ok=True)
    failed = 0
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            # A neutral directory name: the converter reads hints from general.name (e.g. "phi3").
            d = os.path.join(tmp, "model")
            shutil.copytree(os.path.join(fixtures, name), d, ignore=shutil.ignore_patterns("golden.json"))
            add_byte_tokenizer(d)
            with open(os.path.join(d, "config.json")) as f:
                cfg = json.load(f)
            add_released_keys(cfg)
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(cfg, f, indent=2)
            if cfg.get("model_type") in SPM_TYPES:
                add_sentencepiece(d, cfg["vocab_size"])
            out = os.path.join(args.out, name + ".gguf")
            r = subprocess.run([sys.executable, "-c", DRIVER, args.llama_cpp_dir, d, out],
                               capture_output=True, text=True)
            if r.returncode != 0 or not os.path.exists(out):
                failed += 1
                last = (r.stderr or r.stdout).strip().splitlines()[-3:]
                print(f"{name}: FAILED: {' | '.join(last)}")
                if os.path.exists(out):
                    os.remove(out)
            else:
                print(f"{name}: {os.path.getsize(out)} bytes")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
