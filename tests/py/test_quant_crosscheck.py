"""Cross-checks the committed quant fixtures against a live gguf-py: regenerating them must give
byte-identical files (so the fixtures really are gguf-py's output), and the decoded floats must
agree with gguf-py for every format. Skips when gguf-py is not installed."""
import filecmp
import os
import subprocess
import sys

import pytest

np = pytest.importorskip("numpy")
gguf = pytest.importorskip("gguf")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "quant")


def test_fixtures_regenerate_identically(tmp_path):
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_quant_fixtures.py"), str(tmp_path)], check=True)
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(os.listdir(FIXTURES))
    for n in names:
        assert filecmp.cmp(tmp_path / n, os.path.join(FIXTURES, n), shallow=False), n


def test_iq_tables_regenerate_identically(tmp_path):
    """src/quant/iq_grids.h is gguf-py's own grids and sign table, written by tools/gen_iq_tables.py."""
    out = tmp_path / "iq_grids.h"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_iq_tables.py"), str(out)], check=True)
    assert filecmp.cmp(out, os.path.join(ROOT, "src", "quant", "iq_grids.h"), shallow=False)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K",
                                  "Q5_K", "Q6_K", "F16", "BF16", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS",
                                  "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4"])
def test_decoded_fixture_matches_gguf_py(name):
    from gguf import GGMLQuantizationType as T
    from gguf import quants
    raw = np.fromfile(os.path.join(FIXTURES, f"{name}.blocks"), dtype=np.uint8)
    ref = np.fromfile(os.path.join(FIXTURES, f"{name}.f32"), dtype=np.float32)
    with np.errstate(over="ignore"):
        got = quants.dequantize(raw, T[name]).astype(np.float32).reshape(-1)
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16", "TQ1_0", "TQ2_0", "MXFP4"])
def test_encoded_fixture_matches_gguf_py(name):
    from gguf import GGMLQuantizationType as T
    from gguf import quants
    x = np.fromfile(os.path.join(FIXTURES, f"{name}.enc_in.f32"), dtype=np.float32)
    ref = np.fromfile(os.path.join(FIXTURES, f"{name}.enc.bin"), dtype=np.uint8)
    got = quants.quantize(x.reshape(1, -1), T[name]).reshape(-1)
    np.testing.assert_array_equal(got, ref)
