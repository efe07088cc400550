//! The NPU target (AIE2, the Phoenix / Hawk Point "npu1"): the device model the designs are generated for,
//! the design data structure, and the project's own AIE2 rules every design is checked against before its MLIR
//! is emitted. No Phoenix NPU exists on any machine this project is built and tested on: what is checked here is
//! checked by these rules (and, as the target grows, by the MLIR verifier, JIT-run core bodies and an emulator
//! of the dataflow), not on the chip.

pub mod aie;
pub mod attention;
pub mod estimate;
pub mod gemm;
pub mod gemv;
pub mod lower;
#[cfg(feature = "mlir")]
pub mod melior;
pub mod mlir;
pub mod rows;

pub use unicorn_aie::{design, emu, model, verify};

/// `n` pseudo-random values in `(-scale, scale)` from `seed` (xorshift), for the designs' tests.
#[cfg(test)]
fn random(n: u64, seed: &mut u64, scale: f32) -> Vec<f32> {
    unicorn_aie::random(n, seed, scale)
}
