//! AIE2 designs as data, for the Phoenix / Hawk Point NPU ("npu1"): the device model a design is made for
//! ([`model`]), the design itself — objectfifos, memtile links, cores and the runtime sequence of host transfers
//! ([`design`]) — the project's own AIE2 rules every design must pass ([`verify`]), and an emulator that executes
//! a design's dataflow on the CPU ([`emu`]).
//!
//! It is a crate of its own because three layers read the same data: the compiler's NPU target generates
//! designs and emits their MLIR, the plan validator checks a plan's designs against the rules before they are
//! trusted, and the runtime's `npu-emu` executor runs them. It depends on nothing that links LLVM or a driver.
//!
//! No Phoenix NPU exists on any machine this project is built and tested on: what is checked here is checked by
//! these rules and by the emulator, not on the chip.

pub mod design;
pub mod emu;
pub mod model;
pub mod verify;

/// `n` pseudo-random values in `(-scale, scale)` from `seed` (xorshift), for the designs' tests.
pub fn random(n: u64, seed: &mut u64, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}
