//! A thin binding to AMD's XRT, enough for Unicorn's NPU executor to run an mlir-aie design on a Ryzen AI NPU.
//!
//! Why a C++ shim: the Phoenix NPU (npu1, AIE2) runs work only inside an `xrt::hw_context` made on a registered
//! xclbin, and that exists in XRT's C++ API alone: XRT's C API has no hardware context, and Debian's XRT 2.13
//! predates it. The NPU needs XRT >= 2.17 with the amdxdna driver. So `shim/xrt_shim.cpp` wraps the C++ API in a
//! few `extern "C"` functions (opaque handles, explicit frees, every exception turned into a message), `ffi.rs` is
//! the only unsafe code, and this file is the safe face.
//!
//! The flow is the host code of mlir-aie's `test/npu-xrt/*/test.cpp`: open device 0; load the xclbin, register it
//! and make a hardware context on its uuid; open the kernel whose name starts with `MLIR_AIE`; allocate one
//! host-only buffer per runtime-sequence argument `i` in the memory group of kernel argument `3 + i`; write and sync
//! the inputs; run `kernel(3 /* opcode */, instruction_bo, n_words, bo0, bo1, ...)` with the words of `insts.bin`
//! in a cacheable buffer of group 1; wait; sync the outputs back and read them.
//!
//! ```no_run
//! # fn main() -> Result<(), xrt_sys::XrtError> {
//! use std::time::Duration;
//! let device = xrt_sys::Device::open(0)?;
//! let context = device.load(&std::fs::read("aie.xclbin").unwrap())?;
//! let instructions = xrt_sys::instruction_words(&std::fs::read("insts.bin").unwrap())?;
//! let mut input = context.buffer(256, 0)?;
//! let output = context.buffer(256, 1)?;
//! input.write(&[1; 256])?;
//! input.sync_to_device()?;
//! context.run(&instructions, &[&input, &output], Duration::from_secs(5))?;
//! output.sync_from_device()?;
//! let mut result = [0u8; 256];
//! output.read(&mut result)?;
//! # Ok(())
//! # }
//! ```
//!
//! Building: the shim is compiled and `libxrt_coreutil` linked only when `XILINX_XRT` names an XRT >= 2.17 install
//! at build time (`source /opt/xilinx/xrt/setup.sh` sets it and the library path). Without it nothing C++ is built,
//! [`available`] is false and every constructor returns [`XrtError::NotFound`]. Unsigned xclbins load only with
//! `XRT_HACK_UNSECURE_LOADING_XCLBIN=1` in the environment.
//!
//! Status: none of this has run on an NPU or a real XRT; no machine we have has either. The shim and this crate
//! with `cfg(xrt)` compile against the public headers of XRT 2.17, 2.19 and the newest release
//! (`scripts/check_xrt_shim.sh`), and the whole Rust-to-C++ path was run once against a hand-made stand-in for the
//! XRT calls it makes.

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[cfg(xrt)]
#[path = "ffi.rs"]
mod raw;
#[cfg(not(xrt))]
#[path = "stub.rs"]
mod raw;
#[cfg(test)]
mod xrt_version;

/// The oldest XRT this crate builds against: the first with `xrt::hw_context` on the amdxdna driver.
pub const MIN_XRT: &str = "2.17";

/// The prefix of the kernel name that aiecc gives the NPU design's kernel in the xclbin.
pub const KERNEL_PREFIX: &str = "MLIR_AIE";

/// Kernel arguments 0, 1 and 2 are the opcode, the instruction buffer and its word count.
const FIRST_BUFFER_ARG: usize = 3;

/// Whether this build has XRT (the shim compiled and `libxrt_coreutil` linked). It says nothing of an NPU.
pub fn available() -> bool {
    cfg!(xrt)
}

/// An XRT failure or a misuse of this API, always one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XrtError {
    #[error(
        "XRT not found: this build of xrt-sys has no XRT; set XILINX_XRT to an XRT >= 2.17 install with the amdxdna \
         driver (e.g. `source /opt/xilinx/xrt/setup.sh`) and rebuild"
    )]
    NotFound,
    /// What XRT said, from the exception the shim caught.
    #[error("XRT failed while {0}")]
    Xrt(String),
    #[error("the instructions are {0} bytes, not a whole number of 32-bit words (insts.bin holds little-endian u32s)")]
    InstructionBytes(usize),
    #[error("no instructions to run")]
    NoInstructions,
    #[error("the kernel name {0:?} contains a NUL byte")]
    KernelName(String),
    #[error("a buffer of 0 bytes for runtime-sequence argument {0} (XRT cannot allocate one)")]
    EmptyBuffer(usize),
    #[error("runtime-sequence argument {0} is past the last kernel argument XRT can address")]
    ArgIndex(usize),
    #[error("{op} of {len} bytes does not fit a buffer of {size} bytes")]
    OutOfRange { op: &'static str, len: usize, size: usize },
    #[error("the buffer at position {0} was allocated by another context")]
    ForeignBuffer(usize),
    #[error("the buffer at position {position} was allocated for runtime-sequence argument {arg}")]
    ArgOrder { position: usize, arg: usize },
}

/// Instruction words from the bytes of an `insts.bin` (little-endian u32 words).
pub fn instruction_words(bytes: &[u8]) -> Result<Vec<u32>, XrtError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(XrtError::InstructionBytes(bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|word| u32::from_le_bytes([word[0], word[1], word[2], word[3]])).collect())
}

/// An opened XRT device (device 0 is the first NPU).
pub struct Device {
    raw: raw::Device,
}

impl Device {
    pub fn open(index: u32) -> Result<Device, XrtError> {
        Ok(Device { raw: raw::Device::open(index)? })
    }

    /// Loads an xclbin image and opens its `MLIR_AIE*` kernel in a new hardware context.
    pub fn load(&self, xclbin: &[u8]) -> Result<Context, XrtError> {
        self.load_kernel(xclbin, KERNEL_PREFIX)
    }

    /// Like [`Device::load`], for the first kernel whose name starts with `kernel_prefix`.
    pub fn load_kernel(&self, xclbin: &[u8], kernel_prefix: &str) -> Result<Context, XrtError> {
        let prefix = CString::new(kernel_prefix).map_err(|_| XrtError::KernelName(kernel_prefix.to_owned()))?;
        Ok(Context { raw: self.raw.load(xclbin, &prefix)?, id: next_context_id() })
    }
}

/// A hardware context with its kernel. It keeps the device open by itself, so it may outlive its [`Device`].
pub struct Context {
    raw: raw::Context,
    /// Tells this context's buffers from another's.
    id: u64,
}

impl Context {
    /// A host-only buffer of `bytes` bytes for runtime-sequence argument `arg` (0 for the sequence's first
    /// argument), placed in the memory group of kernel argument `3 + arg`.
    pub fn buffer(&self, bytes: usize, arg: usize) -> Result<Buffer, XrtError> {
        if bytes == 0 {
            return Err(XrtError::EmptyBuffer(arg));
        }
        let raw = self.raw.buffer(bytes, kernel_arg(arg)?)?;
        Ok(Buffer { raw, size: bytes, arg, context: self.id })
    }

    /// Runs the instruction stream with `args[i]` as runtime-sequence argument `i` and waits for it. A run that has
    /// not finished within `timeout` (at least 1 ms) is aborted and reported. Sync inputs before and outputs after.
    pub fn run(&self, instructions: &[u32], args: &[&Buffer], timeout: Duration) -> Result<(), XrtError> {
        if instructions.is_empty() {
            return Err(XrtError::NoInstructions);
        }
        check_args(self.id, args.iter().map(|buffer| (buffer.context, buffer.arg)))?;
        let raw: Vec<&raw::Bo> = args.iter().map(|buffer| &buffer.raw).collect();
        self.raw.run(instructions, &raw, timeout_ms(timeout))
    }
}

/// A host-only buffer object for one runtime-sequence argument. `write`/`read` touch the host copy; the sync calls
/// move it to and from the device.
pub struct Buffer {
    raw: raw::Bo,
    size: usize,
    arg: usize,
    context: u64,
}

impl Buffer {
    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The runtime-sequence argument this buffer was allocated for.
    pub fn arg(&self) -> usize {
        self.arg
    }

    /// Copies `data` to the start of the buffer's host copy.
    pub fn write(&mut self, data: &[u8]) -> Result<(), XrtError> {
        fits("a write", data.len(), self.size)?;
        self.raw.write(data)
    }

    /// Copies the start of the buffer's host copy into `out`.
    pub fn read(&self, out: &mut [u8]) -> Result<(), XrtError> {
        fits("a read", out.len(), self.size)?;
        self.raw.read(out)
    }

    pub fn sync_to_device(&self) -> Result<(), XrtError> {
        self.raw.sync(true)
    }

    pub fn sync_from_device(&self) -> Result<(), XrtError> {
        self.raw.sync(false)
    }
}

fn next_context_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The kernel argument whose memory group holds runtime-sequence argument `arg`.
fn kernel_arg(arg: usize) -> Result<i32, XrtError> {
    arg.checked_add(FIRST_BUFFER_ARG).and_then(|index| i32::try_from(index).ok()).ok_or(XrtError::ArgIndex(arg))
}

/// Each buffer must come from this context and sit at the position of the argument it was allocated for, so that
/// it lands in the memory group it was placed in.
fn check_args(context: u64, args: impl Iterator<Item = (u64, usize)>) -> Result<(), XrtError> {
    for (position, (owner, arg)) in args.enumerate() {
        if owner != context {
            return Err(XrtError::ForeignBuffer(position));
        }
        if arg != position {
            return Err(XrtError::ArgOrder { position, arg });
        }
    }
    Ok(())
}

fn fits(op: &'static str, len: usize, size: usize) -> Result<(), XrtError> {
    if len > size {
        return Err(XrtError::OutOfRange { op, len, size });
    }
    Ok(())
}

/// XRT waits forever on 0 ms, which a caller passing a short timeout never means.
fn timeout_ms(timeout: Duration) -> u32 {
    u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// XRT's messages may span lines; errors here are one line.
#[cfg_attr(not(xrt), allow(dead_code))]
fn one_line(msg: &str) -> String {
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_words_are_little_endian() {
        let words = instruction_words(&[0x01, 0x02, 0x03, 0x04, 0xff, 0x00, 0x00, 0x80]).unwrap();
        assert_eq!(words, [0x0403_0201, 0x8000_00ff]);
        assert_eq!(instruction_words(&[]).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn instruction_bytes_not_a_multiple_of_four_is_one_line() {
        let err = instruction_words(&[0; 10]).unwrap_err();
        assert_eq!(err, XrtError::InstructionBytes(10));
        let msg = err.to_string();
        assert!(msg.contains("10 bytes") && !msg.contains('\n'), "{msg}");
    }

    #[test]
    fn sequence_arguments_follow_the_three_fixed_kernel_arguments() {
        assert_eq!(kernel_arg(0), Ok(3));
        assert_eq!(kernel_arg(2), Ok(5));
        assert_eq!(kernel_arg(usize::MAX), Err(XrtError::ArgIndex(usize::MAX)));
        assert_eq!(kernel_arg(i32::MAX as usize), Err(XrtError::ArgIndex(i32::MAX as usize)));
    }

    #[test]
    fn arguments_must_come_from_the_context_in_their_order() {
        assert_eq!(check_args(7, [(7, 0), (7, 1), (7, 2)].into_iter()), Ok(()));
        assert_eq!(check_args(7, [].into_iter()), Ok(()));
        assert_eq!(check_args(7, [(7, 0), (8, 1)].into_iter()), Err(XrtError::ForeignBuffer(1)));
        assert_eq!(check_args(7, [(7, 1), (7, 0)].into_iter()), Err(XrtError::ArgOrder { position: 0, arg: 1 }));
        assert_eq!(check_args(7, [(7, 0), (7, 0)].into_iter()), Err(XrtError::ArgOrder { position: 1, arg: 0 }));
    }

    #[test]
    fn reads_and_writes_must_fit() {
        assert_eq!(fits("a write", 16, 16), Ok(()));
        let err = fits("a read", 17, 16).unwrap_err();
        assert_eq!(err.to_string(), "a read of 17 bytes does not fit a buffer of 16 bytes");
    }

    #[test]
    fn timeouts_never_become_xrts_wait_forever() {
        assert_eq!(timeout_ms(Duration::ZERO), 1);
        assert_eq!(timeout_ms(Duration::from_micros(300)), 1);
        assert_eq!(timeout_ms(Duration::from_secs(2)), 2000);
        assert_eq!(timeout_ms(Duration::MAX), u32::MAX);
    }

    #[test]
    fn xrt_messages_are_flattened_to_one_line() {
        let err = XrtError::Xrt(one_line("loading the xclbin: bad\n  header\r\nmagic  "));
        assert_eq!(err.to_string(), "XRT failed while loading the xclbin: bad header magic");
    }

    #[test]
    fn every_error_is_one_line() {
        let errors = [
            XrtError::NotFound,
            XrtError::Xrt("x".into()),
            XrtError::InstructionBytes(3),
            XrtError::NoInstructions,
            XrtError::KernelName("a\0b".into()),
            XrtError::EmptyBuffer(0),
            XrtError::ArgIndex(9),
            XrtError::OutOfRange { op: "a write", len: 2, size: 1 },
            XrtError::ForeignBuffer(0),
            XrtError::ArgOrder { position: 0, arg: 1 },
        ];
        for err in errors {
            let msg = err.to_string();
            assert!(!msg.is_empty() && !msg.contains(['\n', '\r']), "{msg:?}");
        }
    }

    #[test]
    fn kernel_names_with_nul_are_refused_before_xrt() {
        // Only reachable with a device; the conversion itself is what is checked.
        assert!(CString::new("MLIR_AIE\0").is_err());
        assert!(XrtError::KernelName("MLIR_AIE\0".into()).to_string().contains("\\0"));
    }

    #[test]
    fn min_xrt_matches_the_build_scripts_gate() {
        let (major, minor) = xrt_version::MIN;
        assert_eq!(MIN_XRT, format!("{major}.{minor}"));
    }

    #[test]
    fn versions_are_read_from_xrt_headers() {
        // include/version.h of XRT 2.17
        let v217 = "static const char xrt_build_version[] = \"2.17.319\";\n\
                    #define XRT_VERSION(major, minor) ((major << 16) + (minor))\n\
                    #define XRT_VERSION_CODE XRT_VERSION(2, 17)\n";
        assert_eq!(xrt_version::parse(v217), Some((2, 17)));
        // include/xrt/detail/version-slim.h of later releases
        let slim = "#define XRT_VERSION_CODE XRT_VERSION(2, 26)\nstatic const char xrt_build_version[] = \"2.26.0\";\n";
        assert_eq!(xrt_version::parse(slim), Some((2, 26)));
        assert_eq!(xrt_version::parse("static const char xrt_build_version[] = \"2.13.466\";"), Some((2, 13)));
        assert_eq!(xrt_version::parse("#define XRT_VERSION_CODE XRT_VERSION(@XRT_VERSION_MAJOR@, 1)"), None);
        assert_eq!(xrt_version::parse(""), None);
        assert!((2, 13) < xrt_version::MIN && (2, 17) >= xrt_version::MIN && (3, 0) > xrt_version::MIN);
    }
}
