"""Load benchmark for `qleap serve`, with raw HTTP/1.1 sockets (no client library in the way).

storm (default): rounds of N clients opened at the same instant: most stream a chat to the end,
some hang up mid-stream, some send garbage. Reports per round: completed streams, 503s, resets
(connections the server reset or dropped without an answer: must be 0), other errors, p50 / p99
time to first token (queue wait included), aggregate generated tok/s, and the server's RSS
before / after (growth over the rounds would be a leak).

  python3 bench/serve_load.py --model smollm2 --models-dir DIR --clients 256 --rounds 3 --tokens 32 -- -t 2

throughput: N concurrent streaming chats at each concurrency level, aggregate tok/s.

  python3 bench/serve_load.py --mode throughput --model smollm2 --models-dir DIR --concurrency 1 4 8 -- -t 2

Starts build/qleap serve ($QLEAP_BIN overrides) on a free port (extra server flags after --).
"""
import argparse
import json
import os
import pathlib
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def threads_of(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return -1


def request(port, path, body):
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data


class Stream:
    """Reads an HTTP/1.1 response (chunked NDJSON or fixed) line by line from a socket."""

    def __init__(self, sock):
        self.sock, self.buf, self.status, self.chunked = sock, b"", None, False

    def _fill(self):
        b = self.sock.recv(65536)
        if not b:
            raise EOFError
        self.buf += b

    def head(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split()[1])
        self.chunked = any(l.lower() == b"transfer-encoding: chunked" for l in lines[1:])
        self.body = b""
        return self.status

    def _chunk(self):
        while b"\r\n" not in self.buf:
            self._fill()
        size, self.buf = self.buf.split(b"\r\n", 1)
        n = int(size.split(b";")[0], 16)
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data if n else None

    def lines(self):
        """Yields NDJSON lines until the end of the body."""
        pending = b""
        while True:
            if self.chunked:
                data = self._chunk()
            else:
                try:
                    self._fill()
                    data, self.buf = self.buf, b""
                except EOFError:
                    data = None
            if data is None:
                if pending.strip():
                    yield pending
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    yield line


GARBAGE = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"GET / HTTP/1.1\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{\"model\":",
]


def client(kind, port, body, start, out, rng):
    """kind: 'full', 'hangup' (closes after a few chunks) or 'garbage'."""
    r = {"kind": kind, "status": None, "error": None, "ttft": None, "tokens": 0, "done": False}
    s = socket.socket()
    s.settimeout(600)
    start.wait()
    t0 = time.monotonic()
    try:
        s.connect(("127.0.0.1", port))
        if kind == "garbage":
            g = rng.choice(GARBAGE)
            s.sendall(g)
            if g.endswith(b"{\"model\":"):
                s.shutdown(socket.SHUT_WR)  # a body shorter than announced
            st = Stream(s)
            r["status"] = st.head()
        else:
            s.sendall(request(port, "/api/chat", body))
            st = Stream(s)
            r["status"] = st.head()
            if r["status"] == 200:
                cut = rng.randint(2, 6) if kind == "hangup" else None
                n = 0
                for line in st.lines():
                    j = json.loads(line)
                    if "error" in j:
                        r["error"] = j["error"]
                        break
                    if not j.get("done"):
                        n += 1
                        if r["ttft"] is None:
                            r["ttft"] = time.monotonic() - t0
                        if cut and n >= cut:
                            break
                    else:
                        r["done"], r["tokens"] = True, j.get("eval_count", 0)
    except (ConnectionResetError, BrokenPipeError, EOFError) as e:
        r["error"] = "reset" if not isinstance(e, EOFError) else "closed without an answer"
    except OSError as e:
        r["error"] = type(e).__name__
    finally:
        s.close()
    out.append(r)


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def storm(a, port, pid):
    rng = random.Random(1)
    body_of = lambda i: {"model": a.model, "stream": True,  # noqa: E731
                         "messages": [{"role": "user", "content": f"Tell story number {i}."}],
                         "options": {"temperature": 0.8, "seed": i, "num_predict": a.tokens}}
    print(f"storm: {a.clients} clients at once per round ({a.hangup:.0%} hang up mid-stream, "
          f"{a.garbage:.0%} send garbage), {a.tokens} tokens per chat")
    rss0 = rss_mib(pid)
    print(f"server RSS before: {rss0:.1f} MiB")
    for rnd in range(1, a.rounds + 1):
        kinds = ["garbage"] * int(a.clients * a.garbage) + ["hangup"] * int(a.clients * a.hangup)
        kinds += ["full"] * (a.clients - len(kinds))
        rng.shuffle(kinds)
        start = threading.Barrier(a.clients)
        out = []
        threads = [threading.Thread(target=client, args=(k, port, body_of(i), start, out, random.Random(i)))
                   for i, k in enumerate(kinds)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        full = [r for r in out if r["kind"] == "full"]
        completed = sum(1 for r in full if r["done"])
        s503 = sum(1 for r in out if r["status"] == 503)
        resets = sum(1 for r in out if r["error"] in ("reset", "closed without an answer"))
        garbage_ok = sum(1 for r in out if r["kind"] == "garbage" and r["status"] and 400 <= r["status"] < 600)
        other = [r for r in out if r["error"] and r["error"] not in ("reset", "closed without an answer")]
        ttft = [r["ttft"] for r in out if r["ttft"] is not None]
        tokens = sum(r["tokens"] for r in full)
        time.sleep(1.0)  # let cancelled slots drain before reading the RSS
        print(f"round {rnd}: {completed}/{len(full)} streams completed, {s503} x 503, resets {resets}, "
              f"garbage answered 4xx {garbage_ok}/{kinds.count('garbage')}, other errors {len(other)}; "
              f"TTFT p50 {pct(ttft, 50):.2f} s p99 {pct(ttft, 99):.2f} s; {tokens} tokens in {wall:.1f} s = "
              f"{tokens / wall:.1f} tok/s aggregate; {threads_of(pid)} server threads; RSS {rss_mib(pid):.1f} MiB")
        for r in other[:3]:
            print("   e.g.", r)
    print(f"server RSS after {a.rounds} rounds: {rss_mib(pid):.1f} MiB (before: {rss0:.1f} MiB)")


def throughput(a, port):
    def one(i, out):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request(port, "/api/chat", {"model": a.model, "stream": True, "options": {
            "temperature": 0, "num_predict": a.tokens}, "messages": [{"role": "user", "content": f"Tell story {i}."}]}))
        st = Stream(s)
        st.head()
        for line in st.lines():
            j = json.loads(line)
            if j.get("done"):
                out.append(j.get("eval_count", 0))
        s.close()

    for c in a.concurrency:
        out = []
        threads = [threading.Thread(target=one, args=(i, out)) for i in range(c)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dt = time.monotonic() - t0
        print(f"concurrency {c:3d}: {sum(out)} tokens in {dt:.2f} s = {sum(out) / dt:.1f} tok/s aggregate")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["storm", "throughput"], default="storm")
    ap.add_argument("--model", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hangup", type=float, default=0.15, help="share of clients that hang up mid-stream")
    ap.add_argument("--garbage", type=float, default=0.10, help="share of clients that send garbage")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--server-log", action="store_true", help="let the server write to stderr")
    ap.add_argument("server_args", nargs="*")
    a = ap.parse_args()
    args = [os.environ.get("QLEAP_BIN", str(ROOT / "build" / "qleap")), "serve", "--port", "0", "--models", a.models_dir, *a.server_args]
    if a.mode == "throughput" and "--parallel" not in a.server_args:
        args += ["--parallel", str(max(a.concurrency))]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=None if a.server_log else subprocess.DEVNULL,
                            text=True)
    try:
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
        # Load the model first so that the rounds measure serving.
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request(port, "/api/generate", {"model": a.model, "prompt": "warm up", "stream": False,
                                                  "options": {"num_predict": 4}}))
        st = Stream(s)
        if st.head() != 200:
            sys.exit(f"warm-up failed with HTTP {st.status}")
        s.close()
        print(f"qleap serve {' '.join(a.server_args)}; model {a.model}; CPU: {cpu_name()} ({os.cpu_count()} threads)")
        storm(a, port, proc.pid) if a.mode == "storm" else throughput(a, port)
    finally:
        proc.terminate()
        proc.wait()


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
