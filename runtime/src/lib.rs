//! unicorn-rt: loads a `.ucp` plan and runs it.

pub mod bench;
pub mod cpu;
pub mod engine;
pub mod generate;
pub mod model;
pub mod npy;
pub mod sampler;

pub use engine::Session;
pub use model::Model;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Container(#[from] unicorn_ir::container::ContainerError),
    #[error("{0}")]
    Plan(String),
    #[error("{0}")]
    Input(String),
}
