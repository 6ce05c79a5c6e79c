"""A local stand-in for the Hugging Face Hub's model API, for the search and pull tests (no internet
at test time). It answers the shapes qleap uses:

  GET /api/models?search=Q&filter=gguf&sort=downloads&direction=-1&limit=N
      -> [{"_id", "id", "modelId", "likes", "downloads", "tags", "pipeline_tag", "library_name",
           "createdAt"}, ...]   (ids containing Q, case-insensitive, most downloads first)
  GET /api/models/OWNER/NAME/tree/main?recursive=true
      -> [{"type": "file"|"directory", "oid", "size", "path", "lfs": {"oid", "size", "pointerSize"}}]
  GET /OWNER/NAME/resolve/main/PATH   (with Range: bytes=a-b -> 206 and Content-Range)

A file is either real bytes, or a "virtual" file: a header followed by zeros up to a declared size,
which stands for a model far larger than this machine. Every request is recorded (path and Range
header) so that tests can check what the server asked for. `delay` slows file downloads down so
that pull progress is visible.
"""
import hashlib
import http.server
import json
import re
import threading
import time
import urllib.parse


class VirtualFile:
    def __init__(self, head: bytes, size: int):
        assert size >= len(head)
        self.head, self.size = head, size

    def read(self, a, b):  # bytes [a, b)
        out = self.head[a:b] if a < len(self.head) else b""
        return out + b"\0" * max(0, (b - a) - len(out))


class StandInHub:
    def __init__(self, repos, downloads=None, delay=0.0):
        """repos: {"owner/name": {"path": bytes | VirtualFile}}; downloads: {"owner/name": int}."""
        self.repos = repos
        self.downloads = downloads or {}
        self.delay = delay
        self.requests = []  # (path with query, Range header or None)
        # "ok"; "error": 500 on search; "garbage": search answers non-JSON; "weird": JSON of the
        # wrong shapes (ids that are numbers, entries that are not objects, sizes that are strings).
        self.mode = "ok"
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def send(self, status, body, ctype="application/json", extra=None):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                hub.requests.append((self.path, self.headers.get("Range")))
                url = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(url.query)
                path = urllib.parse.unquote(url.path)
                if path == "/api/models":
                    return self.search(q)
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/main", path)
                if m:
                    return self.tree(m.group(1))
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/main/(.+)", path)
                if m:
                    return self.file(m.group(1), m.group(2))
                self.send(404, json.dumps({"error": "Not Found"}).encode())

            do_HEAD = do_GET

            def search(self, q):
                if hub.mode == "error":
                    return self.send(500, b'{"error":"Internal Error"}')
                if hub.mode == "garbage":
                    return self.send(200, b"<html>captive portal</html>", "text/html")
                if hub.mode == "weird":
                    return self.send(200, json.dumps([{"id": 5}, "text", None, [], {"modelId": "odd/tree"},
                                                      {"id": "odd/notalist"}, {"id": "../../etc"}]).encode())
                needle = q.get("search", [""])[0].lower()
                limit = int(q.get("limit", ["20"])[0])
                ids = [r for r in hub.repos if needle in r.lower()]
                ids.sort(key=lambda r: -hub.downloads.get(r, 0))
                out = [{"_id": hashlib.sha1(r.encode()).hexdigest()[:24], "id": r, "modelId": r,
                        "likes": 7, "downloads": hub.downloads.get(r, 0), "private": False,
                        "tags": ["gguf", "text-generation"], "pipeline_tag": "text-generation",
                        "library_name": "gguf", "createdAt": "2025-01-02T03:04:05.000Z"} for r in ids[:limit]]
                self.send(200, json.dumps(out).encode())

            def tree(self, repo):
                if hub.mode == "weird":
                    if repo == "odd/tree":
                        return self.send(200, json.dumps([5, None, {"type": "file", "path": 7}, {"type": ["file"]},
                                                          {"type": "file", "path": "a.gguf", "size": "big"},
                                                          {"type": "file", "path": "b.gguf", "lfs": {"size": -1}}]).encode())
                    return self.send(200, b'{"error": "not a list"}')
                if repo not in hub.repos:
                    return self.send(404, b'{"error":"Repository not found"}')
                out, dirs = [], set()
                for p, f in hub.repos[repo].items():
                    size = f.size if isinstance(f, VirtualFile) else len(f)
                    if "/" in p:
                        dirs.add(p.rsplit("/", 1)[0])
                    e = {"type": "file", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": size, "path": p}
                    if p.endswith(".gguf"):
                        e["lfs"] = {"oid": hashlib.sha256(p.encode()).hexdigest(), "size": size, "pointerSize": 135}
                    out.append(e)
                for d in sorted(dirs):
                    out.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": d})
                self.send(200, json.dumps(out).encode())

            def file(self, repo, path):
                f = hub.repos.get(repo, {}).get(path)
                if f is None:
                    return self.send(404, b'{"error":"Entry not found"}')
                size = f.size if isinstance(f, VirtualFile) else len(f)
                rng = self.headers.get("Range")
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
                if m:
                    a = int(m.group(1))
                    b = min(size, int(m.group(2)) + 1 if m.group(2) else size)
                    data = f.read(a, b) if isinstance(f, VirtualFile) else f[a:b]
                    return self.send(206, data, "application/octet-stream",
                                     {"Content-Range": f"bytes {a}-{b - 1}/{size}"})
                if isinstance(f, VirtualFile):  # never sent whole: it stands for terabytes
                    return self.send(403, b'{"error":"too large for the stand-in"}')
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                for i in range(0, size, 64 << 10):
                    self.wfile.write(f[i:i + (64 << 10)])
                    self.wfile.flush()
                    if hub.delay:
                        time.sleep(hub.delay)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def giant_gguf_header(path):
    """The header (metadata + tensor table, no data) of a llama-shaped model of about 7 TiB in
    F32, written with the gguf package: far more than any test machine has. Returns (header bytes,
    full file size)."""
    import gguf
    import numpy as np

    n_layers, n_embd, n_ff, n_head, n_kv, vocab = 128, 32768, 131072, 256, 8, 32000
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("Giant test model")
    w.add_block_count(n_layers)
    w.add_context_length(8192)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_vocab_size(vocab)
    hd = n_embd // n_head
    shapes = {"token_embd.weight": (vocab, n_embd), "output_norm.weight": (n_embd,), "output.weight": (vocab, n_embd)}
    for i in range(n_layers):
        shapes.update({
            f"blk.{i}.attn_norm.weight": (n_embd,), f"blk.{i}.attn_q.weight": (n_embd, n_embd),
            f"blk.{i}.attn_k.weight": (n_kv * hd, n_embd), f"blk.{i}.attn_v.weight": (n_kv * hd, n_embd),
            f"blk.{i}.attn_output.weight": (n_embd, n_embd), f"blk.{i}.ffn_norm.weight": (n_embd,),
            f"blk.{i}.ffn_gate.weight": (n_ff, n_embd), f"blk.{i}.ffn_up.weight": (n_ff, n_embd),
            f"blk.{i}.ffn_down.weight": (n_embd, n_ff)})
    total = 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * 4
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes)
        total += (nbytes + 31) // 32 * 32
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    head = path.read_bytes()
    data_offset = (len(head) + 31) // 32 * 32
    return head, data_offset + total


def shapeless_gguf_header(path):
    """A valid GGUF header (one small tensor) of a "llama" without its hyper-parameters: the file
    parses, but the planner cannot size the model. Returns the header bytes."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor_info("token_embd.weight", (4, 8), np.dtype(np.float32), 4 * 8 * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path.read_bytes()
