import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def qleap_bin() -> str:
    b = os.environ.get("QLEAP_BIN", str(ROOT / "build" / "qleap"))
    if not os.path.exists(b):
        pytest.fail(f"qleap binary not found at {b}: build first")
    return b


@pytest.fixture(scope="session")
def shared_models() -> pathlib.Path:
    p = pathlib.Path(os.environ.get("QLEAP_SHARED_MODELS", ROOT.parent / "shared" / "models"))
    if not (p / "stories260K.gguf").exists():
        pytest.fail(f"test model stories260K.gguf not found in {p}")
    return p
