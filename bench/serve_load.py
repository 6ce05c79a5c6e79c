"""Aggregate generation throughput of `qleap serve` for N concurrent streaming chats (ollama client).

  python3 bench/serve_load.py --model smollm2 --models-dir DIR --concurrency 1 8 --tokens 64 -- -t 2

Starts build/qleap serve on a free port (extra server flags after --), runs each concurrency level
once with greedy sampling and prints tokens generated / wall time.
"""
import argparse
import concurrent.futures as cf
import pathlib
import subprocess
import sys
import time

import ollama

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("server_args", nargs="*")
    a = ap.parse_args()
    par = max(a.concurrency)
    proc = subprocess.Popen([str(ROOT / "build" / "qleap"), "serve", "--port", "0", "--models", a.models_dir,
                             "--parallel", str(par), *a.server_args], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
        url = f"http://127.0.0.1:{port}"
        opts = {"temperature": 0, "num_predict": a.tokens}
        ollama.Client(host=url).generate(model=a.model, prompt="warm up", options={"num_predict": 4})

        def one(i):
            n = 0
            for p in ollama.Client(host=url).chat(model=a.model, stream=True, options=opts,
                                                  messages=[{"role": "user", "content": f"Tell story {i}."}]):
                if p.done:
                    n = p.eval_count
            return n

        for c in a.concurrency:
            t0 = time.time()
            with cf.ThreadPoolExecutor(c) as ex:
                total = sum(ex.map(one, range(c)))
            dt = time.time() - t0
            print(f"concurrency {c:3d}: {total} tokens in {dt:.2f} s = {total / dt:.1f} tok/s aggregate")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
