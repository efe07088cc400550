//! End-to-end tests (one binary, one module per concern).

mod bad_input;
mod batch;
mod chat;
mod chunks;
mod cli;
mod decode;
mod forged;
mod generation;
mod hybrid;
mod npu;
mod npu_cli;
mod outputs;
mod parity;
mod progress;
mod rope;
mod server;
mod session;
mod streaming;
mod threads;
mod vulkan_cli;
mod vulkan_kernels;
mod vulkan_plans;
