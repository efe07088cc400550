#!/usr/bin/env python3
"""Decode speed against the memory read bandwidth, measured side by side in one run.

    python3 bench/decode_bw.py PLAN [PLAN ...] [--threads 1,2] [--rounds 3] [--gen 64] [--prompt-len 128]
        [--rt target/release/unicorn-rt] [--isa avx512,avx512vnni] [--max-busy 0.1]

A decode step reads every weight of the plan once, so its speed is bounded by the read bandwidth: tok/s <=
bandwidth / plan weight bytes. Each round runs, for every thread count T, bench/membw.c with T threads (a 1 GiB
buffer, 5 passes, the median pass) and then `unicorn-rt PLAN --bench --repeat 1 --threads T --json` for every
plan, so that the two see the same machine within seconds of each other (this VM's bandwidth moves by tens of
percent within an hour). Decode GB/s = weight bytes x decode tok/s (the KV cache, a few MB at these depths, is
not counted). The table gives medians over the rounds, and the share is the median of each round's
decode GB/s / membw GB/s. --isa runs each plan under each named kernel family (UNICORN_CPU_ISA) in turn, within
the same rounds.

--max-busy F waits (up to 10 minutes) before each round until other processes use less than F of the CPUs over
2 s, as compare.py does.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("UNICORN_BENCH_CACHE", Path.home() / ".cache" / "unicorn-bench"))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_busy(seconds=2.0):
    """Share of all CPUs busy over `seconds` (this script sleeps meanwhile, so it is other processes' share)."""

    def snap():
        f = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        idle = f[3] + f[4]
        return sum(f), idle

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_busy, max_wait=600):
    start = time.time()
    while True:
        busy = cpu_busy()
        if busy <= max_busy or time.time() - start > max_wait:
            return busy
        log(f"  others use {busy:.0%} of the CPUs; waiting")


def membw_binary():
    exe = CACHE / "bin" / "membw"
    src = HERE / "membw.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        exe.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-mavx2", "-pthread", str(src), "-o", str(exe)], check=True)
    return exe


def membw(exe, threads):
    out = subprocess.run([str(exe), str(threads), "1024"], capture_output=True, text=True, check=True).stdout
    passes = [float(line.split(":")[1].split()[0]) for line in out.splitlines() if "GB/s" in line]
    return statistics.median(passes)


def decode(rt, plan, threads, isa, a):
    cmd = [rt, plan, "--bench", "--prompt-len", str(a.prompt_len), "--gen", str(a.gen), "--repeat", "1",
           "--threads", str(threads), "--json"]
    env = dict(os.environ)
    if isa:
        env["UNICORN_CPU_ISA"] = isa
    r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout)
    tok_s = r["decode_tok_s"]["median"]
    return tok_s, r["weight_bytes"] * tok_s / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plans", nargs="+")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gen", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--rt", default=str(HERE.parent / "target" / "release" / "unicorn-rt"))
    p.add_argument("--isa", default="", help="UNICORN_CPU_ISA values for unicorn-rt, comma-separated (default: "
                   "the best family this CPU runs)")
    p.add_argument("--max-busy", type=float, default=None)
    p.add_argument("--out", help="write every measurement as JSON")
    a = p.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    exe = membw_binary()
    isas = a.isa.split(",")
    rows = {}  # (plan, isa, threads) -> [(membw, tok/s, GB/s)]
    for rnd in range(a.rounds):
        for t in threads:
            if a.max_busy is not None:
                wait_quiet(a.max_busy)
            bw = membw(exe, t)
            for plan in a.plans:
                for isa in isas:
                    tok_s, gb_s = decode(a.rt, plan, t, isa, a)
                    rows.setdefault((plan, isa or "default", t), []).append((bw, tok_s, gb_s))
                    log(f"round {rnd + 1}: {Path(plan).name} {isa or 'default'} {t}T: membw {bw:.1f} GB/s, "
                        f"decode {tok_s:.2f} tok/s = {gb_s:.1f} GB/s ({gb_s / bw:.0%})")
    print("| plan | kernels | threads | membw GB/s | decode tok/s | decode GB/s | decode / membw (min-max) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for (plan, isa, t), v in rows.items():
        med = [statistics.median(x[i] for x in v) for i in range(3)]
        share = statistics.median(x[2] / x[0] for x in v)
        print(f"| {Path(plan).name} | {isa} | {t} | {med[0]:.1f} | {med[1]:.2f} | {med[2]:.1f} | {share:.0%} "
              f"({min(x[2] / x[0] for x in v):.0%}-{max(x[2] / x[0] for x in v):.0%}) |")
    if a.out:
        Path(a.out).write_text(json.dumps({"|".join(map(str, k)): v for k, v in rows.items()}, indent=1))


if __name__ == "__main__":
    main()
