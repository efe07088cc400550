#!/usr/bin/env bash
# Build spirv-val and spirv-dis from the SPIRV-Tools release that shaderc-sys vendors (the one the Vulkan
# target's kernels are compiled with) into ~/.cache/unicorn/spirv-tools-<release>/bin, once. Debian's SPIRV-Tools
# (2023.1) knows neither SPV_KHR_cooperative_matrix nor every integer-dot form, so the kernels that use them are
# validated, and every snapshot disassembled, with these.
set -euo pipefail
cd "$(dirname "$0")/.."
release=$(sed -n 's/.*VENDORED_SPIRV_TOOLS: &str = "\(.*\)";/\1/p' targets/src/vulkan/spirv.rs)
out="${HOME}/.cache/unicorn/spirv-tools-${release}"
[ -x "$out/bin/spirv-val" ] && [ -x "$out/bin/spirv-dis" ] && exit 0
cargo fetch --quiet
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/shaderc-sys-0.10.1/build 2>/dev/null | head -1)
[ -n "$src" ] || { echo "spirv-val.sh: shaderc-sys 0.10.1 sources not found after cargo fetch"; exit 1; }
got=$(sed -n '3s/^\(v[0-9.]*\) .*/\1/p' "$src/spirv-tools/CHANGES")
[ "$got" = "$release" ] || { echo "spirv-val.sh: shaderc-sys vendors SPIRV-Tools $got, targets/src/vulkan/spirv.rs says $release"; exit 1; }
echo "building spirv-val and spirv-dis (SPIRV-Tools $release) into $out"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
cmake -S "$src/spirv-tools" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DSPIRV-Headers_SOURCE_DIR="$src/spirv-headers" -DSPIRV_SKIP_TESTS=ON -DSPIRV_WERROR=OFF >/dev/null
cmake --build "$build" --target spirv-val spirv-dis -j "$(nproc)" >/dev/null
mkdir -p "$out/bin.tmp"
cp "$build/tools/spirv-val" "$build/tools/spirv-dis" "$out/bin.tmp/"
rm -rf "$out/bin"
mv "$out/bin.tmp" "$out/bin"
echo "spirv-val, spirv-dis: $out/bin"
