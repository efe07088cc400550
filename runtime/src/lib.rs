//! unicorn-rt: loads a `.ucp` plan, validates it for a device, and runs it.
//!
//! [`Model`] holds a plan validated for one device; [`Session`] is one generation over an
//! [`executor::Executor`] of that device (today the CPU's, [`cpu::exec`]).

pub mod bench;
pub mod chat;
pub mod cpu;
pub mod detokenize;
pub mod executor;
pub mod generate;
pub mod hybrid;
pub mod model;
pub mod npu;
pub mod npy;
pub mod sampler;
pub mod server;
pub mod session;
pub mod vulkan;

pub use model::Model;
pub use session::Session;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Container(#[from] unicorn_ir::container::ContainerError),
    #[error("{0}")]
    Plan(String),
    #[error("{0}")]
    Input(String),
    /// Writing what was generated failed (a full disk, a closed pipe).
    #[error("writing the generated text")]
    Output(#[source] std::io::Error),
}
