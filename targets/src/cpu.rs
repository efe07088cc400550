//! The CPU target: every op maps to a built-in kernel of the runtime, so the kernel table has no artifacts. The
//! target owns the decisions the CPU kernels depend on: the layout and alignment of each weight, and which
//! launches are grouped (consecutive matmuls of one operand — a layer's q/k/v, its gate and up — run as one
//! launch, so the activations are quantized once and the threads meet once per group). The runtime executes
//! these decisions; it never re-derives them.
//!
//! Kernel names are stable: they are stored in plans, shown by `unicornc inspect` and used in profiles. The
//! weight format is part of a matmul's name because each format has its own kernel.

use unicorn_ir::memory::Slot;
use unicorn_ir::plan::{ActSlot, ArenaDecl, ArenaId, Arg, Backend, Expr, KernelEntry, KernelId, PlanPhase, Step};
use unicorn_ir::quant::WeightLayout;
use unicorn_ir::validate::limits::MAX_GROUP;
use unicorn_ir::{DType, Dim, Graph, Module, NodeId, Op, WeightFormat};

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
    fn builtin(&mut self, name: String) -> KernelId {
        let i = self.entries.iter().position(|k| k.name == name).unwrap_or_else(|| {
            self.entries.push(KernelEntry {
                entry: name.clone(),
                name,
                backend: Backend::Cpu,
                artifact: None,
                bindings: Vec::new(),
                spec_constants: Vec::new(),
                workgroup: [1, 1, 1],
            });
            self.entries.len() - 1
        });
        KernelId(i as u32)
    }
}

fn act(slot: Slot) -> ActSlot {
    ActSlot {
        arena: ArenaId(slot.kept_rows as u32),
        offset: (slot.offset * DType::F32.size()) as u64,
        width: slot.width as u64,
        dtype: DType::F32,
    }
}

/// Lower one planned graph to its launches.
pub fn lower_phase(module: &Module, g: &Graph, kernels: &mut KernelTable) -> PlanPhase {
    let mem = g.memory.as_ref().expect("memory planned");
    let slot = |n: NodeId| act(mem.slot(n).expect("every value has a slot"));
    let order: Vec<_> = mem.order.iter().copied().filter(|&n| !matches!(g.g[n].op, Op::Tokens | Op::Output)).collect();
    // A matmul's grouping key: its operand and whether its weight is quantized (the kernels of one launch
    // quantize the operand once, or not at all).
    let key = |n: NodeId| match &g.g[n].op {
        Op::MatMul { weight, .. } => Some((g.inputs(n)[0], module.weight(*weight).format.is_quantized())),
        _ => None,
    };
    let mut steps = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let n = order[i];
        let node = &g.g[n];
        let group = match key(n) {
            Some(k) => order[i..].iter().take(MAX_GROUP).take_while(|&&m| key(m) == Some(k)).count(),
            None => 1,
        };
        let members = &order[i..i + group];
        let ops: Vec<Op> = members.iter().map(|&m| g.g[m].op.clone()).collect();
        let inputs = g.inputs(n);
        let mut args = Vec::new();
        match &node.op {
            Op::Embed { table, .. } => args.extend([Arg::Tokens, Arg::Weight(*table), Arg::Act(slot(n))]),
            Op::RmsNorm { weight, .. } => {
                args.extend([Arg::Act(slot(inputs[0])), Arg::Weight(*weight), Arg::Act(slot(n))])
            }
            Op::MatMul { .. } => {
                args.push(Arg::Act(slot(inputs[0])));
                for (&m, op) in members.iter().zip(&ops) {
                    let Op::MatMul { weight, bias } = op else { unreachable!("grouped by key") };
                    args.push(Arg::Weight(*weight));
                    args.extend(bias.map(Arg::Weight));
                    args.push(Arg::Act(slot(m)));
                }
            }
            Op::Rope { .. } => args.extend([Arg::Act(slot(inputs[0])), Arg::Act(slot(n)), Arg::Scalar(Expr::Pos)]),
            Op::Attention { layer, .. } => {
                args.extend(inputs.iter().map(|&x| Arg::Act(slot(x))));
                args.extend([Arg::Kv(*layer as u32), Arg::Act(slot(n)), Arg::Scalar(Expr::Pos)]);
            }
            _ => {
                args.extend(inputs.iter().map(|&x| Arg::Act(slot(x))));
                args.push(Arg::Act(slot(n)));
            }
        }
        let rows = match node.ty.row_dim() {
            Dim::Out => Expr::R,
            Dim::Seq => Expr::S,
            Dim::Const(c) => Expr::Const(c as u64),
        };
        let cols = members.iter().map(|&m| g.g[m].ty.row_width() as u64).sum();
        let label = members.iter().map(|&m| g.g[m].label.as_str()).collect::<Vec<_>>().join(" + ");
        steps.push(Step {
            kernel: kernels.builtin(kernel_name(module, &ops)),
            device: node.device,
            args,
            work: [rows, Expr::Const(cols), Expr::Const(1)],
            ops,
            label,
        });
        i += group;
    }
    let result = g.output().and_then(|o| mem.slot(o)).map(act).expect("an output with a slot");
    let row_bytes = |w: usize| (w * DType::F32.size()) as u64;
    PlanPhase {
        phase: g.phase,
        arenas: vec![
            ArenaDecl { rows: Dim::Seq, row_bytes: row_bytes(mem.arena_width) },
            ArenaDecl { rows: Dim::Out, row_bytes: row_bytes(mem.kept_width) },
        ],
        steps,
        result,
    }
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
