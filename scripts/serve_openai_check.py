#!/usr/bin/env python3
"""Drive `unicorn-rt PLAN --serve` with the official `openai` Python client (scripts/serve_check.sh runs it).

    python3 scripts/serve_openai_check.py http://127.0.0.1:PORT

The plan must have a chat template and f32 weights (so an f32 KV cache: a prompt that reuses a slot's cached
prefix computes the bits a fresh prefill computes, and temperature-0 answers can be compared exactly). Checks:
the model list; completions and chat completions, streamed and not (the same text either way, the usage
chunk); sampling with a seed repeats; stop strings; the prompt cache on a conversation's second turn
(usage.prompt_tokens_details.cached_tokens); OpenAI error bodies the client raises as BadRequestError with the
field named; and a bounded concurrent load (4 clients x 3 requests) whose answers equal those of the same
requests run alone. Prints one line per check and ends with 'N passed, N failed'; exits non-zero on a failure.
"""

import concurrent.futures
import sys

import openai

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
client = openai.OpenAI(base_url=URL + "/v1", api_key="unused", timeout=60.0, max_retries=0)
passed, failed = 0, 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {detail}")


PROMPT = "The keeper climbed the stairs to light the lamp."

models = client.models.list().data
check("models.list: one model", len(models) == 1, models)
MODEL = models[0].id

# Completions: greedy, whole and streamed.
r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
text = r.choices[0].text
check("completion: text and finish", len(text) > 0 and r.choices[0].finish_reason == "length", r)
check("completion: usage", r.usage.completion_tokens == 12 and r.usage.total_tokens == r.usage.prompt_tokens + 12, r.usage)
pieces, finish, usage = [], None, None
for chunk in client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"ignore_eos": True}):
    if chunk.choices:
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
check("completion stream: the same text", "".join(pieces) == text, (pieces, text))
check("completion stream: finish and usage", finish == "length" and usage and usage.completion_tokens == 12, (finish, usage))

# Sampling with a seed repeats; another seed (most likely) differs.
def sampled(seed):
    return client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=0.9, seed=seed,
                                     extra_body={"top_k": 50, "ignore_eos": True}).choices[0].text
a, b, c = sampled(11), sampled(11), sampled(12)
check("seeded sampling repeats", a == b, (a, b))
check("another seed, another text", a != c, (a, c))

# A stop string from the middle of the greedy text: the text ends before it.
cut = text[4:7]
r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stop=["zzzz", cut],
                              extra_body={"ignore_eos": True})
check("stop string", r.choices[0].text == text[: text.find(cut)] and r.choices[0].finish_reason == "stop", (r.choices[0], cut))

# Chat: whole and streamed, then a second turn that reuses the first turn's tokens.
msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who climbed the stairs?"}]
r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
answer = r.choices[0].message.content
check("chat: an answer", r.choices[0].message.role == "assistant" and len(answer) > 0, r)
pieces, roles = [], []
for chunk in client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True}):
    if chunk.choices:
        d = chunk.choices[0].delta
        pieces.append(d.content or "")
        roles.append(d.role)
check("chat stream: the role, then the same text", roles[0] == "assistant" and "".join(pieces) == answer, (roles, pieces))
turn1 = r.usage.prompt_tokens
msgs2 = msgs + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
r2 = client.chat.completions.create(model=MODEL, messages=msgs2, max_tokens=8, temperature=0)
cached = r2.usage.prompt_tokens_details.cached_tokens
check("chat: the second turn reuses the first's tokens", cached >= turn1 - 1, (cached, turn1, r2.usage))
r3 = client.chat.completions.create(model=MODEL, messages=msgs2, max_tokens=8, temperature=0,
                                    extra_body={"cache_prompt": False})
check("chat: the same answer without the cache", r3.choices[0].message.content == r2.choices[0].message.content
      and r3.usage.prompt_tokens_details.cached_tokens == 0, (r2.choices[0], r3.choices[0]))

# Errors: OpenAI bodies, raised by the client as BadRequestError naming the field.
for name, kwargs, param in [
    ("temperature out of range", {"prompt": "a", "temperature": 7}, "temperature"),
    ("n of 2", {"prompt": "a", "n": 2}, "n"),
    ("a prompt beyond the context", {"prompt": PROMPT * 40}, "prompt"),
    ("bad stop", {"prompt": "a", "extra_body": {"stop": 5}}, "stop"),
]:
    try:
        client.completions.create(model=MODEL, **kwargs)
        check(f"error: {name}", False, "accepted")
    except openai.BadRequestError as e:
        check(f"error: {name}", e.status_code == 400 and e.body.get("param") == param, e.body)

# Bounded concurrent load: 4 clients x 3 requests, each answer as the request alone gets it.
requests = [dict(prompt=p, max_tokens=6 + 4 * i, temperature=0, extra_body={"ignore_eos": i % 2 == 0})
            for i, p in enumerate([PROMPT, "A ship", PROMPT + " It was late.", "Night fell", "Lamp", "The stairs"])]
alone = [client.completions.create(model=MODEL, **q).choices[0].text for q in requests]


def worker(w):
    out = []
    for j in range(3):
        i = (w * 2 + j) % len(requests)
        out.append((i, client.completions.create(model=MODEL, **requests[i]).choices[0].text))
    return out


with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = [x for xs in pool.map(worker, range(4)) for x in xs]
bad = [(i, t, alone[i]) for i, t in results if t != alone[i]]
check(f"{len(results)} concurrent requests answer as alone", len(results) == 12 and not bad, bad)

print(f"serve_openai_check: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
