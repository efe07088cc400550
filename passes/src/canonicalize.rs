//! Canonicalization: fold constant scales into the ops that produce them and remove what the output does not
//! need. Rules, in priority order:
//! - `scale(embed(t, s1), s2)` -> `embed(t, s1 * s2)` when the embed has no other user;
//! - `scale(scale(x, a), b)` -> `scale(x, a * b)` when the inner scale has no other user;
//! - `scale(x, 1)` -> `x`;
//! - nodes from which the output cannot be reached are removed.

use petgraph::visit::{Dfs, Reversed};
use unicorn_ir::{Graph, Module, NodeId, Op};

fn fold_scale(g: &mut Graph, n: NodeId) -> bool {
    let Op::Scale { factor } = g.g[n].op else { return false };
    let src = g.inputs(n)[0];
    if factor == 1.0 {
        g.replace_uses(n, src);
        g.g.remove_node(n);
        return true;
    }
    if g.users(src).len() != 1 {
        return false;
    }
    let folded = match &mut g.g[src].op {
        Op::Embed { scale, .. } => {
            *scale *= factor;
            true
        }
        Op::Scale { factor: inner } => {
            *inner *= factor;
            true
        }
        _ => false,
    };
    if folded {
        g.replace_uses(n, src);
        g.g.remove_node(n);
    }
    folded
}

fn remove_dead(g: &mut Graph) -> usize {
    let Some(out) = g.output() else { return 0 };
    let mut live = std::collections::HashSet::new();
    let rev = Reversed(&g.g);
    let mut dfs = Dfs::new(rev, out);
    while let Some(n) = dfs.next(rev) {
        live.insert(n);
    }
    let dead: Vec<NodeId> = g.g.node_indices().filter(|n| !live.contains(n)).collect();
    for &n in &dead {
        g.g.remove_node(n);
    }
    dead.len()
}

pub fn canonicalize(module: &mut Module) -> String {
    let (mut folded, mut removed) = (0, 0);
    for g in &mut module.graphs {
        loop {
            let nodes: Vec<NodeId> = g.g.node_indices().collect();
            let before = folded;
            for n in nodes {
                if g.g.contains_node(n) && fold_scale(g, n) {
                    folded += 1;
                }
            }
            if folded == before {
                break;
            }
        }
        removed += remove_dead(g);
    }
    format!("folded {folded} scales, removed {removed} dead nodes")
}
