"""Start `hearth serve` (or a peer, llama.cpp's `llama-server`) for a benchmark script and return
its OpenAI client."""
import collections
import os
import pathlib
import re
import socket
import subprocess
import threading
import time

import httpx
from openai import OpenAI

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def serve(model=DEFAULT_MODEL, threads=2, ctx_size=2048, parallel=1, extra=()):
    """(process, base_url, client) for a server on a free port, model loaded, id "m"."""
    process = subprocess.Popen(
        [os.environ.get("HEARTH_BIN", str(ROOT / "target/release/hearth")), "serve", "--port", "0", "--threads", str(threads),
         "--ctx-size", str(ctx_size), "--parallel", str(parallel), "--preload",
         "--model", f"m={model}", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, ready = [], threading.Event()

    log = open(os.environ["HEARTH_BENCH_LOG"], "w") if os.environ.get("HEARTH_BENCH_LOG") else None

    def read():
        for line in process.stderr:
            if log:  # HEARTH_BENCH_LOG=path keeps the server's log (e.g. with RUST_LOG=debug)
                log.write(line)
                log.flush()
            match = re.search(r"listening on (http://\S+)", line)
            if match and not ready.is_set():
                url.append(match.group(1) + "/v1")
                ready.set()
    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(120):
        process.kill()
        raise RuntimeError("hearth did not start")
    return process, url[0], OpenAI(base_url=url[0], api_key="unused")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_llama(binary, model=DEFAULT_MODEL, threads=2, parallel=1, ctx_size=2048, extra=()):
    """(process, base_url, client) for llama.cpp's `llama-server`, model id "m".

    `ctx_size` is per slot, as hearth's `--ctx-size`; llama-server's `-c` is the total across
    its `-np` slots (with an explicit `-np` its KV is not unified), so it gets ctx_size * parallel.
    Slot prompt caches stay on (its default); `--cache-reuse 0` turns off KV shifting reuse.
    Waits for `GET /health` to answer 200."""
    port = free_port()
    process = subprocess.Popen(
        [str(binary), "-m", str(model), "--alias", "m", "--host", "127.0.0.1",
         "--port", str(port), "-t", str(threads), "-tb", str(threads), "-np", str(parallel),
         "-c", str(ctx_size * parallel), "--cache-reuse", "0", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = collections.deque(maxlen=40)
    threading.Thread(target=lambda: log.extend(process.stderr), daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("llama-server exited:\n" + "".join(log))
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return process, base + "/v1", OpenAI(base_url=base + "/v1", api_key="unused")
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("llama-server did not become healthy:\n" + "".join(log))
