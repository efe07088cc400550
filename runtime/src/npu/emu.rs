//! `--device npu-emu`: a plan's NPU launches executed by the emulator of their designs' dataflow
//! ([`unicorn_aie::emu`]): each runtime-sequence transfer walked over the host buffers by its offsets, sizes and
//! strides, the fifos' buffers and re-layouts, the cores' bf16 tile math with f32 sums — so that what a Phoenix
//! NPU would compute from the plan's designs is computed here, padding and all, and a wrong access pattern gives
//! wrong numbers. It is slow (an interpreter) and is meant for checking plans, not for speed.

use super::{
    padded_operand, padded_weight, split_outputs, AttentionChunk, NpuCounts, NpuDevice, PlanAttention, PlanGemm,
};
use crate::cpu::matmul::WeightRef;
use crate::Error;
use std::borrow::Cow;

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
        ws: &[WeightRef],
        ys: &mut [&mut [f32]],
        counts: &mut NpuCounts,
    ) -> Result<(), Error> {
        let s = &g.gemm;
        let rows = x.len() / s.k as usize;
        // The host's buffers as the design reads them: x and each W padded with zeros, then C, the outputs'
        // whole padded blocks side by side.
        let mut args = vec![padded_operand(x, s)];
        args.extend(ws.iter().zip(&s.outputs).map(|(&w, &(_, pw))| padded_weight(w, pw, s)));
        args.push(vec![0.0f32; (s.padded_m * s.padded_n()) as usize]);
        let stats = unicorn_aie::emu::run(&g.kernel.design, &mut args)
            .map_err(|e| Error::Plan(format!("NPU kernel {} on the emulator: {e}", g.name)))?;
        split_outputs(&args[args.len() - 1], s, rows, ys);
        counts.add(stats.dispatches, stats.host_bytes, stats.macs);
        Ok(())
    }

    fn attention(&mut self, a: &PlanAttention, c: AttentionChunk, counts: &mut NpuCounts) -> Result<(), Error> {
        let AttentionChunk { q, kv, q0, kv_len, out } = c;
        let row = a.shape.q_row() as usize;
        let mut qp = vec![0.0f32; a.shape.padded_rows as usize * row];
        qp[..q.len()].copy_from_slice(q);
        // The keys and values are only read: lent, not copied.
        let out_rows = vec![0.0f32; a.shape.padded_rows as usize * row];
        let mut args = [Cow::Owned(qp), Cow::Borrowed(kv), Cow::Owned(out_rows)];
        let params = [q0, kv_len].map(|v| u32::try_from(v).unwrap_or(u32::MAX));
        let stats = unicorn_aie::emu::run_with(&a.kernel.design, &mut args, &params)
            .map_err(|e| Error::Plan(format!("NPU kernel {} on the emulator: {e}", a.name)))?;
        out.copy_from_slice(&args[2][..out.len()]);
        counts.add(stats.dispatches, stats.host_bytes, stats.macs);
        Ok(())
    }
}
