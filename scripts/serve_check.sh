#!/usr/bin/env bash
# `unicorn-rt --serve` with real clients, as CI runs it (after `cargo build --bins`): the official `openai` Python
# client (scripts/serve_openai_check.py) and schemathesis fuzzing every endpoint from the server's own
# /openapi.json (no 5xx, no crash, no hang; bounded by example count and time), against a server started here
# on 127.0.0.1 on a free port and stopped afterwards, whatever happens.
#
#   bash scripts/serve_check.sh
#
# The Python packages, at pinned versions, go into a virtual environment outside the clone
# ($UNICORN_SERVE_VENV, default ~/.cache/unicorn/serve-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/debug"
[ -x "$bin/unicorn-rt" ] && [ -x "$bin/unicornc" ] || { echo "serve_check: build first (cargo build --workspace --bins)"; exit 1; }
venv="${UNICORN_SERVE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/unicorn/serve-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check openai==3.63.0 schemathesis==4.32.5

work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# A fixture with a chat template, in f32 (an f32 KV cache: answers from a reused prefix are exact), with a
# context of 256: room for most fuzzed conversations, and a generation to the context's end stays short.
cp -r tests/fixtures/llama_gqa "$work/model"
printf '%s' '{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}
{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}' > "$work/model/chat_template.jinja"
"$bin/unicornc" compile "$work/model" -o "$work/serve.ucp" --weights f32 --max-context 256 >/dev/null

"$bin/unicorn-rt" "$work/serve.ucp" --serve --host 127.0.0.1 --port 0 --parallel 4 2>"$work/server.log" &
pid=$!
url=""
for _ in $(seq 1 600); do
  url="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/server.log" | head -1 || true)"
  [ -n "$url" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/server.log"; echo "serve_check: the server did not start"; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { cat "$work/server.log"; echo "serve_check: no address after 60 s"; exit 1; }
echo "serve_check: server at $url"

timeout 300 "$venv/bin/python" scripts/serve_openai_check.py "$url"

# Every check (schemathesis' default) but one on the generation endpoints (scripts/schemathesis.toml says
# why), positive and negative cases, at most 40 cases per operation and phase and 60 s of fuzzing; a request
# that takes 30 s is a failure (a hang).
# (scripts/schemathesis_run.py works around a CPython 3.11 bug that hypothesis can trip.)
timeout 240 "$venv/bin/python" scripts/schemathesis_run.py --config-file scripts/schemathesis.toml run "$url/openapi.json" \
  --mode all --max-examples 40 --max-time 60 --request-timeout 30 --workers 2 \
  --generation-database none --no-color --seed 1

# The server is still up, answers, and never printed a panic or an error.
kill -0 "$pid" 2>/dev/null || { cat "$work/server.log"; echo "serve_check: the server died"; exit 1; }
"$venv/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" "$url/health"
if [ "$(wc -l <"$work/server.log")" -ne 1 ]; then
  cat "$work/server.log"
  echo "serve_check: the server printed more than its address"
  exit 1
fi
echo "serve_check: passed"
