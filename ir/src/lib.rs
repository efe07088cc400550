//! Unicorn's intermediate representation.
//!
//! A [`Module`] is one model: its normalized [`ModelSpec`], the table of weight tensors, and one [`Graph`] per
//! [`Phase`] (prefill runs the whole prompt, decode one token). A graph is a DAG of typed [`Op`]s (petgraph
//! underneath). Every value is either the token ids of the execution (`[S] i32`) or an f32 matrix with one row
//! per token (`[S, width]`, where `S` is symbolic in prefill and 1 in decode); `SelectRows` narrows to the rows
//! the caller keeps (`R`: the last, or all for logit dumps). Weights are referenced by [`WeightId`] and carry
//! their storage format; activations are always f32 and every reduction accumulates in f32.
//!
//! Attention owns the KV cache semantics: an execution at absolute positions `p..p+S` attends over the cache
//! (positions `< p`) and its own keys, causally, within an optional sliding window, then appends its keys and
//! values. RoPE uses the same absolute positions. Nothing else in a graph has state.
//!
//! Each node carries a [`Device`] set by placement; the memory plan gives each value a slot in one arena. The
//! [`verify()`] function states the invariants every pass preserves. [`plan`] holds the executable form and
//! [`container`] the `.ucp` file that stores it.

pub mod chat;
#[cfg(feature = "cli")]
pub mod cli;
pub mod container;
pub mod device;
pub mod graph;
pub mod memory;
pub mod npu;
pub mod output;
pub mod plan;
pub mod print;
pub mod quant;
pub mod rng;
pub mod spec;
pub mod types;
pub mod validate;
pub mod verify;

pub use graph::{Graph, Node, NodeId, Op, Phase, WeightId, WeightInfo, WeightRole};
pub use spec::ModelSpec;
pub use types::{DType, Device, Dim, TensorType, WeightFormat};
pub use verify::verify;

/// A model in IR form.
#[derive(Debug, Clone)]
pub struct Module {
    pub spec: ModelSpec,
    pub weights: Vec<WeightInfo>,
    pub graphs: Vec<Graph>,
}

impl Module {
    pub fn weight(&self, id: WeightId) -> &WeightInfo {
        &self.weights[id.0 as usize]
    }

    pub fn graph(&self, phase: Phase) -> Option<&Graph> {
        self.graphs.iter().find(|g| g.phase == phase)
    }
}
