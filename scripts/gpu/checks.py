#!/usr/bin/env python3
"""Structured output and stop strings on a GPU behave as on the CPU (standard library only).
Usage: checks.py BASE_URL MODEL
Random-weight models write random tokens, which is what makes these checks bite: a JSON
schema must still come out as a conforming document (the grammar masks every token), and a
stop string that random text soon contains must end the reply before it. Each check runs
alone and then beside 15 concurrent copies of itself (batched on the GPU); prints one line
per check and exits non-zero if any fails."""
import json
import sys
import threading
import urllib.request

base, model = sys.argv[1].rstrip("/"), sys.argv[2]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12},
                   "count": {"type": "integer"},
                   "tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
                            "maxItems": 3}},
    "required": ["name", "count", "tags"],
    "additionalProperties": False,
}


def post(path, body):
    request = urllib.request.Request(base + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


def structured(i):
    reply = post("/v1/chat/completions", {
        "model": model, "max_tokens": 300, "temperature": 0.8, "seed": i,
        "messages": [{"role": "user", "content": f"Describe item {i} as JSON."}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "item", "schema": SCHEMA, "strict": True}}})
    choice = reply["choices"][0]
    doc = json.loads(choice["message"]["content"])
    ok = (choice["finish_reason"] == "stop" and set(doc) == {"name", "count", "tags"}
          and isinstance(doc["name"], str) and len(doc["name"]) <= 12
          and isinstance(doc["count"], int) and isinstance(doc["tags"], list)
          and len(doc["tags"]) <= 3 and all(isinstance(t, str) and len(t) <= 8 for t in doc["tags"]))
    return ok, choice["finish_reason"], choice["message"]["content"][:80]


def stopped(i):
    reply = post("/v1/completions", {
        "model": model, "prompt": f"Story {i}:", "max_tokens": 200, "temperature": 0.8,
        "seed": i, "stop": ["e", "E"]})
    choice = reply["choices"][0]
    text = choice["text"]
    ok = choice["finish_reason"] == "stop" and "e" not in text and "E" not in text
    return ok, choice["finish_reason"], text[:80]


def run(check, copies):
    results = [None] * copies
    def one(i):
        try:
            results[i] = check(i)
        except Exception as e:
            results[i] = (False, "error", repr(e)[:80])
    threads = [threading.Thread(target=one, args=(i,)) for i in range(copies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


failed = 0
for check in (structured, stopped):
    for copies in (1, 16):
        results = run(check, copies)
        good = sum(1 for r in results if r[0])
        failed += copies - good
        print(f"{check.__name__}, {copies} at once: {good}/{copies} ok; e.g. "
              f"{results[0][1]} {results[0][2]!r}")
sys.exit(1 if failed else 0)
