//! `--device npu-emu`: a plan's NPU launches executed by the emulator of their designs' dataflow
//! ([`unicorn_aie::emu`]): each runtime-sequence transfer walked over the host buffers by its offsets, sizes and
//! strides, the fifos' buffers and re-layouts, the cores' bf16 tile math with f32 sums — so that what a Phoenix
//! NPU would compute from the plan's designs is computed here, padding and all, and a wrong access pattern gives
//! wrong numbers. It is slow (an interpreter) and is meant for checking plans, not for speed.

use super::{padded_operand, padded_weight, NpuCounts, NpuDevice, PlanGemm};
use crate::cpu::matmul::WeightRef;
use crate::Error;

#[derive(Default)]
pub struct Emulator;

impl NpuDevice for Emulator {
    fn name(&self) -> &'static str {
        "npu-emu"
    }

    fn gemm(
        &mut self,
        g: &PlanGemm,
        x: &[f32],
        w: WeightRef,
        y: &mut [f32],
        counts: &mut NpuCounts,
    ) -> Result<(), Error> {
        let (_, k, n) = (g.shape.0 as usize, g.shape.1 as usize, g.shape.2 as usize);
        let (pm, pn) = (g.padded.0 as usize, g.padded.2 as usize);
        let rows = x.len() / k;
        // The host's buffers as the design reads them: x and W padded with zeros, C the whole padded block.
        let a = padded_operand(x, k, g.padded);
        let mut args = vec![a, padded_weight(w, g.padded), vec![0.0f32; pm * pn]];
        let stats = unicorn_aie::emu::run(&g.kernel.design, &mut args)
            .map_err(|e| Error::Plan(format!("NPU kernel {} on the emulator: {e}", g.name)))?;
        for (dst, src) in y.chunks_mut(n).zip(args[2].chunks(pn)).take(rows) {
            dst.copy_from_slice(&src[..n]);
        }
        counts.dispatches += stats.dispatches;
        counts.host_bytes += stats.host_bytes;
        counts.macs += stats.macs;
        Ok(())
    }
}
