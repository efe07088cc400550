//! End-to-end tests (one binary, one module per concern).

mod bad_input;
mod chunks;
mod cli;
mod forged;
mod parity;
