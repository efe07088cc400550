//! The Vulkan backend. [`hal`] is the thin unsafe layer over ash; the executor over it comes next.

pub mod hal;
