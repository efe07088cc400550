//! Link glslang statically for shaderc. Debian's `libshaderc_combined.a` leaves glslang's symbols to these
//! archives, which reference one another (`InitProcess` lives in libOGLCompiler.a); they are passed on,
//! unbundled, to every binary that links this crate.
fn main() {
    println!("cargo:rerun-if-env-changed=SHADERC_LIB_DIR");
    let dir = std::env::var("SHADERC_LIB_DIR").unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu".into());
    println!("cargo:rustc-link-search=native={dir}");
    let libs = [
        "glslang",
        "MachineIndependent",
        "GenericCodeGen",
        "OSDependent",
        "OGLCompiler",
        "SPIRV",
        "SPIRV-Tools-opt",
        "SPIRV-Tools",
        "glslang-default-resource-limits",
    ];
    // `+verbatim` names the archive file itself (Debian also ships shared glslang libraries).
    for lib in libs {
        println!("cargo:rustc-link-lib=static:-bundle,+verbatim=lib{lib}.a");
    }
    // This crate's own tests link them once more at the end, so the references between them resolve
    // whichever order the linker meets them in.
    for lib in libs {
        println!("cargo:rustc-link-arg=-l:lib{lib}.a");
    }
}
