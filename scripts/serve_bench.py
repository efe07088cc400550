#!/usr/bin/env python3
"""Throughput of an OpenAI-compatible server with concurrent streams, and what the prompt cache saves.

    unicorn-rt PLAN --serve --port 8080 --parallel 4 &
    python3 scripts/serve_bench.py http://127.0.0.1:8080 [--streams 1,2,4] [--tokens 64] [--repeat 3]
        [--json FILE] [--label NAME] [--round-base R] [--no-cache-test]

Works against `unicorn-rt --serve` and llama.cpp's `llama-server` alike (bench/serve_compare.sh runs both); only
the standard library. A round runs every stream count once, one after another; round r goes through --streams
in the given order when r is even and in reverse when r is odd (1,2,4 then 4,2,1 then 1,2,4 ...), so a slow
drift of the machine (memory bandwidth, clock, a neighbour) weighs on all stream counts alike instead of on the
last ones. --round-base R numbers the rounds from R (a caller that restarts the server between rounds keeps the
alternation going). For each stream count K: K completions of --tokens tokens each (greedy, end tokens ignored,
short distinct prompts, prompt cache off) sent at once; the aggregate is the completion tokens of all K over
the wall time from the first request to the last answer; the table shows the median over rounds. The
per-stream decode rate is the server's own `timings.predicted_per_second` (not part of the OpenAI API: llama-server
and unicorn-rt report it, with slightly different definitions, so compare engines by the aggregate). Then the
prompt cache: a long prompt run cold, then the same prompt with a few more words (a conversation's next turn),
each turn's prompt time and cached tokens as the server reports them.

--json FILE writes the raw results: every round's every stream count (wall time, tokens, the per-request usage
and timings, the start of each answer's text), the medians, and the prompt-cache answers.
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request


class BenchError(Exception):
    """A failure to report in one line, without a traceback."""


def http(url, body=None, timeout=600):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise BenchError(f"{url}: HTTP {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        raise BenchError(f"{url}: {getattr(e, 'reason', e)} (is the server up?)") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise BenchError(f"{url}: the answer is not JSON: {raw[:200]!r}") from None


def complete(url, body):
    return http(url + "/v1/completions", body)


def field(r, *path):
    """r[path[0]][path[1]]... (a key of an object, or an index of a list), or None where the answer lacks it."""
    for k in path:
        if isinstance(k, int) and isinstance(r, list) and 0 <= k < len(r):
            r = r[k]
        elif isinstance(k, str) and isinstance(r, dict) and k in r:
            r = r[k]
        else:
            return None
    return r


def completion_tokens(r):
    n = field(r, "usage", "completion_tokens")
    if n is None:
        n = field(r, "timings", "predicted_n")
    if n is None:
        raise BenchError("the server's answer has neither usage.completion_tokens nor timings.predicted_n, so the "
                         f"tokens cannot be counted; its keys: {sorted(r) if isinstance(r, dict) else r!r}")
    return n


def round_of(url, k, tokens, salt):
    out = [None] * k
    errors = [None] * k

    def one(i):
        prompt = f"Story {salt}-{i}: the keeper climbed the stairs"
        try:
            out[i] = complete(url, {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
                                    "cache_prompt": False})
        except BenchError as e:
            errors[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for e in errors:
        if e is not None:
            raise e
    counts = [completion_tokens(r) for r in out]
    short = [n for n in counts if n != tokens]
    if short:
        print(f"warning: {k} streams: {len(short)} answer(s) of {short} tokens, not {tokens} (ignore_eos not honoured, "
              "or the context is full)", file=sys.stderr)
    rates = [field(r, "timings", "predicted_per_second") for r in out]
    requests = [{
        "completion_tokens": n,
        "prompt_tokens": field(r, "usage", "prompt_tokens"),
        "cached_tokens": field(r, "usage", "prompt_tokens_details", "cached_tokens"),
        "timings": field(r, "timings"),
        "text": (field(r, "choices", 0, "text") or "")[:200],
    } for r, n in zip(out, counts)]
    return {
        "streams": k,
        "wall_s": wall,
        "completion_tokens": sum(counts),
        "aggregate_tok_s": sum(counts) / wall,
        "per_stream_tok_s": statistics.mean(rates) if all(isinstance(x, (int, float)) for x in rates) else None,
        "requests": requests,
    }


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cache_test(url, n_words):
    words = " ".join(f"word{i % 50}" for i in range(n_words))
    cold = complete(url, {"prompt": words, "max_tokens": 8, "temperature": 0, "cache_prompt": False})
    warm1 = complete(url, {"prompt": words, "max_tokens": 8, "temperature": 0})
    text = field(cold, "choices", 0, "text") or ""
    turn2 = complete(url, {"prompt": words + text + " and then more", "max_tokens": 8, "temperature": 0})
    rows = []
    print("\n| request | prompt tokens | cached | prompt ms (to the first token) |")
    print("| --- | --- | --- | --- |")
    missing = set()
    for name, r in [("cold (cache off)", cold), ("same prompt again", warm1), ("next turn (+ answer + 3 words)", turn2)]:
        row = {"request": name}
        cells = []
        for key, path, fmt in [("prompt_tokens", ("usage", "prompt_tokens"), "{}"),
                               ("cached_tokens", ("usage", "prompt_tokens_details", "cached_tokens"), "{}"),
                               ("prompt_ms", ("timings", "prompt_ms"), "{:.1f}")]:
            v = field(r, *path)
            row[key] = v
            if v is None:
                missing.add(".".join(path))
                cells.append("n/a")
            else:
                cells.append(fmt.format(v))
        rows.append(row)
        print(f"| {name} | {' | '.join(cells)} |")
    if missing:
        print(f"(n/a: the server's answers have no {', '.join(sorted(missing))})")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--streams", default="1,2,4")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each runs every stream count once")
    ap.add_argument("--round-base", type=int, default=0,
                    help="number of the first round (odd: it runs --streams in reverse); for callers that restart "
                         "the server between rounds")
    ap.add_argument("--json", metavar="FILE", help="write the raw per-round results here")
    ap.add_argument("--label", default="", help="a name for the server, kept in --json")
    ap.add_argument("--cache-words", type=int, default=300, help="words of the prompt-cache test's prompt")
    ap.add_argument("--no-cache-test", action="store_true", help="skip the prompt-cache test")
    a = ap.parse_args()
    url = a.url.rstrip("/")
    try:
        streams = [int(s) for s in a.streams.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--streams {a.streams!r}: comma-separated counts")
    if not streams or min(streams) < 1 or a.tokens < 1 or a.repeat < 1:
        ap.error("--streams, --tokens and --repeat must be at least 1")

    models = http(url + "/v1/models", timeout=30)
    model = field(models, "data", 0)
    model = model if isinstance(model, dict) else {}
    # unicorn-rt: context_length; llama-server: meta.n_ctx (per slot)
    ctx = model.get("context_length") or field(model, "meta", "n_ctx")
    print(f"model {model.get('id', '?')}, context {ctx if ctx is not None else '?'}")
    # Warm up every slot the run will use at once (buffers, graphs, page faults), outside the measurement.
    round_of(url, max(streams), 4, "warm")

    results = []
    started = time.time()
    for r in range(a.round_base, a.round_base + a.repeat):
        order = streams if r % 2 == 0 else streams[::-1]
        for pos, k in enumerate(order):
            la = loadavg()
            res = round_of(url, k, a.tokens, f"{k}.{r}")
            res.update({"round": r, "position": pos, "loadavg_1m": la, "at_s": time.time() - started})
            results.append(res)
            print(f"round {r}: {k} streams: {res['aggregate_tok_s']:.1f} tok/s", file=sys.stderr, flush=True)

    print("| streams | aggregate tok/s | per-stream decode tok/s | x one stream |")
    print("| --- | --- | --- | --- |")
    summary = []
    base = None
    for k in streams:
        rs = [x for x in results if x["streams"] == k]
        agg = statistics.median(x["aggregate_tok_s"] for x in rs)
        pers = [x["per_stream_tok_s"] for x in rs if x["per_stream_tok_s"] is not None]
        per = statistics.median(pers) if pers else None
        base = base or agg
        summary.append({"streams": k, "aggregate_tok_s_median": agg, "aggregate_tok_s_min": min(x["aggregate_tok_s"] for x in rs),
                        "aggregate_tok_s_max": max(x["aggregate_tok_s"] for x in rs), "per_stream_tok_s_median": per,
                        "x_first_stream_count": agg / base, "rounds": len(rs)})
        print(f"| {k} | {agg:.1f} | {'n/a' if per is None else f'{per:.1f}'} | {agg / base:.2f} |", flush=True)
    if any(x["per_stream_tok_s"] is None for x in results):
        print("(per-stream n/a: the server's answers have no timings.predicted_per_second)")

    cache = None if a.no_cache_test else cache_test(url, a.cache_words)

    if a.json:
        doc = {"url": url, "label": a.label, "model": model.get("id"), "context": ctx, "streams": streams,
               "tokens": a.tokens, "repeat": a.repeat, "round_base": a.round_base,
               "started_unix": started, "results": results, "summary": summary, "cache_test": cache}
        tmp = a.json + ".part"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, a.json)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit(f"serve_bench.py: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
