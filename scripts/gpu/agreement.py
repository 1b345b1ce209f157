#!/usr/bin/env python3
"""Greedy agreement on a server, standard library only: each of N prompts alone, twice (the
same request must give the same tokens), then all N at once (batched); prints how many
batched replies equal their solo run, and the first differing character otherwise.
Usage: agreement.py BASE_URL MODEL N [MAX_TOKENS] [EOG_TOKEN_IDS,...]"""
import http.client
import json
import sys
import threading
import urllib.parse

base, model, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
max_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 128
banned = [t for t in (sys.argv[5].split(",") if len(sys.argv) > 5 else []) if t]
url = urllib.parse.urlparse(base)


def ask(i):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": f"Prompt {i}: " + "tell me more. " * (i % 7 + 1)}],
            "logit_bias": {t: -100 for t in banned}}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    return json.loads(conn.getresponse().read())["choices"][0]["message"]["content"]


solo = [ask(i) for i in range(n)]
repeat = [ask(i) for i in range(n)]
batched = [None] * n
threads = [threading.Thread(target=lambda i=i: batched.__setitem__(i, ask(i))) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()


def first_difference(a, b):
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


print(json.dumps({
    "prompts": n,
    "repeat_identical": sum(a == b for a, b in zip(solo, repeat)),
    "batched_identical": sum(a == b for a, b in zip(solo, batched)),
    "batched_first_difference_chars": [first_difference(a, b) for a, b in zip(solo, batched) if a != b],
    "reply_chars": [len(s) for s in solo][:4],
}))
