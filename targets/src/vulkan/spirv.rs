//! GLSL -> SPIR-V through shaderc, built from the glslang and SPIRV-Tools sources that shaderc-sys vendors
//! (Debian's glslang 12 compiles neither cooperative-matrix nor integer-dot shaders).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The SPIRV-Tools release shaderc-sys 0.10.1 vendors; `scripts/spirv-val.sh` builds its `spirv-val` for the
/// modules Debian's cannot check.
pub const VENDORED_SPIRV_TOOLS: &str = "v2025.3";

/// Compile a GLSL compute shader to SPIR-V words. A process that compiles several plans (of one model in
/// several formats, or several models) compiles each distinct shader once: the words are kept by name and
/// source for the process's life (some tens of KiB a shader).
pub fn compile(name: &str, source: &str) -> Result<Vec<u32>, String> {
    type Compiled = HashMap<(String, String), Vec<u32>>;
    static COMPILED: OnceLock<Mutex<Compiled>> = OnceLock::new();
    let compiled = COMPILED.get_or_init(Default::default);
    let key = (name.to_string(), source.to_string());
    // A poisoned lock only means another compile panicked; the map itself is whole.
    if let Some(words) = compiled.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(words.clone());
    }
    let words = compile_uncached(name, source)?;
    compiled.lock().unwrap_or_else(|e| e.into_inner()).insert(key, words.clone());
    Ok(words)
}

fn compile_uncached(name: &str, source: &str) -> Result<Vec<u32>, String> {
    let compiler = shaderc::Compiler::new().map_err(|e| format!("shaderc: {e}"))?;
    let mut options = shaderc::CompileOptions::new().map_err(|e| format!("shaderc: {e}"))?;
    options.set_target_env(shaderc::TargetEnv::Vulkan, shaderc::EnvVersion::Vulkan1_2 as u32);
    options.set_optimization_level(shaderc::OptimizationLevel::Performance);
    let out = compiler
        .compile_into_spirv(source, shaderc::ShaderKind::Compute, &format!("{name}.comp"), "main", Some(&options))
        .map_err(|e| format!("kernel {name}: {e}"))?;
    Ok(out.as_binary().to_vec())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_compute_shader_compiles() {
        let src = "#version 450\nlayout(local_size_x = 64) in;\nlayout(std430, binding = 0) buffer B { float x[]; };\nvoid main() { x[gl_GlobalInvocationID.x] *= 2.0; }\n";
        let words = super::compile("double", src).unwrap();
        assert_eq!(words[0], 0x0723_0203);
    }

    /// The runtime's bandwidth-probe kernel is committed as SPIR-V (the runtime does not link shaderc): it must
    /// be its GLSL source compiled by this compiler. `UPDATE_COPY_SPV=1` rewrites it.
    #[test]
    fn the_runtime_copy_kernel_is_its_source_compiled() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/src/vulkan");
        let src = std::fs::read_to_string(dir.join("copy.comp")).unwrap();
        let bytes: Vec<u8> = super::compile("copy", &src).unwrap().iter().flat_map(|w| w.to_le_bytes()).collect();
        if std::env::var_os("UPDATE_COPY_SPV").is_some() {
            std::fs::write(dir.join("copy.spv"), &bytes).unwrap();
        }
        let committed = std::fs::read(dir.join("copy.spv")).unwrap();
        assert!(committed == bytes, "runtime/src/vulkan/copy.spv is stale: run with UPDATE_COPY_SPV=1");
    }
}
