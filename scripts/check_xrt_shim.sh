#!/usr/bin/env bash
# Compile xrt-sys's C++ shim, and the Rust that calls it (cfg(xrt)), against the public headers of XRT releases,
# on a machine without XRT or an NPU. Nothing is linked or run: the headers' types and the shim's use of them
# are checked, not XRT's behaviour.
#
#   scripts/check_xrt_shim.sh XRT_CHECKOUT [TAG ...]
#     XRT_CHECKOUT   a git clone of github.com/Xilinx/XRT (its history: the tags are read from it)
#     TAG            releases to check (default: 202410.2.17.319, the oldest XRT the shim takes, 202510.2.19.194,
#                    and HEAD)
#
# Per tag: the headers of src/runtime_src/core/include, with the version headers CMake would generate
# (version-slim.h / version.h from src/CMake/config), then
#   g++ -std=c++17 -fsyntax-only -Wall -Wextra -Werror   on shim/xrt_shim.cpp
#   XILINX_XRT=<headers + an empty libxrt_coreutil.so> cargo clippy -p xrt-sys -p unicorn-runtime -- -D warnings
# (build.rs then compiles the shim with cc, as on a machine with XRT, and sets cfg(xrt)).
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
src="$(cd "$1" && pwd)"
shift
tags=("$@")
[ ${#tags[@]} -gt 0 ] || tags=(202410.2.17.319 202510.2.19.194 HEAD)
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for tag in "${tags[@]}"; do
    root="$work/$tag"
    mkdir -p "$root/src" "$root/lib"
    git -C "$src" archive "$tag" src/runtime_src/core/include src/CMake/config | tar x -C "$root/src"
    inc="$root/src/src/runtime_src/core/include"
    # The release number from the tag (202410.2.17.319 -> 2.17.319); HEAD: from the newest release tag.
    ver="$(sed -E 's/^[0-9]{6}\.//' <<<"$tag")"
    if ! [[ "$ver" =~ ^[0-9]+\.[0-9]+ ]]; then
        ver="$(git -C "$src" describe --tags --abbrev=0 "$tag" | sed -E 's/^[0-9]{6}\.//; s/_.*//')"
    fi
    major="${ver%%.*}"
    minor="$(cut -d. -f2 <<<"$ver")"
    mkdir -p "$inc/xrt/detail"
    for f in version-slim.h version.h; do
        [ -f "$root/src/src/CMake/config/$f.in" ] || continue
        sed -e "s/@XRT_VERSION_MAJOR@/$major/; s/@XRT_VERSION_MINOR@/$minor/; s/@XRT_VERSION_STRING@/$ver/" \
            -e 's/@[A-Za-z_]*@/0/g' "$root/src/src/CMake/config/$f.in" >"$inc/xrt/detail/$f"
        cp "$inc/xrt/detail/$f" "$inc/$f"
    done
    echo "== XRT $tag ($ver)"
    g++ -std=c++17 -fsyntax-only -Wall -Wextra -Werror -I "$repo/runtime/xrt-sys/shim" -I "$inc" \
        "$repo/runtime/xrt-sys/shim/xrt_shim.cpp"
    ln -s "$inc" "$root/include"
    echo "" | gcc -shared -x c - -o "$root/lib/libxrt_coreutil.so"
    # One clippy run; its -vv log shows build.rs's output, which must set cfg(xrt).
    (cd "$repo" && XILINX_XRT="$root" CARGO_TARGET_DIR="$work/target" \
        cargo clippy -vv -p xrt-sys -p unicorn-runtime -- -D warnings) >"$root/clippy.log" 2>&1 \
        || { tail -30 "$root/clippy.log" >&2; exit 1; }
    grep -q 'rustc-cfg=xrt' "$root/clippy.log" \
        || { echo "check_xrt_shim.sh: build.rs did not take XRT $tag (no cfg(xrt))" >&2; exit 1; }
    echo "   shim and Rust compile with cfg(xrt)"
done
