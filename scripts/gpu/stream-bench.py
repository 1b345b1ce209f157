#!/usr/bin/env python3
"""Streams at once against an OpenAI-compatible server, standard library only (the GPU machine
has no httpx): aggregate decode tok/s and median time to first token.
Usage: stream-bench.py BASE_URL MODEL STREAMS [MAX_TOKENS] [EOG_TOKEN_IDS,...] [PROMPTS.json]
End-of-generation tokens are banned with logit_bias, so every stream runs to MAX_TOKENS
(random-weight models would otherwise stop anywhere). PROMPTS.json, a list of message lists:
stream i sends the (i mod n)-th (scripts/gpu/pack.sh writes the shared-system-prompt chats of
scripts/bench-peer-cache.py's workload b)."""
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

base, model, streams = sys.argv[1], sys.argv[2], int(sys.argv[3])
max_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 128
banned = [t for t in (sys.argv[5].split(",") if len(sys.argv) > 5 else []) if t]
prompts = json.load(open(sys.argv[6])) if len(sys.argv) > 6 else None
url = urllib.parse.urlparse(base)


def one(i, results):
    try:
        stream(i, results)
    except Exception as e:  # a killed worker ends streams mid-way: count, don't crash
        results[i] = (None, 0.0, 0, repr(e))


def stream(i, results):
    body = {
        "model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
        "messages": prompts[i % len(prompts)] if prompts else
        [{"role": "user", "content": f"Stream {i}: write a long story about the sea."}],
        "logit_bias": {t: -100 for t in banned},
    }
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    first, chunks = None, 0
    for line in response:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        delta = json.loads(line[6:])["choices"]
        if delta and delta[0].get("delta", {}).get("content"):
            chunks += 1
            if first is None:
                first = time.perf_counter() - started
    status = None if response.status == 200 else f"HTTP {response.status}"
    results[i] = (first, time.perf_counter() - started, chunks, status)


results = [None] * streams
threads = [threading.Thread(target=one, args=(i, results)) for i in range(streams)]
t0 = time.perf_counter()
for t in threads:
    t.start()
for t in threads:
    t.join()
wall = time.perf_counter() - t0
# Each content chunk is one token (both servers stream a token per chunk).
tokens = sum(r[2] for r in results)
firsts = [r[0] for r in results if r[0] is not None]
ttft = statistics.median(firsts) if firsts else float("nan")
errors = [r[3] for r in results if r[3]]
print(json.dumps({"streams": streams, "tokens": tokens, "wall_s": round(wall, 2),
                  "aggregate_tok_s": round(tokens / wall, 1), "median_ttft_ms": round(ttft * 1000, 1),
                  "errors": errors[:3], "failed": len(errors)}))
