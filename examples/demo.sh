#!/usr/bin/env bash
# The demo: build Unicorn, compile the demo checkpoint (examples/demo) to a q8_0 CPU plan, describe it, and
# generate text from a prompt; where the checkpoint has a chat template (the model examples/train_demo.py
# trains on Jane Austen's novels), also answer a question in it.
#   bash examples/demo.sh ["PROMPT" ["QUESTION"]]
set -euo pipefail
cd "$(dirname "$0")/.."
prompt=${1:-"The lighthouse"}
question=${2:-"How do you do?"}
bash .ci/deps
cargo build --release --bins
mkdir -p out
./target/release/unicornc compile examples/demo -o out/demo.ucp --weights q8_0
./target/release/unicornc inspect out/demo.ucp
echo "--- $prompt"
./target/release/unicorn-rt out/demo.ucp --prompt "$prompt" -n 80 --temperature 0.7 --seed 1
if grep -q '"chat_template"' examples/demo/tokenizer_config.json 2>/dev/null; then
  echo "--- user: $question"
  printf '%s\n' "$question" | ./target/release/unicorn-rt out/demo.ucp --chat -n 80 --temperature 0.7 --seed 1
fi
