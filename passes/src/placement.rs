//! Placement: assign every node a device. For the CPU target everything runs on the CPU; the GPU and NPU
//! targets place by the cost model over device profiles.

use crate::PassError;
use unicorn_ir::{Device, Module};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Cpu,
}

impl Target {
    pub const ALL: [Target; 1] = [Target::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
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
