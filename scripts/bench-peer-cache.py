#!/usr/bin/env python3
"""hearth next to a peer (llama.cpp's `llama-server`): prompt cache, shared prefixes, priority.

Runs each workload against three servers, one at a time, on the same model, threads, slots and
context per slot, greedy:

    hearth          `hearth serve` with its prompt cache (target/release/hearth)
    hearth nocache  the same with `--no-prompt-cache`
    llama-server    `llama-server -np SLOTS -c CTX*SLOTS --cache-reuse 0` (slot prompt caches on)

Workloads (`--only a,b,d`):

    a  a 10-turn chat with a long system prompt; every turn resends the whole history (which
       grows to ~1,500 tokens) and asks for up to 100 tokens; time to first token per turn.
    b  8 concurrent streams sharing one ~400-token system prompt, each with its own question,
       3 rounds of the same 8 prompts (`--b-append`: each round appends the previous answer and
       a follow-up); per round the median TTFT, the aggregate decode rate (completion tokens /
       wall time of the round) and the median per-stream decode rate after the first token.
       End-of-turn tokens are banned (`--b-ban`), so every stream on every server generates
       exactly max_tokens: the servers decode the same work.
    d  priority: 8 `X-Priority: low` streams (max_tokens 400) fill every slot; 1 s after all of
       them got their first token, one `X-Priority: high` request (short prompt, max_tokens 16);
       its TTFT against the same on an idle server. llama-server gets the same requests (it
       ignores the header and queues). The low streams are closed once the high one is answered.

Prints markdown tables only. `--quick`: 4 turns, 2 rounds, low streams of 150 tokens. Needs
an otherwise idle machine: with one of 2 cores busy, llama-server at 2 threads ran ~100x
slower (OpenMP threads spin at barriers; hearth links the same ggml with OpenMP).

    .venv/bin/python scripts/bench-peer-cache.py [--llama-server /tmp/peers/bin/llama-server]
        [--only a,b,d] [--servers hearth,nocache,llama] [--quick] [--threads 2] [--slots 8]
        [--ctx-size 2048] [--hearth-args "--preemption off"] [--llama-args "..."] [--b-append]
"""
import argparse
import pathlib
import shlex
import signal
import statistics
import sys
import threading
import time

from benchserver import DEFAULT_MODEL, ROOT, serve, serve_llama

SERVERS = {"hearth": "hearth", "nocache": "hearth nocache", "llama": "llama-server"}

SYSTEM_A = (
    "You are Atlas, a patient and well-informed travel guide who helps visitors plan trips to "
    "European cities. You know the history, architecture, museums, food, neighbourhoods and "
    "public transport of every major city, and you give practical, specific advice. When you "
    "recommend a place, say what makes it special, roughly how long a visit takes, and how to "
    "get there by metro, tram, bus or on foot. Mention opening days when they matter, warn "
    "about queues and tourist traps, and suggest quieter alternatives. Prefer local food over "
    "international chains, and name dishes worth trying. Keep safety advice calm and factual. "
    "If the visitor has mentioned a budget, a pace or interests earlier in the conversation, "
    "take them into account and refer back to earlier parts of the plan so that the whole "
    "itinerary stays consistent. Answer in plain prose, in a warm and friendly tone, without "
    "lists unless asked, and keep each answer to a short paragraph or two. Do not invent "
    "prices or timetables; when unsure, say so and suggest where to check."
)
QUESTIONS_A = [
    "I am spending five days in Paris next spring. Tell me about the history of the city.",
    "What about its museums? I like painting and sculpture.",
    "Which one should I visit first, and why?",
    "How do I get there from the Eiffel Tower?",
    "What is a good place to eat nearby for lunch?",
    "And where should I go for dessert afterwards?",
    "What should I see in the evening on the same day?",
    "Is the metro safe at night, and how late does it run?",
    "What is a good day trip I could take by train?",
    "Summarise my plan so far in one paragraph.",
    "What should I pack for the weather in April?",
    "Thank you! Any last advice for my first day?",
]

SYSTEM_B = (
    "You are the support assistant of Northwind Outdoor, a shop that sells hiking, camping and "
    "climbing equipment online and in three stores. Answer customer questions accurately and "
    "briefly, in a friendly tone. Store policies: orders over 50 euros ship free within the "
    "country; standard delivery takes two to four working days and express delivery one day "
    "for a fee of 9 euros. Customers may return unused items within 30 days for a full refund; "
    "worn footwear and opened fuel canisters cannot be returned. Tents, sleeping bags and "
    "backpacks carry a two-year warranty against manufacturing defects; the warranty does not "
    "cover wear and tear, misuse or damage from fire. Repairs are free under warranty and "
    "otherwise quoted after inspection. Gift cards are valid for three years. Rental gear "
    "(tents, stoves, crampons, ice axes) is available from the stores by the day or the week, "
    "with a deposit. Members of the loyalty programme collect one point per euro and get 10 "
    "euros off for every 200 points; points expire after two years. The stores open Monday to "
    "Saturday from 9 to 19 and are closed on Sundays and public holidays. Staff can fit boots "
    "and backpacks in store and give advice on routes and weather. When recommending products, "
    "ask about the season, the terrain, the length of the trip and the budget, and explain the "
    "trade-offs between weight, durability and price. Never promise stock that you cannot see, "
    "never give medical advice beyond basic safety, and refer questions about avalanche risk or "
    "technical climbing to a qualified guide. If a customer is unhappy, apologise, explain what "
    "can be done, and offer to pass the case to a human colleague with the order number. Keep "
    "answers short: two to four sentences unless the customer asks for detail, and use the "
    "customer's own words for the products they mention."
)
QUESTIONS_B = [
    "Can I return hiking boots I wore once on a short walk?",
    "How long does express delivery take and what does it cost?",
    "My tent pole snapped after a year. Is that covered by the warranty?",
    "Do you rent crampons, and do I need to pay a deposit?",
    "How many loyalty points do I need for a discount?",
    "Are your stores open on Sunday?",
    "Which sleeping bag would you suggest for a summer trip in the Alps?",
    "Can I use a gift card I received four years ago?",
]
FOLLOW_UP_B = "Thanks. Can you say that again in one sentence?"

SYSTEM_D_LOW = "You are a historian who writes long, detailed essays with many sections."
LOW_D = [
    "Write a very long and detailed essay on the history of the Roman Empire.",
    "Write a very long and detailed essay on the history of ancient Egypt.",
    "Write a very long and detailed essay on the history of the Ottoman Empire.",
    "Write a very long and detailed essay on the history of medieval France.",
    "Write a very long and detailed essay on the history of the Byzantine Empire.",
    "Write a very long and detailed essay on the history of ancient Greece.",
    "Write a very long and detailed essay on the history of the Mongol Empire.",
    "Write a very long and detailed essay on the history of the British Empire.",
]
HIGH_D = "What is the capital of {}? Answer in one word."


def stream(client, messages, max_tokens, headers=None, stop=None, started=None, ban=None):
    """Stream one chat completion; times (perf_counter) and token counts.

    completion tokens come from the usage chunk when the server sends one, else from the
    number of content chunks (one token each on both servers). `stop` (an Event) aborts;
    `started` (an Event) is set at the first token."""
    start = time.perf_counter()
    first = last = None
    parts, usage, chunks = [], None, 0
    response = client.chat.completions.create(
        model="m", messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_headers=headers or {},
        **({"logit_bias": {str(t): -100 for t in ban}} if ban else {}))
    try:
        for chunk in response:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.content:
                    last = time.perf_counter()
                    if first is None:
                        first = last
                        if started is not None:
                            started.set()
                    chunks += 1
                    parts.append(c.delta.content)
            if stop is not None and stop.is_set():
                break
    finally:
        response.close()
    end = time.perf_counter()
    completion = usage.completion_tokens if usage else chunks
    cached = None
    if usage and usage.prompt_tokens_details is not None:
        cached = usage.prompt_tokens_details.cached_tokens
    return {"start": start, "first": first, "last": last, "end": end, "text": "".join(parts),
            "ttft": (first - start) if first else None, "completion": completion,
            "prompt": usage.prompt_tokens if usage else None, "cached": cached}


def decode_rate(r):
    """Tokens/s of one stream after its first token."""
    if r["first"] is None or r["last"] is None or r["last"] <= r["first"] or r["completion"] < 2:
        return None
    return (r["completion"] - 1) / (r["last"] - r["first"])


def parallel_run(jobs):
    """Run the callables on their own threads; their results in order."""
    results = [None] * len(jobs)
    errors = []

    def run(i, job):
        try:
            results[i] = job()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def fmt(value, spec=".0f", none="–"):
    return none if value is None else format(value, spec)


def ms(seconds):
    return None if seconds is None else seconds * 1000


# --- workloads ----------------------------------------------------------------------------

def workload_a(client, cfg):
    messages = [{"role": "system", "content": SYSTEM_A}]
    rows = []
    for question in QUESTIONS_A[:cfg.turns]:
        messages.append({"role": "user", "content": question})
        r = stream(client, messages, cfg.a_max_tokens)
        messages.append({"role": "assistant", "content": r["text"]})
        rows.append(r)
    return rows


def workload_b(client, cfg):
    histories = [[{"role": "system", "content": SYSTEM_B}, {"role": "user", "content": q}]
                 for q in QUESTIONS_B[:cfg.streams]]
    # Every stream generates exactly max_tokens on every server (end-of-turn tokens banned),
    # so the aggregate compares decoding the same work, not replies of different lengths.
    ban = [int(t) for t in cfg.b_ban.split(",")] if cfg.b_ban else None
    rounds = []
    for r in range(cfg.rounds):
        start = time.perf_counter()
        results = parallel_run([lambda h=h: stream(client, h, cfg.b_max_tokens, ban=ban)
                                for h in histories])
        wall = time.perf_counter() - start
        rounds.append((results, wall))
        if cfg.b_append:
            for h, res in zip(histories, results):
                h += [{"role": "assistant", "content": res["text"]},
                      {"role": "user", "content": FOLLOW_UP_B}]
    return rounds


def high_request(client, country, cfg):
    # The nonce first, so no earlier request shares more than the template's first tokens.
    messages = [{"role": "system", "content": f"Request {country}. You are a concise assistant."},
                {"role": "user", "content": HIGH_D.format(country)}]
    return stream(client, messages, cfg.d_high_tokens, headers={"X-Priority": "high"})


def workload_d(client, cfg):
    idle = high_request(client, "Portugal", cfg)
    stop = threading.Event()
    lows, high = [None] * cfg.streams, []
    started = [threading.Event() for _ in range(cfg.streams)]

    def low(i):
        try:
            lows[i] = stream(client, [{"role": "system", "content": SYSTEM_D_LOW},
                                      {"role": "user", "content": LOW_D[i % len(LOW_D)]}],
                             cfg.d_low_tokens, headers={"X-Priority": "low"}, stop=stop,
                             started=started[i])
        finally:
            started[i].set()
    threads = [threading.Thread(target=low, args=(i,)) for i in range(cfg.streams)]
    for t in threads:
        t.start()
    # Every low stream decoding (its prompt read), then --d-delay more.
    deadline = time.monotonic() + 60
    for e in started:
        e.wait(max(0, deadline - time.monotonic()))
    time.sleep(cfg.d_delay)
    high.append(high_request(client, "Norway", cfg))
    if not cfg.d_finish_lows:
        stop.set()  # the lows have served their purpose; closing them saves time
    for t in threads:
        t.join()
    h = high[0]
    running = sum(1 for r in lows if r and r["end"] > (h["first"] or h["end"]))
    low_first = [ms(r["ttft"]) for r in lows if r and r["ttft"] is not None]
    return {"idle": idle, "busy": h, "running_at_first": running, "lows": lows,
            "low_ttft_max": max(low_first) if low_first else None}


WORKLOADS = {"a": workload_a, "b": workload_b, "d": workload_d}


# --- reports ------------------------------------------------------------------------------

def report_a(results):
    names = list(results)
    print("### a: growing chat, time to first token per turn (ms)\n")
    head = "| turn |" + "".join(f" prompt tok ({n}) | cached ({n}) | TTFT {n} |" for n in names)
    print(head)
    print("|---:|" + "---:|" * (3 * len(names)))
    turns = max(len(r) for r in results.values())
    for t in range(turns):
        row = f"| {t + 1} |"
        for n in names:
            r = results[n][t] if t < len(results[n]) else None
            row += (f" {fmt(r['prompt'], 'd')} | {fmt(r['cached'], 'd')} | {fmt(ms(r['ttft']))} |"
                    if r else " | | |")
        print(row)
    row = "| total |"
    for n in names:
        row += f" | | {sum(ms(r['ttft']) or 0 for r in results[n]):.0f} |"
    print(row + "\n")


def report_b(results, cfg):
    print(f"### b: {cfg.streams} concurrent streams, shared ~400-token system prompt, "
          f"max_tokens {cfg.b_max_tokens}{', answers appended' if cfg.b_append else ''}"
          f"{f', tokens {cfg.b_ban} banned' if cfg.b_ban else ''}\n")
    print("| server | round | median TTFT (ms) | max TTFT (ms) | cached / prompt tok | "
          "completion tok | wall (s) | aggregate tok/s | median per-stream tok/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rounds in results.items():
        for i, (res, wall) in enumerate(rounds, 1):
            ttfts = [ms(r["ttft"]) for r in res if r["ttft"] is not None]
            completion = sum(r["completion"] for r in res)
            prompt = sum(r["prompt"] or 0 for r in res)
            cached = [r["cached"] for r in res if r["cached"] is not None]
            rates = [x for x in (decode_rate(r) for r in res) if x]
            cache_col = f"{sum(cached)} / {prompt}" if cached else f"– / {prompt or '–'}"
            print(f"| {name} | {i} | {fmt(statistics.median(ttfts) if ttfts else None)} | "
                  f"{fmt(max(ttfts) if ttfts else None)} | {cache_col} | {completion} | "
                  f"{wall:.2f} | {completion / wall:.1f} | "
                  f"{fmt(statistics.median(rates) if rates else None, '.1f')} |")
    print()


def report_d(results, cfg):
    print(f"### d: one high-priority request (max_tokens {cfg.d_high_tokens}) "
          f"{cfg.d_delay:g} s after {cfg.streams} low streams (max_tokens {cfg.d_low_tokens}) "
          f"all got their first token\n")
    print("| server | TTFT idle (ms) | TTFT busy (ms) | busy/idle | high total busy (ms) | "
          "lows open at high's first token | lows' max TTFT (ms) | low tok done |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, d in results.items():
        idle, busy = ms(d["idle"]["ttft"]), ms(d["busy"]["ttft"])
        ratio = busy / idle if idle and busy else None
        done = sum(r["completion"] for r in d["lows"] if r)
        print(f"| {name} | {fmt(idle)} | {fmt(busy)} | {fmt(ratio, '.1f')} | "
              f"{fmt(ms(d['busy']['end'] - d['busy']['start']))} | {d['running_at_first']} / "
              f"{cfg.streams} | {fmt(d['low_ttft_max'])} | {done} |")
    print()


# --- main ---------------------------------------------------------------------------------

def start(kind, cfg):
    if kind == "llama":
        return serve_llama(cfg.llama_server, model=cfg.model, threads=cfg.threads,
                           parallel=cfg.slots, ctx_size=cfg.ctx_size,
                           extra=shlex.split(cfg.llama_args))
    extra = shlex.split(cfg.hearth_args) + (["--no-prompt-cache"] if kind == "nocache" else [])
    return serve(model=cfg.model, threads=cfg.threads, ctx_size=cfg.ctx_size,
                 parallel=cfg.slots, extra=extra)


def warm_up(client):
    # Loads and warms the model; shares no prefix with the workloads beyond the template.
    stream(client, [{"role": "system", "content": "Warm-up."},
                    {"role": "user", "content": "Say hello."}], 8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="a,b,d", help="workloads, comma-separated: a,b,d")
    parser.add_argument("--servers", default="hearth,nocache,llama",
                        help="comma-separated: hearth,nocache,llama")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--ctx-size", type=int, default=2048, help="tokens per slot")
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--llama-server", default="/tmp/peers/bin/llama-server")
    parser.add_argument("--hearth-args", default="", help='extra `hearth serve` args, '
                        'e.g. "--preemption off"')
    parser.add_argument("--llama-args", default="", help="extra llama-server args")
    parser.add_argument("--turns", type=int, help="a: turns [10; quick 4]")
    parser.add_argument("--a-max-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, help="b: rounds [3; quick 2]")
    parser.add_argument("--b-max-tokens", type=int, default=64)
    parser.add_argument("--b-ban", default="0,1,2",
                        help="b: token ids banned (logit_bias -100) so every stream runs to "
                             "max_tokens [SmolLM2's end-of-text, im_start, im_end; '' allows "
                             "them]")
    parser.add_argument("--b-append", action="store_true",
                        help="b: each round appends the previous answer and a follow-up")
    parser.add_argument("--d-low-tokens", type=int, help="d: max_tokens of the low streams "
                        "[400; quick 150]")
    parser.add_argument("--d-high-tokens", type=int, default=16)
    parser.add_argument("--d-delay", type=float, default=1.0,
                        help="d: seconds from every low stream's first token to the high request")
    parser.add_argument("--d-finish-lows", action="store_true",
                        help="d: let the low streams run to the end instead of closing them "
                        "once the high request is answered")
    cfg = parser.parse_args()
    # A SIGTERM (e.g. from `timeout`) unwinds, so the server started last is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cfg.turns = cfg.turns or (4 if cfg.quick else 10)
    cfg.rounds = cfg.rounds or (2 if cfg.quick else 3)
    cfg.d_low_tokens = cfg.d_low_tokens or (150 if cfg.quick else 400)
    cfg.streams = cfg.slots
    only = [w.strip() for w in cfg.only.split(",") if w.strip()]
    kinds = [s.strip() for s in cfg.servers.split(",") if s.strip()]
    for w in only:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}")
    for k in kinds:
        if k not in SERVERS:
            parser.error(f"unknown server {k!r}")
    if "b" in only and cfg.streams > len(QUESTIONS_B):
        parser.error(f"b has {len(QUESTIONS_B)} questions; use --slots <= {len(QUESTIONS_B)}")

    if any(k != "llama" for k in kinds) and not (ROOT / "target/release/hearth").exists():
        parser.error("target/release/hearth is missing (build it, or --servers llama)")
    if "llama" in kinds and not pathlib.Path(cfg.llama_server).exists():
        parser.error(f"{cfg.llama_server} is missing (--llama-server PATH)")
    results = {w: {} for w in only}
    times = {}
    for kind in kinds:
        name = SERVERS[kind]
        t0 = time.perf_counter()
        process, _, client = start(kind, cfg)
        try:
            warm_up(client)
            for w in only:
                results[w][name] = WORKLOADS[w](client, cfg)
        finally:
            process.terminate()
            process.wait()
        times[name] = time.perf_counter() - t0

    hearth_bin = ROOT / "target/release/hearth"
    print(f"## hearth vs llama-server: {pathlib.Path(cfg.model).name}, {cfg.threads} threads, "
          f"{cfg.slots} slots × {cfg.ctx_size} ctx, greedy\n")
    print(f"hearth args: `{cfg.hearth_args or '(none)'}`; hearth binary "
          f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(hearth_bin.stat().st_mtime)) if hearth_bin.exists() else 'missing'}; "
          f"llama-server: `{cfg.llama_server} -np {cfg.slots} -c {cfg.ctx_size * cfg.slots} "
          f"--cache-reuse 0 {cfg.llama_args}`\n")
    if "a" in results:
        report_a(results["a"])
    if "b" in results:
        report_b(results["b"], cfg)
    if "d" in results:
        report_d(results["d"], cfg)
    print("| server | wall time incl. start (s) |\n|---|---:|")
    for name, t in times.items():
        print(f"| {name} | {t:.1f} |")


if __name__ == "__main__":
    main()
