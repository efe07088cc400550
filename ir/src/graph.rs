//! The dataflow graph: typed ops over row-major activations, one graph per phase.

use crate::spec::Activation;
use crate::types::{DType, Device, Dim, TensorType, WeightFormat};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Index into [`crate::Module::weights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WeightId(pub u32);

impl fmt::Display for WeightId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// What a weight is used for; the precision pass picks its storage format from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightRole {
    /// A projection matrix `[out, in]`.
    Matrix,
    /// The token embedding table `[vocab, hidden]` (also the output projection when tied).
    Embedding,
    /// A norm's scale vector.
    Norm,
    /// A bias vector.
    Bias,
}

/// A weight tensor of the model, as the checkpoint names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightInfo {
    pub name: String,
    /// `[rows, cols]` for matrices, `[len]` for vectors.
    pub shape: Vec<usize>,
    pub role: WeightRole,
    /// Storage format in the plan (set by the precision pass; the checkpoint's own until then).
    pub format: WeightFormat,
}

impl WeightInfo {
    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn rows(&self) -> usize {
        if self.shape.len() == 2 {
            self.shape[0]
        } else {
            1
        }
    }
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&0)
    }
}

/// The operations. Activations are matrices of `rows x width` f32, one row per token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Graph input: the token ids of this execution, `[S] i32`.
    Tokens,
    /// Rows of the embedding table for each token, times `scale`.
    Embed { table: WeightId, scale: f32 },
    /// Multiply by a constant.
    Scale { factor: f32 },
    /// RMSNorm over each group of `len(weight)` consecutive elements of a row (a whole row, or one head):
    /// `x / sqrt(mean(x^2) + eps) * (w or 1 + w)`.
    RmsNorm { weight: WeightId, eps: f32, unit_offset: bool },
    /// `y = x W^T (+ b)` with `W` stored `[out, in]`.
    MatMul { weight: WeightId, bias: Option<WeightId> },
    /// Rotary embedding of every `head_dim` group of a row at the token's absolute position, rotate-half pairs.
    Rope { rope: usize, head_dim: usize },
    /// Causal attention of `q` over the layer's keys and values: those of earlier executions (the KV cache) and
    /// this execution's `k`, `v`, which it appends to the cache. Query head `h` reads kv head
    /// `h / (num_heads / num_kv_heads)`. With a window, only the last `window` positions are visible.
    Attention {
        layer: usize,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        window: Option<usize>,
        scale: f32,
    },
    /// Gated linear unit: `act(gate) * up`.
    Glu { activation: Activation },
    /// Elementwise sum.
    Add,
    /// Keep the rows the caller asked for: the last one, or all (`[S, w]` -> `[R, w]`).
    SelectRows,
    /// `cap * tanh(x / cap)`.
    Softcap { cap: f32 },
    /// Marks the phase result (logits).
    Output,
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Tokens => "tokens",
            Op::Embed { .. } => "embed",
            Op::Scale { .. } => "scale",
            Op::RmsNorm { .. } => "rms_norm",
            Op::MatMul { .. } => "matmul",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::Glu { .. } => "glu",
            Op::Add => "add",
            Op::SelectRows => "select_rows",
            Op::Softcap { .. } => "softcap",
            Op::Output => "output",
        }
    }

    pub fn arity(&self) -> usize {
        match self {
            Op::Tokens => 0,
            Op::Attention { .. } => 3,
            Op::Glu { .. } | Op::Add => 2,
            _ => 1,
        }
    }

    /// Weights the op reads.
    pub fn weights(&self) -> Vec<WeightId> {
        match self {
            Op::Embed { table, .. } => vec![*table],
            Op::RmsNorm { weight, .. } => vec![*weight],
            Op::MatMul { weight, bias } => std::iter::once(*weight).chain(*bias).collect(),
            _ => vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
    pub device: Device,
    /// Where the value came from in the model (`layers.3.attn.q`), for printing and errors.
    pub label: String,
}

/// The phases a plan executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The whole prompt at once (`S` tokens).
    Prefill,
    /// One token, reading and extending the KV cache.
    Decode,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        })
    }
}

pub type NodeId = NodeIndex<u32>;

/// One phase's graph. Edges carry the operand position of the source in the target's inputs.
#[derive(Debug, Clone)]
pub struct Graph {
    pub phase: Phase,
    pub g: StableDiGraph<Node, u8>,
    /// Rows of one execution: `Dim::Seq` for prefill, `Dim::Const(1)` for decode.
    pub seq: Dim,
    /// Schedule and buffer slots, set by the memory-planning pass.
    pub memory: Option<crate::memory::MemoryPlan>,
}

impl Graph {
    pub fn new(phase: Phase) -> Self {
        let seq = match phase {
            Phase::Prefill => Dim::Seq,
            Phase::Decode => Dim::Const(1),
        };
        Self { phase, g: StableDiGraph::default(), seq, memory: None }
    }

    /// Add a node whose type is given; the verifier checks it against the op.
    pub fn add(&mut self, op: Op, ty: TensorType, label: impl Into<String>, inputs: &[NodeId]) -> NodeId {
        assert_eq!(inputs.len(), op.arity(), "{} takes {} inputs", op.name(), op.arity());
        let n = self.g.add_node(Node { op, ty, device: Device::Unplaced, label: label.into() });
        for (i, &src) in inputs.iter().enumerate() {
            self.g.add_edge(src, n, i as u8);
        }
        n
    }

    /// Operands of `n`, in order.
    pub fn inputs(&self, n: NodeId) -> Vec<NodeId> {
        let mut v: Vec<(u8, NodeId)> =
            self.g.edges_directed(n, Direction::Incoming).map(|e| (*e.weight(), e.source())).collect();
        v.sort_unstable();
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// Nodes that read `n`.
    pub fn users(&self, n: NodeId) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.g.neighbors_directed(n, Direction::Outgoing).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Replace every use of `old` by `new`.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        let uses: Vec<_> =
            self.g.edges_directed(old, Direction::Outgoing).map(|e| (e.id(), e.target(), *e.weight())).collect();
        for (e, target, pos) in uses {
            self.g.remove_edge(e);
            self.g.add_edge(new, target, pos);
        }
    }

    pub fn output(&self) -> Option<NodeId> {
        self.g.node_indices().find(|&n| self.g[n].op == Op::Output)
    }

    /// Nodes in a deterministic topological order (lowest index first among ready nodes).
    pub fn topo_order(&self) -> Vec<NodeId> {
        let mut indegree: std::collections::HashMap<NodeId, usize> =
            self.g.node_indices().map(|n| (n, self.inputs(n).len())).collect();
        let mut ready: std::collections::BTreeSet<NodeId> =
            indegree.iter().filter(|(_, &d)| d == 0).map(|(&n, _)| n).collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(n) = ready.pop_first() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = indegree.get_mut(&e.target()).expect("edge to a live node");
                *d -= 1;
                if *d == 0 {
                    ready.insert(e.target());
                }
            }
        }
        order
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }
}

/// Row type helper used by builders and the verifier.
pub fn rows(dim: Dim, width: usize) -> TensorType {
    TensorType::rows(DType::F32, dim, width)
}
