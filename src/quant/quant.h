// Row-level entry points over all tensor formats: the scalar reference decoders/encoders (bit-exact
// with GGUF). The SIMD decoders tested against them are backend/cpu/matmul.h's dequantize_row.
#pragma once
#include <cstdint>

#include "quant/ggml_type.h"

namespace qleap {

// Decode n elements (a multiple of the block size) of type t into floats.
void dequantize_row_ref(GgmlType t, const void* src, float* dst, int64_t n);

// Encode n floats into type t. Throws Unsupported for types without an encoder here.
bool can_quantize(GgmlType t);
void quantize_row_ref(GgmlType t, const float* src, void* dst, int64_t n);

}  // namespace qleap
