#!/usr/bin/env bash
# Build llama.cpp (vendored in the llama-cpp-python source distribution from PyPI) and convert checkpoints to GGUF.
#
#   bench/llama_cpp.sh build [--vulkan]                   # llama-bench + llama-quantize, cached
#   bench/llama_cpp.sh gguf CKPT_DIR NAME PRE [QUANTS]    # CKPT_DIR -> NAME-bf16.gguf -> NAME-{q8_0,q4_0}.gguf
#                                                         # PRE: llama.cpp pre-tokenizer name (see convert_gguf.py)
#   bench/llama_cpp.sh paths [--vulkan]                   # print the paths the other commands use
#   --drop-bf16 (with gguf): delete NAME-bf16.gguf once the quantized files exist (saves 16 GB for the 8B)
#
# Everything lives under $UNICORN_BENCH_CACHE (default ~/.cache/unicorn-bench); nothing is written into the repo.
# Reruns are cheap: the download, the unpacked tree, the build and every GGUF are reused when present.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"   # pinned; its vendor/llama.cpp is what we build
CACHE="${UNICORN_BENCH_CACHE:-$HOME/.cache/unicorn-bench}"
LDIR="$CACHE/llama.cpp"
SRC="$LDIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
GGUF_DIR="$CACHE/gguf"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "llama_cpp.sh: $*" >&2; exit 1; }
log() { echo "llama_cpp.sh: $*" >&2; }

vulkan=0
drop_bf16=0
build_dir() { if [ "$vulkan" = 1 ]; then echo "$LDIR/build-$LLAMA_CPP_PYTHON_VERSION-vulkan"; else echo "$LDIR/build-$LLAMA_CPP_PYTHON_VERSION-cpu"; fi; }

apt_install() {  # apt_install DEBIAN_PACKAGE
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y "$1" >/dev/null 2>&1 || { $sudo apt-get update >/dev/null && $sudo apt-get install -y "$1" >/dev/null; } \
        || die "could not install $1 (apt-get install $1)"
}

need_tool() {  # need_tool BINARY DEBIAN_PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    log "$1 missing; installing Debian package $2"
    apt_install "$2"
}

fetch() {
    [ -f "$SRC/CMakeLists.txt" ] && return 0
    mkdir -p "$LDIR"
    local sdist="$LDIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
    if [ ! -f "$sdist" ]; then
        log "downloading the llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION source distribution from PyPI"
        python3 -m pip download --quiet --no-binary :all: --no-deps --no-build-isolation \
            "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$LDIR" \
            || python3 -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$LDIR"
    fi
    [ -f "$sdist" ] || die "no $sdist after pip download"
    tar -xzf "$sdist" -C "$LDIR"
    [ -f "$SRC/CMakeLists.txt" ] || die "no vendored llama.cpp at $SRC"
}

cmd_build() {
    fetch
    need_tool cmake cmake
    need_tool g++ g++
    local b; b="$(build_dir)"
    if [ -x "$b/bin/llama-bench" ] && [ -x "$b/bin/llama-quantize" ]; then
        log "already built: $b/bin"; return 0
    fi
    local extra=()
    if [ "$vulkan" = 1 ]; then
        need_tool glslc glslc
        [ -f /usr/include/vulkan/vulkan.h ] || { log "installing libvulkan-dev"; apt_install libvulkan-dev; }
        extra+=(-DGGML_VULKAN=ON)
    fi
    local t0; t0=$(date +%s)
    cmake -S "$SRC" -B "$b" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_TOOLS=ON "${extra[@]}" >"$b.configure.log" 2>&1 \
        || { tail -30 "$b.configure.log" >&2; die "cmake configure failed (log: $b.configure.log)"; }
    cmake --build "$b" --config Release -j "$(nproc)" --target llama-bench llama-quantize >"$b.build.log" 2>&1 \
        || { tail -30 "$b.build.log" >&2; die "cmake build failed (log: $b.build.log)"; }
    local t1; t1=$(date +%s)
    echo "$((t1 - t0))" >"$b.build_seconds"
    log "built llama-bench and llama-quantize in $((t1 - t0)) s: $b/bin"
}

# The converter needs torch, numpy, safetensors, transformers (taken from the system Python), sentencepiece
# (imported unconditionally by the Qwen2/Qwen3 and Llama vocab code, even for tokenizer.json checkpoints) and
# the vendored gguf-py (put on PYTHONPATH). sentencepiece goes into a venv in the cache that sees the system
# site-packages, so the system Python is left alone.
VENV="$LDIR/venv"
convert_env() {
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import sentencepiece" 2>/dev/null; then
        log "creating $VENV (system site-packages + sentencepiece)"
        python3 -m venv --system-site-packages "$VENV"
        "$VENV/bin/python" -m pip install --quiet "sentencepiece>=0.1.98,<0.3.0"
    fi
    PYTHONPATH="$SRC/gguf-py${PYTHONPATH:+:$PYTHONPATH}"; export PYTHONPATH
}

cmd_gguf() {
    local ckpt="$1" name="$2" pre="$3" quants="${4:-q8_0,q4_0}"
    [ -f "$ckpt/config.json" ] || die "no config.json in $ckpt"
    fetch
    cmd_build
    mkdir -p "$GGUF_DIR"
    local b; b="$(build_dir)"
    local base="$GGUF_DIR/$name-bf16.gguf"
    local need=0 q
    for q in ${quants//,/ }; do [ -f "$GGUF_DIR/$name-$q.gguf" ] || need=1; done
    if [ "$need" = 1 ] && [ ! -f "$base" ]; then
        log "converting $ckpt -> $base"
        convert_env
        "$VENV/bin/python" "$HERE/convert_gguf.py" "$SRC" "$pre" -- "$ckpt" --outtype bf16 --outfile "$base.part" >"$base.log" 2>&1 \
            || { tail -30 "$base.log" >&2; die "convert_hf_to_gguf.py failed (log: $base.log)"; }
        mv "$base.part" "$base"
    fi
    for q in ${quants//,/ }; do
        local out="$GGUF_DIR/$name-$q.gguf"
        [ -f "$out" ] && continue
        log "quantizing -> $out (--pure: every matrix, token_embd and output included, is ${q^^})"
        "$b/bin/llama-quantize" --pure "$base" "$out.part" "${q^^}" "$(nproc)" >"$out.log" 2>&1 \
            || { tail -30 "$out.log" >&2; die "llama-quantize failed (log: $out.log)"; }
        mv "$out.part" "$out"
    done
    if [ "$drop_bf16" = 1 ] && [ -f "$base" ]; then
        log "deleting $base (--drop-bf16)"; rm -f "$base"
    fi
}

cmd_paths() {
    echo "src=$SRC"
    echo "llama_bench=$(build_dir)/bin/llama-bench"
    echo "llama_quantize=$(build_dir)/bin/llama-quantize"
    echo "gguf_dir=$GGUF_DIR"
    echo "version=$LLAMA_CPP_PYTHON_VERSION"
}

[ $# -ge 1 ] || { sed -n '2,9p' "$0" >&2; exit 2; }
cmd="$1"; shift
args=()
for a in "$@"; do
    case "$a" in
        --vulkan) vulkan=1 ;;
        --drop-bf16) drop_bf16=1 ;;
        *) args+=("$a") ;;
    esac
done
set -- "${args[@]+"${args[@]}"}"
case "$cmd" in
    build) cmd_build ;;
    gguf) [ $# -ge 3 ] || die "usage: gguf CKPT_DIR NAME PRE [QUANTS]"; cmd_gguf "$@" ;;
    paths) cmd_paths ;;
    *) die "unknown command $cmd (build | gguf | paths)" ;;
esac
