#!/usr/bin/env python3
"""hearth's /v1/embeddings next to llama.cpp's `llama-server --embedding`, same model, threads
and inputs: throughput in inputs/s and tokens/s for one input per request (sequential) and
for batches of 32 and 256 inputs per request, and the largest difference between the two
servers' vectors.

    .venv/bin/python scripts/bench-embeddings.py [--llama-server /tmp/peers/bin/llama-server]
        [--threads 2] [--inputs 512] [--model models/all-MiniLM-L6-v2.F16.gguf]

Prints markdown tables only. Needs an otherwise idle machine."""
import argparse
import random
import statistics
import time

import numpy as np

from benchserver import ROOT, serve, serve_llama

WORDS = ("the a of river mountain city quiet bright music paper window garden engine library "
         "history ocean winter coffee market station bridge forest letter lamp summer road "
         "teacher painting island kitchen clock storm harbour valley").split()


def sentences(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))).capitalize() + "."
            for _ in range(n)]


def run(client, inputs, per_request):
    started = time.perf_counter()
    vectors, tokens = [], 0
    for at in range(0, len(inputs), per_request):
        reply = client.embeddings.create(model="m", input=inputs[at:at + per_request],
                                         encoding_format="float")
        vectors += [d.embedding for d in reply.data]
        tokens += reply.usage.prompt_tokens
    return time.perf_counter() - started, tokens, np.array(vectors)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-server", default="/tmp/peers/bin/llama-server")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--model", default=str(ROOT / "models" / "all-MiniLM-L6-v2.F16.gguf"))
    cfg = parser.parse_args()
    inputs = sentences(cfg.inputs)
    results, vectors = {}, {}
    for name in ("hearth", "llama-server"):
        if name == "hearth":
            process, _, client = serve(model=cfg.model, threads=cfg.threads, ctx_size=512,
                                       parallel=1)
        else:
            # -b/-ub 8192: a request's whole batch in one decode, as hearth packs it.
            process, _, client = serve_llama(
                cfg.llama_server, model=cfg.model, threads=cfg.threads, parallel=64,
                ctx_size=128, extra=("--embedding", "--pooling", "mean", "-b", "8192",
                                     "-ub", "8192"))
        try:
            run(client, inputs[:16], 16)  # warm-up
            for per_request in (1, 32, 256):
                seconds, tokens, v = run(client, inputs, per_request)
                results[(name, per_request)] = (seconds, tokens)
                vectors[(name, per_request)] = v
        finally:
            process.terminate()
            process.wait(10)
    print(f"{len(inputs)} inputs, {cfg.threads} threads\n")
    print("| server | inputs per request | inputs/s | tokens/s |")
    print("|---|---:|---:|---:|")
    for (name, per_request), (seconds, tokens) in results.items():
        print(f"| {name} | {per_request} | {len(inputs) / seconds:.0f} | {tokens / seconds:.0f} |")
    ours, theirs = vectors[("hearth", 32)], vectors[("llama-server", 32)]
    cosines = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    print(f"\nhearth vs llama-server vectors: min cosine {cosines.min():.7f}, "
          f"median {statistics.median(cosines):.7f}")


if __name__ == "__main__":
    main()
