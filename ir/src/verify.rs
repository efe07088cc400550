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

/// Verify every graph of the module.
pub fn verify(module: &Module, placed: bool) -> Result<(), VerifyError> {
    module.graphs.iter().try_for_each(|g| verify_graph(module, g, placed))
}
