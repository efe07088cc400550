#!/usr/bin/env bash
# Two builds of unicornc against each other on one GPU, for judging a change to the generated kernels: the same
# checkpoint compiled by each, their plans' logits compared on the same tokens, then interleaved rounds of
# unicorn-rt --bench on both plans and one --profile of each. Runs where there is a GPU but no Rust toolchain.
#
#   bench/vulkan_ab.sh KIT_DIR OUT_DIR CHECKPOINT [QUANTS] [PROMPT_LEN] [GEN] [ROUNDS]
#     defaults: q4_0,q8_0  512  64  3
#
# KIT_DIR holds unicorn-rt and the two compilers: unicornc-a (the baseline) and unicornc-b (the change), release
# builds without LLVM (`cargo build --release -p unicorn-compiler --no-default-features --bins` at each commit;
# bench/vulkan_kit.sh makes unicorn-rt). A_ENV and B_ENV are environment assignments given to each compiler
# (A_ENV="NAME=VALUE ..."), so that one build can also be run against itself with a setting changed. TOKENS
# (comma-separated ids) replaces the 64 token ids the logits are compared on.
# CHECKPOINT is a checkpoint directory: `bench/make_checkpoints.py DIR --models llama-3.1-8b --fast --layers 4`
# makes the 8B shape's first four layers, whose kernels are the full model's, in seconds.
# The machine needs python3 and a Vulkan driver.
#
# Results: OUT_DIR/results.jsonl (one JSON object per measurement), OUT_DIR/summary.md (per quantization the
# logits' agreement, then median (min-max) prefill and decode tok/s of each build and b / a), OUT_DIR/profile-
# {a,b}-Q.txt, OUT_DIR/log.txt (every command and its output).
set -uo pipefail
[ $# -ge 3 ] || { sed -n '2,21p' "$0" >&2; exit 2; }
[ -d "$1" ] || { echo "vulkan_ab.sh: no kit directory $1" >&2; exit 2; }
[ -d "$3" ] || { echo "vulkan_ab.sh: no checkpoint directory $3" >&2; exit 2; }
kit="$(cd "$1" && pwd)"
out="$(mkdir -p "$2" && cd "$2" && pwd)"
ckpt="$(cd "$3" && pwd)"
quants="${4:-q4_0,q8_0}"
plen="${5:-512}"
gen="${6:-64}"
rounds="${7:-3}"
for b in unicorn-rt unicornc-a unicornc-b; do
    [ -x "$kit/$b" ] || { echo "vulkan_ab.sh: $kit/$b is missing" >&2; exit 2; }
done
work="$(mktemp -d "${TMPDIR:-/tmp}/unicorn-ab.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log="$out/log.txt"
results="$out/results.jsonl"
: >"$results"
: >"$log"

# shellcheck source=bench/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# The same 64 token ids for both plans' logits (TOKENS overrides them): low ids, which every vocabulary has.
tokens="${TOKENS:-$(seq -s, 1 5 316)}"
say "devices"
"$kit/unicorn-rt" --list-devices >>"$log" 2>&1

for q in ${quants//,/ }; do
    ok=1
    for v in a b; do
        envs="A_ENV"
        [ "$v" = b ] && envs="B_ENV"
        # shellcheck disable=SC2086
        run "compile $v $q" env ${!envs:-} "$kit/unicornc-$v" compile "$ckpt" --target vulkan --weights "$q" \
            -o "$work/$v-$q.ucp" || ok=0
    done
    [ "$ok" = 1 ] || continue
    for v in a b; do
        run "logits $v $q" "$kit/unicorn-rt" "$work/$v-$q.ucp" --device vulkan --tokens "$tokens" \
            --logits-out "$work/$v-$q.npy" || ok=0
    done
    if [ "$ok" = 1 ]; then
        python3 - "$work/a-$q.npy" "$work/b-$q.npy" "$q" >>"$results" 2>>"$log" <<'EOF'
import array, ast, json, sys
def npy(path):
    # unicorn-rt's --logits-out: a float32 [len, vocab] .npy (version 1 header, little-endian, C order).
    raw = open(path, "rb").read()
    assert raw[:6] == b"\x93NUMPY", path
    n = int.from_bytes(raw[8:10], "little")
    head = ast.literal_eval(raw[10:10 + n].decode())
    assert head["descr"] == "<f4" and not head["fortran_order"], head
    data = array.array("f", raw[10 + n:])
    rows, cols = head["shape"]
    return [data[r * cols:(r + 1) * cols] for r in range(rows)]
a, b = npy(sys.argv[1]), npy(sys.argv[2])
top = max(abs(v) for row in a for v in row)
diff = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
argmax = lambda row: max(range(len(row)), key=row.__getitem__)
same = sum(argmax(ra) == argmax(rb) for ra, rb in zip(a, b)) / len(a)
print(json.dumps({"quant": sys.argv[3], "logits": {
    "positions": len(a), "max_abs_diff_over_max_abs": diff / top, "same_argmax": same}}))
EOF
    fi
    for r in $(seq 1 "$rounds"); do
        order="a b"
        [ $((r % 2)) -eq 0 ] && order="b a"
        for v in $order; do
            say "round $r $q $v"
            j=$("$kit/unicorn-rt" "$work/$v-$q.ucp" --device vulkan --bench --prompt-len "$plen" --gen "$gen" \
                --repeat 1 --json 2>>"$log") || { say "unicorn-rt FAILED"; continue; }
            echo "{\"quant\":\"$q\",\"round\":$r,\"build\":\"$v\",\"result\":$j}" >>"$results"
        done
    done
    for v in a b; do
        say "profile $q $v"
        "$kit/unicorn-rt" "$work/$v-$q.ucp" --device vulkan --bench --prompt-len "$plen" --gen "$gen" --repeat 1 \
            --profile >"$out/profile-$v-$q.txt" 2>>"$log" || say "profile FAILED"
    done
    rm -f "$work"/*-"$q".ucp
done

python3 - "$results" "$out/summary.md" "$plen" "$gen" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
plen, gen = sys.argv[3], sys.argv[4]
spread = lambda v: (statistics.median(v), min(v), max(v)) if v else None
fmt = lambda s: "-" if s is None else f"{s[0]:.1f} ({s[1]:.1f}-{s[2]:.1f})"
ratio = lambda b, a: "-" if not a or not b else f"{b[0] / a[0]:.3f}"
table, logits = {}, {}
for r in rows:
    if "logits" in r:
        logits[r["quant"]] = r["logits"]
        continue
    t = table.setdefault(r["quant"], {k: [] for k in ("a_pre", "a_dec", "b_pre", "b_dec")})
    t[r["build"] + "_pre"].append(r["result"]["prefill_tok_s"]["median"])
    t[r["build"] + "_dec"].append(r["result"]["decode_tok_s"]["median"])
lines = [f"| weights | logits: max diff / max, same argmax | prefill {plen}: a | b | b / a | decode {gen}: a | b | b / a |",
         "| --- | --- | --- | --- | --- | --- | --- | --- |"]
for q in sorted(set(table) | set(logits)):
    t = table.get(q, {k: [] for k in ("a_pre", "a_dec", "b_pre", "b_dec")})
    ap, bp, ad, bd = (spread(t[k]) for k in ("a_pre", "b_pre", "a_dec", "b_dec"))
    lg = logits.get(q)
    agree = "-" if lg is None else f"{lg['max_abs_diff_over_max_abs']:.1e}, {100 * lg['same_argmax']:.0f}%"
    lines.append(f"| {q} | {agree} | {fmt(ap)} | {fmt(bp)} | {ratio(bp, ap)} | {fmt(ad)} | {fmt(bd)} | {ratio(bd, ad)} |")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
