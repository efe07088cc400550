#!/usr/bin/env bash
# The demo: build Unicorn, compile the tiny demo checkpoint (examples/demo, a Llama trained on a few KB of
# English prose) to a q8_0 CPU plan, describe it, and generate text from a prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
prompt=${1:-"The lighthouse"}
bash .ci/deps
cargo build --release --bins
mkdir -p out
./target/release/unicornc compile examples/demo -o out/demo.ucp --weights q8_0
./target/release/unicornc inspect out/demo.ucp
./target/release/unicorn-rt out/demo.ucp --prompt "$prompt" -n 80 --temperature 0.7 --seed 1
