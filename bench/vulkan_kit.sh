#!/usr/bin/env bash
# Make the kit bench/vulkan_compare.sh and bench/vulkan_check.sh run from on a GPU machine without network or
# Rust: the release binaries, the end-to-end test binary (for the GPU kernel tests), the prebuilt llama.cpp
# (bench/llama_cpp_prebuilt.sh build, run first) and its GGUF converter.
#
#   bench/vulkan_kit.sh KIT_DIR        # about 12 MB (the llama.cpp libraries xz-compressed)
set -euo pipefail
mkdir -p "$1"
kit="$(cd "$1" && pwd)"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$here/.."
paths="$("$here/llama_cpp_prebuilt.sh" paths)"
bin_dir="$(sed -n 's/^lib_dir=//p' <<<"$paths")"
src_dir="$(sed -n 's/^src=//p' <<<"$paths")"
[ -d "$bin_dir" ] && [ -d "$src_dir" ] || { echo "vulkan_kit.sh: run bench/llama_cpp_prebuilt.sh build first" >&2; exit 1; }
# unicornc without its NPU MLIR verification (the default `npu-mlir` feature links all of LLVM, ~170 MB).
(cd "$repo" && cargo build --release -p unicorn-runtime --bins && cargo build --release -p unicorn-compiler --no-default-features --bins)
cp "$repo/target/release/unicorn-rt" "$repo/target/release/unicornc" "$kit/"
# The end-to-end tests without the compiler's MLIR (which links LLVM): bench/vulkan_check.sh runs its GPU
# kernel tests.
e2e="$(cd "$repo" && cargo test --release -p unicorn-tests --no-default-features --no-run --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    j = json.loads(line)
    if j.get("executable") and j["target"]["name"] == "e2e":
        print(j["executable"])')"
cp "$e2e" "$kit/e2e"
strip "$kit/unicorn-rt" "$kit/unicornc" "$kit/e2e"
# The Vulkan backend, the CPU variants ggml may pick on an x86 host, the tools and what the build was.
(cd "$bin_dir" && tar cJf "$kit/peer.tar.xz" libggml-base.so libggml-cpu-*.so libggml-vulkan.so libggml.vulkan.*.so \
    libllama-common.so libllama.vulkan.*.so llama-bench llama-quantize llama-sysinfo build-info.txt)
(cd "$src_dir" && tar cJf "$kit/convert.tar.xz" convert_hf_to_gguf.py conversion gguf-py)
du -sh "$kit"/*
