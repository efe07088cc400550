//! Lowering of placed graph regions to kernels. Each target is a capability description plus a lowering
//! function; the CPU target lowers every op to one of the runtime's built-in kernels, named here.

pub mod cpu;
pub mod vulkan;
