#!/usr/bin/env bash
# Unicorn's OpenAI-compatible server against llama.cpp's llama-server on the CPU, side by side, under the same client
# load (scripts/serve_bench.py: 1, 2 and 4 concurrent greedy completions through /v1/completions), in
# interleaved rounds with only one server up at a time.
#
#   bench/serve_compare.sh PLAN GGUF OUT_DIR [ROUNDS] [TOKENS] [STREAMS]
#     defaults: 6 rounds, 128 tokens per completion, streams 1,2,4
#     PLAN: a --target cpu plan (unicornc compile CKPT --weights q4_0 -o PLAN); GGUF: the same checkpoint, same
#     weight format (bench/llama_cpp_prebuilt.sh gguf CKPT NAME PRE: llama-quantize --pure)
#   e.g. bench/llama_cpp_prebuilt.sh build
#        bench/serve_compare.sh /tmp/l1b-q4.ucp ~/.cache/unicorn-bench/gguf-node-llama-cpp-3.22.1/llama-3.2-1b-q4_0.gguf \
#            /tmp/serve-compare
#
# Environment: UNICORN_RT (default target/release/unicorn-rt; copy it elsewhere first if a build may replace it
# mid-run), UNICORNC (default: beside UNICORN_RT; reads the plan's context), LLAMA_SERVER (default: from
# bench/llama_cpp_prebuilt.sh paths), THREADS (2), SLOTS (4), CONTEXT (per slot; default: the plan's),
# PORT_UNICORN (18181), PORT_LLAMA (18182), LLAMA_SERVER_ARGS (more llama-server flags, appended),
# BUSY_MAX (percent of the CPUs that others may keep busy before a round warns; 15).
#
# The servers:
#   unicorn-rt PLAN --serve --port P --parallel SLOTS --threads THREADS
#   llama-server -m GGUF -np SLOTS -c SLOTS*CONTEXT --no-kv-unified -cb -t THREADS -tb THREADS -fa on
#                -dev none --cache-ram 0 --no-cache-idle-slots --no-ui --port P
# llama-server's -c is the total over its slots: with --no-kv-unified each slot gets its own KV cache of CONTEXT
# positions, as each of unicorn-rt's slots holds the plan's context. -dev none keeps it on the CPU (the package
# is a Vulkan build: it would offload to a GPU it finds). -fa on as the other comparisons here run llama-bench.
# --cache-ram 0 (and --no-cache-idle-slots, which needs it) turns off its host-memory prompt cache (it saves idle
# slots' KV there between requests; unicorn-rt has nothing like it); the requests send cache_prompt: false to both. Both keep the KV cache in f16 (their
# defaults), both read greedy sampling from temperature 0. llama-server's --poll (how its threads wait between
# ops) stays at its default, as users get it.
#
# Round r (r = 0..ROUNDS-1) runs both engines, unicorn-rt first when r is even and llama-server first when r is
# odd; each engine: start its server, wait for /health, one serve_bench.py round (--round-base r: the stream
# counts in order when r is even, reversed when odd; one warm-up of 4 tokens on every stream first), stop the
# server. Before each, the share of the CPUs that other processes keep busy is sampled for 2 s and kept; above
# BUSY_MAX it warns: on 2 cores a neighbour's compile distorts everything, llama.cpp's spinning threads most.
# Results: OUT_DIR/results.json (every round's serve_bench.py JSON, with the engine, its position and the
# background load), OUT_DIR/summary.md (median aggregate tok/s per engine and stream count, min..max, the ratio
# unicorn/llama.cpp per stream count with the median of the per-round ratios, and each engine's 4-vs-1 scaling;
# the llama.cpp build), OUT_DIR/log.txt (the commands and the servers' output), OUT_DIR/raw/ (per run).
set -euo pipefail

die() { echo "serve_compare.sh: $*" >&2; exit 1; }

[ $# -ge 3 ] || { sed -n '2,14p' "$0" >&2; exit 2; }
plan="$1"
gguf="$2"
out="$(mkdir -p "$3" && cd "$3" && pwd)"
rounds="${4:-6}"
tokens="${5:-128}"
streams="${6:-1,2,4}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
threads="${THREADS:-2}"
slots="${SLOTS:-4}"
port_u="${PORT_UNICORN:-18181}"
port_l="${PORT_LLAMA:-18182}"
busy_max="${BUSY_MAX:-15}"
unicorn_rt="${UNICORN_RT:-$repo/target/release/unicorn-rt}"
unicornc="${UNICORNC:-$(dirname "$unicorn_rt")/unicornc}"
log="$out/log.txt"

[ -f "$plan" ] || die "no plan $plan"
[ -f "$gguf" ] || die "no GGUF $gguf"
[ -x "$unicorn_rt" ] || die "no unicorn-rt at $unicorn_rt (set UNICORN_RT)"
command -v curl >/dev/null || die "curl not found"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number, not '$rounds'"

if [ -z "${LLAMA_SERVER:-}" ]; then
    LLAMA_SERVER="$("$here/llama_cpp_prebuilt.sh" paths | sed -n 's/^llama_server=//p')"
    [ -x "$LLAMA_SERVER" ] || die "no llama-server at $LLAMA_SERVER: run bench/llama_cpp_prebuilt.sh build (or set LLAMA_SERVER)"
fi
[ -x "$LLAMA_SERVER" ] || die "LLAMA_SERVER=$LLAMA_SERVER is not executable"

ctx="${CONTEXT:-}"
if [ -z "$ctx" ]; then
    [ -x "$unicornc" ] || die "no unicornc at $unicornc to read the plan's context (set UNICORNC or CONTEXT)"
    "$unicornc" inspect "$plan" >"$out/plan-inspect.txt" 2>&1 || die "unicornc inspect $plan failed: $(tail -3 "$out/plan-inspect.txt")"
    ctx="$(sed -n 's/^model:.*context \([0-9][0-9]*\).*/\1/p' "$out/plan-inspect.txt" | head -1)"
    [ -n "$ctx" ] || die "could not read the context from unicornc inspect (set CONTEXT): $(head -5 "$out/plan-inspect.txt")"
    grep -q '^target: *cpu' "$out/plan-inspect.txt" || die "$plan is not a --target cpu plan"
fi

: >"$log"
mkdir -p "$out/raw"
rm -f "$out"/raw/*.json
say() { echo "== $*" | tee -a "$log" >&2; }

pid=""
stop_server() {
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# busy_pct: the share of all CPUs busy over 2 s, in percent (from /proc/stat; our servers are down meanwhile).
busy_pct() {
    local a b
    read -ra a < <(sed -n 's/^cpu  //p' /proc/stat)
    sleep 2
    read -ra b < <(sed -n 's/^cpu  //p' /proc/stat)
    local i tot=0 idle
    for i in "${!b[@]}"; do
        [ "$i" -lt 8 ] || break  # user nice system idle iowait irq softirq steal (guest is counted in user)
        tot=$((tot + b[i] - a[i]))
    done
    idle=$((b[3] - a[3] + b[4] - a[4]))
    [ "$tot" -gt 0 ] && echo $(((tot - idle) * 100 / tot)) || echo 0
}

# start ENGINE: start its server in the background (pid), wait for /health; sets url.
start() {
    local engine="$1" port cmd
    case "$engine" in
        unicorn)
            port="$port_u"
            cmd=("$unicorn_rt" "$plan" --serve --host 127.0.0.1 --port "$port" --parallel "$slots" --threads "$threads") ;;
        llama.cpp)
            port="$port_l"
            # shellcheck disable=SC2206  # LLAMA_SERVER_ARGS is a list of words
            cmd=("$LLAMA_SERVER" -m "$gguf" -np "$slots" -c "$((slots * ctx))" --no-kv-unified -cb
                 -t "$threads" -tb "$threads" -fa on -dev none --cache-ram 0 --no-cache-idle-slots --no-ui
                 --host 127.0.0.1 --port "$port" ${LLAMA_SERVER_ARGS:-}) ;;
    esac
    url="http://127.0.0.1:$port"
    if curl -s -o /dev/null --max-time 2 "$url/health"; then
        die "something already answers on port $port (set PORT_UNICORN / PORT_LLAMA)"
    fi
    say "start $engine: ${cmd[*]}"
    "${cmd[@]}" >>"$log" 2>&1 &
    pid=$!
    local i
    for i in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || { pid=""; tail -20 "$log" >&2; die "$engine exited while starting (log: $log)"; }
        if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/health" || true)" = 200 ]; then
            say "$engine up after $((i / 2)) s"
            return 0
        fi
        sleep 0.5
    done
    die "$engine did not answer /health in 300 s (log: $log)"
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm), $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "unicorn-rt: $unicorn_rt ($("$unicorn_rt" --version 2>&1 | head -1)), repo commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "plan: $plan (context $ctx per slot)"
    echo "gguf: $gguf"
    echo "llama-server: $LLAMA_SERVER ($("$LLAMA_SERVER" --version 2>&1 | grep -m1 '^version' || echo '?'))"
    if [ -f "$(dirname "$LLAMA_SERVER")/build-info.txt" ]; then sed 's/^/  /' "$(dirname "$LLAMA_SERVER")/build-info.txt"; fi
} >"$out/setup.txt"
cat "$out/setup.txt" >>"$log"

t_start=$(date +%s)
for r in $(seq 0 $((rounds - 1))); do
    if [ $((r % 2)) = 0 ]; then order=(unicorn llama.cpp); else order=(llama.cpp unicorn); fi
    for p in 0 1; do
        engine="${order[$p]}"
        busy="$(busy_pct)"
        if [ "$busy" -gt "$busy_max" ]; then
            say "warning: other processes keep $busy% of the CPUs busy before round $r $engine (BUSY_MAX $busy_max)"
        fi
        start "$engine"
        raw="$out/raw/r$r-$engine.json"
        say "round $r, $engine (position $p): serve_bench.py --streams $streams --tokens $tokens"
        python3 "$repo/scripts/serve_bench.py" "$url" --streams "$streams" --tokens "$tokens" --repeat 1 \
            --round-base "$r" --no-cache-test --label "$engine" --json "$raw" 2>&1 | tee -a "$log" >&2 \
            || die "serve_bench.py against $engine failed in round $r (log: $log)"
        stop_server
        python3 - "$raw" "$engine" "$r" "$p" "$busy" <<'EOF'
import json, sys
f, engine, r, p, busy = sys.argv[1:]
d = json.load(open(f))
d.update({"engine": engine, "round": int(r), "position": int(p), "background_busy_pct": int(busy)})
json.dump(d, open(f, "w"), indent=1)
EOF
    done
done
say "rounds done in $(($(date +%s) - t_start)) s"

python3 - "$out" "$rounds" "$tokens" "$streams" "$threads" "$slots" "$ctx" "$busy_max" <<'EOF'
import glob, json, os, statistics, sys

out, rounds, tokens, streams, threads, slots, ctx, busy_max = sys.argv[1:]
streams = [int(s) for s in streams.split(",")]
runs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, "raw", "*.json")))]
runs.sort(key=lambda d: (d["round"], d["position"]))
engines = ["unicorn", "llama.cpp"]
# agg[engine][k] = {round: aggregate tok/s}
agg = {e: {k: {} for k in streams} for e in engines}
for d in runs:
    for x in d["results"]:
        agg[d["engine"]][x["streams"]][d["round"]] = x["aggregate_tok_s"]

def med(v):
    return statistics.median(v) if v else float("nan")

summary = {"streams": {}, "ratio_unicorn_over_llama": {}, "scaling_vs_first": {}}
lines = ["# unicorn-rt --serve vs llama-server, aggregate completion tok/s", ""]
lines.append(open(os.path.join(out, "setup.txt")).read().rstrip().replace("\n", "  \n"))
lines += ["", f"{rounds} rounds, {tokens} tokens per completion, greedy, end tokens ignored, prompt cache off; "
          f"{slots} slots of {ctx} positions each, {threads} threads; one server up at a time, engine order "
          "alternating per round, stream-count order alternating per round.", ""]
lines.append("| streams | unicorn tok/s median (min..max) | llama.cpp tok/s median (min..max) | unicorn / llama.cpp "
             "(ratio of medians; median of per-round ratios) |")
lines.append("| --- | --- | --- | --- |")
for k in streams:
    cells = []
    for e in engines:
        v = list(agg[e][k].values())
        summary["streams"].setdefault(str(k), {})[e] = {"median": med(v), "min": min(v, default=None),
                                                        "max": max(v, default=None), "rounds": len(v)}
        cells.append(f"{med(v):.1f} ({min(v):.1f}..{max(v):.1f})" if v else "n/a")
    paired = [agg["unicorn"][k][r] / agg["llama.cpp"][k][r] for r in agg["unicorn"][k] if r in agg["llama.cpp"][k]]
    u, l = med(list(agg["unicorn"][k].values())), med(list(agg["llama.cpp"][k].values()))
    summary["ratio_unicorn_over_llama"][str(k)] = {"of_medians": u / l if l else None,
                                                   "median_of_rounds": med(paired), "per_round": paired}
    cells.append(f"**{u / l:.2f}x**; {med(paired):.2f}x" if l and paired else "n/a")
    lines.append(f"| {k} | " + " | ".join(cells) + " |")
first, last = streams[0], streams[-1]
lines += ["", f"Scaling, {last} streams over {first} (ratio of medians; median of per-round ratios):", ""]
for e in engines:
    a, b = agg[e][first], agg[e][last]
    paired = [b[r] / a[r] for r in a if r in b]
    ratio = med(list(b.values())) / med(list(a.values())) if a and b else float("nan")
    summary["scaling_vs_first"][e] = {"streams": [first, last], "of_medians": ratio, "median_of_rounds": med(paired)}
    lines.append(f"- {e}: {ratio:.2f}x; {med(paired):.2f}x")
texts = {d["engine"]: x["requests"][0]["text"] for d in runs if d["round"] == 0
         for x in d["results"] if x["streams"] == first}
if len(texts) == 2:
    a, b = texts["unicorn"], texts["llama.cpp"]
    same = next((i for i, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b)))
    summary["same_model_check"] = {"common_prefix_chars": same, "unicorn": a, "llama.cpp": b}
    lines += ["", f"Same model? Round 0's first {first}-stream answer agrees on its first {same} characters "
              f"(of {len(a)} and {len(b)}; greedy, so the same checkpoint diverges only where rounding differs)."]
busy = [(d["round"], d["engine"], d["background_busy_pct"]) for d in runs]
worst = max(busy, key=lambda x: x[2]) if busy else None
if worst:
    lines += ["", f"Background CPU load sampled before each run: at most {worst[2]}% (round {worst[0]}, before "
              f"{worst[1]}); every value in results.json."]
    noisy = [b for b in busy if b[2] > int(busy_max)]
    if noisy:
        lines[0:0] = [f"**Not a clean measurement: other processes kept more than {busy_max}% of the CPUs busy before "
                      f"{len(noisy)} of {len(busy)} runs.**", ""]
lines += ["", "Per run (round, engine, position, tok/s per stream count in the order run):", ""]
for d in runs:
    lines.append(f"- r{d['round']} {d['engine']} (#{d['position']}): " +
                 ", ".join(f"{x['streams']}: {x['aggregate_tok_s']:.1f}" for x in d["results"]))
json.dump({"config": {"rounds": int(rounds), "tokens": int(tokens), "streams": streams, "threads": int(threads),
                      "slots": int(slots), "context_per_slot": int(ctx),
                      "setup": open(os.path.join(out, "setup.txt")).read()},
           "summary": summary, "runs": runs}, open(os.path.join(out, "results.json"), "w"), indent=1)
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
