//! The readable text form of a module, used by `unicornc inspect --ir` and the snapshot tests.

use crate::graph::{Graph, Op};
use crate::Module;
use std::fmt::Write;

fn params(op: &Op) -> String {
    match op {
        Op::Embed { table, scale } => format!(" table={table} scale={scale}"),
        Op::Scale { factor } => format!(" factor={factor}"),
        Op::RmsNorm { weight, eps, unit_offset } => {
            format!(" w={weight} eps={eps:e}{}", if *unit_offset { " unit_offset" } else { "" })
        }
        Op::MatMul { weight, bias } => match bias {
            Some(b) => format!(" w={weight} b={b}"),
            None => format!(" w={weight}"),
        },
        Op::Rope { rope, head_dim } => format!(" rope={rope} head_dim={head_dim}"),
        Op::Attention { layer, num_heads, num_kv_heads, head_dim, window, scale } => {
            let w = window.map(|w| format!(" window={w}")).unwrap_or_default();
            format!(" layer={layer} heads={num_heads}/{num_kv_heads}x{head_dim} scale={scale}{w}")
        }
        Op::Glu { activation } => format!(" act={activation:?}").to_lowercase(),
        Op::Softcap { cap } => format!(" cap={cap}"),
        Op::Tokens | Op::Add | Op::SelectRows | Op::Output => String::new(),
    }
}

/// One graph, one line per node in schedule order: `%id = op(operands) params : type @device  # label`.
pub fn print_graph(graph: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "phase {} (rows {}) {{", graph.phase, graph.seq);
    let order = match &graph.memory {
        Some(m) => m.order.clone(),
        None => graph.topo_order(),
    };
    for n in order {
        let node = &graph.g[n];
        let args: Vec<String> = graph.inputs(n).iter().map(|i| format!("%{}", i.index())).collect();
        let slot = graph
            .memory
            .as_ref()
            .and_then(|m| m.slot(n))
            .map(|s| format!(" {}[{}+{}]", if s.kept_rows { "kept" } else { "buf" }, s.offset, s.width))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  %{} = {}({}){} : {} @{}{}  # {}",
            n.index(),
            node.op.name(),
            args.join(", "),
            params(&node.op),
            node.ty,
            node.device,
            slot,
            node.label
        );
    }
    if let Some(m) = &graph.memory {
        let _ = writeln!(s, "  // arena: {} f32 per row, {} f32 per kept row", m.arena_width, m.kept_width);
    }
    s.push_str("}\n");
    s
}

/// The whole module: spec summary, weight table, then each graph.
pub fn print_module(module: &Module) -> String {
    let mut s = String::new();
    let spec = &module.spec;
    let _ = writeln!(
        s,
        "model {} ({:?}): layers={} hidden={} heads={}/{}x{} ffn={} vocab={}",
        spec.architecture,
        spec.family,
        spec.num_layers,
        spec.hidden_size,
        spec.num_heads,
        spec.num_kv_heads,
        spec.head_dim,
        spec.intermediate_size,
        spec.vocab_size
    );
    s.push_str("weights {\n");
    for (i, w) in module.weights.iter().enumerate() {
        let dims: Vec<String> = w.shape.iter().map(|d| d.to_string()).collect();
        let _ = writeln!(s, "  w{i} {} [{}] {} {:?}", w.name, dims.join(", "), w.format, w.role);
    }
    s.push_str("}\n");
    for g in &module.graphs {
        s.push_str(&print_graph(g));
    }
    s
}
