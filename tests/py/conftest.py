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
def test_models() -> pathlib.Path:
    """The real test models the repository carries (tests/fixtures/models, see its README)."""
    p = pathlib.Path(os.environ.get("QLEAP_TEST_MODELS", ROOT / "tests" / "fixtures" / "models"))
    if not (p / "stories260K.gguf").exists():
        pytest.fail(f"test model stories260K.gguf not found in {p}")
    return p


@pytest.fixture(scope="session")
def golden_gguf(qleap_bin, tmp_path_factory):
    """name -> tests/golden/fixtures/<name> converted to F16 with a byte-level vocabulary (golden_cli.py),
    converted once per session."""
    from golden_cli import convert_golden

    done = {}

    def get(name):
        if name not in done:
            done[name] = convert_golden(qleap_bin, name, tmp_path_factory.mktemp("golden_" + name))
        return done[name]

    return get


@pytest.fixture(autouse=True, scope="session")
def _isolated_tune_store(tmp_path_factory):
    # `qleap run` reads tuned settings from ~/.qleap/tune.json; tests must not depend on what a
    # developer tuned on this machine.
    os.environ["QLEAP_TUNE_FILE"] = str(tmp_path_factory.mktemp("tune") / "tune.json")
