"""`qleap serve` on the wire, with raw sockets: what hostile or broken clients send. Deep JSON
nesting, many simultaneous connections, idle and slow sockets, Content-Length edge cases,
malformed framing, pipelining, Origin / Host checks (cross-site use, DNS rebinding), the API key
and local-path pulls."""
import json
import os
import socket
import threading
import time

import httpx
import pytest

from server_util import Server

HOST = b"Host: 127.0.0.1\r\n"


@pytest.fixture(scope="module")
def server(qleap_bin, test_models):
    s = Server(qleap_bin, test_models, ["--parallel", "2", "--max-queue", "8"])
    yield s
    assert s.stop() == 0


def exchange(port, data, timeout=5.0, shut=False):
    """Sends data, reads until the server closes (or timeout). Returns (seconds, bytes, how it ended)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    t0 = time.time()
    s.sendall(data)
    if shut:
        s.shutdown(socket.SHUT_WR)
    out, end = b"", "closed"
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except socket.timeout:
        end = "timeout"
    except ConnectionResetError:
        end = "reset"
    s.close()
    return time.time() - t0, out, end


def status_of(resp):
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/1.1 ") else None


def post(path, body, extra=b""):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\n".encode() + HOST + extra + b"Connection: close\r\n" +
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data)


def deep(levels):
    return "[" * levels + "]" * levels


def test_deep_nesting_is_refused(server):
    """100,000 levels in the fields the server copies or walks: a 400, and the server lives on."""
    d = deep(100_000)
    bodies = [
        ("/api/chat", '{"model":"stories260K","messages":[{"role":"user","content":"x","extra":%s}]}' % d),
        ("/api/chat", '{"model":"stories260K","messages":[],"options":{"stop":%s}}' % d),
        ("/api/generate", '{"model":"stories260K","prompt":"x","format":{"type":"object","properties":%s}}' % d),
        ("/api/chat", '{"model":"stories260K","messages":[{"role":"user","content":"x"}],"tools":%s}' % d),
        ("/v1/chat/completions", '{"model":"stories260K","messages":%s}' % d),
        ("/v1/embeddings", '{"model":"stories260K","input":%s}' % d),
    ]
    for path, body in bodies:
        dt, out, end = exchange(server.port, post(path, body.encode()))
        assert status_of(out) == 400, (path, out[:200])
        assert b"nested too deeply" in out
    # Just under the limit is an ordinary (wrong-typed) request.
    ok = '{"model":"stories260K","prompt":"x","stream":false,"options":{"num_predict":1},"x":%s}' % deep(500)
    assert status_of(exchange(server.port, post("/api/generate", ok.encode()))[1]) == 200
    assert httpx.get(server.url + "/health").status_code == 200


def test_many_simultaneous_connections(server):
    """96 streaming chats opened at the same instant: each is answered (200 or 503), none reset."""
    n = 96
    barrier = threading.Barrier(n)
    results = [None] * n
    body = {"model": "stories260K", "messages": [{"role": "user", "content": "Tell a story"}],
            "options": {"num_predict": 8}}
    data = post("/api/chat", body)

    def one(i):
        s = socket.socket()
        s.settimeout(60)
        barrier.wait()
        try:
            s.connect(("127.0.0.1", server.port))
            s.sendall(data)
            out = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                out += b
            results[i] = status_of(out)
        except OSError as e:
            results[i] = type(e).__name__
        finally:
            s.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r in (200, 503) for r in results), results
    assert results.count(200) >= 10  # 2 slots + 8 queue places at least


@pytest.fixture(scope="module")
def small_server(qleap_bin, test_models):
    s = Server(qleap_bin, test_models, ["--parallel", "1", "--max-queue", "2"])
    yield s
    assert s.stop() == 0


def test_idle_and_slow_sockets_do_not_starve_health(small_server):
    s = small_server
    idle = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(40)]
    slow = []
    for _ in range(20):
        c = socket.create_connection(("127.0.0.1", s.port))
        c.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")  # never finished
        slow.append(c)
    body = []
    for _ in range(10):  # bodies that never arrive
        c = socket.create_connection(("127.0.0.1", s.port))
        c.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{")
        body.append(c)
    try:
        t0 = time.time()
        r = httpx.get(s.url + "/health", timeout=5)
        assert r.status_code == 200 and time.time() - t0 < 1.0
        r = httpx.post(s.url + "/api/generate", json={"model": "stories260K", "prompt": "Hi", "stream": False,
                                                      "options": {"num_predict": 2}}, timeout=30)
        assert r.status_code == 200 and r.json()["done"]
    finally:
        for c in idle + slow + body:
            c.close()


def test_content_length_edge_cases(server):
    p = server.port
    cases = [
        (b"Content-Length: -1\r\n\r\n", 400, False),
        (b"Content-Length: 99999999999999999999\r\n\r\n", 413, False),
        (b"Content-Length: 1x\r\n\r\n{", 400, False),
        (b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n{}", 400, False),
        (b"Content-Length: 100\r\n\r\n{}", 400, True),  # the client ends its side: answered at once
        (b"Content-Length: 9437184\r\n\r\n", 413, False),  # over --max-body: answered before the body
        (b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}", 400, False),
    ]
    for extra, want, shut in cases:
        dt, out, end = exchange(p, b"POST /api/chat HTTP/1.1\r\n" + HOST + extra, shut=shut)
        assert status_of(out) == want, (extra, out[:200])
        assert b"Connection: close" in out and end == "closed" and dt < 2, (extra, dt, end)
    # A body shorter than announced, with the connection left open: 400 after the body timeout.
    dt, out, end = exchange(p, b"POST /api/chat HTTP/1.1\r\n" + HOST + b"Content-Length: 100\r\n\r\n{}", timeout=15)
    assert status_of(out) == 400 and end == "closed" and dt < 8, (dt, out[:200])


def test_malformed_framing_gets_400_and_close(server):
    for data in [b"hello\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00", b"GET / HTTP/1.1\r\n\r\n",
                 b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
                 b"GET / HTTP/1.1\r\nBad Header: x\r\nHost: a\r\n\r\n", b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
                 b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
                 b"POST /api/chat HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                 b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n"]:
        dt, out, end = exchange(server.port, data)
        st = status_of(out)
        assert st is not None and 400 <= st < 600, (data[:40], out[:200])
        assert end == "closed" and dt < 2, (data[:40], dt, end)
    # A chunked body is accepted.
    body = json.dumps({"model": "stories260K"}).encode()
    chunked = (b"POST /api/show HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
               f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    assert status_of(exchange(server.port, chunked)[1]) == 200


def test_pipelined_requests_answered_in_order(server):
    show = json.dumps({"model": "stories260K"}).encode()
    gen = json.dumps({"model": "stories260K", "prompt": "Hi", "stream": False,
                      "options": {"num_predict": 2}}).encode()
    data = (b"GET /api/version HTTP/1.1\r\n" + HOST + b"\r\n" +
            b"POST /api/show HTTP/1.1\r\n" + HOST + f"Content-Length: {len(show)}\r\n\r\n".encode() + show +
            b"POST /api/generate HTTP/1.1\r\n" + HOST + f"Content-Length: {len(gen)}\r\n\r\n".encode() + gen +
            b"GET /health HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n")
    dt, out, end = exchange(server.port, data, timeout=30)
    assert end == "closed"
    parts = out.split(b"HTTP/1.1 ")[1:]
    assert [int(p[:3]) for p in parts] == [200, 200, 200, 200], out[:500]
    assert b'"version"' in parts[0] and b'"model_info"' in parts[1] and b'"done":true' in parts[2] \
        and b'"status":"ok"' in parts[3]


def test_cross_origin_and_dns_rebinding_refused(server):
    u = server.url
    # A page on another site: the browser sends its Origin; the copy must not happen.
    r = httpx.post(u + "/api/copy", content=json.dumps({"source": "stories260K", "destination": "stolen"}),
                   headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
    assert r.status_code == 403 and "origin" in r.json()["error"]
    assert "stolen:latest" not in [m["name"] for m in httpx.get(u + "/api/tags").json()["models"]]
    r = httpx.request("DELETE", u + "/api/delete", content=json.dumps({"model": "stories260K"}),
                      headers={"Origin": "null"})
    assert r.status_code == 403
    r = httpx.options(u + "/api/chat", headers={"Origin": "http://evil.example",
                                                "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    # Local tools and pages are served, with CORS headers.
    for origin in ("http://localhost:3000", "http://127.0.0.1:8080", "app://obsidian.md", "tauri://localhost",
                   "file://", f"http://127.0.0.1:{server.port}"):
        r = httpx.get(u + "/api/tags", headers={"Origin": origin})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin, origin
    r = httpx.options(u + "/v1/chat/completions", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "x-stainless-os" in r.headers["access-control-allow-headers"]
    assert "POST" in r.headers["access-control-allow-methods"]
    # DNS rebinding: the attacker's name as Host.
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.nip.io"):
        r = httpx.get(u + "/api/tags", headers={"Host": host})
        assert r.status_code == 403 and "host" in r.json()["error"], host
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", f"[::1]:{server.port}", "10.1.2.3"):
        assert httpx.get(u + "/api/tags", headers={"Host": host}).status_code == 200, host
    r = httpx.post(u + "/v1/chat/completions", json={}, headers={"Host": "evil.example"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


def test_local_pull_needs_the_flag(server, qleap_bin, test_models, tmp_path):
    path = str(test_models / "stories260K.gguf")
    r = httpx.post(server.url + "/api/pull", json={"model": path, "stream": False})
    assert r.status_code == 403 and "--allow-local-pull" in r.json()["error"]
    s = Server(qleap_bin, test_models, ["--allow-local-pull"])
    try:
        src = tmp_path / "pulled.gguf"
        src.write_bytes((test_models / "stories260K.gguf").read_bytes())
        for _ in range(3):  # repeated pulls leave no partial file behind
            r = httpx.post(s.url + "/api/pull", json={"model": str(src), "stream": False}, timeout=30)
            assert r.status_code == 200 and r.json()["status"] == "success"
        assert sorted(os.listdir(s.models)) == ["pulled.gguf", "stories260K.gguf"]
    finally:
        assert s.stop() == 0


def test_origins_env_and_api_key(qleap_bin, test_models, monkeypatch):
    monkeypatch.setenv("QLEAP_ORIGINS", "https://myapp.example, http://*.corp.example")
    monkeypatch.setenv("QLEAP_API_KEY", "s3cret-key")
    monkeypatch.setenv("QLEAP_ALLOWED_HOSTS", "qleap.internal")
    s = Server(qleap_bin, test_models, [])
    try:
        u = s.url
        auth = {"Authorization": "Bearer s3cret-key"}
        assert httpx.get(u + "/api/tags").status_code == 401
        r = httpx.get(u + "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(u + "/api/tags", headers=auth).status_code == 200
        assert httpx.get(u + "/health").status_code == 200  # liveness probes need no key
        for origin in ("https://myapp.example", "http://tools.corp.example"):
            r = httpx.get(u + "/api/tags", headers={**auth, "Origin": origin})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        assert httpx.get(u + "/api/tags", headers={**auth, "Origin": "https://other.example"}).status_code == 403
        assert httpx.get(u + "/api/tags", headers={**auth, "Host": "qleap.internal"}).status_code == 200
        openai = pytest.importorskip("openai")
        c = openai.OpenAI(base_url=u + "/v1", api_key="s3cret-key", max_retries=0)
        assert "stories260K:latest" in [m.id for m in c.models.list().data]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=u + "/v1", api_key="nope", max_retries=0).models.list()
        ollama = pytest.importorskip("ollama")
        assert ollama.Client(host=u, headers=auth).list().models
    finally:
        assert s.stop() == 0


def test_connection_limit_evicts_idle_then_refuses(qleap_bin, test_models):
    s = Server(qleap_bin, test_models, ["--max-connections", "16", "--parallel", "1", "--max-queue", "32",
                                        "--ctx", "2048"])
    try:
        # Idle sockets beyond the limit: the oldest are closed to make room, /health still answers.
        idle = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(40)]
        time.sleep(0.2)
        assert httpx.get(s.url + "/health", timeout=5).status_code == 200
        m = httpx.get(s.url + "/metrics").text
        evicted = [l for l in m.splitlines() if l.startswith("qleap_http_connections_evicted_total ")]
        assert float(evicted[0].split()[1]) >= 24
        for c in idle:
            c.close()
        # Every connection running a request: a new one is refused with 503 at once.
        body = json.dumps({"model": "stories260K", "prompt": "Once upon a time", "stream": True,
                           "options": {"num_predict": 100000}}).encode()
        busy = []
        for _ in range(16):
            c = socket.create_connection(("127.0.0.1", s.port))
            c.sendall(b"POST /api/generate HTTP/1.1\r\n" + HOST + f"Content-Length: {len(body)}\r\n\r\n".encode()
                      + body)
            busy.append(c)
        # No pause: requests already sent but not yet read by the server count as busy, not idle.
        dt, out, end = exchange(s.port, b"GET /health HTTP/1.1\r\n" + HOST + b"\r\n")
        assert status_of(out) == 503 and end == "closed" and dt < 2, out[:200]
        for c in busy:
            c.close()
        end = time.time() + 10
        while time.time() < end:  # the slots free up once the clients are gone
            try:
                if httpx.get(s.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert httpx.get(s.url + "/health", timeout=5).status_code == 200
    finally:
        assert s.stop() == 0
