//! A graph's schedule and memory plan: the execution order and, for every value, its slot in an activation
//! arena. Every activation has one row per token, so slots are measured in f32 elements per row and the
//! runtime scales them by the number of rows of an execution. Values with the kept rows (`R`, after
//! `select_rows`) live in a second arena scaled by `R`, so the logits of one token do not take `S` rows.

use crate::graph::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Start of the value in the arena, in f32 elements per row.
    pub offset: usize,
    /// Elements per row.
    pub width: usize,
    /// In the kept-rows arena (scaled by `R`) rather than the main one (scaled by `S`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept_rows: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemoryPlan {
    pub order: Vec<NodeId>,
    pub slots: BTreeMap<u32, Slot>,
    /// Main arena size in f32 elements per row.
    pub arena_width: usize,
    /// Kept-rows arena size in f32 elements per kept row.
    pub kept_width: usize,
}

impl MemoryPlan {
    pub fn slot(&self, n: NodeId) -> Option<Slot> {
        self.slots.get(&(n.index() as u32)).copied()
    }
}
