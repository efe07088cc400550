//! The backend boundary. An [`Executor`] owns a device's buffers — the activation arenas, each sequence's KV
//! cache — and runs a [`ValidPlan`]'s launches there; everything above it ([`crate::Session`], the generation
//! loop, the sampler, the benchmarks) is the same for every device.
//!
//! One [`Executor::execute`] advances a batch of sequences through one phase: their rows are stacked into one
//! execution, so every weight is read once for all of them, while each sequence attends over its own KV cache
//! at its own position. A batch of one is the single-stream path.

use crate::Error;
use unicorn_ir::validate::Capabilities;
use unicorn_ir::Phase;

/// A sequence an executor holds a KV cache for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(pub usize);

/// One sequence's part of a batched execution.
#[derive(Debug, Clone, Copy)]
pub struct SeqRun<'a> {
    pub seq: SeqId,
    /// The tokens to run, at positions `pos..pos + tokens.len()`.
    pub tokens: &'a [u32],
    pub pos: usize,
    /// How many of the last rows' logits to return (0 ..= `tokens.len()`).
    pub keep: usize,
}

/// Most sequences one decode execution advances together.
pub const MAX_BATCH: usize = 64;

pub trait Executor {
    /// The device, as `--device` names it (`cpu`).
    fn name(&self) -> String;

    /// Make room for a sequence of up to `ctx` positions (its KV cache); fails with a one-line error when the
    /// memory cannot be had.
    fn add_sequence(&mut self, ctx: usize) -> Result<SeqId, Error>;

    /// Forget a sequence and free its cache.
    fn remove_sequence(&mut self, seq: SeqId);

    /// Run `phase` once over `runs`, stacked into one execution; the kept rows' logits, run after run, go to
    /// `logits` (`vocab` values per row). The caller keeps positions and checks inputs: every run fits its
    /// sequence's context, token ids are below the vocabulary, a decode run has one token and keeps it, a
    /// prefill execution has at most the plan's `prefill_chunk` rows, a decode one at most [`MAX_BATCH`].
    fn execute(&mut self, phase: Phase, runs: &[SeqRun], logits: &mut Vec<f32>) -> Result<(), Error>;

    /// Record the time spent in each kernel from now on.
    fn enable_profile(&mut self);

    /// Seconds and calls per kernel name, most expensive first.
    fn profile(&self) -> Vec<(String, f64, usize)>;
}

/// The executors this build has, as `--device` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
}

impl DeviceKind {
    pub const ALL: [DeviceKind; 1] = [DeviceKind::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
        }
    }

    /// Parse a `--device` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|d| d.name() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|d| d.name()).collect();
            format!("unknown device '{s}' (this build has: {})", names.join(", "))
        })
    }

    /// What the device's executor runs, to validate a plan against.
    pub fn capabilities(self) -> &'static dyn Capabilities {
        match self {
            DeviceKind::Cpu => &crate::cpu::exec::CpuCapabilities,
        }
    }
}

/// One line per device this machine offers, for `unicorn-rt --list-devices`.
pub fn list_devices() -> Vec<String> {
    let isa = crate::cpu::isa::Isa::detect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    vec![format!("cpu      {cores} threads, {} kernels (all plans run here)", isa.name())]
}

/// A validated plan's executor on `device`.
pub fn executor_for<'m>(device: DeviceKind, model: &'m crate::Model) -> Box<dyn Executor + 'm> {
    match device {
        DeviceKind::Cpu => Box::new(crate::cpu::exec::CpuExecutor::new(model)),
    }
}
