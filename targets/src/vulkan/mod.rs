pub mod glsl;
pub mod spirv;
