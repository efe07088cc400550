//! The NPU side of a Phoenix plan. A plan's NPU launches (prefill's projections, those of one operand in one
//! dispatch, as AIE2 GEMM designs of one or more weights) run on an [`NpuDevice`]: the Phoenix NPU through XRT
//! ([`xrt`]), or the emulator of the design's dataflow ([`emu`]), which executes the design itself on the CPU. Every other launch runs on the CPU executor, which holds the
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
use unicorn_ir::npu::{GemmBtShape, NpuKernel};
use unicorn_ir::plan::{Arg, Backend, PlanHeader, Step};
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

    /// `ys[i][rows x n_i] = x[rows x k] ws[i]^T` for each weight of kernel `kernel` (a GEMM of the plan of as
    /// many weights, checked against this launch when the executor was made), in one dispatch; adds what the
    /// dispatch did to `counts`.
    fn gemm(
        &mut self,
        kernel: &PlanGemm,
        x: &[f32],
        ws: &[WeightRef],
        ys: &mut [&mut [f32]],
        counts: &mut NpuCounts,
    ) -> Result<(), Error>;
}

/// An NPU GEMM kernel of a plan, checked.
pub struct PlanGemm {
    pub index: usize,
    pub name: String,
    pub kernel: NpuKernel,
    /// Its rows, columns and outputs, and their padded sizes.
    pub gemm: GemmBtShape,
    /// Bytes one dispatch moves between host and array (its runtime sequence's transfers).
    pub host_bytes: u64,
}

/// The NPU kernels of a plan, indexed like its kernel table, each decoded and checked against the launches that
/// name it: bias-free matmuls of one operand of `k` columns, as many as the kernel has outputs, each by an
/// `n_i x k` bf16 weight stored by rows into a result of `n_i` columns (the kernel's widths, in order), in
/// prefill (whose chunks have at most `m` rows).
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
        let host_bytes = kernel
            .design
            .sequence
            .iter()
            .map(|op| match op {
                SeqOp::Memcpy { elem, dims, .. } => dims.iter().map(|d| d.size).product::<u64>() * elem.bytes(),
                SeqOp::Wait { .. } => 0,
            })
            .sum();
        let gemm = kernel.op.gemm_bt();
        out.push(Some(PlanGemm { index: i, name: k.name.clone(), kernel, gemm, host_bytes }));
    }
    for p in &h.phases {
        for (si, st) in p.steps.iter().enumerate() {
            let Some(Some(g)) = out.get(st.kernel.0 as usize) else { continue };
            if let Err(why) = launch_fits(h, p.phase, st, &g.gemm) {
                let s = &g.gemm;
                let ns: Vec<String> = s.outputs.iter().map(|o| o.0.to_string()).collect();
                return Err(Error::Plan(format!(
                    "{path}: phases ({}) step {si} ({}): launches NPU kernel {} (a GEMM of {} x {} x {} by bf16 \
                     weights) for what it does not compute: {why}",
                    p.phase,
                    st.label,
                    g.name,
                    s.m,
                    s.k,
                    ns.join("+")
                )));
            }
        }
    }
    Ok(out)
}

/// Whether a step computes what its NPU kernel `s` does: one bias-free matmul per output, over `[x, W_0, y_0,
/// W_1, y_1, ...]`, each weight bf16 by rows of the output's width by x's columns, in prefill within the
/// kernel's rows. Otherwise which field disagrees.
fn launch_fits(h: &PlanHeader, phase: Phase, st: &Step, s: &GemmBtShape) -> Result<(), String> {
    let [Arg::Act(x), pairs @ ..] = &st.args[..] else { return Err("its first argument is no activation".into()) };
    if st.ops.len() != s.outputs.len() || pairs.len() != 2 * s.outputs.len() {
        return Err(format!("{} matmuls for its {} weights", st.ops.len(), s.outputs.len()));
    }
    if phase != Phase::Prefill || h.prefill_chunk > s.m {
        return Err(format!("{phase} chunks of up to {} rows, for its {} rows of prefill", h.prefill_chunk, s.m));
    }
    if x.width != s.k {
        return Err(format!("an operand of {} columns, for its k = {}", x.width, s.k));
    }
    for (i, ((op, pair), &(n, _))) in st.ops.iter().zip(pairs.chunks(2)).zip(&s.outputs).enumerate() {
        let (Op::MatMul { weight, bias: None }, [Arg::Weight(w), Arg::Act(y)]) = (op, pair) else {
            return Err(format!("its op {i} is no bias-free matmul of [weight, result]"));
        };
        let pw = &h.weights[w.0 as usize];
        if w != weight || pw.format != WeightFormat::Bf16 || pw.layout != WeightLayout::Rows {
            return Err(format!("weight {} is {} laid out {}, not bf16 by rows", pw.name, pw.format, pw.layout.name()));
        }
        if pw.shape != [n as usize, s.k as usize] || y.width != n {
            return Err(format!(
                "its n[{i}] = {n}, for weight {} of shape {:?} and a result of width {}",
                pw.name, pw.shape, y.width
            ));
        }
    }
    Ok(())
}

/// Run one NPU launch: the step's operand, weights and result slots as the CPU executor holds them.
pub fn gemm_rows(
    dev: &mut dyn NpuDevice,
    g: &PlanGemm,
    x: &[f32],
    ws: &[WeightRef],
    ys: &mut [&mut [f32]],
    counts: &mut NpuCounts,
) -> Result<(), Error> {
    let (m, k) = (g.gemm.m, g.gemm.k);
    let rows = x.len() / k as usize;
    if rows as u64 > m {
        return Err(Error::Input(format!("an NPU launch of {rows} rows, more than the {m} its design takes")));
    }
    dev.gemm(g, x, ws, ys, counts)
}

/// x as the design reads it: `padded_m x padded_k` values, its `k` columns of each row then zeros, zero rows
/// after it.
pub fn padded_operand(x: &[f32], s: &GemmBtShape) -> Vec<f32> {
    let (k, pm, pk) = (s.k as usize, s.padded_m as usize, s.padded_k as usize);
    let mut a = vec![0.0f32; pm * pk];
    for (dst, src) in a.chunks_mut(pk).zip(x.chunks(k)) {
        dst[..k].copy_from_slice(src);
    }
    a
}

/// `W` as the design reads it: `padded_n x padded_k` values (bf16 numbers, as f32), zero where padded.
pub fn padded_weight(w: WeightRef, padded_n: u64, s: &GemmBtShape) -> Vec<f32> {
    let (pn, pk) = (padded_n as usize, s.padded_k as usize);
    let mut out = vec![0.0f32; pn * pk];
    for (r, row) in out.chunks_mut(pk).take(w.n).enumerate() {
        dequant_row(w, r, &mut row[..w.k]);
    }
    out
}

/// Each output's first `rows` rows from the design's result `c` (`padded_m` rows of the outputs' padded widths
/// side by side) into `ys`.
pub fn split_outputs(c: &[f32], s: &GemmBtShape, rows: usize, ys: &mut [&mut [f32]]) {
    let pn = s.padded_n() as usize;
    let mut col0 = 0;
    for (y, &(n, pw)) in ys.iter_mut().zip(&s.outputs) {
        let n = n as usize;
        for (dst, src) in y.chunks_mut(n).zip(c.chunks(pn)).take(rows) {
            dst.copy_from_slice(&src[col0..col0 + n]);
        }
        col0 += pw as usize;
    }
}
