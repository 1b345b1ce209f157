"""Start `hearth serve` for a benchmark script and return its OpenAI client."""
import pathlib
import re
import subprocess
import threading

from openai import OpenAI

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def serve(model=DEFAULT_MODEL, threads=2, ctx_size=2048, parallel=1, extra=()):
    """(process, base_url, client) for a server on a free port, model loaded, id "m"."""
    process = subprocess.Popen(
        [str(ROOT / "target/release/hearth"), "serve", "--port", "0", "--threads", str(threads),
         "--ctx-size", str(ctx_size), "--parallel", str(parallel), "--preload",
         "--model", f"m={model}", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, ready = [], threading.Event()

    def read():
        for line in process.stderr:
            match = re.search(r"listening on (http://\S+)", line)
            if match and not ready.is_set():
                url.append(match.group(1) + "/v1")
                ready.set()
    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(120):
        process.kill()
        raise RuntimeError("hearth did not start")
    return process, url[0], OpenAI(base_url=url[0], api_key="unused")
