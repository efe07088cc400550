//! The executable plan: what `unicornc` writes and `unicorn-rt` runs. It is stored as the header of a `.ucp`
//! file (see [`crate::container`]); weights, kernels and the tokenizer live in the file's sections.

use crate::graph::{Op, Phase, WeightRole};
use crate::memory::Slot;
use crate::spec::ModelSpec;
use crate::types::{Device, Dim, WeightFormat};
use serde::{Deserialize, Serialize};

/// A weight as stored in the weights section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanWeight {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: WeightRole,
    pub format: WeightFormat,
    /// Arrangement of the rows (q4_0 / q8_0 matrices may be interleaved); absent in older plans: `rows`.
    #[serde(default)]
    pub layout: crate::quant::WeightLayout,
    /// Byte offset inside the weights section (a multiple of [`WEIGHT_ALIGN`]).
    pub offset: u64,
    pub bytes: u64,
}

/// Alignment of every weight inside the weights section, so kernels can use aligned vector loads.
pub const WEIGHT_ALIGN: u64 = 64;

/// One kernel launch: an op of the graph with its operand and result slots in the phase's arena.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub op: Op,
    pub device: Device,
    /// Stable kernel name, e.g. `matmul_q8_0`.
    pub kernel: String,
    /// Operand slots; `None` for the token ids, which the runtime supplies.
    pub inputs: Vec<Option<Slot>>,
    /// Result slot.
    pub output: Slot,
    /// Rows of the result: the execution's tokens (`S`), the kept rows (`R`), or a constant.
    pub rows: Dim,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanPhase {
    pub phase: Phase,
    pub steps: Vec<Step>,
    /// Main activation arena size in f32 elements per row (token) of an execution.
    pub arena_width: usize,
    /// Kept-rows arena size in f32 elements per kept row (the rows after `select_rows`).
    pub kept_width: usize,
    /// The slot holding the phase result (logits rows).
    pub result: Slot,
}

impl PlanPhase {
    /// Activation bytes for an execution of `rows` tokens keeping `kept` rows.
    pub fn activation_bytes(&self, rows: usize, kept: usize) -> u64 {
        ((self.arena_width * rows + self.kept_width * kept) * 4) as u64
    }
}

/// Everything the runtime needs besides the sections' bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanHeader {
    /// The `unicornc` that wrote the plan.
    pub producer: String,
    pub target: String,
    pub spec: ModelSpec,
    /// Inverse RoPE frequencies, one table per entry of `spec.ropes`, computed at compile time.
    pub rope_inv_freq: Vec<Vec<f32>>,
    pub weights: Vec<PlanWeight>,
    pub phases: Vec<PlanPhase>,
    /// Peak activation bytes: the larger of a full-context prefill and a decode step.
    pub peak_activation_bytes: u64,
}

impl PlanHeader {
    pub fn phase(&self, phase: Phase) -> Option<&PlanPhase> {
        self.phases.iter().find(|p| p.phase == phase)
    }

    /// Lay the weights out in the weights section, aligned; returns the section's length.
    pub fn assign_weight_offsets(weights: &mut [PlanWeight]) -> u64 {
        let mut at = 0u64;
        for w in weights {
            at = at.div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN;
            w.offset = at;
            at += w.bytes;
        }
        at
    }
}
