#!/usr/bin/env bash
# Parity on checkpoints the tests never saw: for each architecture, make a checkpoint with transformers' default
# initialization and a config unlike any fixture (tests/fixtures/make_fixtures.py --unseen), compile it with
# --weights f32, and compare unicorn-rt's logits and greedy ids with transformers'. Needs torch + transformers.
#   usage: scripts/check_unseen.sh [SEED] [ARCH...]
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-11}
shift || true
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(llama mistral qwen2 qwen3 gemma3_text gemma3)
cargo build --release --bins -q
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for arch in "${archs[@]}"; do
  ck="$work/$arch"
  python3 tests/fixtures/make_fixtures.py --unseen "$ck" --arch "$arch" --seed "$seed" >/dev/null
  ./target/release/unicornc compile "$ck" -o "$work/$arch.ucp" --weights f32 -q
  ids=$(python3 -c "import json;print(','.join(map(str,json.load(open('$ck/expected.json'))['prompt_ids'])))")
  ./target/release/unicorn-rt "$work/$arch.ucp" --tokens "$ids" --logits-out "$work/$arch.npy"
  n=$(python3 -c "import json;print(len(json.load(open('$ck/expected.json'))['greedy_ids']))")
  got=$(./target/release/unicorn-rt "$work/$arch.ucp" --tokens "$ids" -n "$n" --temperature 0 --print-ids 2>/dev/null)
  python3 - "$ck" "$work/$arch.npy" "$got" "$arch" <<'PY'
import json, sys, numpy as np
ck, npy, got, arch = sys.argv[1:]
want = np.load(f"{ck}/logits.npy"); have = np.load(npy)
exp = json.load(open(f"{ck}/expected.json"))
rel = float(np.abs(have - want).max() / np.abs(want).max())
same = (have.argmax(1) == want.argmax(1)).mean()
greedy_ok = got == ",".join(map(str, exp["greedy_ids"]))
ok = rel <= 1e-3 and greedy_ok
print(f"{arch:12} {exp['architecture']:32} max|dlogit|/max|logit| = {rel:.2e}  argmax {same*100:.0f}%  "
      f"greedy {'same' if greedy_ok else 'DIFFERENT'}  {'ok' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
done
