// Scalar reference encoders, one block at a time. The legacy formats (Q4_0 .. Q8_0) follow the
// GGUF reference rounding exactly (tested bit-exact against gguf-py); the K-quants and IQ4_NL use
// our own scale search (tested by round-trip error). quant_encode_iq.cpp: TQ1_0, TQ2_0 and MXFP4
// as gguf-py encodes them (bit-exact), IQ4_XS and NVFP4 by our own scale search.
#pragma once
#include "quant/block_iq4_nl.h"
#include "quant/block_iq4_xs.h"
#include "quant/block_mxfp4.h"
#include "quant/block_nvfp4.h"
#include "quant/block_q4_0.h"
#include "quant/block_q4_1.h"
#include "quant/block_q4_k.h"
#include "quant/block_q5_0.h"
#include "quant/block_q5_1.h"
#include "quant/block_q5_k.h"
#include "quant/block_q6_k.h"
#include "quant/block_q8_0.h"
#include "quant/block_q8_k.h"
#include "quant/block_tq1_0.h"
#include "quant/block_tq2_0.h"

namespace qleap {

void quantize_block_ref(const float* x, BlockQ8_0* b);
void quantize_block_ref(const float* x, BlockQ4_0* b);
void quantize_block_ref(const float* x, BlockQ4_1* b);
void quantize_block_ref(const float* x, BlockQ5_0* b);
void quantize_block_ref(const float* x, BlockQ5_1* b);
void quantize_block_ref(const float* x, BlockIq4Nl* b);
void quantize_block_ref(const float* x, BlockQ8_K* b);
void quantize_block_ref(const float* x, BlockQ4_K* b);
void quantize_block_ref(const float* x, BlockQ5_K* b);
void quantize_block_ref(const float* x, BlockQ6_K* b);
void quantize_block_ref(const float* x, BlockTq1_0* b);
void quantize_block_ref(const float* x, BlockTq2_0* b);
void quantize_block_ref(const float* x, BlockMxfp4* b);
void quantize_block_ref(const float* x, BlockNvfp4* b);
void quantize_block_ref(const float* x, BlockIq4Xs* b);

}  // namespace qleap
