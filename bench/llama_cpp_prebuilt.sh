#!/usr/bin/env bash
# llama.cpp as its users get it prebuilt: the shared libraries that the npm package @node-llama-cpp/linux-x64-vulkan
# ships, with llama-bench, llama-quantize and llama-server compiled from the exact llama.cpp source of that build.
#
#   bench/llama_cpp_prebuilt.sh build                       # fetch, build the tools, print what loads here; cached
#   bench/llama_cpp_prebuilt.sh gguf CKPT_DIR NAME PRE [QUANTS]   # CKPT_DIR -> NAME-bf16.gguf -> NAME-{q8_0,q4_0}.gguf
#                                                           # PRE: llama.cpp pre-tokenizer name (see convert_gguf.py)
#   bench/llama_cpp_prebuilt.sh paths                       # key=value: the paths and the build the others use
#   bench/llama_cpp_prebuilt.sh info                        # what the libraries load on this machine, for people
#   --drop-bf16 (with gguf): delete NAME-bf16.gguf once the quantized files exist
#
# What it does (each step is skipped when its result exists):
#   1. `npm pack` @node-llama-cpp/linux-x64-vulkan@V (the libraries: libllama, libggml, libggml-base,
#      libllama-common, one libggml-cpu-<variant>.so per x86 generation, libggml-vulkan) and node-llama-cpp@V (which
#      carries the llama.cpp source of that build as llama/gitRelease.bundle, and llama/patches/*.diff applied to
#      it before the libraries were built). No npm install scripts run: the tarballs are only unpacked.
#   2. `git clone` the bundle and apply the patches.
#   3. compile tools/llama-bench and tools/quantize of that source, and bench/llama_sysinfo.cpp, with g++
#      against the package's libraries; the binaries go beside the libraries (rpath $ORIGIN).
#      llama-server too: tools/server/*.cpp, plus what CMake would build beside it as static libraries (the
#      package has none of them): tools/mtmd (the multimodal library the server links; its models/*.cpp) and
#      vendor/hash. cpp-httplib is not compiled again: libllama-common.so carries it and exports its symbols.
#      The web UI table that CMake generates (scripts/ui-assets.cmake -> ui.h, ui.cpp) is generated here as
#      CMake does it offline: no assets (the UI is an npm build or a download; the API does not need it, the
#      server just registers no page for /). LLAMA_SUBPROCESS (a public define of llama-common, which changes the layout of
#      common_subproc) is set because the prebuilt libllama-common.so was built with it, checked by its
#      subprocess_create symbol; MTMD_VIDEO follows it, as in CMake. Objects are cached in obj/llama-server.
#   4. run llama_sysinfo: the llama.cpp build number and commit compiled into the libraries, the CPU backend
#      variant that ggml picks on this CPU and its features, and the devices it sees; kept in bin/build-info.txt.
# The GGUF conversion uses that source's convert_hf_to_gguf.py and gguf-py (through bench/convert_gguf.py), then
# the built llama-quantize --pure.
#
# Everything lives under $UNICORN_BENCH_CACHE (default ~/.cache/unicorn-bench)/llama.cpp-prebuilt/V/; nothing is
# written into the repository. Set NODE_LLAMA_CPP_VERSION to use another release (3.22.1 was checked).
set -euo pipefail

NODE_LLAMA_CPP_VERSION="${NODE_LLAMA_CPP_VERSION:-3.22.1}"
LIB_PKG="@node-llama-cpp/linux-x64-vulkan"
SRC_PKG="node-llama-cpp"
CACHE="${UNICORN_BENCH_CACHE:-$HOME/.cache/unicorn-bench}"
PDIR="$CACHE/llama.cpp-prebuilt/$NODE_LLAMA_CPP_VERSION"
NPM_DIR="$PDIR/npm"
LIB_UNPACK="$PDIR/pkg-linux-x64-vulkan"
SRC_UNPACK="$PDIR/pkg-node-llama-cpp"
SRC="$PDIR/src"
BIN="$PDIR/bin"
INFO="$BIN/build-info.txt"
GGUF_DIR="$CACHE/gguf-node-llama-cpp-$NODE_LLAMA_CPP_VERSION"
VENV="$PDIR/venv"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "llama_cpp_prebuilt.sh: $*" >&2; exit 1; }
log() { echo "llama_cpp_prebuilt.sh: $*" >&2; }

drop_bf16=0

need_tool() {  # need_tool BINARY DEBIAN_PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    die "$1 not found; install it first (Debian: apt-get install $2)"
}

# npm_fetch SPEC DEST: unpack the registry tarball of SPEC into DEST (its package/ folder), once.
npm_fetch() {
    local spec="$1" dest="$2"
    [ -f "$dest/package/package.json" ] && return 0
    need_tool npm npm
    mkdir -p "$NPM_DIR"
    local tgz
    log "downloading $spec from the npm registry"
    tgz="$(cd "$NPM_DIR" && npm pack --loglevel=error "$spec" 2>"$NPM_DIR/npm-pack.log" | tail -1)" \
        || { cat "$NPM_DIR/npm-pack.log" >&2; die "npm pack $spec failed: no such version, or the npm registry is not reachable"; }
    [ -n "$tgz" ] && [ -f "$NPM_DIR/$tgz" ] || die "npm pack $spec left no tarball in $NPM_DIR"
    rm -rf "$dest.part"
    mkdir -p "$dest.part"
    tar -xzf "$NPM_DIR/$tgz" -C "$dest.part" || die "could not unpack $NPM_DIR/$tgz"
    local got
    got="$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$dest.part/package/package.json" | head -1)"
    [ "$got" = "$NODE_LLAMA_CPP_VERSION" ] || die "$spec unpacked as version '$got', expected $NODE_LLAMA_CPP_VERSION"
    rm -rf "$dest"
    mv "$dest.part" "$dest"
}

lib_dir() { echo "$LIB_UNPACK/package/bins/linux-x64-vulkan"; }

fetch() {
    npm_fetch "$LIB_PKG@$NODE_LLAMA_CPP_VERSION" "$LIB_UNPACK"
    npm_fetch "$SRC_PKG@$NODE_LLAMA_CPP_VERSION" "$SRC_UNPACK"
    local l; l="$(lib_dir)"
    [ -d "$l" ] || die "no bins/linux-x64-vulkan in $LIB_PKG@$NODE_LLAMA_CPP_VERSION ($LIB_UNPACK)"
    local f
    for f in libggml-base.so libllama-common.so; do
        [ -f "$l/$f" ] || die "$LIB_PKG@$NODE_LLAMA_CPP_VERSION has no $f"
    done
    compgen -G "$l/libllama.vulkan*.so" >/dev/null || die "$LIB_PKG@$NODE_LLAMA_CPP_VERSION has no libllama.vulkan*.so"
    compgen -G "$l/libggml.vulkan*.so" >/dev/null || die "$LIB_PKG@$NODE_LLAMA_CPP_VERSION has no libggml.vulkan*.so"
    compgen -G "$l/libggml-cpu-*.so" >/dev/null || die "$LIB_PKG@$NODE_LLAMA_CPP_VERSION has no libggml-cpu-*.so"

    [ -f "$SRC/tools/llama-bench/llama-bench.cpp" ] && return 0
    need_tool git git
    local bundle="$SRC_UNPACK/package/llama/gitRelease.bundle"
    [ -f "$bundle" ] || die "$SRC_PKG@$NODE_LLAMA_CPP_VERSION has no llama/gitRelease.bundle"
    log "cloning the llama.cpp source from $bundle"
    rm -rf "$SRC.part"
    git clone --quiet "$bundle" "$SRC.part" 2>"$PDIR/clone.log" \
        || { cat "$PDIR/clone.log" >&2; die "git clone of $bundle failed"; }
    local p n=0
    for p in "$SRC_UNPACK"/package/llama/patches/*.diff; do
        [ -f "$p" ] || continue
        git -C "$SRC.part" apply "$p" || die "patch $(basename "$p") does not apply to the bundled source"
        log "applied $(basename "$p")"
        n=$((n + 1))
    done
    [ -f "$SRC.part/tools/llama-bench/llama-bench.cpp" ] || die "the bundle has no tools/llama-bench/llama-bench.cpp"
    [ -f "$SRC.part/tools/quantize/quantize.cpp" ] || die "the bundle has no tools/quantize/quantize.cpp"
    mv "$SRC.part" "$SRC"
    echo "$n" >"$SRC/.patches-applied"
}

# compile OUT SOURCES...: one tool against the package's libraries, placed in $BIN beside them.
compile() {
    local out="$1"; shift
    local l; l="$(lib_dir)"
    local libllama libggml
    libllama="$(basename "$(ls "$l"/libllama.vulkan*.so | head -1)")"
    libggml="$(basename "$(ls "$l"/libggml.vulkan*.so | head -1)")"
    # -O3 -DNDEBUG as llama.cpp's own Release build (without NDEBUG llama-bench warns that asserts are on).
    (cd "$SRC" && nice -n 10 g++ -std=c++17 -O3 -DNDEBUG -Iinclude -Iggml/include -Icommon -Ivendor "$@" \
        -o "$BIN/$out.part" -L"$BIN" -l:libllama-common.so -l:"$libllama" -l:"$libggml" -l:libggml-base.so \
        -Wl,-rpath,'$ORIGIN' -pthread -ldl) >"$BIN/$out.build.log" 2>&1 \
        || { tail -30 "$BIN/$out.build.log" >&2; die "compiling $out failed (log: $BIN/$out.build.log)"; }
    mv "$BIN/$out.part" "$BIN/$out"
}

# objects DIR FLAGS SOURCES...: compile each source to DIR/<its path, / as _>.o, nproc at a time, skipping one whose
# object is newer than it (the headers are not tracked: delete DIR after changing the source); FLAGS is one
# word-split string. The object paths end up in the array OBJS.
OBJS=()
objects() {
    local dir="$1" flags="$2"; shift 2
    local s o rel cc n=0
    mkdir -p "$dir"
    OBJS=()
    for s in "$@"; do
        rel="${s#"$SRC"/}"; rel="${rel#"$PDIR"/}"
        o="$dir/${rel//\//_}.o"
        OBJS+=("$o")
        [ -f "$o" ] && [ "$o" -nt "$s" ] && continue
        case "$s" in
            */sha1/sha1.c) cc=(g++ -x c++ -std=c++17) ;;  # CMake compiles it as C++ (LANGUAGE CXX)
            *.c) cc=(gcc -std=gnu11) ;;
            *) cc=(g++ -std=c++17) ;;
        esac
        while [ "$(jobs -rp | wc -l)" -ge "$(nproc)" ]; do wait -n || true; done
        # shellcheck disable=SC2086  # FLAGS is a list of words
        (cd "$SRC" && nice -n 10 "${cc[@]}" -O3 -DNDEBUG $flags -c "$s" -o "$o.part" >"$o.log" 2>&1 && mv "$o.part" "$o") &
        n=$((n + 1))
    done
    wait || true
    for o in "${OBJS[@]}"; do
        [ -f "$o" ] || { tail -30 "$o.log" >&2; die "compiling $(basename "$o" .o) failed (log: $o.log)"; }
    done
    [ "$n" = 0 ] || log "compiled $n object(s) into $dir"
}

# llama-server: see step 3 above.
build_server() {
    local od="$PDIR/obj/llama-server"
    local gen="$od/gen"
    [ -f "$SRC/tools/server/server.cpp" ] || die "the bundled source has no tools/server/server.cpp"
    [ -f "$SRC/tools/ui/ui.h.in" ] && [ -f "$SRC/tools/ui/ui.cpp.in" ] || die "the bundled source has no tools/ui/ui.{h,cpp}.in"
    nm -D --defined-only "$BIN/libllama-common.so" | grep ' subprocess_create$' >/dev/null \
        || die "libllama-common.so was built without LLAMA_SUBPROCESS; compiling the server against it needs that define off"
    nm -DC --defined-only "$BIN/libllama-common.so" | grep ' httplib::Server::listen(' >/dev/null \
        || die "libllama-common.so does not export cpp-httplib's server; compile vendor/cpp-httplib/httplib.cpp too"
    mkdir -p "$gen"
    # scripts/ui-assets.cmake's emit_files with no dist/ (its offline fallback): an empty asset table.
    sed -e 's/^#cmakedefine LLAMA_UI_HAS_ASSETS 1$/\/* #undef LLAMA_UI_HAS_ASSETS *\//' -e 's/@N_ASSETS@/0/g' \
        "$SRC/tools/ui/ui.h.in" >"$gen/ui.h.part"
    sed -e 's/@ASSET_ARRAYS@//' -e 's/@ASSET_TABLE@//' -e 's/@N_ASSETS@/0/g' -e 's/@USE_GZIP@/false/' \
        "$SRC/tools/ui/ui.cpp.in" >"$gen/ui.cpp.part"
    ! grep -q '@[A-Z_]*@\|cmakedefine' "$gen/ui.h.part" "$gen/ui.cpp.part" \
        || die "tools/ui/ui.{h,cpp}.in has placeholders this script does not fill; see scripts/ui-assets.cmake"
    local f
    for f in ui.h ui.cpp; do  # keep the old file (and its object's time) when nothing changed
        if cmp -s "$gen/$f.part" "$gen/$f"; then rm -f "$gen/$f.part"; else mv "$gen/$f.part" "$gen/$f"; fi
    done
    local common="-DLLAMA_SUBPROCESS -Iinclude -Iggml/include -Ivendor"
    objects "$od/hash" "$common -Ivendor/hash -w" \
        "$SRC"/vendor/hash/hash.cpp "$SRC"/vendor/hash/xxhash/xxhash.c "$SRC"/vendor/hash/sha1/sha1.c \
        "$SRC"/vendor/hash/sha256/sha256.c
    local hash_objs=("${OBJS[@]}")
    objects "$od/mtmd" "$common -DMTMD_VIDEO -Itools/mtmd -Wno-cast-qual" \
        "$SRC"/tools/mtmd/{mtmd,mtmd-audio,mtmd-image,mtmd-helper,mtmd-helper-gen,clip}.cpp "$SRC"/tools/mtmd/models/*.cpp
    local mtmd_objs=("${OBJS[@]}")
    objects "$od/server" "$common -Icommon -Itools/mtmd -Itools/server -I. -I$gen" \
        "$SRC"/tools/server/*.cpp "$gen/ui.cpp"
    compile llama-server "${OBJS[@]}" "${mtmd_objs[@]}" "${hash_objs[@]}"
}

cmd_build() {
    fetch
    need_tool g++ g++
    mkdir -p "$BIN"
    local l; l="$(lib_dir)"
    # The libraries beside the tools, as the package has them (the CPU variants are found next to libggml).
    local f
    for f in "$l"/*.so; do
        [ -f "$BIN/$(basename "$f")" ] || cp "$f" "$BIN/"
    done
    local t0; t0=$(date +%s)
    [ -x "$BIN/llama-bench" ] || { log "compiling llama-bench"; compile llama-bench "$SRC"/tools/llama-bench/*.cpp; }
    [ -x "$BIN/llama-quantize" ] || { log "compiling llama-quantize"; compile llama-quantize "$SRC"/tools/quantize/*.cpp; }
    [ -x "$BIN/llama-server" ] || { log "compiling llama-server (about 70 files; minutes)"; build_server; }
    if [ ! -x "$BIN/llama-sysinfo" ] || [ "$HERE/llama_sysinfo.cpp" -nt "$BIN/llama-sysinfo" ]; then
        compile llama-sysinfo "$HERE/llama_sysinfo.cpp"
    fi
    local t1; t1=$(date +%s)
    if [ "$t1" -gt "$t0" ]; then log "compiled in $((t1 - t0)) s"; fi
    # What loads on this machine; run every time, since the cache may move to another CPU.
    "$BIN/llama-sysinfo" >"$INFO.part" 2>"$BIN/llama-sysinfo.log" \
        || { cat "$BIN/llama-sysinfo.log" >&2; die "the prebuilt libraries do not load here (log: $BIN/llama-sysinfo.log)"; }
    {
        echo "package=$LIB_PKG@$NODE_LLAMA_CPP_VERSION"
        echo "source_package=$SRC_PKG@$NODE_LLAMA_CPP_VERSION"
        echo "patches_applied=$(cat "$SRC/.patches-applied" 2>/dev/null || echo '?')"
        echo "built_on=$(sed -n 's/.*"platformInfo":{"name":"\([^"]*\)","version":"\([^"]*\)".*/\1 \2/p' "$l/_nlcBuildMetadata.json" 2>/dev/null)"
        cat "$INFO.part"
    } >"$INFO"
    rm -f "$INFO.part"
    cmd_info
}

kv() { sed -n "s/^$1=//p" "$INFO" | head -1; }

cmd_info() {
    [ -f "$INFO" ] || die "not built yet: run bench/llama_cpp_prebuilt.sh build"
    cat >&2 <<EOF
llama.cpp prebuilt ($(kv package), libraries built on $(kv built_on) with $(kv compiler))
  llama.cpp build:  $(kv build_number), commit $(kv commit) (source: $(kv source_package) llama/gitRelease.bundle + $(kv patches_applied) patch(es))
  CPU variant:      $(kv cpu_variant)  ($(kv cpu_backend_lib))
  CPU features:     $(kv cpu_features)
  devices:          $(kv devices)
  llama-bench:      $BIN/llama-bench
  llama-quantize:   $BIN/llama-quantize
  llama-server:     $BIN/llama-server
  libraries:        $BIN
  source:           $SRC
  GGUF files:       $GGUF_DIR
EOF
}

# The converter imports torch, numpy, transformers, safetensors (from the system Python, as bench/make_checkpoints.py
# needs them anyway), sentencepiece and pyyaml (gguf-py); those two go into a venv in the cache that sees the system
# site-packages. gguf-py comes from the bundled source (on PYTHONPATH), so it matches the converter.
convert_env() {
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import sentencepiece, yaml" 2>/dev/null; then
        log "creating $VENV (system site-packages + sentencepiece, pyyaml)"
        python3 -m venv --system-site-packages "$VENV" || die "python3 -m venv failed"
        "$VENV/bin/python" -m pip install --quiet "sentencepiece>=0.1.98,<0.3.0" pyyaml \
            || die "pip install sentencepiece pyyaml failed"
    fi
    "$VENV/bin/python" -c "import torch, numpy, transformers, safetensors" 2>/dev/null \
        || die "the converter needs torch, numpy, transformers and safetensors in python3 (pip install torch transformers safetensors numpy)"
    PYTHONPATH="$SRC/gguf-py${PYTHONPATH:+:$PYTHONPATH}"; export PYTHONPATH
}

cmd_gguf() {
    local ckpt="$1" name="$2" pre="$3" quants="${4:-q8_0,q4_0}"
    [ -f "$ckpt/config.json" ] || die "no config.json in $ckpt"
    [ -x "$BIN/llama-quantize" ] && [ -f "$INFO" ] || cmd_build
    mkdir -p "$GGUF_DIR"
    local base="$GGUF_DIR/$name-bf16.gguf"
    local need=0 q
    for q in ${quants//,/ }; do [ -f "$GGUF_DIR/$name-$q.gguf" ] || need=1; done
    if [ "$need" = 1 ] && [ ! -f "$base" ]; then
        log "converting $ckpt -> $base"
        convert_env
        nice -n 10 "$VENV/bin/python" "$HERE/convert_gguf.py" "$SRC" "$pre" -- "$ckpt" --outtype bf16 --outfile "$base.part" \
            >"$base.log" 2>&1 || { tail -30 "$base.log" >&2; die "convert_hf_to_gguf.py failed (log: $base.log)"; }
        mv "$base.part" "$base"
    fi
    for q in ${quants//,/ }; do
        local out="$GGUF_DIR/$name-$q.gguf"
        [ -f "$out" ] && continue
        log "quantizing -> $out (--pure: every matrix, token_embd and output included, is ${q^^})"
        nice -n 10 "$BIN/llama-quantize" --pure "$base" "$out.part" "${q^^}" "$(nproc)" >"$out.log" 2>&1 \
            || { tail -30 "$out.log" >&2; die "llama-quantize failed (log: $out.log)"; }
        mv "$out.part" "$out"
    done
    if [ "$drop_bf16" = 1 ] && [ -f "$base" ]; then
        log "deleting $base (--drop-bf16)"; rm -f "$base"
    fi
}

cmd_paths() {
    echo "src=$SRC"
    echo "lib_dir=$BIN"
    echo "llama_bench=$BIN/llama-bench"
    echo "llama_quantize=$BIN/llama-quantize"
    echo "llama_server=$BIN/llama-server"
    echo "gguf_dir=$GGUF_DIR"
    echo "version=$NODE_LLAMA_CPP_VERSION"
    if [ -f "$INFO" ]; then
        local k
        for k in package source_package patches_applied built_on build_number commit compiler cpu_variant \
                 cpu_backend_lib cpu_features devices; do
            echo "$k=$(kv "$k")"
        done
    fi
}

[ $# -ge 1 ] || { sed -n '2,10p' "$0" >&2; exit 2; }
cmd="$1"; shift
args=()
for a in "$@"; do
    case "$a" in
        --drop-bf16) drop_bf16=1 ;;
        *) args+=("$a") ;;
    esac
done
set -- "${args[@]+"${args[@]}"}"
case "$cmd" in
    build) cmd_build ;;
    gguf) [ $# -ge 3 ] || die "usage: gguf CKPT_DIR NAME PRE [QUANTS]"; cmd_gguf "$@" ;;
    paths) cmd_paths ;;
    info) cmd_info ;;
    *) die "unknown command $cmd (build | gguf | paths | info)" ;;
esac
