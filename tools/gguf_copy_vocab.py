#!/usr/bin/env python3
"""Copy the tokenizer metadata (tokenizer.*) of a donor GGUF into another GGUF.

Benchmark models are made from random weights and have no tokenizer of their own, but llama.cpp's
loader insists on one. Vocab sizes must match (the donor's token count is checked against the
model's token_embd rows).

usage: gguf_copy_vocab.py MODEL.gguf DONOR.gguf OUT.gguf
"""
import sys

import gguf
import numpy as np


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    src, donor_path, out = sys.argv[1:]
    model = gguf.GGUFReader(src)
    donor = gguf.GGUFReader(donor_path)
    arch = str(bytes(model.fields["general.architecture"].parts[-1]), "utf-8")
    n_tokens = len(donor.fields["tokenizer.ggml.tokens"].data)
    emb = next(t for t in model.tensors if t.name == "token_embd.weight")
    if int(emb.shape[1]) != n_tokens:
        print(f"vocab mismatch: model has {emb.shape[1]} embedding rows, donor {n_tokens} tokens")
        return 1

    w = gguf.GGUFWriter(out, arch)
    def copy_field(f):
        name = f.name
        if name.startswith("GGUF.") or name == "general.architecture":
            return
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            et = f.types[1] if len(f.types) > 1 else gguf.GGUFValueType.INT32
            if et == gguf.GGUFValueType.STRING:
                vals = [str(bytes(f.parts[i]), "utf-8", errors="surrogateescape") for i in f.data]
            else:
                vals = [f.parts[i].tolist()[0] for i in f.data]
            w.add_key_value(name, vals, vt, sub_type=et)
        elif vt == gguf.GGUFValueType.STRING:
            w.add_key_value(name, str(bytes(f.parts[-1]), "utf-8"), vt)
        else:
            w.add_key_value(name, f.parts[-1].tolist()[0], vt)

    for f in model.fields.values():
        if not f.name.startswith("tokenizer."):
            copy_field(f)
    for f in donor.fields.values():
        if f.name.startswith("tokenizer.") and f.name != "tokenizer.chat_template":
            copy_field(f)
    for t in model.tensors:
        shape = [int(x) for x in reversed(t.shape)] if len(t.shape) > 1 else [int(t.shape[0])]
        data = np.asarray(t.data)
        w.add_tensor(t.name, data, raw_shape=shape if t.tensor_type != gguf.GGMLQuantizationType.F32 else None,
                     raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
