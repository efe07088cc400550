//! Link glslang statically for shaderc. Debian's `libshaderc_combined.a` leaves glslang's symbols to these
//! archives, and they reference one another (`InitProcess` lives in libOGLCompiler.a), so they go in one group.
fn main() {
    println!("cargo:rerun-if-env-changed=SHADERC_LIB_DIR");
    let dir = std::env::var("SHADERC_LIB_DIR").unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu".into());
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-arg=-Wl,--start-group");
    for lib in [
        "glslang",
        "MachineIndependent",
        "GenericCodeGen",
        "OSDependent",
        "OGLCompiler",
        "SPIRV",
        "SPIRV-Tools-opt",
        "SPIRV-Tools",
        "glslang-default-resource-limits",
    ] {
        println!("cargo:rustc-link-arg=-l:lib{lib}.a");
    }
    println!("cargo:rustc-link-arg=-Wl,--end-group");
}
