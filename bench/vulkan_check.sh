#!/usr/bin/env bash
# The kernels that need what lavapipe lacks (cooperative matrices; on other devices subgroup shuffles), checked
# on a GPU that has them, on a machine without Rust: everything comes in KIT_DIR (bench/vulkan_kit.sh, plus
# the e2e test binary copied to KIT_DIR/e2e).
#
#   bench/vulkan_check.sh KIT_DIR OUT_DIR CHECKPOINT [QUANTS]        QUANTS default q4_0,q8_0
#
# 1. (unless SKIP_KERNEL_TESTS is set) The GPU kernel tests (tests/tests/vulkan_kernels.rs) on this device: every matmul path the device runs
#    against the f64 reference (the cooperative-matrix GEMM at its f16 tolerance).
# 2. Per QUANT, CHECKPOINT compiled twice for --target vulkan, for this GPU (--device-profile auto: the
#    cooperative-matrix GEMM in prefill where the GPU has it, subgroup reductions in decode) and for the
#    generic profile (neither), and one prefill of 64 tokens through each, the logits of every position
#    compared: OUT_DIR/check.txt. With BENCH=1, also both plans' --bench (512-token prefill, 128 decode steps)
#    in three interleaved rounds (OUT_DIR/bench.jsonl, medians in check.txt) and a --profile run of each.
set -uo pipefail
kit="$(cd "$1" && pwd)"
out="$(mkdir -p "$2" && cd "$2" && pwd)"
ckpt="$3"
quants="${4:-q4_0,q8_0}"
work="${VULKAN_BENCH_WORK:-/tmp/unicorn-vulkan-bench}/check"
mkdir -p "$work"
if [ -z "${SKIP_KERNEL_TESTS:-}" ]; then
    "$kit/e2e" vulkan_kernels --test-threads 4 >"$out/kernels.txt" 2>&1
    echo "kernel tests: exit $? ($(grep -c '^test .* ok$' "$out/kernels.txt") passed)" | tee -a "$out/check.txt"
fi
tokens=$(seq -s, 1 5 316)
for q in ${quants//,/ }; do
    for p in auto generic; do
        "$kit/unicornc" compile "$ckpt" --target vulkan --weights "$q" --device-profile "$p" -o "$work/$q-$p.ucp" \
            >>"$out/check.log" 2>&1 || echo "compile $q $p FAILED" | tee -a "$out/check.txt"
        "$kit/unicorn-rt" "$work/$q-$p.ucp" --device vulkan --tokens "$tokens" --logits-out "$work/$q-$p.npy" \
            >>"$out/check.log" 2>&1 || echo "prefill $q $p FAILED" | tee -a "$out/check.txt"
    done
    if [ -n "${BENCH:-}" ]; then
        # The two plans' speed, interleaved rounds: what this GPU's kernels buy over the generic ones.
        for r in 1 2 3; do
            for p in auto generic; do
                j=$("$kit/unicorn-rt" "$work/$q-$p.ucp" --device vulkan --bench --prompt-len "${PLEN:-512}" --gen "${GEN:-128}" --repeat 1 \
                    --json 2>>"$out/check.log") || { echo "bench $q $p FAILED" | tee -a "$out/check.txt"; continue; }
                echo "{\"quant\":\"$q\",\"profile\":\"$p\",\"round\":$r,\"result\":$j}" >>"$out/bench.jsonl"
            done
        done
        for p in auto generic; do
            "$kit/unicorn-rt" "$work/$q-$p.ucp" --device vulkan --bench --prompt-len "${PLEN:-512}" --gen "${GEN:-128}" --repeat 1 --profile \
                >"$out/profile-$q-$p.txt" 2>>"$out/check.log"
        done
    fi
    python3 - "$work/$q-auto.npy" "$work/$q-generic.npy" "$q" <<'PY' | tee -a "$out/check.txt"
import sys, numpy as np
a, b = np.load(sys.argv[1]).astype(np.float64), np.load(sys.argv[2]).astype(np.float64)
rel = np.abs(a - b).max() / np.abs(b).max()
same = (a.argmax(-1) == b.argmax(-1)).mean()
print(f"{sys.argv[3]}: {a.shape[0]} positions, this GPU's plan vs the generic plan: max |diff| {rel:.2e} of max |logit|, "
      f"same argmax at {same * 100:.0f}% of positions, finite {np.isfinite(a).all()}")
PY
done
if [ -f "$out/bench.jsonl" ]; then
    python3 - "$out/bench.jsonl" <<'PY' | tee -a "$out/check.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for key in sorted({(r["quant"], r["profile"]) for r in rows}):
    rs = [r["result"] for r in rows if (r["quant"], r["profile"]) == key]
    pre = statistics.median(r["prefill_tok_s"]["median"] for r in rs)
    dec = statistics.median(r["decode_tok_s"]["median"] for r in rs)
    print(f"{key[0]} {key[1]:8} prefill: {pre:8.1f} tok/s   decode: {dec:7.1f} tok/s   ({len(rs)} rounds)")
PY
fi
