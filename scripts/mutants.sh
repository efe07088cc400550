#!/usr/bin/env bash
# Mutation testing of the numeric core with cargo-mutants: each mutant (an operator swapped, a return value
# replaced, a branch deleted) is built and the whole workspace's tests run against it; a mutant the tests let
# pass ("missed") is a line no test would notice breaking.
#
#   scripts/mutants.sh                      # the numeric core (the list below)
#   scripts/mutants.sh runtime/src/sampler.rs runtime/src/generate.rs    # just these files
#   scripts/mutants.sh --list               # list the mutants, run nothing
#
# Slow: every mutant is a rebuild plus the full test suite (up to a minute on 2 cores), so this is not part of
# CI. Results: mutants.out/ (caught.txt, missed.txt, timeout.txt, unviable.txt, and a log per mutant).
# The whole workspace's suite first runs here unmutated, and nothing is counted unless it passes: cargo-mutants'
# own baseline tests only the packages holding the mutated files (compiler, runtime), not the end-to-end
# suite, and a test timeout taken from it (its 20 s floor) is shorter than the end-to-end suite takes on 2
# cores, which turns every mutant that reaches it into a "timeout". So the test timeout comes from this run
# (4x, at least 120 s), and the scratch copy starts from this tree's target/ (no second full build). The
# end-to-end tests run the binaries, which `cargo test --workspace` rebuilds from the mutated sources
# because compiler/ and runtime/ have integration tests of their own (runtime/tests/cli.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants

core=(
  ir/src/quant.rs
  runtime/src/sampler.rs
  runtime/src/generate.rs
  runtime/src/session.rs
  runtime/src/cpu/q8.rs
  runtime/src/cpu/matmul.rs
  runtime/src/cpu/matmul_x8.rs
  runtime/src/cpu/matmul_avx2.rs
  runtime/src/cpu/attention.rs
  runtime/src/cpu/norm.rs
  runtime/src/cpu/rope.rs
  runtime/src/cpu/kv.rs
  runtime/src/cpu/elementwise.rs
  compiler/src/frontend/config/rope.rs
)
list=()
files=()
for a in "$@"; do
  case "$a" in
    --list) list=(--list) ;;
    *) files+=("$a") ;;
  esac
done
[ ${#files[@]} -gt 0 ] || files=("${core[@]}")
args=()
for f in "${files[@]}"; do
  [ -f "$f" ] && args+=(--file "$f")
done
[ ${#args[@]} -gt 0 ] || { echo "mutants.sh: none of the files exist: ${files[*]}" >&2; exit 2; }

if [ ${#list[@]} -gt 0 ]; then
  exec cargo mutants --list "${args[@]}"
fi
nice -n 19 cargo test --workspace --no-run --quiet
t0=$(date +%s)
nice -n 19 cargo test --workspace --quiet >/dev/null 2>&1 || {
  echo "mutants.sh: the unmutated workspace suite fails (run cargo test --workspace); no mutants tested" >&2
  exit 1
}
secs=$(($(date +%s) - t0))
timeout=$((secs * 4 > 120 ? secs * 4 : 120))
echo "unmutated workspace suite passed in ${secs}s; test timeout ${timeout}s"

nice -n 19 cargo mutants "${args[@]}" --test-workspace=true --baseline=skip --copy-target=true \
  --timeout "$timeout" --jobs 1 --output . || status=$?
if [ -d mutants.out ]; then
  for k in caught missed timeout unviable; do
    printf '%-9s %s\n' "$k" "$( [ -f mutants.out/$k.txt ] && wc -l <mutants.out/$k.txt || echo 0)"
  done
  [ -s mutants.out/missed.txt ] && { echo "missed:"; cat mutants.out/missed.txt; }
fi
exit "${status:-0}"
