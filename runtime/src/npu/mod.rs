//! The NPU side of a Phoenix plan. A plan's NPU launches (prefill's projections, as AIE2 GEMM designs) run on
//! an [`NpuDevice`]: the Phoenix NPU through XRT ([`xrt`]), or the emulator of the design's dataflow ([`emu`]),
//! which executes the design itself on the CPU. Every other launch runs on the CPU executor, which holds the
//! arenas and the KV caches and hands each NPU launch its operands (see `cpu::exec`).
//!
//! Each NPU kernel's artifact is decoded and checked (the AIE2 rules, its transfers within its buffers, its
//! shape against every launch of it) when the executor is made, before anything runs.

pub mod emu;
pub mod xrt;

use crate::cpu::matmul::{dequant_row, WeightRef};
use crate::model::Model;
use crate::Error;
use unicorn_aie::design::SeqOp;
use unicorn_ir::container::SectionKind;
use unicorn_ir::npu::{NpuKernel, NpuOp};
use unicorn_ir::plan::{Arg, Backend};
use unicorn_ir::quant::WeightLayout;
use unicorn_ir::{Op, Phase, WeightFormat};

/// What the NPU launches of one phase did, summed over its executions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NpuCounts {
    pub dispatches: u64,
    /// Bytes moved between host memory and the array.
    pub host_bytes: u64,
    /// Multiply-accumulates, padding included.
    pub macs: u64,
    /// Tokens of the phase's executions.
    pub tokens: u64,
}

/// A device that runs a plan's NPU kernels.
pub trait NpuDevice {
    /// As `--device` names it (`npu`, `npu-emu`).
    fn name(&self) -> &'static str;

    /// `y[rows x n] = x[rows x k] W^T` by kernel `kernel` (an [`NpuOp::GemmBt`] of the plan, checked against
    /// this launch when the executor was made); adds what the dispatch did to `counts`.
    fn gemm(
        &mut self,
        kernel: &PlanGemm,
        x: &[f32],
        w: WeightRef,
        y: &mut [f32],
        counts: &mut NpuCounts,
    ) -> Result<(), Error>;
}

/// An NPU GEMM kernel of a plan, checked.
pub struct PlanGemm {
    pub index: usize,
    pub name: String,
    pub kernel: NpuKernel,
    /// `(m, k, n)` and their padded sizes.
    pub shape: (u64, u64, u64),
    pub padded: (u64, u64, u64),
    /// Bytes one dispatch moves between host and array (its runtime sequence's transfers).
    pub host_bytes: u64,
}

/// The NPU kernels of a plan, indexed like its kernel table, each decoded and checked against the launches that
/// name it: a single bias-free matmul of an `n x k` bf16 weight stored by rows, an operand of `k` and a result of
/// `n` columns, in prefill (whose chunks have at most `m` rows).
pub fn plan_kernels(model: &Model) -> Result<Vec<Option<PlanGemm>>, Error> {
    let h = model.header();
    let path = model.path().display();
    let section = model.section(SectionKind::Kernels).unwrap_or(&[]);
    let mut out: Vec<Option<PlanGemm>> = Vec::with_capacity(h.kernels.len());
    for (i, k) in h.kernels.iter().enumerate() {
        if k.backend != Backend::Npu {
            out.push(None);
            continue;
        }
        let bad = |e: String| Error::Plan(format!("{path}: kernels[{i}] ({}): {e}", k.name));
        // The plan was validated: an artifact lies inside the kernels section.
        let a = k.artifact.ok_or_else(|| bad("an NPU kernel without its design".into()))?;
        let bytes = &section[a.offset as usize..(a.offset + a.len) as usize];
        let kernel = NpuKernel::decode(bytes, &unicorn_aie::model::NPU1).map_err(bad)?;
        let NpuOp::GemmBt { m, k: kk, n, padded } = kernel.op;
        let host_bytes = kernel
            .design
            .sequence
            .iter()
            .map(|op| match op {
                SeqOp::Memcpy { elem, dims, .. } => dims.iter().map(|d| d.size).product::<u64>() * elem.bytes(),
                SeqOp::Wait { .. } => 0,
            })
            .sum();
        out.push(Some(PlanGemm { index: i, name: k.name.clone(), kernel, shape: (m, kk, n), padded, host_bytes }));
    }
    for p in &h.phases {
        for (si, st) in p.steps.iter().enumerate() {
            let Some(Some(g)) = out.get(st.kernel.0 as usize) else { continue };
            let field = format!("{path}: phases ({}) step {si} ({})", p.phase, st.label);
            let (m, k, n) = g.shape;
            let ok = match (&st.ops[..], &st.args[..]) {
                ([Op::MatMul { weight, bias: None }], [Arg::Act(x), Arg::Weight(w), Arg::Act(y)]) if w == weight => {
                    let pw = &h.weights[w.0 as usize];
                    pw.format == WeightFormat::Bf16
                        && pw.layout == WeightLayout::Rows
                        && pw.shape == [n as usize, k as usize]
                        && x.width == k
                        && y.width == n
                        && p.phase == Phase::Prefill
                        && h.prefill_chunk <= m
                }
                _ => false,
            };
            if !ok {
                return Err(Error::Plan(format!(
                    "{field}: launches NPU kernel {} (a GEMM of {m} x {k} x {n} by a bf16 weight) for what it does not compute",
                    g.name
                )));
            }
        }
    }
    Ok(out)
}

/// Run one NPU launch: the step's operand, weight and result slots as the CPU executor holds them.
pub fn gemm_rows(
    dev: &mut dyn NpuDevice,
    g: &PlanGemm,
    x: &[f32],
    w: WeightRef,
    y: &mut [f32],
    counts: &mut NpuCounts,
) -> Result<(), Error> {
    let (m, k, _) = g.shape;
    let rows = x.len() / k as usize;
    if rows as u64 > m {
        return Err(Error::Input(format!("an NPU launch of {rows} rows, more than the {m} its design takes")));
    }
    dev.gemm(g, x, w, y, counts)
}

/// x as the design reads it: `pm x pk` values, its `k` columns of each row then zeros, zero rows after it.
pub fn padded_operand(x: &[f32], k: usize, padded: (u64, u64, u64)) -> Vec<f32> {
    let (pm, pk) = (padded.0 as usize, padded.1 as usize);
    let mut a = vec![0.0f32; pm * pk];
    for (dst, src) in a.chunks_mut(pk).zip(x.chunks(k)) {
        dst[..k].copy_from_slice(src);
    }
    a
}

/// `W` as the design reads it: `pn x pk` values (bf16 numbers, as f32), zero where padded.
pub fn padded_weight(w: WeightRef, padded: (u64, u64, u64)) -> Vec<f32> {
    let (_, pk, pn) = (padded.0 as usize, padded.1 as usize, padded.2 as usize);
    let mut out = vec![0.0f32; pn * pk];
    for (r, row) in out.chunks_mut(pk).take(w.n).enumerate() {
        dequant_row(w, r, &mut row[..w.k]);
    }
    out
}
