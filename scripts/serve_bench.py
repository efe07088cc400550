#!/usr/bin/env python3
"""Throughput of `unicorn-rt PLAN --serve` with concurrent streams, and what the prompt cache saves.

    unicorn-rt PLAN --serve --port 8080 --parallel 4 &
    python3 scripts/serve_bench.py http://127.0.0.1:8080 [--streams 1,2,4] [--tokens 64] [--repeat 3]

Only the standard library. For each stream count K: K completions of --tokens tokens each (greedy, end tokens
ignored, short distinct prompts, prompt cache off) sent at once; the aggregate is the completion tokens of all
K over the wall time from the first request to the last answer (median of --repeat rounds), and the per-stream
decode rate is the server's own `timings.predicted_per_second`. Then the prompt cache: a long prompt run
cold, then the same prompt with a few more words (a conversation's next turn), each turn's prompt time and
cached tokens as the server reports them.
"""

import argparse
import json
import statistics
import threading
import time
import urllib.request


def complete(url, body):
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def round_of(url, k, tokens, salt):
    out = [None] * k

    def one(i):
        prompt = f"Story {salt}-{i}: the keeper climbed the stairs"
        out[i] = complete(url, {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
                                "cache_prompt": False})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    generated = sum(r["usage"]["completion_tokens"] for r in out)
    per_stream = statistics.mean(r["timings"]["predicted_per_second"] for r in out)
    return generated / wall, per_stream


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--streams", default="1,2,4")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache-words", type=int, default=300, help="words of the prompt-cache test's prompt")
    a = ap.parse_args()
    model = json.loads(urllib.request.urlopen(a.url + "/v1/models", timeout=30).read())["data"][0]
    print(f"model {model['id']}, context {model.get('context_length')}")
    complete(a.url, {"prompt": "warm up", "max_tokens": 4, "temperature": 0})
    print(f"| streams | aggregate tok/s | per-stream decode tok/s | x one stream |")
    print(f"| --- | --- | --- | --- |")
    base = None
    for k in [int(s) for s in a.streams.split(",")]:
        rounds = [round_of(a.url, k, a.tokens, f"{k}.{r}") for r in range(a.repeat)]
        agg = statistics.median(r[0] for r in rounds)
        per = statistics.median(r[1] for r in rounds)
        base = base or agg
        print(f"| {k} | {agg:.1f} | {per:.1f} | {agg / base:.2f} |", flush=True)

    words = " ".join(f"word{i % 50}" for i in range(a.cache_words))
    cold = complete(a.url, {"prompt": words, "max_tokens": 8, "temperature": 0, "cache_prompt": False})
    warm1 = complete(a.url, {"prompt": words, "max_tokens": 8, "temperature": 0})
    turn2 = complete(a.url, {"prompt": words + cold["choices"][0]["text"] + " and then more", "max_tokens": 8,
                             "temperature": 0})
    print("\n| request | prompt tokens | cached | prompt ms (to the first token) |")
    print("| --- | --- | --- | --- |")
    for name, r in [("cold (cache off)", cold), ("same prompt again", warm1), ("next turn (+ answer + 3 words)", turn2)]:
        u, t = r["usage"], r["timings"]
        print(f"| {name} | {u['prompt_tokens']} | {u['prompt_tokens_details']['cached_tokens']} | {t['prompt_ms']:.1f} |")


if __name__ == "__main__":
    main()
