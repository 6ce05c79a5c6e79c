#!/usr/bin/env python3
"""Writes rope_freqs.json next to a golden fixture whose config uses llama3 RoPE scaling: the
per-frequency-pair factors (default inv_freq / transformers' llama3 inv_freq) that a GGUF carries as
rope_freqs.weight. tests/py/test_gguf_crosscheck.py compares our converter's tensor with it, so the
test needs neither torch nor transformers.

Needs tools/requirements-gen.txt. Usage: python3 tools/gen_rope_freqs.py [FIXTURE_DIR ...]
(default: tests/golden/fixtures/llama_rope_llama3)
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def main(dirs):
    for d in dirs:
        cfg = AutoConfig.from_pretrained(d)
        rp = cfg.rope_parameters
        assert rp["rope_type"] == "llama3", f"{d}: rope_type {rp['rope_type']}"
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        inv, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
        base = 1.0 / (rp["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        factors = (base / inv.to(torch.float64)).tolist()
        out = {"generator": "tools/gen_rope_freqs.py", "transformers": transformers.__version__,
               "torch": torch.__version__, "rope_freqs": factors}
        with open(os.path.join(d, "rope_freqs.json"), "w") as f:
            json.dump(out, f, indent=1)
        print(f"{d}: {len(factors)} factors")


if __name__ == "__main__":
    main(sys.argv[1:] or [os.path.join(ROOT, "tests", "golden", "fixtures", "llama_rope_llama3")])
