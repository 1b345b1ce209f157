#!/usr/bin/env python3
"""Two busy models on one machine: wall time with and without the CPU gate.

Starts `hearth serve` with the default model under two ids, then keeps both busy at once
(`streams` concurrent requests each, fixed token counts) and prints a table of wall time
and aggregate decode tokens/s per configuration. Run on a quiet machine:

    python3 scripts/bench-cpu-gate.py [--threads 2] [--tokens 128] [--streams 2]
"""

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target/release/hearth")
MODEL = os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf")


def start(threads, gate):
    args = [BINARY, "serve", "--port", "0", "--preload", "--parallel", "4",
            "--ctx-size", "1024", "--max-loaded-models", "2", "--cpu-gate", gate,
            "--model", f"a={MODEL}", "--model", f"b={MODEL}"]
    if threads:
        args += ["--threads", str(threads)]
    env = dict(os.environ, HEARTH_LOG="hearth=info",
               HEARTH_STATE_DIR=f"/tmp/hearth-bench-gate-{os.getpid()}")
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return proc, m.group(1)
    raise SystemExit("server did not start")


def generate(base, model, tokens):
    body = {"model": model, "prompt": "The history of bread begins", "max_tokens": tokens,
            "temperature": 0.8, "seed": 1, "logit_bias": {"0": -100, "1": -100, "2": -100}}
    req = urllib.request.Request(base + "/v1/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)["usage"]["completion_tokens"]


def one_model(base, tokens, streams):
    """Only model a busy: what the gate must not cost."""
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        total = sum(pool.map(lambda _: generate(base, "a", tokens), range(streams)))
    return total / (time.monotonic() - started)


def run(base, tokens, streams):
    jobs = [m for m in ("a", "b") for _ in range(streams)]
    generate(base, "a", 4), generate(base, "b", 4)  # warm both workers
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        total = sum(pool.map(lambda m: generate(base, m, tokens), jobs))
    return time.monotonic() - started, total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=2)
    a = parser.parse_args()
    rows = []
    for threads, gate in [(a.threads, "off"), (a.threads, "on"), (1, "off")]:
        proc, base = start(threads, gate)
        try:
            wall, total = run(base, a.tokens, a.streams)
            single = one_model(base, a.tokens, 2 * a.streams)
        finally:
            proc.terminate()
            proc.wait()
        rows.append((threads, gate, wall, total / wall, single))
    print(f"two models busy, {a.streams} streams each, {a.tokens} tokens per request, "
          f"{os.cpu_count()} CPUs")
    print("| threads/worker | CPU gate | both busy: wall s | both busy: tok/s | one busy: tok/s |")
    print("|---|---|---|---|---|")
    for threads, gate, wall, rate, single in rows:
        print(f"| {threads} | {gate} | {wall:.1f} | {rate:.0f} | {single:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
