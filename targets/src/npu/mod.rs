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

/// Within the limits mlir-aie's `dma_memcpy_nd` verifier and the shim's buffer descriptors put on a transfer
/// (beyond the AIE2 rules' innermost wrap): at most 64 repeats of the outermost level, the two innermost sizes
/// at most 1023 words unless the transfer is linear, strides at most 2^20 words; and the i32s the release's
/// lowering (`AIEDmaToNpu.cpp`) writes: the BD's length, the words of the three inner levels, and the byte
/// offset its address patch adds to the host buffer's address. The first transfer that is not, in one line.
#[cfg(test)]
fn shim_bd_limits(d: &design::Design) -> Result<(), String> {
    for op in &d.sequence {
        let design::SeqOp::Memcpy { elem, offset, dims, fifo, .. } = op else { continue };
        let words = |n: u64| n * elem.bytes() / 4;
        let mut run = 1;
        let linear = dims.iter().rev().all(|x| {
            let ok = x.size == 1 || x.stride == run;
            run *= x.size;
            ok
        });
        let n = dims.len();
        if n == 4 && dims[0].size > 64 {
            return Err(format!("{fifo}: {dims:?} repeats more than 64 times"));
        }
        if !linear && (words(dims[n - 1].size) > 1023 || (n >= 2 && dims[n - 2].size > 1023)) {
            return Err(format!("{fifo}: {dims:?}: an inner size over 1023 words"));
        }
        if dims.iter().any(|x| words(x.stride) > 1 << 20) {
            return Err(format!("{fifo}: {dims:?}: a stride over 2^20 words"));
        }
        let length = words(dims.iter().skip(n.saturating_sub(3)).map(|x| x.size).product());
        if length > i32::MAX as u64 || offset * elem.bytes() > i32::MAX as u64 {
            return Err(format!("{fifo}: {dims:?} at element {offset}: a length or byte offset past i32"));
        }
    }
    Ok(())
}
