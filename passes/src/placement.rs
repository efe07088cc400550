//! Placement: assign every node a device. For the CPU target everything runs on the CPU; the GPU and NPU
//! targets place by the cost model over device profiles.

use crate::PassError;
use unicorn_ir::{Device, Module};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Cpu,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
        }
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
