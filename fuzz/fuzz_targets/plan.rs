//! A plan whose JSON header an attacker edited, with every checksum recomputed (a checksum is no signature),
//! loaded the way `unicorn-rt` loads it and, if it loads, run: a prefill of 3 tokens, then 2 decode steps.
//! A plan that is refused is fine; one that loads must run without a panic, an abort or a memory error.
//!
//! At start-up the target compiles a few fixtures into /dev/shm; those plans are the seeds. The input picks a
//! seed and a sequence of edits of its header (see [`Edits`]); the edited header is written back into a valid
//! container (ir/src/container.rs: prologue, the seed's sections unchanged, their checksums recomputed from the
//! ranges the edited header names, the header's own checksum).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Number, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use unicorn_compiler::compile::{compile, CompileOptions};
use unicorn_ir::container::{FORMAT_VERSION, MAGIC};
use unicorn_ir::{DType, WeightFormat};
use unicorn_passes::{Options, Target};
use unicorn_runtime::sampler::argmax;
use unicorn_runtime::{Model, Session};
use xxhash_rust::xxh3::xxh3_64;

/// The fixtures compiled into seed plans, their weight formats and KV-cache types (None: the compiler's default).
const SEEDS: &[(&str, WeightFormat, Option<DType>)] = &[
    ("llama_gqa", WeightFormat::Q8_0, None),
    ("llama_gqa", WeightFormat::F32, None),
    ("llama3_mqa_tied", WeightFormat::Q4_0, None),
    ("qwen2_bias", WeightFormat::Bf16, Some(DType::F32)),
    ("gemma3_text", WeightFormat::F16, None),
];

/// Edits applied to one input at most.
const MAX_EDITS: usize = 16;

/// A seed plan: the bytes before its header (prologue and sections), the header as JSON, and every string of
/// the header (values and keys) for the edits that swap one string for another.
struct Seed {
    /// Fixture and weight format, for `UNICORN_FUZZ_EXPLAIN`.
    name: String,
    body: Vec<u8>,
    header: Value,
    /// Nodes of `header`.
    nodes: usize,
    strings: Vec<String>,
}

struct State {
    dir: PathBuf,
    seeds: Vec<Seed>,
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                out.push(k.clone());
                collect_strings(x, out);
            }
        }
        _ => {}
    }
}

fn load_seed(name: String, path: &Path) -> Seed {
    let bytes = std::fs::read(path).expect("seed plan");
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes")) as usize;
    let (off, len) = (u64_at(16), u64_at(24));
    let header: Value = serde_json::from_slice(&bytes[off..off + len]).expect("seed header parses");
    let mut strings = Vec::new();
    collect_strings(&header, &mut strings);
    strings.sort();
    strings.dedup();
    Seed { name, body: bytes[..off].to_vec(), nodes: count(&header), header, strings }
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let dir = PathBuf::from(format!("/dev/shm/unicorn-fuzz-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder under /dev/shm");
        extern "C" fn cleanup() {
            if let Some(s) = STATE.get() {
                let _ = std::fs::remove_dir_all(&s.dir);
            }
        }
        // SAFETY: registering a plain function with no preconditions.
        unsafe { libc::atexit(cleanup) };
        // One thread for the compiler and the runtime: reproducible runs, and the machine stays usable.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
        unicorn_runtime::cpu::pool::set_threads(1);
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let seeds = SEEDS
            .iter()
            .map(|&(name, format, kv_cache)| {
                let plan = dir.join(format!("seed-{name}.{format}.ucp"));
                let options = CompileOptions {
                    passes: Options { target: Target::Cpu, weights: format },
                    kv_cache,
                    max_context: None,
                    device_profile: Default::default(),
                    progress: false,
                    emit_mlir: None,
                };
                compile(&fixtures.join(name), &plan, &options).unwrap_or_else(|e| panic!("seed {name}: {e:#}"));
                let seed = load_seed(format!("{name} {format}"), &plan);
                let _ = std::fs::remove_file(&plan);
                seed
            })
            .collect();
        State { dir, seeds }
    })
}

/// The fuzz input read as edit instructions; reads past the end give zeros.
struct Edits<'a> {
    data: &'a [u8],
    at: usize,
}

impl Edits<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn u16(&mut self) -> usize {
        u16::from_le_bytes([self.byte(), self.byte()]) as usize
    }

    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

/// Nodes of `v` in pre-order (`v` itself is node 0).
fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

fn nth(v: &Value, n: &mut usize) -> Option<Value> {
    if *n == 0 {
        return Some(v.clone());
    }
    *n -= 1;
    let children: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Array(a) => Box::new(a.iter()),
        Value::Object(o) => Box::new(o.values()),
        _ => return None,
    };
    for x in children {
        if let Some(r) = nth(x, n) {
            return Some(r);
        }
    }
    None
}

/// The JSON pointer (RFC 6901) of node `n`, for `UNICORN_FUZZ_EXPLAIN`.
fn pointer(v: &Value, n: &mut usize, at: String) -> Option<String> {
    if *n == 0 {
        return Some(at);
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| pointer(x, n, format!("{at}/{i}"))),
        Value::Object(o) => {
            o.iter().find_map(|(k, x)| pointer(x, n, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"))))
        }
        _ => None,
    }
}

/// Whether to describe each edit on stderr (set UNICORN_FUZZ_EXPLAIN=1 when replaying a crash).
fn explain() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("UNICORN_FUZZ_EXPLAIN").is_some_and(|v| v != "0"))
}

fn nth_mut<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
    if *n == 0 {
        return Some(v);
    }
    *n -= 1;
    let children: Box<dyn Iterator<Item = &'a mut Value>> = match v {
        Value::Array(a) => Box::new(a.iter_mut()),
        Value::Object(o) => Box::new(o.values_mut()),
        _ => return None,
    };
    for x in children {
        if let Some(r) = nth_mut(x, n) {
            return Some(r);
        }
    }
    None
}

/// Integers that break size arithmetic: zero, one, powers of two and their neighbours, the ends of the types.
const INTS: &[i128] = &[
    0,
    1,
    -1,
    2,
    3,
    4,
    7,
    8,
    15,
    16,
    31,
    32,
    33,
    63,
    64,
    65,
    127,
    128,
    255,
    256,
    1023,
    1024,
    4095,
    4096,
    4097,
    65535,
    65536,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    1 << 40,
    1 << 53,
    1 << 62,
    i64::MAX as i128,
    1 << 63,
    u64::MAX as i128,
    i64::MIN as i128,
    -2,
];

const FLOATS: &[f64] = &[0.0, -0.0, 0.5, -1.0, 1e-30, 1e30, -1e30, 3.4e38, 1e300, f64::MAX, f64::MIN_POSITIVE];

fn int(v: i128) -> Value {
    if let Ok(u) = u64::try_from(v) {
        Value::Number(u.into())
    } else if let Ok(i) = i64::try_from(v) {
        Value::Number(i.into())
    } else {
        Value::Null
    }
}

/// The number `v` holds, as an integer where it is one.
fn as_int(v: &Value) -> Option<i128> {
    v.as_u64().map(i128::from).or_else(|| v.as_i64().map(i128::from))
}

/// One edit of the header: a node picked by index, an operation, its arguments.
fn edit(root: &mut Value, seed: &Seed, e: &mut Edits) {
    let nodes = count(root);
    let target = e.u16() % nodes;
    let op = e.byte();
    let arg = e.byte();
    let arg2 = e.byte();
    // Another node, for copies and swaps; a copy that would take the header past twice the seed's size is
    // skipped (copies of copies would otherwise grow it exponentially).
    let other_index = (arg as usize | (arg2 as usize) << 8) % nodes;
    let other = match op % 12 {
        6 | 7 => match nth(root, &mut { other_index }) {
            Some(o) if nodes + count(&o) <= 2 * seed.nodes => o,
            _ => return,
        },
        _ => Value::Null,
    };
    let path = explain().then(|| pointer(root, &mut { target }, String::new()).unwrap_or_default());
    let other_path = explain().then(|| pointer(root, &mut { other_index }, String::new()).unwrap_or_default());
    apply(root, seed, target, op, arg, arg2, nodes, other, other_index);
    if let (Some(path), Some(other_path)) = (path, other_path) {
        let now = root.pointer(&path).map_or("(gone)".to_string(), |v| {
            let s = v.to_string();
            if s.len() > 120 {
                format!("{}... ({} bytes)", &s[..120], s.len())
            } else {
                s
            }
        });
        let what = ["int", "arith", "float", "null", "bool", "string", "copy", "swap", "array/object"]
            [(op % 12).min(8) as usize];
        eprintln!("edit {what} (op {op} args {arg} {arg2}; other {other_path}) at '{path}' -> {now}");
    }
}

#[allow(clippy::too_many_arguments)]
fn apply(
    root: &mut Value,
    seed: &Seed,
    target: usize,
    op: u8,
    arg: u8,
    arg2: u8,
    nodes: usize,
    other: Value,
    other_index: usize,
) {
    let Some(node) = nth_mut(root, &mut { target }) else { return };
    match op % 12 {
        // An interesting integer.
        0 => *node = int(INTS[arg as usize % INTS.len()]),
        // The number plus or minus a little, or scaled.
        1 => {
            let n = as_int(node).unwrap_or(0);
            *node = match arg2 % 4 {
                0 => int(n + (arg as i8) as i128),
                1 => int(n * (arg as i128 % 8 + 2)),
                2 => int(n / (arg as i128 % 8 + 2)),
                _ => int(n - 1),
            };
        }
        2 => *node = Number::from_f64(FLOATS[arg as usize % FLOATS.len()]).map_or(Value::Null, Value::Number),
        3 => *node = Value::Null,
        4 => *node = Value::Bool(arg & 1 == 1),
        // A string of the seed (kernel names, enum variants, weight names...), or an empty one.
        5 => {
            let i = arg as usize | (arg2 as usize) << 8;
            *node =
                Value::String(if i % 17 == 16 { String::new() } else { seed.strings[i % seed.strings.len()].clone() });
        }
        // Another node's value in place of this one.
        6 => *node = other,
        // Swap with another node (when neither contains the other, otherwise a copy).
        7 => {
            let mine = node.clone();
            *node = other;
            if let Some(o) = nth_mut(root, &mut { other_index }) {
                *o = mine;
            }
        }
        // Arrays: empty, truncate, duplicate, remove, swap, reverse. Objects: remove or rename a key.
        _ => match node {
            Value::Array(a) if !a.is_empty() => {
                let i = arg as usize % a.len();
                let j = arg2 as usize % a.len();
                match op % 12 {
                    8 => a.clear(),
                    9 => a.truncate(i),
                    10 => {
                        if nodes + count(&a[i]) <= 2 * seed.nodes {
                            let x = a[i].clone();
                            a.insert(j, x);
                        }
                    }
                    _ => match arg2 % 3 {
                        0 => {
                            a.remove(i);
                        }
                        1 => a.swap(i, j),
                        _ => a.reverse(),
                    },
                }
            }
            Value::Object(o) if !o.is_empty() => {
                let key = o.keys().nth(arg as usize % o.len()).expect("in range").clone();
                let value = o.remove(&key).expect("present");
                if op % 2 == 0 {
                    let i = arg2 as usize | (op as usize) << 8;
                    o.insert(seed.strings[i % seed.strings.len()].clone(), value);
                }
            }
            // A scalar becomes an array of itself (a shape, a list of ids...).
            _ => {
                let x = node.take();
                *node = Value::Array(vec![x; arg as usize % 3 + 1]);
            }
        },
    }
}

/// The container around an edited header: the seed's prologue and sections, each section's checksum taken
/// again over the range the header now names, the header appended and the prologue pointing at it.
fn wrap(seed: &Seed, mut header: Value) -> Vec<u8> {
    let body = &seed.body;
    if let Some(sections) = header.get_mut("sections").and_then(Value::as_array_mut) {
        for s in sections {
            let (Some(off), Some(len)) =
                (s.get("offset").and_then(Value::as_u64), s.get("len").and_then(Value::as_u64))
            else {
                continue;
            };
            let Some(end) = off.checked_add(len).filter(|&e| e <= body.len() as u64) else { continue };
            if let Some(obj) = s.as_object_mut() {
                obj.insert("checksum".into(), xxh3_64(&body[off as usize..end as usize]).into());
            }
        }
    }
    let json = serde_json::to_vec(&header).expect("a Value serializes");
    let mut out = Vec::with_capacity(body.len() + json.len());
    out.extend_from_slice(body);
    out[..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&0u32.to_le_bytes());
    out[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    out[24..32].copy_from_slice(&(json.len() as u64).to_le_bytes());
    out[32..40].copy_from_slice(&xxh3_64(&json).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// What `unicorn-rt --tokens 1,2,3 -n 3 [--prefill-chunk 2]` does: prefill 3 tokens, then 2 decode steps on
/// the greedy picks. Loading validates the plan; a plan refused there (or by the session) is fine.
fn run(path: &Path, all_rows: bool, chunked: bool) {
    let model = match Model::load(path) {
        Ok(m) => m,
        Err(e) => {
            if explain() {
                eprintln!("refused: {e}");
            }
            return;
        }
    };
    let Ok(mut session) = Session::new(&model, 5) else { return };
    if chunked && session.set_prefill_chunk(2).is_err() {
        return;
    }
    let Ok(logits) = session.forward(&[1, 2, 3], all_rows) else { return };
    let vocab = model.header().spec.vocab_size.max(1);
    let mut next = argmax(&logits[logits.len().saturating_sub(vocab)..]);
    for _ in 0..2 {
        let Ok(logits) = session.forward(&[next], false) else { return };
        next = argmax(logits);
    }
    if explain() {
        eprintln!("ran: prefill and 2 decode steps, last token {next}");
    }
}

fuzz_target!(|data: &[u8]| {
    let st = state();
    let mut e = Edits { data, at: 0 };
    let first = e.byte();
    let seed = &st.seeds[(first & 0x3f) as usize % st.seeds.len()];
    if explain() {
        let rows = if first & 0x80 != 0 { ", every row's logits" } else { "" };
        let chunk = if first & 0x40 != 0 { ", prefill in chunks of 2" } else { "" };
        eprintln!("seed {}{rows}{chunk}", seed.name);
    }
    let mut header = seed.header.clone();
    let mut n = 0;
    while !e.done() && n < MAX_EDITS {
        edit(&mut header, seed, &mut e);
        n += 1;
    }
    let path = st.dir.join("plan.ucp");
    let plan = wrap(seed, header);
    std::fs::write(&path, &plan).expect("write the plan");
    // UNICORN_FUZZ_DUMP=FILE keeps the edited plan (to hand a reproducer to unicorn-rt or unicornc inspect).
    if let Some(dump) = std::env::var_os("UNICORN_FUZZ_DUMP") {
        std::fs::write(dump, &plan).expect("write UNICORN_FUZZ_DUMP");
    }
    run(&path, first & 0x80 != 0, first & 0x40 != 0);
});
