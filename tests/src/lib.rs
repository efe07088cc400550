//! Helpers for the end-to-end tests: fixtures, .npy reading, compiling and running plans, the binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use unicorn_compiler::compile::{compile, CompileOptions};
use unicorn_ir::WeightFormat;
use unicorn_passes::{Options, Target};
use unicorn_runtime::generate::{generate, Stats};
use unicorn_runtime::sampler::{argmax, Sampler, SamplerOptions};
use unicorn_runtime::{Model, Session};

/// The committed fixtures. The first call in a test binary also prints what the in-process kernels run with,
/// so every test log says which ISA and thread count judged the code.
pub fn fixtures_dir() -> PathBuf {
    static ANNOUNCE: std::sync::Once = std::sync::Once::new();
    ANNOUNCE.call_once(|| {
        eprintln!(
            "unicorn-tests: CPU kernels {} (this CPU runs {:?}), {} worker threads",
            unicorn_runtime::cpu::isa::Isa::detect().name(),
            unicorn_runtime::cpu::isa::Isa::available_all(),
            unicorn_runtime::cpu::pool::threads()
        )
    });
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every fixture folder (those with an expected.json), sorted. Panics when there are none: a fixture test that
/// finds nothing to judge fails.
pub fn fixtures() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("expected.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    assert!(
        v.len() >= 10,
        "only {} fixtures in {}: run tests/fixtures/make_fixtures.py",
        v.len(),
        fixtures_dir().display()
    );
    v
}

/// What transformers produced for a fixture.
pub struct Expected {
    pub name: String,
    pub prompt_ids: Vec<u32>,
    /// The new tokens of transformers' cache-free greedy loop (at most 8, ending early after an eos id).
    pub greedy_ids: Vec<u32>,
    /// The new tokens of transformers' `model.generate(do_sample=False, max_new_tokens=8)` with the checkpoint's
    /// generation_config (its eos ids).
    pub generate_ids: Vec<u32>,
    /// The quantization grid every matrix of the fixture sits on: `q4_0` or `q8_0` (tests/fixtures/README.md).
    pub grid: WeightFormat,
    pub vocab: usize,
    /// Row-major `[prompt_len, vocab]`: transformers in float32.
    pub logits: Vec<f32>,
    /// The whole expected.json.
    pub json: serde_json::Value,
}

impl Expected {
    /// transformers' logits with the weights in `format` and every linear layer's input quantized to q8 blocks
    /// as Unicorn's kernels do (`logits_<format>.npy`); stored for the fixture's own grid only.
    pub fn quantized_logits(&self, format: WeightFormat) -> Option<Vec<f32>> {
        let path = fixtures_dir().join(&self.name).join(format!("logits_{format}.npy"));
        path.is_file().then(|| {
            let (shape, logits) = read_npy_f32(&path);
            assert_eq!(shape, vec![self.prompt_ids.len(), self.vocab], "{}", path.display());
            logits
        })
    }
}

pub fn expected(name: &str) -> Expected {
    let dir = fixtures_dir().join(name);
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).expect("expected.json")).expect("json");
    let ids = |k: &str| -> Vec<u32> {
        j[k].as_array().unwrap_or_else(|| panic!("{name}: {k}")).iter().map(|v| v.as_u64().unwrap() as u32).collect()
    };
    let (shape, logits) = read_npy_f32(&dir.join("logits.npy"));
    assert_eq!(shape.len(), 2);
    let grid = j["grid"].as_str().unwrap_or_else(|| panic!("{name}: grid"));
    let grid = WeightFormat::parse(grid).unwrap_or_else(|e| panic!("{name}: grid {grid}: {e}"));
    assert!(grid.is_quantized(), "{name}: grid {grid}");
    Expected {
        name: name.to_string(),
        prompt_ids: ids("prompt_ids"),
        greedy_ids: ids("greedy_ids"),
        generate_ids: ids("generate_ids"),
        grid,
        vocab: shape[1],
        logits,
        json: j,
    }
}

/// Read a little-endian float32 C-order .npy file.
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{}: not .npy", path.display());
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        _ => (u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize, 12),
    };
    let header = std::str::from_utf8(&b[start..start + hlen]).unwrap();
    assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_txt = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> =
        shape_txt.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let data: Vec<f32> = b[start + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

/// Compile a checkpoint into `dir/<name>.<format>.ucp` through the library (what `unicornc compile` runs).
pub fn compile_to(model: &Path, dir: &Path, format: WeightFormat, max_context: Option<usize>) -> PathBuf {
    compile_for(Target::Cpu, model, dir, format, max_context)
}

/// [`compile_to`] for `target` (`dir/<name>.<format>.<target>.ucp` unless the target is the CPU).
pub fn compile_for(
    target: Target,
    model: &Path,
    dir: &Path,
    format: WeightFormat,
    max_context: Option<usize>,
) -> PathBuf {
    let name = model.file_name().unwrap().to_string_lossy();
    let plan = match target {
        Target::Cpu => dir.join(format!("{name}.{format}.ucp")),
        t => dir.join(format!("{name}.{format}.{}.ucp", t.name())),
    };
    let options = CompileOptions {
        passes: Options { target, weights: format },
        kv_cache: None,
        max_context,
        device_profile: Default::default(),
        progress: false,
        emit_mlir: None,
    };
    compile(model, &plan, &options).unwrap_or_else(|e| panic!("compiling {name} to {format}: {e:#}"));
    plan
}

/// Logits of every position of one prefill pass.
pub fn prefill_logits(plan: &Path, ids: &[u32]) -> Vec<f32> {
    let model = Model::load(plan).expect("plan loads");
    let mut s = Session::new(&model, ids.len()).expect("session");
    s.forward(ids, true).expect("prefill").to_vec()
}

/// The runtime's own generation loop ([`unicorn_runtime::generate::generate`], what `unicorn-rt` runs), greedy,
/// with the plan's eos ids, in a session of `ctx` positions: the emitted ids and the loop's stats.
pub fn generate_greedy(model: &Model, prompt: &[u32], max_new: usize, ctx: usize) -> (Vec<u32>, Stats) {
    let mut session = Session::new(model, ctx).expect("session");
    let mut sampler = Sampler::new(SamplerOptions { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 });
    let eos = model.header().spec.eos_token_ids.clone();
    let mut ids = Vec::new();
    let stats = generate(&mut session, prompt, max_new, &mut sampler, &eos, |t| {
        ids.push(t);
        Ok(())
    })
    .expect("generate");
    assert_eq!(stats.generated, ids.len(), "Stats::generated counts the emitted tokens");
    (ids, stats)
}

/// Comparison of two `[rows, vocab]` logit matrices.
#[derive(Debug, Clone, Copy)]
pub struct Agreement {
    /// max |a - b| / max |b|
    pub rel_err: f32,
    /// Fraction of rows with the same argmax.
    pub argmax: f32,
}

/// max |got - want|, or infinity where `got` holds a NaN or an infinity (which a running maximum would pass
/// over: `f32::max` ignores NaN).
pub fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
    if got.iter().any(|g| !g.is_finite()) {
        return f32::INFINITY;
    }
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()))
}

pub fn compare(got: &[f32], want: &[f32], vocab: usize) -> Agreement {
    assert_eq!(got.len(), want.len(), "logit counts differ");
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_err = max_abs_diff(got, want);
    let rows = want.len() / vocab;
    let same = (0..rows)
        .filter(|r| argmax(&got[r * vocab..(r + 1) * vocab]) == argmax(&want[r * vocab..(r + 1) * vocab]))
        .count();
    Agreement { rel_err: max_err / max_ref, argmax: same as f32 / rows as f32 }
}

/// Path of a workspace binary (built by `cargo build --bins`, which the test command runs first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(p.is_file(), "{} not built: run `cargo build --bins` before the tests", p.display());
    p
}

pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name)).args(args).env_remove("RUST_BACKTRACE").output().expect("binary runs")
}

/// Assert a failed run printed exactly one line naming `culprit`, with no panic or backtrace.
pub fn assert_one_line_error(out: &Output, culprit: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure, got success; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "expected one line, got: {err}");
    assert!(err.contains(culprit), "error does not name '{culprit}': {err}");
    assert!(err.matches("(os error").count() <= 1, "the cause is repeated: {err}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "internal error"] {
        assert!(!err.contains(bad), "error shows '{bad}': {err}");
    }
    err
}

/// Copy a fixture checkpoint into `dir` so a test can damage it.
pub fn copy_fixture(name: &str, dir: &Path) -> PathBuf {
    let src = fixtures_dir().join(name);
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    dst
}

/// Write a safetensors file holding `tensors`, each (name, dtype as safetensors spells it, shape, little-endian
/// data), back to back in the given order.
pub fn write_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let begin = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Rewrite a safetensors file's JSON header (the data bytes are kept as they are).
pub fn edit_safetensors_header(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let data = &b[8 + n..];
    edit(&mut header);
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

/// Rewrite a plan's JSON header (`{"sections": [...], "plan": {...}}`) and recompute the header checksum, as an
/// attacker would: the sections and their checksums stay valid, so only validation can refuse the result.
pub fn edit_plan_header(src: &Path, dst: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let b = std::fs::read(src).unwrap();
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize;
    let (off, len) = (u64_at(16), u64_at(24));
    let mut header: serde_json::Value = serde_json::from_slice(&b[off..off + len]).unwrap();
    edit(&mut header);
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = b[..off].to_vec();
    out[24..32].copy_from_slice(&(json.len() as u64).to_le_bytes());
    out[32..40].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(&json).to_le_bytes());
    out.extend_from_slice(&json);
    std::fs::write(dst, out).unwrap();
}
