//! unicornc: Hugging Face checkpoint -> graph IR -> passes -> `.ucp` plan.

pub mod build;
pub mod compile;
pub mod frontend;
pub mod inspect;
pub mod lower;
pub mod npu_build;
pub mod profile;
pub mod progress;
