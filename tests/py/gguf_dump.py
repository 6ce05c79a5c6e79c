"""What gguf-py's GGUFReader sees in a GGUF file, as plain JSON-able data (shared by the fixture
generator and the cross-check tests)."""
import numpy as np

import gguf
from gguf import GGUFValueType as T


def fnv1a64(data: bytes) -> str:
    arr = np.frombuffer(data, dtype=np.uint8)
    h = 0xCBF29CE484222325
    for b in arr.tolist():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def _scalar(part, t):
    if t == T.STRING:
        return bytes(part.tobytes()).decode("utf-8")
    v = part.tolist()[0]
    if t == T.BOOL:
        return bool(v)
    return v


def _value(parts, i, t):
    """Rebuilds one value (nested arrays included) from GGUFReader's raw parts starting at i."""
    if t == T.STRING:
        return _scalar(parts[i + 1], T.STRING), i + 2
    if t != T.ARRAY:
        return _scalar(parts[i], t), i + 1
    et = T(int(parts[i][0]))
    n = int(parts[i + 1][0])
    i += 2
    out = []
    for _ in range(n):
        v, i = _value(parts, i, et)
        out.append(v)
    return {"elem_type": int(et), "items": out}, i


def dump(path):
    r = gguf.GGUFReader(path)
    kv = []
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        t = T(int(f.types[0]))
        v, _ = _value(f.parts, 3, t)
        entry = {"key": f.name, "type": int(t), "value": v}
        if t == T.ARRAY:
            entry["flat"] = f.contents()
            entry["flat"] = [bool(x) if f.types[-1] == T.BOOL else x for x in entry["flat"]]
        kv.append(entry)
    tensors = []
    for t in r.tensors:
        tensors.append({
            "name": t.name,
            "type": int(t.tensor_type),
            "shape": [int(x) for x in t.shape],
            "n_elements": int(t.n_elements),
            "n_bytes": int(t.n_bytes),
            "data_offset": int(t.data_offset),
            "fnv1a64": fnv1a64(t.data.tobytes()),
        })
    alignment = r.alignment
    return {"alignment": int(alignment), "metadata": kv, "tensors": tensors}
