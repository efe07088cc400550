//! The CPU kernels besides matmul, under one path: norms ([`super::norm`]), rotary embedding ([`super::rope`]),
//! the KV cache ([`super::kv`]), attention over it ([`super::attention`]) and element-wise activations
//! ([`super::elementwise`]). All arithmetic is f32, as in the float32 reference.

pub use super::attention::{attention, AttnShape};
pub use super::elementwise::{add, glu_gelu_tanh, glu_silu, scale, softcap};
pub use super::kv::{KvCache, KvStore};
pub use super::norm::rms_norm;
pub use super::rope::rope;
