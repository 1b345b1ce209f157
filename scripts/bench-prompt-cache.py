#!/usr/bin/env python3
"""Time to first token per turn of a growing conversation, prompt cache on and off.

Starts `hearth serve` (default model, 2 threads) once with the cache and once with
`--no-prompt-cache`, plays the same 10-turn chat against each (every turn resends the whole
history, as chat clients do; replies are capped at 48 tokens, greedy), and prints a markdown
table of the streamed time to first token and the `cached_tokens` the server reported.

    .venv/bin/python scripts/bench-prompt-cache.py [--turns 10] [--threads 2]
"""
import argparse
import time

from benchserver import serve

QUESTIONS = [
    "Tell me about the history of Paris in a few sentences.",
    "What about its museums?",
    "Which one should I visit first, and why?",
    "How do I get there from the Eiffel Tower?",
    "What is a good place to eat nearby?",
    "And for dessert?",
    "What should I see in the evening?",
    "Is the metro safe at night?",
    "What is a day trip I could take?",
    "Summarise my plan in one paragraph.",
]


def play(client, turns, system="You are a friendly, well-informed travel guide."):
    messages = [{"role": "system", "content": system}]
    rows = []
    for question in QUESTIONS[:turns]:
        messages.append({"role": "user", "content": question})
        start = time.perf_counter()
        first = None
        reply = []
        usage = None
        for chunk in client.chat.completions.create(
                model="m", messages=messages, max_tokens=48, temperature=0, stream=True,
                stream_options={"include_usage": True}):
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.content:
                    first = first or time.perf_counter()
                    reply.append(c.delta.content)
        messages.append({"role": "assistant", "content": "".join(reply)})
        rows.append((usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens,
                     (first - start) * 1000))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = {}
    for name, extra in [("cache on", ()), ("cache off", ("--no-prompt-cache",))]:
        process, _, client = serve(threads=args.threads, ctx_size=4096, parallel=2, extra=extra)
        try:
            play(client, 2, system="Warm-up.")  # loads and warms; shares no history
            results[name] = play(client, args.turns)
        finally:
            process.terminate()
            process.wait()
    print("| turn | prompt tokens | cached (on) | TTFT on (ms) | TTFT off (ms) | on/off |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i, (on, off) in enumerate(zip(results["cache on"], results["cache off"]), 1):
        print(f"| {i} | {on[0]} | {on[1]} | {on[2]:.0f} | {off[2]:.0f} | {on[2] / off[2]:.2f} |")


if __name__ == "__main__":
    main()
