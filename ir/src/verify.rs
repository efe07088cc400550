//! The verifier: every pass must leave a graph that satisfies these rules.

use crate::graph::{rows, Graph, NodeId, Op, WeightRole};
use crate::types::{DType, Device, Dim, TensorType};
use crate::Module;
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
#[error("{phase} graph, node %{node} ({label}): {message}")]
pub struct VerifyError {
    pub phase: String,
    pub node: u32,
    pub label: String,
    pub message: String,
}

/// The type an op produces from its operand types, or why the operands are wrong.
pub fn infer(module: &Module, graph: &Graph, op: &Op, inputs: &[&TensorType]) -> Result<TensorType, String> {
    if inputs.len() != op.arity() {
        return Err(format!("{} takes {} operands, has {}", op.name(), op.arity(), inputs.len()));
    }
    for w in op.weights() {
        if w.0 as usize >= module.weights.len() {
            return Err(format!("weight {w} does not exist"));
        }
    }
    let weight = |id: crate::WeightId| &module.weights[id.0 as usize];
    let f32_rows = |t: &TensorType| -> Result<(Dim, usize), String> {
        if t.dtype != DType::F32 || t.shape.len() != 2 {
            return Err(format!("expects [rows, width] f32, got {t}"));
        }
        Ok((t.row_dim(), t.row_width()))
    };
    match op {
        Op::Tokens => Ok(TensorType::vector(DType::I32, graph.seq)),
        Op::Embed { table, .. } => {
            let t = inputs[0];
            if t.dtype != DType::I32 || t.shape.len() != 1 {
                return Err(format!("embed expects token ids, got {t}"));
            }
            let w = weight(*table);
            if w.shape.len() != 2 {
                return Err(format!("embedding table {} is not a matrix", w.name));
            }
            Ok(rows(t.shape[0], w.shape[1]))
        }
        Op::Scale { .. } | Op::Softcap { .. } | Op::Output => {
            let (r, w) = f32_rows(inputs[0])?;
            Ok(rows(r, w))
        }
        Op::RmsNorm { weight: wid, .. } => {
            let (r, width) = f32_rows(inputs[0])?;
            let w = weight(*wid);
            if w.shape.len() != 1 || w.shape[0] == 0 || width % w.shape[0] != 0 {
                return Err(format!("norm weight {} {:?} does not divide width {width}", w.name, w.shape));
            }
            Ok(rows(r, width))
        }
        Op::MatMul { weight: wid, bias } => {
            let (r, width) = f32_rows(inputs[0])?;
            let w = weight(*wid);
            if w.shape.len() != 2 || w.shape[1] != width {
                return Err(format!("weight {} {:?} does not take width {width}", w.name, w.shape));
            }
            if !matches!(w.role, WeightRole::Matrix | WeightRole::Embedding) {
                return Err(format!("weight {} is not a matrix", w.name));
            }
            if let Some(b) = bias {
                let b = weight(*b);
                if b.shape != [w.shape[0]] {
                    return Err(format!("bias {} {:?} does not match {} outputs", b.name, b.shape, w.shape[0]));
                }
            }
            Ok(rows(r, w.shape[0]))
        }
        Op::Rope { rope, head_dim } => {
            let (r, width) = f32_rows(inputs[0])?;
            if *rope >= module.spec.ropes.len() {
                return Err(format!("rope table {rope} does not exist"));
            }
            if *head_dim == 0 || head_dim % 2 != 0 || width % head_dim != 0 {
                return Err(format!("head_dim {head_dim} does not split width {width} into even heads"));
            }
            Ok(rows(r, width))
        }
        Op::Attention { layer, num_heads, num_kv_heads, head_dim, .. } => {
            let (rq, wq) = f32_rows(inputs[0])?;
            let (rk, wk) = f32_rows(inputs[1])?;
            let (rv, wv) = f32_rows(inputs[2])?;
            if *layer >= module.spec.num_layers {
                return Err(format!("layer {layer} does not exist"));
            }
            if rq != rk || rk != rv {
                return Err("q, k and v have different row counts".into());
            }
            if *num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
                return Err(format!("{num_heads} heads do not group over {num_kv_heads} kv heads"));
            }
            if wq != num_heads * head_dim || wk != num_kv_heads * head_dim || wv != wk {
                return Err(format!(
                    "q/k/v widths {wq}/{wk}/{wv} do not match {num_heads}x{head_dim} and {num_kv_heads}x{head_dim}"
                ));
            }
            Ok(rows(rq, wq))
        }
        Op::Glu { .. } | Op::Add => {
            let (ra, wa) = f32_rows(inputs[0])?;
            let (rb, wb) = f32_rows(inputs[1])?;
            if ra != rb || wa != wb {
                return Err(format!("operands differ: {} vs {}", inputs[0], inputs[1]));
            }
            Ok(rows(ra, wa))
        }
        Op::SelectRows => {
            let (r, w) = f32_rows(inputs[0])?;
            if r != graph.seq {
                return Err(format!("select_rows expects {} rows", graph.seq));
            }
            let out = if graph.seq == Dim::Seq { Dim::Out } else { graph.seq };
            Ok(rows(out, w))
        }
    }
}

/// Check a graph: acyclic, operands well typed, declared types equal inferred ones, one output, and (when
/// `placed`) every node on a device.
pub fn verify_graph(module: &Module, graph: &Graph, placed: bool) -> Result<(), VerifyError> {
    let err = |n: NodeId, message: String| VerifyError {
        phase: graph.phase.to_string(),
        node: n.index() as u32,
        label: graph.g[n].label.clone(),
        message,
    };
    let order = graph.topo_order();
    if order.len() != graph.node_count() {
        let n = graph.g.node_indices().find(|n| !order.contains(n)).expect("a node outside the order");
        return Err(err(n, "the graph has a cycle".into()));
    }
    let mut outputs = 0;
    for &n in &order {
        let node = &graph.g[n];
        let ins = graph.inputs(n);
        let tys: Vec<&TensorType> = ins.iter().map(|&i| &graph.g[i].ty).collect();
        let ty = infer(module, graph, &node.op, &tys).map_err(|m| err(n, m))?;
        if ty != node.ty {
            return Err(err(n, format!("declared type {} but the op produces {ty}", node.ty)));
        }
        if node.op == Op::Output {
            outputs += 1;
        } else if graph.users(n).is_empty() {
            return Err(err(n, "value is never used".into()));
        }
        if placed && node.device == Device::Unplaced {
            return Err(err(n, "not placed on a device".into()));
        }
    }
    if outputs != 1 {
        let n = order.first().copied().unwrap_or_default();
        return Err(err(n, format!("the graph has {outputs} outputs, expected 1")));
    }
    Ok(())
}

/// Verify every graph of the module, and its memory plan once it has one.
pub fn verify(module: &Module, placed: bool) -> Result<(), VerifyError> {
    module.graphs.iter().try_for_each(|g| {
        verify_graph(module, g, placed)?;
        verify_memory(g)
    })
}

/// Check a graph's memory plan: the order is a topological order of every node, every value has a slot of its
/// width in the arena of its rows, and no two values live at the same time share an element.
pub fn verify_memory(graph: &Graph) -> Result<(), VerifyError> {
    let Some(mem) = &graph.memory else { return Ok(()) };
    let err = |n: NodeId, message: String| VerifyError {
        phase: graph.phase.to_string(),
        node: n.index() as u32,
        label: graph.g[n].label.clone(),
        message,
    };
    let pos: std::collections::HashMap<NodeId, usize> = mem.order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    if pos.len() != graph.node_count() || mem.order.len() != graph.node_count() {
        let n = graph.g.node_indices().find(|n| !pos.contains_key(n)).unwrap_or_default();
        return Err(err(n, "the schedule does not hold every node once".into()));
    }
    // Live interval of each value with a slot of its own: from its step to its last reader's (to the end when
    // the output reads it).
    let mut live = Vec::new();
    for &n in &mem.order {
        let node = &graph.g[n];
        if let Some(&i) = graph.inputs(n).iter().find(|i| pos[*i] >= pos[&n]) {
            return Err(err(n, format!("scheduled before its operand %{}", i.index())));
        }
        if matches!(node.op, Op::Tokens | Op::Output) {
            continue;
        }
        let Some(slot) = mem.slot(n) else { return Err(err(n, "value has no slot".into())) };
        let kept = node.ty.row_dim() == Dim::Out;
        let arena = if kept { mem.kept_width } else { mem.arena_width };
        if slot.width != node.ty.row_width() || slot.kept_rows != kept || slot.offset + slot.width > arena {
            return Err(err(n, format!("slot {slot:?} does not hold a {} value in its arena of {arena}", node.ty)));
        }
        let users = graph.users(n);
        let end = if users.iter().any(|&u| graph.g[u].op == Op::Output) {
            usize::MAX
        } else {
            users.iter().map(|u| pos[u]).max().unwrap_or(pos[&n])
        };
        live.push((n, pos[&n], end, slot));
    }
    for (i, &(a, a0, a1, sa)) in live.iter().enumerate() {
        for &(b, b0, b1, sb) in &live[i + 1..] {
            let together = a0 <= b1 && b0 <= a1;
            let shared =
                sa.kept_rows == sb.kept_rows && sa.offset < sb.offset + sb.width && sb.offset < sa.offset + sa.width;
            if together && shared {
                return Err(err(
                    b,
                    format!("its slot overlaps that of %{}, which is live at the same time", a.index()),
                ));
            }
        }
    }
    Ok(())
}
