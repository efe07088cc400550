//! Placement: assign every node a device. The CPU target puts everything on the CPU and the Vulkan target
//! everything on the GPU (its kernels cover every op); the Phoenix target will place by the cost model over
//! device profiles.

use crate::PassError;
use unicorn_ir::{Device, Module};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Cpu,
    /// Any Vulkan 1.2 GPU: every op as a generated compute shader.
    Vulkan,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::Cpu, Target::Vulkan];

    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Vulkan => "vulkan",
        }
    }

    /// The target named `s` (as `--target` takes it).
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|t| t.name()).collect();
            format!("unknown target '{s}' (this build has: {})", names.join(", "))
        })
    }
}

pub fn place(module: &mut Module, target: Target) -> Result<String, PassError> {
    let device = match target {
        Target::Cpu => Device::Cpu,
        Target::Vulkan => Device::Igpu,
    };
    let mut n = 0;
    for g in &mut module.graphs {
        for node in g.g.node_weights_mut() {
            node.device = device;
            n += 1;
        }
    }
    Ok(format!("{n} nodes on {device}"))
}
