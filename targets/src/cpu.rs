//! The CPU target: every op maps to a built-in kernel of the runtime, so the kernel table has no artifacts. The
//! target owns the decisions the CPU kernels depend on: the layout and alignment of each weight, and which
//! launches are grouped (consecutive matmuls of one operand — a layer's q/k/v, its gate and up — run as one
//! launch, so the activations are quantized once and the threads meet once per group). The runtime executes
//! these decisions; it never re-derives them.
//!
//! Kernel names are stable: they are stored in plans, shown by `unicornc inspect` and used in profiles. The
//! weight format is part of a matmul's name because each format has its own kernel.

use unicorn_ir::plan::{Backend, Expr, KernelEntry, KernelId, PlanPhase};
use unicorn_ir::quant::WeightLayout;
use unicorn_ir::{Graph, Module, Op, WeightFormat};

/// Alignment of every weight in the weights section, so kernels can use aligned vector loads.
pub const WEIGHT_ALIGN: u64 = 64;

/// The layout the CPU kernels read a `rows x k` matrix in: q4_0 / q8_0 matrices are interleaved 8 rows at a
/// time (padded to whole groups), so a kernel keeps 8 rows in vector lanes; the only layout its int8 kernels read.
pub fn weight_layout(format: WeightFormat, shape: &[usize]) -> WeightLayout {
    if format.is_quantized() && shape.len() == 2 && shape[0] > 0 {
        WeightLayout::Interleaved8
    } else {
        WeightLayout::Rows
    }
}

/// The built-in kernel that executes `ops` (one op, or a group of matmuls) on the CPU.
pub fn kernel_name(module: &Module, ops: &[Op]) -> String {
    match &ops[0] {
        Op::MatMul { weight, .. } => {
            let f = module.weight(*weight).format;
            let bias = ops.iter().any(|o| matches!(o, Op::MatMul { bias: Some(_), .. }));
            let group = if ops.len() > 1 { ops.len().to_string() } else { String::new() };
            format!("matmul{group}{}_{f}", if bias { "_bias" } else { "" })
        }
        Op::Embed { table, .. } => format!("embed_{}", module.weight(*table).format),
        Op::Glu { activation } => format!("glu_{activation:?}").to_lowercase(),
        Op::Attention { window, .. } => {
            if window.is_some() {
                "attention_windowed".into()
            } else {
                "attention".into()
            }
        }
        other => other.name().to_string(),
    }
}

/// The kernel table under construction: one entry per distinct kernel.
#[derive(Default)]
pub struct KernelTable {
    pub entries: Vec<KernelEntry>,
}

impl KernelTable {
    pub(crate) fn builtin(&mut self, name: String) -> KernelId {
        let i = self.entries.iter().position(|k| k.name == name).unwrap_or_else(|| {
            self.entries.push(KernelEntry {
                entry: name.clone(),
                name,
                backend: Backend::Cpu,
                artifact: None,
                bindings: Vec::new(),
                spec_constants: Vec::new(),
                workgroup: [1, 1, 1],
                requires: Vec::new(),
            });
            self.entries.len() - 1
        });
        KernelId(i as u32)
    }
}

/// Lower one planned graph to its launches: matmuls of one operand grouped, each launch a built-in kernel over
/// (rows, columns).
pub fn lower_phase(module: &Module, g: &Graph, kernels: &mut KernelTable) -> PlanPhase {
    crate::lower_steps(
        module,
        g,
        crate::Lowering {
            group: Some(usize::MAX),
            fuse_norm: false,
            fuse_norm_add: false,
            pair_norms: false,
            fuse_residual: false,
            pair_ropes: false,
            rope_attention: false,
            glu_columns: None,
        },
        |ops, cols, rows, _| {
            (kernels.builtin(kernel_name(module, ops)), [rows, Expr::Const(cols[cols.len() - 1]), Expr::Const(1)])
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_matrices_are_interleaved_whatever_their_rows() {
        assert_eq!(weight_layout(WeightFormat::Q4_0, &[64, 32]), WeightLayout::Interleaved8);
        assert_eq!(weight_layout(WeightFormat::Q8_0, &[16, 64]), WeightLayout::Interleaved8);
        assert_eq!(weight_layout(WeightFormat::Q4_0, &[60, 32]), WeightLayout::Interleaved8);
        assert_eq!(weight_layout(WeightFormat::Q8_0, &[1, 32]), WeightLayout::Interleaved8);
        assert_eq!(weight_layout(WeightFormat::F16, &[64, 32]), WeightLayout::Rows);
        assert_eq!(weight_layout(WeightFormat::Q8_0, &[64]), WeightLayout::Rows);
    }
}
