#!/usr/bin/env bash
# Run a fuzz target (fuzz/fuzz_targets/) for a while: installs cargo-fuzz if missing, builds the seed corpus,
# builds the target with AddressSanitizer on the nightly toolchain, and runs libFuzzer at low priority.
#   usage: scripts/fuzz.sh [checkpoint|plan] [SECONDS]      (defaults: checkpoint, 1800)
# Extra libFuzzer flags can be passed in FUZZ_FLAGS (e.g. FUZZ_FLAGS="-fork=1 -ignore_crashes=1").
# The corpus grows in fuzz/corpus/TARGET, crashes land in fuzz/artifacts/TARGET; neither is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-checkpoint}
seconds=${2:-1800}
case "$target" in
  checkpoint | plan) ;;
  *) echo "unknown target '$target' (checkpoint or plan)" >&2; exit 2 ;;
esac
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
corpus=fuzz/corpus/$target
mkdir -p "$corpus" "fuzz/artifacts/$target"

le32() { # a u32 as 4 little-endian bytes
  local n=$1
  printf "\\x$(printf %02x $((n & 255)))\\x$(printf %02x $(((n >> 8) & 255)))"
  printf "\\x$(printf %02x $(((n >> 16) & 255)))\\x$(printf %02x $(((n >> 24) & 255)))"
}

if [ "$target" = checkpoint ]; then
  # One seed per single-file fixture and weight format: the config and the safetensors header, with the data
  # section left to the target's padding (see fuzz/fuzz_targets/checkpoint.rs for the layout).
  for dir in tests/fixtures/*/; do
    name=$(basename "$dir")
    [ -f "$dir/model.safetensors" ] && [ -f "$dir/config.json" ] || continue
    cfg=$(stat -c %s "$dir/config.json")
    size=$(stat -c %s "$dir/model.safetensors")
    hlen=$(od -An -tu8 -N8 "$dir/model.safetensors" | tr -d ' ')
    for format in 0 3 4; do
      { printf "\\x$(printf %02x $format)\\x00\\x00\\x00"; le32 "$cfg"; le32 $((size - 8 - hlen))
        cat "$dir/config.json"; head -c $((8 + hlen)) "$dir/model.safetensors"; } >"$corpus/seed-$name-$format"
    done
  done
  max_len=32768
  timeout=10
else
  # The seed plans are compiled by the target at start-up; these inputs pick one each, unedited (bit 7: keep
  # the logits of every prompt row; bit 6: prefill in chunks of 2).
  for i in 0 1 2 3 4; do
    printf "\\x$(printf %02x $i)" >"$corpus/seed-$i"
    printf "\\x$(printf %02x $((i | 128)))" >"$corpus/seed-$i-all-rows"
    printf "\\x$(printf %02x $((i | 64)))" >"$corpus/seed-$i-chunked"
  done
  max_len=256
  timeout=20
fi

nice -n 10 cargo +nightly fuzz build "$target"
# Scratch folders of runs that died without cleaning up (a crash skips the exit handler).
for d in /dev/shm/unicorn-fuzz-"$target"-*; do
  [ -d "$d" ] || continue
  kill -0 "${d##*-}" 2>/dev/null || rm -rf "$d"
done
log=fuzz/artifacts/$target/run-$(date +%Y%m%d-%H%M%S).log
set +e
# shellcheck disable=SC2086 # FUZZ_FLAGS is a list of flags
nice -n 19 cargo +nightly fuzz run "$target" "$corpus" -- \
  -max_total_time="$seconds" -rss_limit_mb=2048 -timeout="$timeout" -max_len="$max_len" \
  -print_final_stats=1 ${FUZZ_FLAGS:-} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo "--- $target: log in $log"
grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$log" | tail -1 || true
grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec' "$log" || true
grep -E 'Test unit written to|artifact_prefix' "$log" | sed 's/^.*written to /crash: /' || true
exit "$status"
