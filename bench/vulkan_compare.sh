#!/usr/bin/env bash
# Unicorn's Vulkan executor against llama.cpp's Vulkan backend on one GPU, side by side, in interleaved rounds,
# on a machine that has a GPU but no network and no Rust toolchain: everything it needs comes in KIT_DIR.
#
#   bench/vulkan_compare.sh KIT_DIR OUT_DIR [MODELS] [QUANTS] [PROMPT_LEN] [GEN] [ROUNDS]
#     defaults: llama-3.2-1b  q4_0,q8_0  512  128  3
#     QUANTS: q4_0, q8_0, f16 (llama.cpp: the bf16 GGUF quantized with llama-quantize --pure to that type)
#     MODELS: names bench/make_checkpoints.py knows, or checkpoint directories (tests/fixtures/llama_gqa)
#
# KIT_DIR holds (bench/vulkan_kit.sh makes it on the build machine):
#   unicorn-rt, unicornc       release builds (neither links LLVM; unicorn-rt does not link shaderc)
#   peer.tar.xz                llama.cpp as its users get it prebuilt: the npm package @node-llama-cpp/linux-x64-vulkan's
#                              libraries with llama-bench, llama-quantize and llama-sysinfo built against them
#                              (bench/llama_cpp_prebuilt.sh), and its build-info.txt
#   convert.tar.xz             that llama.cpp's convert_hf_to_gguf.py, conversion/ and gguf-py/
# The machine must have python3 with torch and transformers (for bench/make_checkpoints.py) and a Vulkan driver.
#
# Per model: a random-weight checkpoint of the published shape (bench/make_checkpoints.py), converted to a bf16
# GGUF by llama.cpp's converter and quantized with its llama-quantize --pure; the same checkpoint compiled by
# unicornc --target vulkan --weights Q. Then ROUNDS rounds, alternating which engine goes first:
#   unicorn-rt PLAN --device vulkan --bench --prompt-len P --gen N --repeat 1 --json
#   llama-bench -m GGUF -ngl 99 -fa 1 -p P -n 0 -r 1 -o json          (prefill of P tokens)
#   llama-bench -m GGUF -ngl 99 -fa 1 -p 0 -n N -d P -r 1 -o json     (N decode steps after P cached tokens)
# Unicorn's --bench decodes right after its P-token prefill, so both decode at the same depth. One
# unicorn-rt --profile run per plan shows where the GPU time goes (timestamp queries).
# Results: OUT_DIR/results.jsonl (one JSON object per measurement), OUT_DIR/summary.md (medians, min, max),
# OUT_DIR/log.txt (every command and its output).
# With FAST=1 a checkpoint not made yet is made with make_checkpoints.py --fast (random bf16 bits of the init's
# scale, no transformers initialisation: seconds rather than five minutes for the 8B on a 16-core machine).
# With PRUNE=1 each quantization's GGUF is deleted after its rounds (an 8B model's checkpoint, bf16 GGUF, one
# quantized GGUF and one plan fit a 64 GB disk; two of each do not).
# With DEVICE=cpu both engines run on the machine's CPU instead (the GPU machine's host CPU, say): plans for
# the CPU target, `unicorn-rt --device cpu`, llama-bench with `-dev none` (its CPU backend, the variant it picks
# for the host, no -ngl / -fa); THREADS=T passes `--threads T` and `-t T` (default: each engine's own).
# UNICORN_CPU_ISA passes through to unicorn-rt as usual.
set -uo pipefail
kit="$(cd "$1" && pwd)"
out="$(mkdir -p "$2" && cd "$2" && pwd)"
models="${3:-llama-3.2-1b}"
quants="${4:-q4_0,q8_0}"
plen="${5:-512}"
gen="${6:-128}"
rounds="${7:-3}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="${VULKAN_BENCH_WORK:-/tmp/unicorn-vulkan-bench}"
log="$out/log.txt"
results="$out/results.jsonl"
mkdir -p "$work/peer" "$work/conv" "$work/ckpt"
: >"$results"

# shellcheck source=bench/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

device="${DEVICE:-vulkan}"
case "$device" in
vulkan) target=(--target vulkan); rt_dev=(--device vulkan); peer_dev=(-ngl 99 -fa 1) ;;
cpu)
    target=(); rt_dev=(--device cpu); peer_dev=(-dev none)
    [ -n "${THREADS:-}" ] && { rt_dev+=(--threads "$THREADS"); peer_dev+=(-t "$THREADS"); }
    ;;
*) echo "vulkan_compare.sh: DEVICE is vulkan or cpu, not '$device'" >&2; exit 2 ;;
esac

declare -A pre=([qwen3-0.6b]=qwen2 [llama-3.2-1b]=llama-bpe [gemma-3-1b]=llama-bpe [llama-3.1-8b]=llama-bpe)
declare -A qtype=([q4_0]=Q4_0 [q8_0]=Q8_0 [f16]=F16)

[ -x "$work/peer/llama-bench" ] || tar xJf "$kit/peer.tar.xz" -C "$work/peer"
[ -f "$work/conv/convert_hf_to_gguf.py" ] || tar xJf "$kit/convert.tar.xz" -C "$work/conv"
say "devices"
"$kit/unicorn-rt" --list-devices 2>&1 | tee -a "$log" "$out/devices.txt" >&2
"$work/peer/llama-sysinfo" >>"$out/devices.txt" 2>&1
cat "$work/peer/build-info.txt" >>"$out/devices.txt"

for m in ${models//,/ }; do
    if [ -d "$m" ]; then
        # A checkpoint directory given directly (a test fixture, to check this script on a small model).
        ckpt="$(cd "$m" && pwd)"
        m="$(basename "$ckpt")"
    else
        ckpt="$work/ckpt/$m"
        run "checkpoint $m" python3 "$here/make_checkpoints.py" "$work/ckpt" --models "$m" ${FAST:+--fast} || continue
    fi
    bf16="$work/$m-bf16.gguf"
    [ -f "$bf16" ] || run "gguf $m" python3 "$here/convert_gguf.py" "$work/conv" "${pre[$m]:-llama-bpe}" -- "$ckpt" \
        --outtype bf16 --outfile "$bf16" || continue
    for q in ${quants//,/ }; do
        gguf="$work/$m-$q.gguf"
        plan="$work/$m-$q.ucp"
        [ -f "$gguf" ] || run "quantize $m $q" "$work/peer/llama-quantize" --pure "$bf16" "$gguf" "${qtype[$q]}" || continue
        t0=$(date +%s%N)
        run "compile $m $q" "$kit/unicornc" compile "$ckpt" "${target[@]}" --weights "$q" -o "$plan" || continue
        ms=$((($(date +%s%N) - t0) / 1000000))
        echo "{\"model\":\"$m\",\"quant\":\"$q\",\"engine\":\"unicornc\",\"compile_s\":$ms.0e-3}" >>"$results"
        for r in $(seq 1 "$rounds"); do
            order="unicorn llama"
            [ $((r % 2)) -eq 0 ] && order="llama unicorn"
            for e in $order; do
                if [ "$e" = unicorn ]; then
                    say "round $r $m $q unicorn"
                    j=$("$kit/unicorn-rt" "$plan" "${rt_dev[@]}" --bench --prompt-len "$plen" --gen "$gen" \
                        --repeat 1 --json 2>>"$log") || { say "unicorn-rt FAILED"; continue; }
                    echo "{\"model\":\"$m\",\"quant\":\"$q\",\"round\":$r,\"engine\":\"unicorn\",\"result\":$j}" >>"$results"
                else
                    say "round $r $m $q llama.cpp"
                    for args in "-p $plen -n 0" "-p 0 -n $gen -d $plen"; do
                        # shellcheck disable=SC2086
                        j=$("$work/peer/llama-bench" -m "$gguf" "${peer_dev[@]}" $args -r 1 -o json 2>>"$log") \
                            || { say "llama-bench FAILED"; continue; }
                        echo "{\"model\":\"$m\",\"quant\":\"$q\",\"round\":$r,\"engine\":\"llama.cpp\",\"args\":\"$args\",\"result\":$(echo "$j" | tr -d '\n')}" >>"$results"
                    done
                fi
            done
        done
        say "profile $m $q"
        "$kit/unicorn-rt" "$plan" "${rt_dev[@]}" --bench --prompt-len "$plen" --gen "$gen" --repeat 1 --profile \
            >"$out/profile-$m-$q.txt" 2>>"$log" || say "profile FAILED"
        rm -f "$plan"
        [ -n "${PRUNE:-}" ] && rm -f "$gguf"
    done
done

python3 - "$results" "$out/summary.md" "$plen" "$gen" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
plen, gen = sys.argv[3], sys.argv[4]
def spread(v):
    return (statistics.median(v), min(v), max(v)) if v else None
table = {}
for r in rows:
    key = (r["model"], r["quant"])
    t = table.setdefault(key, {"u_pre": [], "u_dec": [], "l_pre": [], "l_dec": [], "compile": []})
    if r["engine"] == "unicornc":
        t["compile"].append(r["compile_s"])
    elif r["engine"] == "unicorn":
        t["u_pre"].append(r["result"]["prefill_tok_s"]["median"])
        t["u_dec"].append(r["result"]["decode_tok_s"]["median"])
    else:
        for b in r["result"]:
            (t["l_pre"] if b["n_prompt"] > 0 else t["l_dec"]).append(b["avg_ts"])
fmt = lambda s: "-" if s is None else f"{s[0]:.1f} ({s[1]:.1f}-{s[2]:.1f})"
lines = [f"| model | weights | prefill {plen}, Unicorn | llama.cpp | ratio | decode {gen} at depth {plen}, Unicorn | llama.cpp | ratio |",
         "| --- | --- | --- | --- | --- | --- | --- | --- |"]
for (m, q), t in table.items():
    up, lp, ud, ld = (spread(t[k]) for k in ("u_pre", "l_pre", "u_dec", "l_dec"))
    ratio = lambda a, b: "-" if not a or not b else f"{a[0] / b[0]:.2f}x"
    lines.append(f"| {m} | {q} | {fmt(up)} | {fmt(lp)} | {ratio(up, lp)} | {fmt(ud)} | {fmt(ld)} | {ratio(ud, ld)} |")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
