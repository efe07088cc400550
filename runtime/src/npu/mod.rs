//! The NPU side of a Phoenix plan. A plan's NPU launches (prefill's projections, those of one operand in one
//! dispatch, as AIE2 GEMM designs of one or more weights; prefill attention, one design per plan and shape
//! whose chunk position and key count are runtime parameters) run on an [`NpuDevice`]: the Phoenix NPU through XRT
//! ([`xrt`]), or the emulator of the design's dataflow ([`emu`]), which executes the design itself on the CPU. Every other launch runs on the CPU executor, which holds the
//! arenas and the KV caches and hands each NPU launch its operands (see `cpu::exec`).
//!
//! Each NPU kernel's artifact is decoded and checked (the AIE2 rules, its transfers within its buffers, its
//! shape against every launch of it, an attention's keys read in the layout the host writes) when the executor
//! is made, before anything runs.

pub mod emu;
pub mod xrt;

use crate::cpu::matmul::{dequant_row, WeightRef};
use crate::model::Model;
use crate::Error;
use unicorn_aie::design::{Dim, SeqOp};
use unicorn_ir::container::SectionKind;
use unicorn_ir::npu::{AttentionShape, GemmBtShape, NpuKernel};
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

impl NpuCounts {
    /// Count `dispatches` that moved `host_bytes` and computed `macs`.
    fn add(&mut self, dispatches: u64, host_bytes: u64, macs: u64) {
        self.dispatches += dispatches;
        self.host_bytes += host_bytes;
        self.macs += macs;
    }
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

    /// The prefill attention of kernel `kernel` for one chunk ([`AttentionChunk`]), in one dispatch; adds what
    /// the dispatch did to `counts`.
    fn attention(&mut self, kernel: &PlanAttention, c: AttentionChunk, counts: &mut NpuCounts) -> Result<(), Error>;
}

/// One chunk of a sequence for an NPU attention dispatch at runtime parameters `q0` (the chunk's first
/// position) and `kv_len` (cached positions and the chunk's rows): `q` the chunk's rows (`rows x heads x
/// head_dim`, after RoPE), `kv` each position's keys then its values as the design reads them
/// ([`attention_keys`]), `out` the chunk's rows of the output.
pub struct AttentionChunk<'a> {
    pub q: &'a [f32],
    pub kv: &'a [f32],
    pub q0: u64,
    pub kv_len: u64,
    pub out: &'a mut [f32],
}

/// An NPU attention kernel of a plan, checked.
pub struct PlanAttention {
    pub index: usize,
    pub name: String,
    pub kernel: NpuKernel,
    pub shape: AttentionShape,
    /// Bytes one dispatch moves between host and array: its static key traffic, whatever the chunk's position.
    pub host_bytes: u64,
}

/// An NPU kernel of a plan: a GEMM of one or more weights, or a prefill attention.
pub enum PlanNpu {
    Gemm(PlanGemm),
    Attention(PlanAttention),
}

impl PlanNpu {
    pub fn name(&self) -> &str {
        match self {
            PlanNpu::Gemm(g) => &g.name,
            PlanNpu::Attention(a) => &a.name,
        }
    }

    pub fn kernel(&self) -> &NpuKernel {
        match self {
            PlanNpu::Gemm(g) => &g.kernel,
            PlanNpu::Attention(a) => &a.kernel,
        }
    }
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
/// prefill (whose chunks have at most `m` rows); or a prefill attention of the shape the kernel states, over
/// the plan's context.
pub fn plan_kernels(model: &Model) -> Result<Vec<Option<PlanNpu>>, Error> {
    let h = model.header();
    let path = model.path().display();
    let section = model.section(SectionKind::Kernels).unwrap_or(&[]);
    let mut out: Vec<Option<PlanNpu>> = Vec::with_capacity(h.kernels.len());
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
        let name = k.name.clone();
        out.push(Some(match (kernel.op.gemm_bt(), kernel.op.attention()) {
            (Some(gemm), _) => PlanNpu::Gemm(PlanGemm { index: i, name, kernel, gemm, host_bytes }),
            (_, Some(shape)) if !reads_positions(&kernel.design.sequence, &shape) => {
                return Err(bad(
                    "its design reads the keys and values laid out otherwise than by position (a plan of an older \
                     unicornc); recompile the plan with this unicornc"
                        .into(),
                ));
            }
            (_, Some(shape)) => PlanNpu::Attention(PlanAttention { index: i, name, kernel, shape, host_bytes }),
            _ => unreachable!("an NPU op is a GEMM or an attention"),
        }));
    }
    for p in &h.phases {
        for (si, st) in p.steps.iter().enumerate() {
            let g = match out.get(st.kernel.0 as usize) {
                Some(Some(PlanNpu::Gemm(g))) => g,
                Some(Some(PlanNpu::Attention(a))) => {
                    if let Err(why) = attention_fits(h, p.phase, st, &a.shape) {
                        return Err(Error::Plan(format!(
                            "{path}: phases ({}) step {si} ({}): launches NPU kernel {} (an attention) for what it \
                             does not compute: {why}",
                            p.phase, st.label, a.name
                        )));
                    }
                    continue;
                }
                _ => continue,
            };
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

/// Whether every transfer of an attention design's argument 1 reads it as [`attention_keys`] lays it out:
/// position after position (a stride of `2 x kv_heads x head_dim`), each its keys then its values (a level of
/// two at `kv_heads x head_dim`). Designs compiled when the values followed all the keys stepped from K to V by
/// all of K.
fn reads_positions(sequence: &[SeqOp], s: &AttentionShape) -> bool {
    let (row, key_value) = (2 * s.kv_row(), Dim { size: 2, stride: s.kv_row() });
    sequence.iter().all(|op| match op {
        SeqOp::Memcpy { arg: 1, dims, .. } => dims.windows(2).any(|w| w[0].stride == row && w[1] == key_value),
        _ => true,
    })
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

/// Whether a step computes what its NPU attention kernel `a` does: one prefill attention op over `[q, k, v,
/// cache, out, pos]` with the kernel's heads, kv heads, head_dim, window and scale, in chunks within its rows
/// over the plan's context within its keys. Otherwise which field disagrees.
fn attention_fits(h: &PlanHeader, phase: Phase, st: &Step, a: &AttentionShape) -> Result<(), String> {
    let [Op::Attention { num_heads, num_kv_heads, head_dim, window, scale, .. }] = &st.ops[..] else {
        return Err("its ops are not one attention".into());
    };
    let [Arg::Act(q), Arg::Act(_), Arg::Act(_), Arg::Kv(_), Arg::Act(o), _] = &st.args[..] else {
        return Err("its arguments are not [q, k, v, cache, out, pos]".into());
    };
    if phase != Phase::Prefill || h.prefill_chunk > a.rows {
        return Err(format!("{phase} chunks of up to {} rows, for its rows = {} of prefill", h.prefill_chunk, a.rows));
    }
    let keys = unicorn_ir::npu::attention_max_keys(h.spec.max_context as u64, h.prefill_chunk);
    if keys > a.max_keys {
        return Err(format!(
            "a context of {} in chunks of {} (keys to {keys}), for its max_keys = {}",
            h.spec.max_context, h.prefill_chunk, a.max_keys
        ));
    }
    let fields = [
        ("heads", *num_heads as u64, a.heads),
        ("kv_heads", *num_kv_heads as u64, a.kv_heads),
        ("head_dim", *head_dim as u64, a.head_dim),
        ("window", window.map_or(0, |w| w as u64), a.window.unwrap_or(0)),
    ];
    if let Some((field, step, kernel)) = fields.into_iter().find(|f| f.1 != f.2) {
        return Err(format!("its {field} = {kernel}, for an attention of {field} {step}"));
    }
    if scale.to_bits() != a.scale.to_bits() {
        return Err(format!("its scale = {}, for an attention of scale {scale}", a.scale));
    }
    if q.width != a.q_row() || o.width != a.q_row() {
        return Err(format!("q and out of widths {} and {}, for its rows of {}", q.width, o.width, a.q_row()));
    }
    Ok(())
}

/// Positions `0..key_rows` of `s`'s design, each its keys then its values (`2 x kv_heads x head_dim`), as f32
/// (the device rounds them to bf16): `cached(g, p, k, v)` fills kv head `g`'s key and value at cached position
/// `p < pos` (of the KV cache, the source of truth), `k` and `v` the chunk's rows at positions `pos..`, zeros
/// from `pos + rows` on (and where `cached` has none: positions a ring has dropped, which no row sees). Written
/// into `kv`, which keeps its capacity from one dispatch to the next.
pub fn attention_keys(
    s: &AttentionShape,
    pos: usize,
    k: &[f32],
    v: &[f32],
    mut cached: impl FnMut(usize, usize, &mut [f32], &mut [f32]),
    kv: &mut Vec<f32>,
) {
    let (row, hd) = (s.kv_row() as usize, s.head_dim as usize);
    kv.clear();
    kv.resize(2 * s.key_rows as usize * row, 0.0);
    let mut positions = kv.chunks_exact_mut(2 * row).map(|p| p.split_at_mut(row));
    for (p, (ks, vs)) in positions.by_ref().take(pos).enumerate() {
        for (g, (kd, vd)) in ks.chunks_exact_mut(hd).zip(vs.chunks_exact_mut(hd)).enumerate() {
            cached(g, p, kd, vd);
        }
    }
    for ((ks, vs), (kr, vr)) in positions.zip(k.chunks_exact(row).zip(v.chunks_exact(row))) {
        ks.copy_from_slice(kr);
        vs.copy_from_slice(vr);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use unicorn_aie::design::{dims, Elem};
    use unicorn_ir::npu::PrefillShape;

    /// Two heads, each its own kv head, of 4 dimensions; 6 key positions.
    fn shape() -> AttentionShape {
        let geometry =
            PrefillShape { rows: 2, max_keys: 4, heads: 2, kv_heads: 2, head_dim: 4, window: None, scale: 1.0 };
        AttentionShape { geometry, padded_rows: 8, key_rows: 6 }
    }

    /// Position by position, each its keys then its values: the cached positions before `pos` from the cache,
    /// the chunk's rows after them, zeros past them.
    #[test]
    fn attention_keys_lay_out_each_position_keys_then_values() {
        let s = shape();
        let (k, v) = ([20.0, 21.0, 22.0, 23.0, 24.0, 25.0, 26.0, 27.0], [-20.0; 8]);
        let mut kv = Vec::new();
        attention_keys(
            &s,
            2,
            &k,
            &v,
            |g, p, kd, vd| {
                kd.fill((10 * p + g) as f32);
                vd.fill(-((10 * p + g) as f32));
            },
            &mut kv,
        );
        assert_eq!(kv.len(), 6 * 16);
        let at = |p: usize, part: usize, g: usize| &kv[p * 16 + part * 8 + g * 4..][..4];
        assert_eq!(at(1, 0, 1), [11.0; 4]);
        assert_eq!(at(1, 1, 1), [-11.0; 4]);
        assert_eq!(at(2, 0, 0), [20.0, 21.0, 22.0, 23.0]);
        assert_eq!(at(2, 0, 1), [24.0, 25.0, 26.0, 27.0]);
        assert_eq!(at(2, 1, 1), [-20.0; 4]);
        assert!(kv[3 * 16..].iter().all(|&x| x == 0.0));
    }

    /// A design stepping from a position's keys to its values by one position's keys reads the host's layout;
    /// one stepping by all the keys (the values after them) does not.
    #[test]
    fn an_attention_reading_another_layout_is_found() {
        let s = shape();
        let memcpy = |d: &[(u64, u64)]| SeqOp::Memcpy {
            arg: 1,
            elem: Elem::Bf16,
            offset: 0,
            dims: dims(d),
            fifo: "kv0_in".into(),
            bd: 1,
        };
        assert!(reads_positions(&[memcpy(&[(6, 16), (2, 8), (4, 1)])], &s));
        assert!(!reads_positions(&[memcpy(&[(1, 32), (2, 48), (4, 8), (4, 1)])], &s));
    }
}
