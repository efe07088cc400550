//! End-to-end tests (one binary, one module per concern).

mod bad_input;
mod cli;
mod parity;
