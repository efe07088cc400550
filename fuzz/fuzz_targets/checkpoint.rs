//! `unicornc compile` on a fuzzed checkpoint: config.json plus model.safetensors, compiled all the way to a plan
//! file (frontend, module builder, pass pipeline, lowering, weight conversion, container writer).
//!
//! Input layout (all integers little-endian):
//!
//! ```text
//! 0      1  weight format: index into WeightFormat::ALL (mod 5)
//! 1      1  --max-context: 0 = none, else the value
//! 2      1  fill byte for the padding below
//! 3      1  KV cache: 0 = the compiler's default, 1 = f32, 2 = f16 (mod 3)
//! 4      4  config.json length C (clamped to what is there)
//! 8      4  padding length P (clamped to MAX_PAD)
//! 12     C  config.json
//! 12+C   …  the start of model.safetensors (length prefix, header, any data bytes), then P fill bytes
//! ```
//!
//! The padding keeps tensor data out of the input: the seeds carry a checkpoint's config and safetensors header
//! only, and its data section comes back as padding, so mutations land on the bytes that steer the compiler
//! rather than on weight values. Every panic, abort, out-of-memory or timeout is a finding; an error is fine.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use unicorn_compiler::compile::{compile, CompileOptions};
use unicorn_ir::{DType, WeightFormat};
use unicorn_passes::{Options, Target};

/// Largest padding: larger than any seed's data section, small enough to stay fast.
const MAX_PAD: usize = 8 << 20;

/// This process's scratch folder under /dev/shm, made once and reused; removed at a normal exit.
fn workdir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(format!("/dev/shm/unicorn-fuzz-checkpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder under /dev/shm");
        extern "C" fn cleanup() {
            if let Some(d) = DIR.get() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        // SAFETY: registering a plain function with no preconditions.
        unsafe { libc::atexit(cleanup) };
        // The compiler converts weights on rayon's pool; one thread keeps runs reproducible and the machine free.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
        dir
    })
}

struct Input<'a> {
    format: WeightFormat,
    max_context: Option<usize>,
    device_profile: Default::default(),
    fill: u8,
    kv_cache: Option<DType>,
    pad: usize,
    config: &'a [u8],
    safetensors: &'a [u8],
}

fn split(data: &[u8]) -> Option<Input<'_>> {
    let (head, rest) = data.split_at_checked(12)?;
    let u32_at = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().expect("4 bytes")) as usize;
    let (config, safetensors) = rest.split_at(u32_at(4).min(rest.len()));
    Some(Input {
        format: WeightFormat::ALL[head[0] as usize % WeightFormat::ALL.len()],
        max_context: (head[1] != 0).then_some(head[1] as usize),
        fill: head[2],
        kv_cache: [None, Some(DType::F32), Some(DType::F16)][head[3] as usize % 3],
        pad: u32_at(8).min(MAX_PAD),
        config,
        safetensors,
    })
}

/// Write `bytes` (then `pad` copies of `fill`) under a temporary name and rename it into place, so a mapping of
/// the previous file is never truncated under the reader.
fn put(path: &Path, bytes: &[u8], pad: usize, fill: u8) {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("create scratch file"));
    f.write_all(bytes).expect("write scratch file");
    let block = [fill; 64 << 10];
    let mut left = pad;
    while left > 0 {
        let n = left.min(block.len());
        f.write_all(&block[..n]).expect("write scratch file");
        left -= n;
    }
    f.into_inner().expect("flush scratch file");
    std::fs::rename(&tmp, path).expect("rename scratch file");
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = split(data) else { return };
    let dir = workdir();
    put(&dir.join("config.json"), input.config, 0, 0);
    put(&dir.join("model.safetensors"), input.safetensors, input.pad, input.fill);
    let options = CompileOptions {
        passes: Options { target: Target::Cpu, weights: input.format },
        kv_cache: input.kv_cache,
        max_context: input.max_context,
        progress: false,
        emit_mlir: None,
    };
    // A refused checkpoint is fine; only a crash, a hang or runaway memory is a finding.
    let _ = compile(dir, &dir.join("plan.ucp"), &options);
});
