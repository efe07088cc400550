//! The NPU target (AIE2, the Phoenix / Hawk Point "npu1"): the device model the designs are generated for,
//! the design data structure, and the project's own AIE2 rules every design is checked against before its MLIR
//! is emitted. No Phoenix NPU exists on any machine this project is built and tested on: what is checked here is
//! checked by these rules (and, as the target grows, by the MLIR verifier, JIT-run core bodies and an emulator
//! of the dataflow), not on the chip.

pub mod attention;
pub mod design;
pub mod emu;
pub mod estimate;
pub mod gemm;
pub mod gemv;
pub mod mlir;
pub mod model;
pub mod rows;
pub mod verify;

/// `n` pseudo-random values in `(-scale, scale)` from `seed` (xorshift), for the designs' tests.
#[cfg(test)]
fn random(n: u64, seed: &mut u64, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}
