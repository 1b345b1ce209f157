#!/usr/bin/env python3
"""Decode speed of tool-call generation under its grammar against unconstrained decoding.

Starts `hearth serve` with one model, sends requests one at a time, and reads the decode rate
from the server's own per-token clock: the `hearth:inter_token_latency_seconds` histogram
(sum and count before and after each case), so prefill is excluded and the reply parser's
holding back of a call header (which bunches streamed pieces) does not skew it. Prints a
markdown table.

    .venv/bin/python scripts/bench-tools.py [--model PATH] [--runs 5] [--threads 2]
"""
import argparse
import pathlib
import statistics

from benchserver import DEFAULT_MODEL, serve

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "unit", "days"]}}}


def itl(url):
    """(sum, count) of the inter-token latency histogram."""
    import urllib.request
    text = urllib.request.urlopen(url.removesuffix("/v1") + "/metrics").read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("hearth:inter_token_latency_seconds_sum"):
            total += float(line.split()[-1])
        elif line.startswith("hearth:inter_token_latency_seconds_count"):
            count += float(line.split()[-1])
    return total, count


def decode_rate(client, url, **args):
    before = itl(url)
    response = client.chat.completions.create(model="m", **args)
    after = itl(url)
    seconds, gaps = after[0] - before[0], after[1] - before[1]
    return response.usage.completion_tokens, gaps / seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    process, url, client = serve(args.model, args.threads)
    ask = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]
    cases = {
        "free text (no tools)": dict(messages=[{"role": "user", "content": "Describe Paris in detail."}],
                                     max_tokens=48, temperature=0),
        "tool call, required (grammar from token 1)": dict(messages=ask, tools=[WEATHER],
                                                           tool_choice="required", parallel_tool_calls=False,
                                                           temperature=0, max_tokens=48),
        "tool call, auto (lazy grammar)": dict(messages=ask, tools=[WEATHER], temperature=0, max_tokens=48),
    }
    try:
        for case in cases.values():
            decode_rate(client, url, **case)  # warm-up: load, compile and cache the grammar
        print(f"model: {pathlib.Path(args.model).name}, threads {args.threads}, {args.runs} runs each\n")
        print("| workload | tokens | decode tok/s (median) | vs free text |")
        print("|---|---:|---:|---:|")
        base = None
        for name, case in cases.items():
            results = [decode_rate(client, url, **case) for _ in range(args.runs)]
            rate = statistics.median(r for _, r in results)
            base = base or rate
            print(f"| {name} | {results[0][0]} | {rate:.1f} | {rate / base:.2f}× |")
    finally:
        process.terminate()


if __name__ == "__main__":
    main()
