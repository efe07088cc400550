//! Lowering of placed graph regions to kernels. Each target is a capability description plus a lowering
//! function: the CPU target lowers every op to one of the runtime's built-in kernels, named here; the Vulkan
//! target generates a compute shader per kernel and compiles it to SPIR-V; the NPU target (`npu`: so far its
//! device model, design data and AIE2 rules) will generate AIE2 designs.

pub mod cpu;
pub mod npu;
pub mod vulkan;

use unicorn_ir::memory::Slot;
use unicorn_ir::npu::MAX_GEMM_WEIGHTS;
use unicorn_ir::plan::{ActSlot, ArenaDecl, ArenaId, Arg, Expr, KernelId, PlanPhase, Step};
use unicorn_ir::validate::limits::MAX_GROUP;
use unicorn_ir::{DType, Device, Dim, Graph, Module, NodeId, Op};

/// Whether two slots share bytes.
fn overlaps(a: &ActSlot, b: &ActSlot) -> bool {
    let end = |s: &ActSlot| s.offset + s.width * s.dtype.size() as u64;
    a.arena == b.arena && a.offset < end(b) && b.offset < end(a)
}

fn act(slot: Slot) -> ActSlot {
    ActSlot {
        arena: ArenaId(slot.kept_rows as u32),
        offset: (slot.offset * DType::F32.size()) as u64,
        width: slot.width as u64,
        dtype: DType::F32,
    }
}

/// How a target groups and fuses ops into launches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lowering {
    /// Consecutive matmuls of one operand (and alike in being quantized or not) form one launch of at most
    /// this many buffer arguments (the operand, then each matrix's weight, bias and result); `None` keeps one
    /// matmul per launch.
    pub group: Option<usize>,
    /// An RMSNorm over whole rows fuses into the launch of the matmuls that read it, when they are all its
    /// readers and the fused launch stays within `group`'s buffers.
    pub fuse_norm: bool,
    /// A residual add that alone reads a single matmul's result fuses into that matmul's launch as an
    /// epilogue (the matmul's own result is then never written).
    pub fuse_residual: bool,
    /// A residual add that alone reads a whole-row RMSNorm's result fuses behind it (Gemma 3's norms after
    /// attention and after the FFN): one launch, the norm's own result never written.
    pub fuse_norm_add: bool,
    /// Two RoPEs of one table side by side (a layer's q and k) share a launch.
    pub pair_ropes: bool,
    /// Two RMSNorms side by side that fuse into nothing else (Gemma 3's and Qwen3's q and k norms) share a
    /// launch.
    pub pair_norms: bool,
    /// Such a pair fuses into the launch of the attention right after it that alone reads them, as its q and
    /// k (with [`Lowering::pair_ropes`]).
    pub rope_attention: bool,
    /// A GLU fuses behind the two matmuls (gate, up; one format) that alone feed it, when their operand's
    /// columns are a multiple of this; `None` never.
    pub glu_columns: Option<u64>,
}

/// Lower one planned graph to its launches, in the memory plan's order, grouped and fused as `how` says.
/// `kernel` names the kernel of a launch's ops and its work size, given each unit's output columns, the
/// launch's rows (`S` or `R`) and the device its ops were placed on.
pub(crate) fn lower_steps(
    module: &Module,
    g: &Graph,
    how: Lowering,
    mut kernel: impl FnMut(&[Op], &[u64], Expr, Device) -> (KernelId, [Expr; 3]),
) -> PlanPhase {
    let mem = g.memory.as_ref().expect("memory planned");
    let slot = |n: NodeId| act(mem.slot(n).expect("every value has a slot"));
    let order: Vec<_> = mem.order.iter().copied().filter(|&n| !matches!(g.g[n].op, Op::Tokens | Op::Output)).collect();
    // A matmul's grouping key: its operand, whether its weight is quantized (the kernels of one launch
    // quantize the operand once, or not at all) and its device (a launch runs on one).
    let key = |n: NodeId| match &g.g[n].op {
        Op::MatMul { weight, .. } => {
            Some((g.inputs(n)[0], module.weight(*weight).format.is_quantized(), g.g[n].device))
        }
        _ => None,
    };
    let matmul_buffers = |m: NodeId| match &g.g[m].op {
        Op::MatMul { bias, .. } => 2 + bias.is_some() as usize,
        _ => 0,
    };
    // The matmuls launched together from order[i] on (1 for any other op); on the NPU, at most the weights
    // its multi-weight GEMM design takes.
    let group_at = |i: usize| match (order.get(i).and_then(|&n| key(n)), how.group) {
        (Some(k), Some(most)) => {
            let mut used = 1;
            order[i..]
                .iter()
                .take(if k.2 == Device::Npu { MAX_GEMM_WEIGHTS } else { MAX_GROUP })
                .take_while(|&&m| {
                    used += matmul_buffers(m);
                    key(m) == Some(k) && used <= most
                })
                .count()
                .max(1)
        }
        _ => 1,
    };
    // A launch's arguments, unit by unit (see `Step::units`).
    let args_of = |members: &[NodeId]| -> Vec<Arg> {
        let n = members[0];
        let inputs = g.inputs(n);
        let mut args = Vec::new();
        match &g.g[n].op {
            Op::Embed { table, .. } => args.extend([Arg::Tokens, Arg::Weight(*table), Arg::Act(slot(n))]),
            Op::RmsNorm { weight, .. } => {
                args.extend([Arg::Act(slot(inputs[0])), Arg::Weight(*weight), Arg::Act(slot(n))])
            }
            Op::MatMul { .. } => {
                args.push(Arg::Act(slot(inputs[0])));
                for &m in members {
                    let Op::MatMul { weight, bias } = &g.g[m].op else { unreachable!("grouped by key") };
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
        args
    };
    // Whether the norm at order[i] fuses into the matmuls after it: a whole-row norm, read by exactly those
    // matmuls, within the binding limit (its operand, weight and result come first).
    let fuses = |i: usize| -> bool {
        let n = order[i];
        let Op::RmsNorm { weight, .. } = &g.g[n].op else { return false };
        if !how.fuse_norm || module.weight(*weight).shape.iter().product::<usize>() != g.g[n].ty.row_width() {
            return false;
        }
        let group = group_at(i + 1);
        let Some(members) = order.get(i + 1..i + 1 + group) else { return false };
        let mut readers = g.users(n);
        readers.sort();
        let mut want = members.to_vec();
        want.sort();
        let buffers = 3 + 1 + members.iter().map(|&m| matmul_buffers(m)).sum::<usize>();
        // The fused kernel reads the norm's operand while it writes the matmuls' results: they must not share
        // bytes (the memory plan may have reused the operand's slot once the norm had read it).
        let x = slot(g.inputs(n)[0]);
        let disjoint = members.iter().all(|&m| !overlaps(&slot(m), &x));
        key(members[0]).is_some_and(|(op, ..)| op == n)
            && readers == want
            && disjoint
            && how.group.is_some_and(|b| buffers <= b)
    };
    // Whether the add at order[i] fuses into the single matmul at order[i - 1]: its only reader, within the
    // binding limit, and the sum's slot neither overlaps the matmul's operand (other workgroups still read it)
    // nor partly overlaps the residual (each element is read, then written, by one thread: the same slot is
    // fine).
    let fuses_add = |i: usize| -> bool {
        let (Some(&m), Some(&n)) = (order.get(i.wrapping_sub(1)), order.get(i)) else { return false };
        if !how.fuse_residual || !matches!(g.g[n].op, Op::Add) || !matches!(g.g[m].op, Op::MatMul { .. }) {
            return false;
        }
        let inputs = g.inputs(n);
        let Some(other) = inputs.iter().copied().find(|&x| x != m) else { return false };
        let (sum, res, x) = (slot(n), slot(other), slot(g.inputs(m)[0]));
        let buffers = 1 + matmul_buffers(m) + 3;
        inputs.contains(&m)
            && g.users(m) == [n]
            && !overlaps(&sum, &x)
            && (sum == res || !overlaps(&sum, &res))
            && how.group.is_some_and(|b| buffers <= b)
    };
    // Whether the whole-row norm at order[i] and the add at order[i + 1], its only reader, share a launch:
    // within the binding limit, and the sum's slot either one of the add's operands' or clear of both, and
    // clear of the norm's operand unless it is that slot (a row's workgroup reads its whole row of x before it
    // writes, and each element of the sum after reading that element of x and of the residual).
    let fuses_norm_add = |i: usize| -> bool {
        let (Some(&n), Some(&a)) = (order.get(i), order.get(i + 1)) else { return false };
        let Op::RmsNorm { weight, .. } = &g.g[n].op else { return false };
        if !how.fuse_norm_add || !matches!(g.g[a].op, Op::Add) {
            return false;
        }
        let inputs = g.inputs(a);
        let Some(other) = inputs.iter().copied().find(|&r| r != n) else { return false };
        let (sum, res, x) = (slot(a), slot(other), slot(g.inputs(n)[0]));
        module.weight(*weight).shape.iter().product::<usize>() == g.g[n].ty.row_width()
            && inputs.contains(&n)
            && g.users(n) == [a]
            && (sum == res || !overlaps(&sum, &res))
            && (sum == x || !overlaps(&sum, &x))
            && how.group.is_some_and(|b| 6 <= b)
    };
    // Whether the ropes at order[i] and order[i + 1] share a launch: one table and head size, neither reading
    // the other's result, and neither's result on the other's operand (their threads run side by side).
    let pairs_ropes = |i: usize| -> bool {
        let (Some(&a), Some(&b)) = (order.get(i), order.get(i + 1)) else { return false };
        match (&g.g[a].op, &g.g[b].op) {
            (Op::Rope { rope: ra, head_dim: ha }, Op::Rope { rope: rb, head_dim: hb }) if how.pair_ropes => {
                let (xa, xb) = (slot(g.inputs(a)[0]), slot(g.inputs(b)[0]));
                ra == rb && ha == hb && g.inputs(b)[0] != a && !overlaps(&slot(a), &xb) && !overlaps(&slot(b), &xa)
            }
            _ => false,
        }
    };
    // Whether the norms at order[i] and order[i + 1] share a launch: neither fuses otherwise, neither reads
    // the other's result, and neither's result lands on the other's operand (their workgroups run side by
    // side).
    let pairs_norms = |i: usize| -> bool {
        let (Some(&a), Some(&b)) = (order.get(i), order.get(i + 1)) else { return false };
        let (Op::RmsNorm { .. }, Op::RmsNorm { .. }) = (&g.g[a].op, &g.g[b].op) else { return false };
        let (xa, xb) = (slot(g.inputs(a)[0]), slot(g.inputs(b)[0]));
        how.pair_norms
            && !fuses(i)
            && !fuses(i + 1)
            && !fuses_norm_add(i)
            && !fuses_norm_add(i + 1)
            && g.inputs(b)[0] != a
            && !overlaps(&slot(a), &xb)
            && !overlaps(&slot(b), &xa)
            && how.group.is_some_and(|most| 6 <= most)
    };
    // Whether the paired ropes at order[i] and order[i + 1] fuse into the attention at order[i + 2]: its q and
    // k, in that order, read by it alone, within the binding limit (two ropes' four buffers, attention's five),
    // and its result on neither rope's operand (the fused kernel reads them while other workgroups write it).
    let fuses_rope_attention = |i: usize| -> bool {
        let (Some(&a), Some(&b), Some(&n)) = (order.get(i), order.get(i + 1), order.get(i + 2)) else {
            return false;
        };
        let Op::Attention { .. } = g.g[n].op else { return false };
        let y = slot(n);
        how.rope_attention
            && pairs_ropes(i)
            && g.inputs(n)[..2] == [a, b]
            && g.users(a) == [n]
            && g.users(b) == [n]
            && !overlaps(&y, &slot(g.inputs(a)[0]))
            && !overlaps(&y, &slot(g.inputs(b)[0]))
            && how.group.is_some_and(|most| 4 + 5 <= most)
    };
    // Whether the GLU at order[i] fuses behind the two matmuls before it (with a norm in front of them when
    // `norm`): its operands are their results, gate first, it is their only reader, they are of one format,
    // the operand's columns suit the kernel, the bindings fit, and its result does not land on what the
    // launch reads (the matmuls' operand, or the norm's).
    let fuses_glu = |i: usize, norm: bool| -> bool {
        let (Some(cols), Some(&n), Some(pair)) = (how.glu_columns, order.get(i), order.get(i.wrapping_sub(2)..i))
        else {
            return false;
        };
        let Op::Glu { .. } = g.g[n].op else { return false };
        let fmt = |m: NodeId| match &g.g[m].op {
            Op::MatMul { weight, .. } => Some(module.weight(*weight).format),
            _ => None,
        };
        let x = g.inputs(pair[0])[0];
        let read = if norm { g.inputs(x)[0] } else { x };
        let buffers = 3 * norm as usize + 1 + pair.iter().map(|&m| matmul_buffers(m)).sum::<usize>() + 3;
        g.inputs(n) == pair
            && pair.iter().all(|&m| g.users(m) == [n])
            && fmt(pair[0]).is_some()
            && fmt(pair[0]) == fmt(pair[1])
            && (g.g[x].ty.row_width() as u64).is_multiple_of(cols)
            && !overlaps(&slot(n), &slot(read))
            && how.group.is_some_and(|b| buffers <= b)
    };
    let mut steps = Vec::new();
    let mut i = 0;
    while i < order.len() {
        // The units of this launch: the op at i (with its matmul group), and a norm's matmuls if it fuses.
        let mut units: Vec<&[NodeId]> = Vec::new();
        let norm_add = fuses_norm_add(i);
        if norm_add || fuses(i) {
            units.push(&order[i..i + 1]);
            i += 1;
        }
        let group = if norm_add {
            1
        } else if units.is_empty() && fuses_rope_attention(i) {
            units.push(&order[i..i + 1]);
            units.push(&order[i + 1..i + 2]);
            i += 2;
            1
        } else if units.is_empty() && (pairs_ropes(i) || pairs_norms(i)) {
            units.push(&order[i..i + 1]);
            i += 1;
            1
        } else {
            group_at(i)
        };
        units.push(&order[i..i + group]);
        i += group;
        let fused_glu = group == 2 && fuses_glu(i, units.len() > 1);
        if fused_glu {
            units.push(&order[i..i + 1]);
            i += 1;
        }
        let fused_add = units.len() == 1 && group == 1 && fuses_add(i);
        if fused_add {
            units.push(&order[i..i + 1]);
            i += 1;
        }
        let last = *units.last().expect("a unit").last().expect("a node");
        let node = &g.g[last];
        let members: Vec<NodeId> = units.iter().flat_map(|u| u.iter().copied()).collect();
        let ops: Vec<Op> = members.iter().map(|&m| g.g[m].op.clone()).collect();
        let mut args: Vec<Arg> = units.iter().flat_map(|u| args_of(u)).collect();
        if fused_add || norm_add {
            // The add's operands as [the matmul's or norm's result, the residual] whatever the graph's order
            // (a sum is the same either way), so that the fused kernel knows which one it reads.
            let n = args.len();
            if args[n - 3] != Arg::Act(slot(members[0])) {
                args.swap(n - 3, n - 2);
            }
        }
        // An execution stacks the rows of every sequence it runs, so a decode graph's one row per sequence is
        // `S` rows of the arena (or `R` kept ones) too.
        let rows = match node.ty.row_dim() {
            Dim::Out => Expr::R,
            Dim::Seq | Dim::Const(_) if slot(last).arena.0 == 1 => Expr::R,
            Dim::Seq | Dim::Const(_) => Expr::S,
        };
        // Each unit's output columns (a matmul group's summed).
        let cols: Vec<u64> = units.iter().map(|u| u.iter().map(|&m| g.g[m].ty.row_width() as u64).sum()).collect();
        let label = members.iter().map(|&m| g.g[m].label.as_str()).collect::<Vec<_>>().join(" + ");
        let (kernel, work) = kernel(&ops, &cols, rows, node.device);
        steps.push(Step { kernel, device: node.device, args, work, ops, label });
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
