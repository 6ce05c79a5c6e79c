#!/usr/bin/env python3
"""Writes tests/golden/gguf_py/reference.gguf with gguf-py's GGUFWriter (every metadata value type,
arrays, nested arrays, several tensor types and shapes, alignment 64) and reference.json: what
gguf-py's GGUFReader reads back from it. The gtest GgufCrosscheck.ReadsGgufPyFile checks that our
reader sees exactly the same.

Usage: python3 tools/gen_gguf_crosscheck.py [--out tests/golden/gguf_py]
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "py"))
from gguf_dump import dump  # noqa: E402

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import GGUFValueType as T  # noqa: E402


def write(path):
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(path, "crosscheck")
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 250)
    w.add_int8("t.i8", -120)
    w.add_uint16("t.u16", 65000)
    w.add_int16("t.i16", -32000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_uint64("t.u64", 18000000000000000000)
    w.add_int64("t.i64", -9000000000000000000)
    w.add_float32("t.f32", 3.14159)
    w.add_float64("t.f64", -2.718281828459045)
    w.add_bool("t.bool_true", True)
    w.add_bool("t.bool_false", False)
    w.add_string("t.str", "hello GGUF \u00e9\u4e2d\U0001F600")
    w.add_string("t.str_empty", "")
    w.add_key_value("t.arr_u8", [0, 1, 255], T.ARRAY, sub_type=T.UINT8)
    w.add_key_value("t.arr_i16", [-5, 0, 7], T.ARRAY, sub_type=T.INT16)
    w.add_key_value("t.arr_u64", [1, 2 ** 63 + 5], T.ARRAY, sub_type=T.UINT64)
    w.add_key_value("t.arr_i64", [-(2 ** 62), 3], T.ARRAY, sub_type=T.INT64)
    w.add_array("t.arr_i32", [1, -2, 3, -4])
    w.add_array("t.arr_f32", [0.5, -1.25, 1e-7])
    w.add_key_value("t.arr_f64", [0.1, -1e300], T.ARRAY, sub_type=T.FLOAT64)
    w.add_array("t.arr_bool", [True, False, True])
    w.add_array("t.arr_str", ["a", "", "\u00fcber", "x y z"])
    w.add_array("t.nested_i32", [[1, 2], [3, 4, 5], [6]])
    w.add_array("t.nested_str", [["a", "bc"], ["d"]])
    w.add_tensor("f32_2d", rng.standard_normal((3, 8), dtype=np.float32))
    w.add_tensor("f32_3d", rng.standard_normal((2, 3, 5), dtype=np.float32))
    w.add_tensor("f32_1d", rng.standard_normal((7,), dtype=np.float32))
    w.add_tensor("f16_2d", rng.standard_normal((4, 6)).astype(np.float16))
    w.add_tensor("i32_1d", np.arange(-3, 6, dtype=np.int32))
    w.add_tensor("i8_2d", rng.integers(-128, 127, (2, 9), dtype=np.int8))
    # Quantized tensors: raw bytes (only their layout matters to a reader), shape given in elements.
    w.add_tensor("q8_0_2d", rng.integers(0, 255, (3, 2 * 34), dtype=np.uint8), raw_dtype=Q.Q8_0)
    w.add_tensor("q4_k_2d", rng.integers(0, 255, (2, 144), dtype=np.uint8), raw_dtype=Q.Q4_K)
    w.add_tensor("bf16_1d", rng.integers(0, 65535, (16,), dtype=np.uint16).view(np.uint16), raw_dtype=Q.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "gguf_py"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "reference.gguf")
    write(path)
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(dump(path), f, indent=1)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
