//! Memory planning: schedule each graph in topological order and give every value a slot in one arena, reusing
//! the space of values whose last reader has run (first fit over live intervals). Slots are in f32 elements per
//! row, since every activation has one row per token.

use unicorn_ir::memory::{MemoryPlan, Slot};
use unicorn_ir::{Device, Dim, Graph, Module, Op};

/// Free space of the arena as sorted, disjoint `(offset, width)` holes, with the arena growing at the end.
#[derive(Default)]
struct Arena {
    holes: Vec<(usize, usize)>,
    end: usize,
}

impl Arena {
    fn alloc(&mut self, width: usize) -> usize {
        if let Some(i) = self.holes.iter().position(|&(_, w)| w >= width) {
            let (off, w) = self.holes[i];
            if w == width {
                self.holes.remove(i);
            } else {
                self.holes[i] = (off + width, w - width);
            }
            return off;
        }
        // Grow, absorbing a hole at the very end.
        if let Some(&(off, w)) = self.holes.last() {
            if off + w == self.end {
                self.holes.pop();
                self.end = off + width;
                return off;
            }
        }
        let off = self.end;
        self.end += width;
        off
    }

    fn free(&mut self, off: usize, width: usize) {
        let i = self.holes.partition_point(|&(o, _)| o < off);
        self.holes.insert(i, (off, width));
        // Merge with neighbours.
        if i + 1 < self.holes.len() && self.holes[i].0 + self.holes[i].1 == self.holes[i + 1].0 {
            self.holes[i].1 += self.holes[i + 1].1;
            self.holes.remove(i + 1);
        }
        if i > 0 && self.holes[i - 1].0 + self.holes[i - 1].1 == self.holes[i].0 {
            self.holes[i - 1].1 += self.holes[i].1;
            self.holes.remove(i);
        }
    }
}

fn plan_graph(g: &Graph) -> MemoryPlan {
    let order = g.topo_order();
    let pos: std::collections::HashMap<_, _> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    // An operand stays live through what a target may fuse into its reader's launch, so that no result of
    // that launch lands on an operand the launch still reads: a matmul's through the residual add or the GLU
    // that alone reads the matmul's result; a norm's through the residual add that alone reads its result, or
    // through a norm right after it (q's and k's); a RoPE's through a RoPE of the same table right after it (q
    // and k), and through the attention right after them that alone reads the RoPE (which rotates q and k
    // itself). Only the GPU's launches fuse so; a reader on another device frees its operands where it runs.
    let fused_reach = |u: unicorn_ir::NodeId| match (&g.g[u].op, g.users(u).as_slice()) {
        _ if g.g[u].device != Device::Igpu => pos[&u],
        (Op::MatMul { .. }, &[a]) if matches!(g.g[a].op, Op::Add | Op::Glu { .. }) => pos[&a],
        (Op::RmsNorm { .. }, &[a]) if matches!(g.g[a].op, Op::Add) => pos[&a],
        (Op::RmsNorm { .. }, _) if matches!(order.get(pos[&u] + 1).map(|&b| &g.g[b].op), Some(Op::RmsNorm { .. })) => {
            pos[&u] + 1
        }
        (Op::Rope { rope, head_dim }, users) => {
            let at = pos[&u];
            let paired = |i: usize| matches!(order.get(i).map(|&b| &g.g[b].op), Some(Op::Rope { rope: r, head_dim: h }) if r == rope && h == head_dim);
            let reach = if paired(at + 1) { at + 1 } else { at };
            match users {
                &[a] if matches!(g.g[a].op, Op::Attention { .. })
                    && pos[&a] <= at + 2
                    && (paired(at + 1) || paired(at.wrapping_sub(1))) =>
                {
                    pos[&a]
                }
                _ => reach,
            }
        }
        _ => pos[&u],
    };
    let last_use = |n| g.users(n).iter().map(|&u| fused_reach(u)).max().unwrap_or(usize::MAX);
    // One arena for values with the execution's rows, one for values with the kept rows.
    let mut arenas = [Arena::default(), Arena::default()];
    let mut plan = MemoryPlan { order: order.clone(), ..Default::default() };
    let mut dying: Vec<Vec<unicorn_ir::NodeId>> = vec![Vec::new(); order.len()];
    for (i, &n) in order.iter().enumerate() {
        let node = &g.g[n];
        match node.op {
            Op::Tokens => {}
            // The output is its operand's value.
            Op::Output => {
                let src = g.inputs(n)[0];
                let slot = plan.slot(src).expect("operand planned first");
                plan.slots.insert(n.index() as u32, slot);
            }
            _ => {
                let width = node.ty.row_width();
                let kept_rows = node.ty.row_dim() == Dim::Out;
                let offset = arenas[kept_rows as usize].alloc(width);
                plan.slots.insert(n.index() as u32, Slot { offset, width, kept_rows });
                let last = last_use(n);
                // Values read by the output stay live to the end.
                let keep = g.users(n).iter().any(|&u| g.g[u].op == Op::Output);
                if !keep && last != usize::MAX {
                    dying[last].push(n);
                }
            }
        }
        // Operands whose last reader is this node are free once it has run.
        for d in std::mem::take(&mut dying[i]) {
            let s = plan.slot(d).expect("planned");
            arenas[s.kept_rows as usize].free(s.offset, s.width);
        }
    }
    plan.arena_width = arenas[0].end;
    plan.kept_width = arenas[1].end;
    plan
}

pub fn plan_memory(module: &mut Module) -> String {
    let mut parts = Vec::new();
    for g in &mut module.graphs {
        let plan = plan_graph(g);
        let naive: usize = plan.slots.values().map(|s| s.width).sum();
        parts.push(format!(
            "{}: {} f32/row + {} f32/kept row (without reuse {})",
            g.phase, plan.arena_width, plan.kept_width, naive
        ));
        g.memory = Some(plan);
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_space_is_reused_and_merged() {
        let mut a = Arena::default();
        let x = a.alloc(10);
        let y = a.alloc(5);
        let z = a.alloc(10);
        assert_eq!((x, y, z), (0, 10, 15));
        a.free(x, 10);
        a.free(y, 5);
        // The two holes merged into one of 15.
        assert_eq!(a.alloc(15), 0);
        assert_eq!(a.end, 25);
        a.free(z, 10);
        // A hole at the end grows in place.
        assert_eq!(a.alloc(30), 15);
        assert_eq!(a.end, 45);
    }
}
