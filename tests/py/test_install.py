"""Installing qleap like a real tool: `cmake --install`, the .deb from CPack, systemd units, bash
completion, `--version`, and `qleap info`'s warnings about the machine."""
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def build_dir(qleap_bin):
    d = pathlib.Path(qleap_bin).resolve().parent
    if not (d / "CMakeCache.txt").exists():
        pytest.skip(f"{d} is not a CMake build directory")
    return d


def test_version_names_the_commit(qleap_bin):
    r = subprocess.run([qleap_bin, "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    m = re.fullmatch(r"qleap (\d+\.\d+\.\d+) \(commit ([0-9a-f]{7,40}(-dirty)?|unknown)\)\n", r.stdout)
    assert m, r.stdout
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert head.stdout.startswith(m.group(2).removesuffix("-dirty")), (head.stdout, r.stdout)


def complete(script, words):
    """What the completion function offers for the command line `words` (the last is being typed)."""
    line = " ".join(words)
    prog = (f"source {script}\nCOMP_WORDS=({line})\nCOMP_CWORD={len(words) - 1}\n"
            "_qleap\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    r = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, QLEAP_MODELS="/nonexistent"))
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_cmake_install_puts_a_working_tool_in_the_prefix(build_dir, tmp_path):
    prefix = tmp_path / "prefix"
    r = subprocess.run(["cmake", "--install", str(build_dir), "--prefix", str(prefix)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    qleap = prefix / "bin" / "qleap"
    out = subprocess.run([str(qleap), "--version"], capture_output=True, text=True, timeout=30).stdout
    assert out.startswith("qleap ")
    # The web UI is inside the binary: nothing else is installed for it.
    assert not any(p.suffix in (".js", ".html", ".css") for p in prefix.rglob("*"))
    system = (prefix / "lib" / "systemd" / "system" / "qleap.service").read_text()
    user = (prefix / "share" / "systemd" / "user" / "qleap.service").read_text()
    for unit in (system, user):
        assert f"ExecStart={qleap} serve" in unit
        assert "[Install]" in unit
    assert "DynamicUser=yes" in system and "QLEAP_MODELS=/var/lib/qleap/models" in system
    script = prefix / "share" / "bash-completion" / "completions" / "qleap"
    assert complete(script, ["qleap", "se"]) == {"serve"}
    assert {"run", "pull", "bench"} <= complete(script, ["qleap", "''"])
    assert {"--parallel", "--port"} <= complete(script, ["qleap", "serve", "--p"])
    assert complete(script, ["qleap", "run", "--kv", "tq"]) >= {"tq3", "tq4"}


def test_deb_package_holds_binary_units_and_completion(build_dir, tmp_path):
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not found (not a Debian system)")
    r = subprocess.run(["cpack", "-G", "DEB", "-B", str(tmp_path)], cwd=build_dir, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    debs = list(tmp_path.glob("qleap_*.deb"))
    assert len(debs) == 1, r.stdout
    files = subprocess.run(["dpkg-deb", "-c", str(debs[0])], capture_output=True, text=True).stdout
    for f in ("./usr/bin/qleap", "./usr/lib/systemd/system/qleap.service", "./usr/share/systemd/user/qleap.service",
              "./usr/share/bash-completion/completions/qleap"):
        assert f in files, files
    fields = subprocess.run(["dpkg-deb", "-f", str(debs[0])], capture_output=True, text=True).stdout
    assert "Package: qleap" in fields
    assert re.search(r"Depends:.*libc6", fields), fields  # from dpkg-shlibdeps
    unit = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[0])], capture_output=True).stdout
    assert b"ExecStart=/usr/bin/qleap serve" in unit


def test_info_without_a_model_warns_when_the_port_is_taken(qleap_bin):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        env = dict(os.environ, QLEAP_HOST=f"127.0.0.1:{port}")
        r = subprocess.run([qleap_bin, "info"], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        assert f"warning:    127.0.0.1:{port} is already in use" in r.stdout
        j = json.loads(subprocess.run([qleap_bin, "info", "--json"], capture_output=True, text=True,
                                      timeout=120, env=env).stdout)
        assert any(f"127.0.0.1:{port} is already in use" in w for w in j["warnings"])
    # Free again: no port warning.
    r = subprocess.run([qleap_bin, "info", "--json"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, QLEAP_HOST=f"127.0.0.1:{port}"))
    assert not any("already in use" in w for w in json.loads(r.stdout)["warnings"])
