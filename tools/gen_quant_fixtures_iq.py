"""Block builders for tools/gen_quant_fixtures.py: the i-quant, ternary and FP4 formats. Each
format gets random blocks plus edge blocks that together hold every grid index, every sign index
or sign byte, every sub-scale value, and the extreme super-block scales (zero, negative zero, the
smallest subnormal, the largest finite value, negative). The bytes are only ever decoded by gguf-py
(the reference) and by the C++ decoders under test; builders only need to know where the fields are.
"""
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

IQ_DECODE_TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_XS", "TQ1_0",
                   "TQ2_0", "MXFP4", "NVFP4"]
IQ_ENCODE_TYPES = ["TQ1_0", "TQ2_0", "MXFP4"]
INT_TYPES = {"I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "F64": np.float64}

N_RANDOM = 8
# fp16 bit patterns of the edge scales: 0, -0, smallest subnormal, largest finite, -largest, 1.0.
EDGE_D = [0x0000, 0x8000, 0x0001, 0x7BFF, 0xFBFF, 0x3C00]


def sane_fp16_bits(rng, n):
    v = rng.uniform(-2.0, 2.0, n) * np.exp2(rng.integers(-12, 2, n).astype(np.float64))
    return v.astype(np.float16).view(np.uint16)


def put_u16(raw, off, vals):
    raw[:, off:off + 2] = np.asarray(vals, dtype=np.uint16).reshape(-1, 1).view(np.uint8).reshape(-1, 2)


def u16_view(raw, off, n):
    return raw[:, off:off + 2 * n].view(np.uint16)


def u32_view(raw, off, n):
    return raw[:, off:off + 4 * n].view(np.uint32)


def random_raw(rng, name, n):
    _, ts = GGML_QUANT_SIZES[T[name]]
    return rng.integers(0, 256, (n, ts), dtype=np.uint8)


def with_d(rng, name, n_edge_cover, d_off, fill):
    """Random blocks, then n_edge_cover coverage blocks filled by fill(raw, b), then one block per
    edge scale; the fp16 scale at d_off is sane everywhere except in the edge-scale blocks."""
    n = N_RANDOM + n_edge_cover + len(EDGE_D)
    raw = random_raw(rng, name, n)
    for b in range(n_edge_cover):
        fill(raw, N_RANDOM + b)
    if d_off is not None:
        put_u16(raw, d_off, np.concatenate([sane_fp16_bits(rng, N_RANDOM + n_edge_cover), EDGE_D]))
    return raw


def iq2_xxs(rng):
    # Sub-block: uint32 of four grid bytes, uint32 of four 7-bit sign indices + 4-bit scale.
    def fill(raw, b):
        c = b - N_RANDOM
        q = u32_view(raw, 2, 16)[b]
        for ib in range(8):
            g = [(32 * c + 4 * ib + k) % 256 for k in range(4)]
            q[2 * ib] = g[0] | g[1] << 8 | g[2] << 16 | g[3] << 24
            s = [(32 * c + 4 * ib + k) % 128 for k in range(4)]
            q[2 * ib + 1] = s[0] | s[1] << 7 | s[2] << 14 | s[3] << 21 | ((8 * c + ib) % 16) << 28
    return with_d(rng, "IQ2_XXS", 8, 0, fill)


def iq2_xs(rng):
    def fill(raw, b):
        c = b - N_RANDOM
        q = u16_view(raw, 2, 32)[b]
        for l in range(32):
            q[l] = ((32 * c + l) % 512) | (((32 * c + l) % 128) << 9)
        raw[b, 66:74] = [(2 * (8 * c + i)) % 16 | (((2 * (8 * c + i) + 1) % 16) << 4) for i in range(8)]
    return with_d(rng, "IQ2_XS", 16, 0, fill)


def iq2_s(rng):
    def fill(raw, b):
        c = b - N_RANDOM
        idx = [32 * c + l for l in range(32)]
        raw[b, 2:34] = [i & 0xFF for i in idx]
        raw[b, 34:66] = [(32 * c + l) % 256 for l in range(32)]
        raw[b, 66:74] = [sum(((idx[4 * i + k] >> 8) & 3) << (2 * k) for k in range(4)) for i in range(8)]
        raw[b, 74:82] = [(2 * (8 * c + i)) % 16 | (((2 * (8 * c + i) + 1) % 16) << 4) for i in range(8)]
    return with_d(rng, "IQ2_S", 32, 0, fill)


def iq3_xxs(rng):
    def fill(raw, b):
        c = b - N_RANDOM
        raw[b, 2:66] = [(64 * c + l) % 256 for l in range(64)]
        sas = u32_view(raw, 66, 8)[b]
        for ib in range(8):
            s = [(32 * c + 4 * ib + k) % 128 for k in range(4)]
            sas[ib] = s[0] | s[1] << 7 | s[2] << 14 | s[3] << 21 | ((8 * c + ib) % 16) << 28
    return with_d(rng, "IQ3_XXS", 4, 0, fill)


def iq3_s(rng):
    def fill(raw, b):
        c = b - N_RANDOM
        idx = [64 * c + l for l in range(64)]
        raw[b, 2:66] = [i & 0xFF for i in idx]
        raw[b, 66:74] = [sum(((idx[8 * i + k] >> 8) & 1) << k for k in range(8)) for i in range(8)]
        raw[b, 74:106] = [(32 * c + l) % 256 for l in range(32)]
        raw[b, 106:110] = [(2 * (4 * c + i)) % 16 | (((2 * (4 * c + i) + 1) % 16) << 4) for i in range(4)]
    return with_d(rng, "IQ3_S", 8, 0, fill)


def iq1_s(rng):
    def fill(raw, b):
        c = b - N_RANDOM
        idx = [32 * c + l for l in range(32)]
        raw[b, 2:34] = [i & 0xFF for i in idx]
        qh = u16_view(raw, 34, 8)[b]
        for ib in range(8):
            ext = sum(((idx[4 * ib + k] >> 8) & 7) << (3 * k) for k in range(4))
            qh[ib] = ext | ((8 * c + ib) % 8) << 12 | ((8 * c + ib) // 8 % 2) << 15
    return with_d(rng, "IQ1_S", 64, 0, fill)


def iq1_m(rng):
    # The fp16 scale lives in the top nibbles of the four scale words: built separately below.
    def fill(raw, b):
        c = b - N_RANDOM
        idx = [32 * c + l for l in range(32)]
        raw[b, 0:32] = [i & 0xFF for i in idx]
        raw[b, 32:48] = [((idx[2 * i] >> 8) & 7) | ((c + i) % 2) << 3 | ((idx[2 * i + 1] >> 8) & 7) << 4 |
                         ((c + i + 1) % 2) << 7 for i in range(16)]
        sc = u16_view(raw, 48, 4)[b]
        for i in range(4):
            sc[i] = sum(((16 * c + 4 * i + k) % 8) << (3 * k) for k in range(4))
    n_cover = 64
    raw = with_d(rng, "IQ1_M", n_cover, None, fill)
    d = np.concatenate([sane_fp16_bits(rng, N_RANDOM + n_cover), EDGE_D]).astype(np.uint16)
    sc = u16_view(raw, 48, 4)
    for i, shift in enumerate([12, 8, 4, 0]):
        sc[:, i] = (sc[:, i] & 0x0FFF) | ((d << shift) & 0xF000)
    return raw


def iq4_xs(rng):
    def fill(raw, b):
        c = b - N_RANDOM
        ls = [(8 * c + ib) % 64 for ib in range(8)]
        put_u16(raw[b:b + 1], 2, [sum((x >> 4) << (2 * ib) for ib, x in enumerate(ls))])
        raw[b, 4:8] = [(ls[2 * i] & 0xF) | (ls[2 * i + 1] & 0xF) << 4 for i in range(4)]
    return with_d(rng, "IQ4_XS", 8, 0, fill)


def tq1_0(rng):
    def fill(raw, b):
        c = b - N_RANDOM
        raw[b, 0:48] = [(48 * c + j) % 256 for j in range(48)]
        raw[b, 48:52] = [(4 * c + j) % 256 for j in range(4)]
    return with_d(rng, "TQ1_0", 6, 52, fill)


def tq2_0(rng):
    def fill(raw, b):
        raw[b, 0:64] = [0x00, 0x55, 0xAA, 0xFF, 0x1B, 0xE4, 0x6C, 0x93] * 8
    return with_d(rng, "TQ2_0", 1, 64, fill)


def mxfp4(rng):
    raw = random_raw(rng, "MXFP4", 256 + N_RANDOM)
    raw[:256, 0] = np.arange(256)  # every exponent, including the subnormal and the infinite products
    raw[256:, 0] = rng.integers(100, 140, N_RANDOM)
    return raw


def nvfp4(rng):
    raw = random_raw(rng, "NVFP4", 64 + N_RANDOM)
    raw[:64, 0:4] = np.arange(256).reshape(64, 4)  # every scale byte
    return raw


BUILDERS = {"IQ2_XXS": iq2_xxs, "IQ2_XS": iq2_xs, "IQ2_S": iq2_s, "IQ3_XXS": iq3_xxs, "IQ3_S": iq3_s,
            "IQ1_S": iq1_s, "IQ1_M": iq1_m, "IQ4_XS": iq4_xs, "TQ1_0": tq1_0, "TQ2_0": tq2_0, "MXFP4": mxfp4,
            "NVFP4": nvfp4}


def iq_blocks(rng, name):
    return BUILDERS[name](rng)


def int_values(rng, name):
    dt = INT_TYPES[name]
    if dt == np.float64:
        v = rng.standard_normal(62) * np.exp2(rng.integers(-140, 140, 62).astype(np.float64))
        return np.concatenate([v, [1e300, -5e-324, 0.0, -0.0, 0.1, 1.0 + 2.0 ** -30]]).astype(np.float64)
    info = np.iinfo(dt)
    v = rng.integers(info.min, info.max, 60, dtype=dt, endpoint=True)
    return np.concatenate([v, np.array([info.min, info.max, 0, -1], dtype=dt)])


def iq_encode_inputs(rng, name):
    """Inputs for the gguf-py encoders: Gaussian blocks at several magnitudes, plus blocks that hit
    the rounding edges (all zero, exact ties, powers of two and values just below them)."""
    bs = GGML_QUANT_SIZES[T[name]][0]
    rows = [(rng.standard_normal(bs * 3) * s).astype(np.float32) for s in (1e-3, 1.0, 300.0)]
    special = np.zeros(bs * 4, np.float32)
    ramp = np.linspace(-1.0, 1.0, bs, dtype=np.float32)
    special[bs:2 * bs] = ramp  # includes +-0.5 * max: a rounding tie for the ternary formats
    p2 = np.exp2(np.arange(bs, dtype=np.float32) % 24 - 12).astype(np.float32)
    special[2 * bs:3 * bs] = np.where(np.arange(bs) % 2 == 0, p2, -p2)
    below = np.nextafter(p2, np.float32(0))
    special[3 * bs:4 * bs] = np.where(np.arange(bs) % 3 == 0, below, -below * 0.75)
    return np.concatenate(rows + [special])
