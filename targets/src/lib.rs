//! Lowering of placed graph regions to kernels. Each target is a capability description plus a lowering
//! function: the CPU target lowers every op to one of the runtime's built-in kernels, named here; the Vulkan
//! target generates a compute shader per kernel and compiles it to SPIR-V.

pub mod cpu;
pub mod vulkan;

use unicorn_ir::memory::Slot;
use unicorn_ir::plan::{ActSlot, ArenaDecl, ArenaId, Arg, Expr, KernelId, PlanPhase, Step};
use unicorn_ir::validate::limits::MAX_GROUP;
use unicorn_ir::{DType, Dim, Graph, Module, NodeId, Op};

fn act(slot: Slot) -> ActSlot {
    ActSlot {
        arena: ArenaId(slot.kept_rows as u32),
        offset: (slot.offset * DType::F32.size()) as u64,
        width: slot.width as u64,
        dtype: DType::F32,
    }
}

/// Lower one planned graph to its launches, in the memory plan's order. With `group`, consecutive matmuls of one
/// operand (and alike in being quantized or not) form one launch of at most `group` buffer arguments (the
/// operand, then each matrix's weight, bias and result). `kernel` names the kernel of a launch's ops and its
/// work size, given the launch's total output columns and its rows (`S` or `R`).
pub(crate) fn lower_steps(
    module: &Module,
    g: &Graph,
    group: Option<usize>,
    mut kernel: impl FnMut(&[Op], u64, Expr) -> (KernelId, [Expr; 3]),
) -> PlanPhase {
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
        let buffers = |m: NodeId| match &g.g[m].op {
            Op::MatMul { bias, .. } => 2 + bias.is_some() as usize,
            _ => 0,
        };
        let group = match (key(n), group) {
            (Some(k), Some(most)) => {
                let mut used = 1;
                order[i..]
                    .iter()
                    .take(MAX_GROUP)
                    .take_while(|&&m| {
                        used += buffers(m);
                        key(m) == Some(k) && used <= most
                    })
                    .count()
                    .max(1)
            }
            _ => 1,
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
        // An execution stacks the rows of every sequence it runs, so a decode graph's one row per sequence is
        // `S` rows of the arena (or `R` kept ones) too.
        let rows = match node.ty.row_dim() {
            Dim::Out => Expr::R,
            Dim::Seq | Dim::Const(_) if slot(n).arena.0 == 1 => Expr::R,
            Dim::Seq | Dim::Const(_) => Expr::S,
        };
        let cols = members.iter().map(|&m| g.g[m].ty.row_width() as u64).sum();
        let label = members.iter().map(|&m| g.g[m].label.as_str()).collect::<Vec<_>>().join(" + ");
        let (kernel, work) = kernel(&ops, cols, rows);
        steps.push(Step { kernel, device: node.device, args, work, ops, label });
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
