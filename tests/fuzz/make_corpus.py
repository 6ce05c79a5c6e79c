#!/usr/bin/env python3
"""Writes the fuzzing seed corpus: a few tiny valid GGUF files (gguf-py) and safetensors files."""
import os
import shutil

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def gguf_file(path, fill):
    w = gguf.GGUFWriter(path, "llama")
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    g = os.path.join(HERE, "corpus", "gguf")
    s = os.path.join(HERE, "corpus", "safetensors")
    for d in (g, s):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    gguf_file(os.path.join(g, "meta_only.gguf"), lambda w: (w.add_uint32("llama.block_count", 2),
                                                            w.add_string("general.name", "x")))

    def tensors(w):
        w.add_custom_alignment(64)
        w.add_array("tokenizer.ggml.tokens", ["a", "b", "<s>"])
        w.add_array("nested", [[1, 2], [3]])
        w.add_float32("llama.rope.freq_base", 10000.0)
        w.add_bool("b", True)
        w.add_tensor("w", np.arange(8, dtype=np.float32).reshape(2, 4))
        w.add_tensor("h", np.arange(4, dtype=np.float16))
        w.add_tensor("q", np.zeros((1, 34), dtype=np.uint8), raw_dtype=Q.Q8_0)
    gguf_file(os.path.join(g, "tensors.gguf"), tensors)
    ref = os.path.join(HERE, "..", "golden", "gguf_py", "reference.gguf")
    if os.path.exists(ref):
        shutil.copy(ref, os.path.join(g, "all_types.gguf"))
    save_file({"a": np.ones((2, 3), dtype=np.float32), "b": np.zeros(4, dtype=np.float16)},
              os.path.join(s, "small.safetensors"), metadata={"format": "pt"})
    save_file({"x": np.arange(6, dtype=np.int64)}, os.path.join(s, "i64.safetensors"))


if __name__ == "__main__":
    main()
