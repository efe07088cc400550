//! The Phoenix target's lowering: the launches placed on the NPU become AIE2 designs — each prefill projection
//! the whole-array GEMM of its shape, made for the plan's prefill chunk of rows — checked by the AIE2 rules,
//! emitted as MLIR and stored in the kernels section with the design as data; every other launch is one of the
//! CPU's built-in kernels, as the CPU target names them.

use super::gemm::gemm_bt;
use super::model::NPU1;
use crate::cpu;
use unicorn_ir::npu::{NpuKernel, NpuOp};
use unicorn_ir::plan::{ArtifactRange, Backend, Binding, BindingKind, Expr, KernelEntry, KernelId, PlanPhase};
use unicorn_ir::{Device, Graph, Module, Op, Phase, WeightFormat};

/// The kernel table of a Phoenix plan and the kernels section its NPU kernels point into.
#[derive(Default)]
pub struct KernelTable {
    pub cpu: cpu::KernelTable,
    pub section: Vec<u8>,
}

impl KernelTable {
    /// The NPU kernel of a projection by an `n x k` bf16 weight over `m` rows (one per shape).
    fn gemm(&mut self, m: u64, k: u64, n: u64) -> Result<KernelId, String> {
        let name = format!("npu_gemm_bt_bf16_{m}x{k}x{n}");
        if let Some(i) = self.cpu.entries.iter().position(|e| e.name == name) {
            return Ok(KernelId(i as u32));
        }
        let g = gemm_bt(&NPU1, m, k, n);
        unicorn_aie::verify::verify(&g.design, &NPU1).map_err(|v| {
            let first = v.first().map_or(String::new(), |v| v.to_string());
            format!("NPU design {} breaks the AIE2 rules: {first}", g.design.name)
        })?;
        let kernel = NpuKernel {
            op: NpuOp::GemmBt { m, k, n, padded: g.padded },
            mlir: super::aie::module(&g.design),
            design: g.design,
            built: None,
        };
        let bytes = kernel.encode();
        // Artifacts start on 8 bytes, so a reader may take the words of a built instruction stream in place.
        self.section.resize(self.section.len().next_multiple_of(8), 0);
        let artifact = ArtifactRange { offset: self.section.len() as u64, len: bytes.len() as u64 };
        self.section.extend_from_slice(&bytes);
        let binding = |binding, kind| Binding { binding, kind };
        self.cpu.entries.push(KernelEntry {
            entry: kernel.design.name.clone(),
            name,
            backend: Backend::Npu,
            artifact: Some(artifact),
            bindings: vec![
                binding(0, BindingKind::StorageRead),
                binding(1, BindingKind::StorageRead),
                binding(2, BindingKind::StorageReadWrite),
            ],
            spec_constants: Vec::new(),
            workgroup: [1, 1, 1],
            requires: Vec::new(),
        });
        Ok(KernelId(self.cpu.entries.len() as u32 - 1))
    }
}

/// Lower one planned graph: a launch placed on the NPU (a prefill projection) becomes its GEMM design for
/// `chunk` rows, the rest the CPU's built-in kernels. Prefill launches one matmul at a time (each projection is
/// a dispatch of its own design); decode groups matmuls of one operand as the CPU target does.
pub fn lower_phase(module: &Module, g: &Graph, chunk: u64, kernels: &mut KernelTable) -> Result<PlanPhase, String> {
    let how = crate::Lowering {
        group: (g.phase == Phase::Decode).then_some(usize::MAX),
        fuse_norm: false,
        fuse_residual: false,
        pair_ropes: false,
        rope_attention: false,
        glu_columns: None,
    };
    let mut failed = None;
    let phase = crate::lower_steps(module, g, how, |ops, cols, rows, device| {
        let work = [rows, Expr::Const(cols[cols.len() - 1]), Expr::Const(1)];
        let npu = match (device, ops) {
            (Device::Npu, [Op::MatMul { weight, bias: None }]) => {
                let w = module.weight(*weight);
                debug_assert_eq!(w.format, WeightFormat::Bf16, "the placement rule puts bf16 matmuls here");
                Some(kernels.gemm(chunk, w.cols() as u64, w.rows() as u64))
            }
            (Device::Npu, _) => Some(Err(format!("no NPU design for the launch of {}", ops[0].name()))),
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
