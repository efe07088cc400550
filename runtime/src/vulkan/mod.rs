//! The Vulkan backend: [`hal`] is the thin unsafe layer over ash, [`exec`] the executor that runs a plan's
//! generated kernels through it.

pub mod exec;
pub mod hal;
