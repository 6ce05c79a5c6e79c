#!/usr/bin/env python3
"""Writes tests/fixtures/quant/: per tensor format, random blocks and gguf-py's decoded floats
(<FMT>.blocks / <FMT>.f32), and for the formats gguf-py can encode, random inputs and gguf-py's
encoded bytes (<FMT>.enc_in.f32 / <FMT>.enc.bin). gguf-py is the independent reference; the C++
tests compare bit-exactly. The i-quant, ternary and FP4 formats (iq_blocks below) get random blocks
plus edge blocks: zero, negative-zero, subnormal and largest scales, every grid index, every sign
pattern and every sub-scale value. The integer and F64 tensor types, which gguf-py reads as numpy
arrays but has no dequantizer for, are checked against numpy's conversion to float32.
Usage: tools/gen_quant_fixtures.py [out_dir]"""
import os
import sys

import numpy as np
from gen_quant_fixtures_iq import INT_TYPES, IQ_DECODE_TYPES, IQ_ENCODE_TYPES, int_values, iq_blocks, iq_encode_inputs
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

# Byte offsets of fp16 scale fields inside each block: random bytes there could be NaN/inf.
FP16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "IQ4_NL": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}
DECODE_TYPES = list(FP16_FIELDS) + ["F16", "BF16"]
ENCODE_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16"]
N_BLOCKS = 8


def sane_fp16(rng, n):
    v = rng.uniform(-2.0, 2.0, n) * np.exp2(rng.integers(-12, 2, n).astype(np.float64))
    return v.astype(np.float16)


def random_blocks(rng, name):
    qt = T[name]
    bs, ts = GGML_QUANT_SIZES[qt]
    if name == "F16":
        return sane_fp16(rng, 64).view(np.uint8).copy()
    if name == "BF16":
        f = (rng.standard_normal(64) * 3).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).copy()
    raw = rng.integers(0, 256, (N_BLOCKS, ts), dtype=np.uint8)
    for off in FP16_FIELDS[name]:
        raw[:, off:off + 2] = sane_fp16(rng, N_BLOCKS).view(np.uint8).reshape(N_BLOCKS, 2)
    return raw.reshape(-1)


def encode_inputs(rng):
    rows = [rng.standard_normal(32 * 6).astype(np.float32) * s for s in (1e-3, 1.0, 50.0)]
    special = np.zeros(32 * 4, np.float32)  # an all-zero block, ties, and repeated maxima
    special[32:64] = np.arange(32, dtype=np.float32) - 16.0
    special[64:96] = np.tile(np.array([1.0, -1.0, 0.5, -0.25], np.float32), 8)
    special[96:128] = rng.uniform(-1, 1, 32).astype(np.float32)
    special[100] = 7.0
    special[110] = -7.0
    return np.concatenate(rows + [special])


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "quant")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20261123)
    for name in DECODE_TYPES:
        raw = random_blocks(rng, name)
        ref = quants.dequantize(raw, T[name]).astype(np.float32).reshape(-1)
        assert np.all(np.isfinite(ref)), name
        raw.tofile(os.path.join(out, f"{name}.blocks"))
        ref.tofile(os.path.join(out, f"{name}.f32"))
    for name in ENCODE_TYPES:
        x = encode_inputs(rng)
        enc = quants.quantize(x.reshape(1, -1), T[name]).reshape(-1)
        x.tofile(os.path.join(out, f"{name}.enc_in.f32"))
        enc.tofile(os.path.join(out, f"{name}.enc.bin"))
    # Formats added later draw from their own generator so the fixtures above stay unchanged.
    rng = np.random.default_rng(20260418)
    for name in IQ_DECODE_TYPES:
        raw = iq_blocks(rng, name).reshape(-1)
        with np.errstate(over="ignore"):  # MXFP4's largest exponents overflow to inf, as in the reference
            ref = quants.dequantize(raw, T[name]).astype(np.float32).reshape(-1)
        raw.tofile(os.path.join(out, f"{name}.blocks"))
        ref.tofile(os.path.join(out, f"{name}.f32"))
    for name in INT_TYPES:
        vals = int_values(rng, name)
        vals.view(np.uint8).tofile(os.path.join(out, f"{name}.blocks"))
        with np.errstate(over="ignore"):  # F64 values beyond the float range become inf
            vals.astype(np.float32).tofile(os.path.join(out, f"{name}.f32"))
    for name in IQ_ENCODE_TYPES:
        x = iq_encode_inputs(rng, name)
        enc = quants.quantize(x.reshape(1, -1), T[name]).reshape(-1)
        x.tofile(os.path.join(out, f"{name}.enc_in.f32"))
        enc.tofile(os.path.join(out, f"{name}.enc.bin"))


if __name__ == "__main__":
    main()
