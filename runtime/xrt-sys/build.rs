//! Builds the C++ shim and links `xrt_coreutil` only where `$XILINX_XRT` holds XRT >= 2.17 headers and library;
//! then sets `cfg(xrt)`. Anywhere else (this machine, CI) nothing is compiled and the crate's constructors return
//! `XrtError::NotFound`.

use std::path::{Path, PathBuf};

#[path = "src/xrt_version.rs"]
mod xrt_version;

/// Where XRT installs `xrt::hw_context`, relative to `include/`: 2.15 and later, 2.19 and later, the legacy copy.
const HW_CONTEXT_HEADERS: [&str; 3] =
    ["xrt/xrt_hw_context.h", "xrt/experimental/xrt_hw_context.h", "experimental/xrt_hw_context.h"];

/// Headers that state the version, relative to `include/`: later releases first, then 2.17's.
const VERSION_HEADERS: [&str; 3] = ["xrt/detail/version-slim.h", "xrt/detail/version.h", "version.h"];

struct Xrt {
    include: PathBuf,
    lib: PathBuf,
}

fn main() {
    println!("cargo:rustc-check-cfg=cfg(xrt)");
    println!("cargo:rerun-if-env-changed=XILINX_XRT");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/xrt_version.rs");
    println!("cargo:rerun-if-changed=shim");
    let Some(root) = std::env::var_os("XILINX_XRT").filter(|root| !root.is_empty()) else {
        return;
    };
    match probe(Path::new(&root)) {
        Ok(xrt) => build(&xrt),
        Err(why) => println!("cargo:warning=xrt-sys is built without XRT: {why}"),
    }
}

fn probe(root: &Path) -> Result<Xrt, String> {
    let include = root.join("include");
    let device = include.join("xrt/xrt_device.h");
    if !device.is_file() {
        return Err(format!("{} does not exist", device.display()));
    }
    if !HW_CONTEXT_HEADERS.iter().any(|header| include.join(header).is_file()) {
        return Err(format!("no xrt_hw_context.h under {} (XRT older than 2.15)", include.display()));
    }
    let (major, minor) = xrt_version::MIN;
    match version(&include) {
        Some(found) if found < xrt_version::MIN => {
            return Err(format!("XRT {}.{} in {} is older than {major}.{minor}", found.0, found.1, root.display()));
        }
        Some(_) => {}
        None => {
            println!("cargo:warning=xrt-sys: no XRT version header under {}; going by its headers", include.display())
        }
    }
    let lib = ["lib", "lib64"]
        .iter()
        .map(|dir| root.join(dir))
        .find(|dir| has_coreutil(dir))
        .ok_or_else(|| format!("no libxrt_coreutil.so under {}/lib", root.display()))?;
    Ok(Xrt { include, lib })
}

fn version(include: &Path) -> Option<(u32, u32)> {
    VERSION_HEADERS.iter().map(|header| include.join(header)).find_map(|path| {
        let text = std::fs::read_to_string(&path).ok()?;
        println!("cargo:rerun-if-changed={}", path.display());
        xrt_version::parse(&text)
    })
}

fn has_coreutil(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| entry.file_name().to_string_lossy().starts_with("libxrt_coreutil.so"))
}

fn build(xrt: &Xrt) {
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("shim/xrt_shim.cpp")
        .include("shim")
        .include(&xrt.include)
        .warnings(true)
        .compile("xrt_shim");
    println!("cargo:rustc-link-search=native={}", xrt.lib.display());
    println!("cargo:rustc-link-lib=dylib=xrt_coreutil");
    println!("cargo:rustc-cfg=xrt");
}
