//! The Phoenix target's lowering: the launches placed on the NPU become AIE2 designs — each group of prefill
//! projections of one operand (a layer's q, k and v; its gate and up; o and down alone) the whole-array GEMM of
//! its weights' shapes in one dispatch, made for the plan's prefill chunk of rows; each prefill attention the
//! attention design of its shape for that chunk over the plan's context — checked by the AIE2 rules,
//! emitted as MLIR and stored in the kernels section with the design as data; every other launch is one of the
//! CPU's built-in kernels, as the CPU target names them.

use super::attention::{attention, PrefillShape};
use super::design::Design;
use super::gemm::{gemm_bt_multi, MAX_WEIGHTS};
use super::model::NPU1;
use crate::cpu;
use unicorn_ir::npu::{AttentionShape, NpuKernel, NpuOp};
use unicorn_ir::plan::{ArtifactRange, Backend, Binding, BindingKind, Expr, KernelEntry, KernelId, PlanPhase};
use unicorn_ir::{Device, Graph, Module, Op, WeightFormat};

/// The kernel table of a Phoenix plan and the kernels section its NPU kernels point into.
#[derive(Default)]
pub struct KernelTable {
    pub cpu: cpu::KernelTable,
    pub section: Vec<u8>,
}

impl KernelTable {
    /// The NPU kernel of projections of one operand of `k` columns by bf16 weights of `ns` rows (each `n x k`,
    /// one to [`super::gemm::MAX_WEIGHTS`] of them) over `m` rows, in one dispatch (one kernel per shape).
    fn gemm(&mut self, m: u64, k: u64, ns: &[u64]) -> Result<KernelId, String> {
        let widths = ns.iter().map(u64::to_string).collect::<Vec<_>>().join("+");
        let name = format!("npu_gemm_bt_bf16_{m}x{k}x{widths}");
        if let Some(i) = self.cpu.entries.iter().position(|e| e.name == name) {
            return Ok(KernelId(i as u32));
        }
        let g = gemm_bt_multi(&NPU1, m, k, ns);
        let op = NpuOp::GemmBtMulti {
            m,
            k,
            n: ns.to_vec(),
            padded: (g.padded.0, g.padded.1),
            padded_n: g.outputs.iter().map(|o| o.1).collect(),
        };
        // The step's buffers: the operand, then each weight and its result.
        let kinds = std::iter::once(BindingKind::StorageRead)
            .chain(ns.iter().flat_map(|_| [BindingKind::StorageRead, BindingKind::StorageReadWrite]));
        self.push(name, op, g.design, kinds.collect())
    }

    /// The NPU kernel of prefill attention `shape` (chunks of `shape.rows` over the plan's context), one per
    /// shape: a plan of sliding and global layers has one of each.
    fn attention(&mut self, shape: PrefillShape) -> Result<KernelId, String> {
        let PrefillShape { rows, max_keys, heads, kv_heads, head_dim, window, scale } = shape;
        let w = window.map_or(String::new(), |w| format!("_w{w}"));
        let name =
            format!("npu_attention_bf16_{rows}x{max_keys}_{heads}of{kv_heads}x{head_dim}{w}_s{:08x}", scale.to_bits());
        if let Some(i) = self.cpu.entries.iter().position(|e| e.name == name) {
            return Ok(KernelId(i as u32));
        }
        let a = attention(&NPU1, shape);
        let op = NpuOp::Attention(AttentionShape { geometry: shape, padded_rows: a.padded_rows, key_rows: a.key_rows });
        // The step's buffers: q, k, v, the layer's KV cache, the output.
        let bindings = [BindingKind::StorageRead, BindingKind::StorageRead, BindingKind::StorageRead]
            .into_iter()
            .chain([BindingKind::StorageReadWrite, BindingKind::StorageReadWrite]);
        self.push(name, op, a.design, bindings.collect())
    }

    /// A checked design as the plan's kernel `name`, its artifact appended to the section.
    fn push(&mut self, name: String, op: NpuOp, design: Design, kinds: Vec<BindingKind>) -> Result<KernelId, String> {
        unicorn_aie::verify::verify(&design, &NPU1).map_err(|v| {
            let first = v.first().map_or(String::new(), |v| v.to_string());
            format!("NPU design {} breaks the AIE2 rules: {first}", design.name)
        })?;
        let kernel = NpuKernel { op, mlir: super::aie::module(&design), design, built: None };
        let bytes = kernel.encode();
        // Artifacts start on 8 bytes, so a reader may take the words of a built instruction stream in place.
        self.section.resize(self.section.len().next_multiple_of(8), 0);
        let artifact = ArtifactRange { offset: self.section.len() as u64, len: bytes.len() as u64 };
        self.section.extend_from_slice(&bytes);
        self.cpu.entries.push(KernelEntry {
            entry: kernel.design.name.clone(),
            name,
            backend: Backend::Npu,
            artifact: Some(artifact),
            bindings: kinds.into_iter().enumerate().map(|(i, kind)| Binding { binding: i as u32, kind }).collect(),
            spec_constants: Vec::new(),
            workgroup: [1, 1, 1],
            requires: Vec::new(),
        });
        Ok(KernelId(self.cpu.entries.len() as u32 - 1))
    }
}

/// Lower one planned graph: a launch placed on the NPU (prefill projections of one operand, grouped as decode
/// groups them: q / k / v and gate / up; prefill attention) becomes its design for `chunk` rows (the
/// multi-weight GEMM; the attention over the plan's context, its position and keys runtime parameters), one
/// dispatch; the rest the CPU's built-in kernels.
pub fn lower_phase(module: &Module, g: &Graph, chunk: u64, kernels: &mut KernelTable) -> Result<PlanPhase, String> {
    let how = crate::Lowering {
        group: Some(usize::MAX),
        fuse_norm: false,
        fuse_norm_add: false,
        pair_norms: false,
        fuse_residual: false,
        pair_ropes: false,
        rope_attention: false,
        glu_columns: None,
    };
    let mut failed = None;
    let phase = crate::lower_steps(module, g, how, |ops, cols, rows, device| {
        let work = [rows, Expr::Const(cols[cols.len() - 1]), Expr::Const(1)];
        // The weights of a group of bias-free matmuls (the placement rule puts bf16 ones on the NPU).
        let weights: Option<Vec<_>> = ops
            .iter()
            .map(|op| match op {
                Op::MatMul { weight, bias: None } => Some(module.weight(*weight)),
                _ => None,
            })
            .collect();
        let npu = match (device, weights, &ops[0]) {
            (Device::Npu, _, &Op::Attention { num_heads, num_kv_heads, head_dim, window, scale, .. }) => {
                Some(kernels.attention(PrefillShape {
                    rows: chunk,
                    max_keys: unicorn_ir::npu::attention_max_keys(module.spec.max_context as u64, chunk),
                    heads: num_heads as u64,
                    kv_heads: num_kv_heads as u64,
                    head_dim: head_dim as u64,
                    window: window.map(|w| w as u64),
                    scale,
                }))
            }
            (Device::Npu, Some(ws), _) if ws.len() <= MAX_WEIGHTS => {
                debug_assert!(ws.iter().all(|w| w.format == WeightFormat::Bf16), "the placement rule's bf16");
                let ns: Vec<u64> = ws.iter().map(|w| w.rows() as u64).collect();
                Some(kernels.gemm(chunk, ws[0].cols() as u64, &ns))
            }
            (Device::Npu, ..) => Some(Err(format!("no NPU design for the launch of {}", ops[0].name()))),
            _ => None,
        };
        match npu {
            Some(Ok(id)) => (id, work),
            Some(Err(e)) => {
                failed.get_or_insert(e);
                (KernelId(0), work)
            }
            None => (kernels.cpu.builtin(cpu::kernel_name(module, ops)), work),
        }
    });
    failed.map_or(Ok(phase), Err)
}
