"""Starts `qleap serve` on a free port over a temporary model store, for the server tests."""
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]


def smollm_path():
    """SmolLM2-135M Q4_1, which scripts/setup.sh downloads: found only through $QLEAP_DEFAULT_MODEL
    (scripts/test.sh sets it), so the tests read nothing outside the checkout on their own."""
    p = os.environ.get("QLEAP_DEFAULT_MODEL", "")
    return p if p and os.path.exists(p) else None


class Server:
    """A running server; `url` is http://127.0.0.1:<port>."""

    def __init__(self, qleap_bin, test_models, extra_args=(), with_smollm=False, extra_models=()):
        self.dir = tempfile.mkdtemp(prefix="qleap_serve_")
        self.models = pathlib.Path(self.dir) / "models"
        self.models.mkdir()
        shutil.copy(test_models / "stories260K.gguf", self.models / "stories260K.gguf")
        if with_smollm and smollm_path():
            os.symlink(smollm_path(), self.models / "smollm2.gguf")
        for m in extra_models:  # served under their file name without .gguf
            os.symlink(m, self.models / pathlib.Path(m).name)
        env = dict(os.environ)
        env.pop("QLEAP_HOST", None)
        self.log = open(pathlib.Path(self.dir) / "server.log", "w+")
        # One compute thread: the tests share a small machine with other jobs, and a spinning
        # worker pool on an oversubscribed CPU only slows every step down.
        args = [qleap_bin, "serve", "--port", "0", "--models", str(self.models), "-t", "1", *extra_args]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"server did not start: {line!r}\n{self.read_log()}")
        self.port = int(line.strip().rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.wait_ready()

    def wait_ready(self, timeout=10):
        end = time.time() + timeout
        while time.time() < end:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server not ready")

    def read_log(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode
