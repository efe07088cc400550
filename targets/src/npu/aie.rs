//! A whole design as one MLIR module in the `aie` / `aiex` dialects of ONE pinned mlir-aie release:
//! **v1.4.1, commit `601fc859532f2539bebb33ac89139584c76ae8a2`** ([`MLIR_AIE_RELEASE`]). The syntax follows
//! that release's `AIEOps.td`, `AIEAttrs.td`, `AIETypes.td` and `AIEX.td`:
//!
//! - `aie.device` takes the `AIEDevice` enum as an i32, and at this release `npu1` is 4: the 4-column Phoenix
//!   array (the older `npu1_4col` is gone; `npu1_1col` .. `npu1_3col` are 5 .. 7, `npu2` 8). The generic form
//!   carries the integer, so the number is the release's, not the name.
//! - The runtime sequence is `aie.runtime_sequence` (the AIE dialect's, no longer `aiex.`), a symbol
//!   (default name `sequence`) whose entry block takes the host buffers.
//! - `aiex.npu.dma_memcpy_nd` has no x / y operands: the buffer, then offsets, sizes and strides (4 each,
//!   outermost first, here all static), `metadata = @fifo` and `id` (the buffer descriptor), and
//!   `operandSegmentSizes` for its variadic operands; `aiex.npu.dma_wait {symbol = @fifo}` waits on it, so a
//!   transfer that is waited on sets `issue_token`.
//! - `aie.objectfifo` carries its depth (`elemNumber`), its `!aie.objectfifo<memref<...>>` type, its producer's
//!   `dimensionsToStream` and one (empty) `dimensionsFromStream` per consumer; `aie.objectfifo.link` carries
//!   `src_offsets` (a join) or `dst_offsets` (a split), in elements.
//! - Enums are i32: the objectfifo port is Produce = 0, Consume = 1; a lock action is Acquire = 0, Release = 1,
//!   AcquireGreaterEqual = 2 (`AIEAttrs.td`).
//! - Runtime parameters ([`RtpBuffer`]): each core's words are an `aie.buffer` of its tile (`memref<Nxi32>`) and
//!   its barrier an `aie.lock` of the tile (`init = 0`, its id left to `aie-assign-lock-ids`). The runtime
//!   sequence begins with `aiex.npu.rtp_write` — `buffer = @sym` (a flat symbol reference), `index` (a `ui32`
//!   attribute, in words) and the value as an `i32` operand (`AIEX.td`, `NpuWriteRTPOp`) — one a word, then
//!   `aiex.set_lock` of each barrier to 1 (`AIEX.td`, `SetLockOp`, `value` an i32 attribute); a core's pass
//!   begins with `aie.use_lock` of its barrier, AcquireGreaterEqual, with the value 1 as an `i32` operand (at
//!   this release the lock value is an SSA operand, not an attribute: `AIEOps.td`, `UseLockOp`). The release
//!   lowers an `rtp_write` to an `aiex.npu.write32` at the buffer's address plus 4 x index
//!   (`lib/Dialect/AIEX/Transforms/AIEDmaToNpu.cpp`, `RtpToWrite32Pattern`) and a `set_lock` to a `write32` of
//!   the lock's register (`AIELowerSetLock.cpp`), and it translates a `write32` into the instruction stream
//!   only with a constant value (`lib/Targets/AIETargetNPU.cpp`, `appendWrite32`: "Cannot translate write32
//!   with non-constant address or value"): so the values are `arith.constant`s here (0, placeholders, each
//!   named by a comment), and the host writes each dispatch's values into those words of the instruction
//!   stream it hands the NPU. The core side is mlir-aie's own npu1 idiom: `test/npu-xrt/runtime_cumsum`
//!   (`REQUIRES: ryzen_ai_npu1`) reads an `rtp_write`'s buffer in a core, and IRON's `WorkerRuntimeBarrier`
//!   (`python/iron/worker.py`, used with `Buffer(use_write_rtp=True)` in `programming_examples/ml/scale_shift`)
//!   is the lock a core acquires before reading one. (The release's scratchpad parameters, which read a host
//!   buffer, are npu2 only: `test/npu-xrt/scratchpad_params` requires `ryzen_ai_npu2` and the full-ELF flow.)
//!
//! The tag's commit was not read from a tag (the snapshot of the repository at hand has no tags): two version
//! strings published for builds after it, commit `3ca0193` given as "v1.4.1 + 13 commits" and a wheel
//! `1.4.2.dev16+g7e00b57`, both count back along the history to `601fc85` (2026-08-11, the release's date), and
//! the files above were read at that commit.
//!
//! Every aie / aiex op is printed in GENERIC form (`"aie.tile"() {col = 0 : i32, row = 2 : i32} : () -> index`)
//! with its terminators written out (`"aie.end"`), so that upstream MLIR (LLVM 19's `mlir-opt` with
//! `--allow-unregistered-dialect`) re-parses the module, while mlir-aie's `aie-opt` moves the inherent
//! attributes of the dictionary into its ops' properties. The compute is upstream MLIR: each core calls the
//! `func.func`s of [`super::mlir::core_body`], defined inside the device as mlir-aie expects for a `func.call`
//! from a core. One limit of upstream MLIR: its verifier looks a `func.call`'s callee up in the nearest symbol
//! table and takes an unregistered op with one region (`aie.core`) for an unknown one, so LLVM 19 rejects every
//! call inside a core; the tests re-parse the module with the calls as unregistered ops and check the calls
//! against the functions separately.
//!
//! Each core loops forever (mlir-aie's `while_true` idiom, `sys.maxsize` iterations), one pass of its loop being
//! what it does in one dispatch: a matrix core acquires its output buffer, zeroes it, folds `k_tiles` pairs of
//! operand buffers into it and releases it; a row-wise core takes one buffer of each operand per output buffer;
//! a core of rows in pieces takes a row's pieces twice, once for the row's statistics (kept in an `aie.buffer`
//! of its tile) and once for its outputs; an attention core acquires its runtime parameters' barrier, then
//! walks its rounds (a round's Q block, its K/V tiles folded one by one into the rows' running maximum, sum
//! and output kept in `aie.buffer`s of its tile, each fold reading the dispatch's `q0` and `kv_len` from the
//! tile's parameter buffer, then the rows' output), the rounds of each of its column's heads alike taken as a
//! loop over the heads. That is the order the emulator ([`super::emu`]) runs the bodies in.
//!
//! Nothing here has been through `aie-opt` or `aiecc`: no mlir-aie build exists on the machines this project
//! runs on. What is checked is that LLVM 19's MLIR re-parses and verifies every op it knows, and that the text
//! says what the design says.

use super::design::{Coord, Core, CoreBody, Design, Dim, Elem, FifoUse, ObjectFifo, Port, RtpBuffer, SeqOp};
use super::mlir::{body_name, core_body};
use std::collections::BTreeSet;
use std::fmt::Write;

/// The mlir-aie release whose syntax [`module`] emits: its tag and commit.
pub const MLIR_AIE_RELEASE: &str = "v1.4.1 (601fc859532f2539bebb33ac89139584c76ae8a2)";

/// `AIEDevice::npu1` (the 4-column Phoenix / Hawk Point array) as that release numbers it.
pub const NPU1_DEVICE: i32 = 4;

/// The trip count of a core's outer loop: forever, as mlir-aie's `range_(sys.maxsize)`.
pub const FOREVER: u64 = i64::MAX as u64;

/// The MLIR element type of `e`.
pub fn elem_type(e: Elem) -> &'static str {
    match e {
        Elem::Bf16 => "bf16",
        Elem::F32 => "f32",
        Elem::I8 => "i8",
        Elem::I32 => "i32",
    }
}

/// The runtime sequence's arguments, in order: each one's element type and elements (the largest element a
/// transfer reaches, plus one). An argument no transfer names (none of the designs has one) is one `i32`.
pub fn runtime_args(design: &Design) -> Vec<(Elem, u64)> {
    let mut args: Vec<Option<(Elem, u64)>> = Vec::new();
    for op in &design.sequence {
        if let SeqOp::Memcpy { arg, elem, offset, dims, .. } = op {
            if args.len() <= *arg {
                args.resize(arg + 1, None);
            }
            let last = offset + dims.iter().map(|d| d.size.saturating_sub(1) * d.stride).sum::<u64>();
            let e = args[*arg].get_or_insert((*elem, 0));
            e.1 = e.1.max(last + 1);
        }
    }
    args.into_iter().map(|a| a.unwrap_or((Elem::I32, 1))).collect()
}

/// A transfer's four `(offset, size, stride)` levels as `dma_memcpy_nd` takes them, outermost first: the
/// design's levels padded on the outside with size 1, stride 0, and its element offset put on the innermost
/// level whose stride divides it (the release computes the start as the sum of offset x stride over the
/// levels). More than four levels (which the AIE2 rules refuse) are kept, for `aie-opt` to refuse.
///
/// # Panics
/// Where no level's stride divides the offset (no design has such a transfer: the rules make a sub-word
/// transfer's innermost stride 1).
pub fn dma_levels(offset: u64, dims: &[Dim]) -> Vec<(u64, u64, u64)> {
    let pad = 4usize.saturating_sub(dims.len());
    let mut levels: Vec<(u64, u64, u64)> =
        std::iter::repeat_n((0, 1, 0), pad).chain(dims.iter().map(|d| (0, d.size, d.stride))).collect();
    if offset > 0 {
        let at = levels
            .iter()
            .rposition(|&(_, _, stride)| stride > 0 && offset.is_multiple_of(stride))
            .unwrap_or_else(|| panic!("a transfer at element {offset} over {dims:?}: no level's stride divides it"));
        levels[at].0 = offset / levels[at].2;
    }
    levels
}

/// A symbol reference: `@name`, quoted where the name is not a bare identifier.
fn sym(name: &str) -> String {
    let bare = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_$.".contains(c));
    if bare {
        format!("@{name}")
    } else {
        format!("@\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// A string attribute's text, quoted and escaped.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

fn tile_value(c: Coord) -> String {
    format!("%tile_{}_{}", c.col, c.row)
}

/// `memref<64x32xbf16>` for a buffer of `shape`.
fn memref(shape: &[u64], elem: Elem) -> String {
    let dims: String = shape.iter().map(|d| format!("{d}x")).collect();
    format!("memref<{dims}{}>", elem_type(elem))
}

fn flat(n: u64, elem: Elem) -> String {
    memref(&[n], elem)
}

fn elements(f: &ObjectFifo) -> u64 {
    f.shape.iter().product()
}

fn bd_dims(v: &[Dim]) -> String {
    let dims: Vec<String> = v.iter().map(|d| format!("<size = {}, stride = {}>", d.size, d.stride)).collect();
    format!("#aie<bd_dim_layout_array[{}]>", dims.join(", "))
}

fn i64_array(v: &[u64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x} : i64")).collect();
    format!("[{}]", items.join(", "))
}

/// The functions the cores call, each defined once, and the name each core's body goes by.
struct Functions {
    /// `(name, text)` in order of first use.
    defs: Vec<(String, String)>,
    /// Per core of the design, the name of its body's function (attention: the prefix of its three).
    body: Vec<String>,
}

impl Functions {
    fn add(&mut self, name: &str, text: String) {
        if !self.defs.iter().any(|(n, _)| n == name) {
            self.defs.push((name.to_string(), text));
        }
    }
}

/// `func.func @zero_<ty>_<n>`: a buffer of `n` elements of `elem` set to zero (a matrix core's output before
/// its sums, as the emulator starts them).
fn zero_fn(n: u64, elem: Elem) -> (String, String) {
    let (ty, zero) = (elem_type(elem), if matches!(elem, Elem::Bf16 | Elem::F32) { "0.0" } else { "0" });
    let name = format!("zero_{ty}_{n}");
    let text = format!(
        "func.func @{name}(%c: memref<{n}x{ty}>) {{\n\
         \x20   %i0 = arith.constant 0 : index\n\
         \x20   %i1 = arith.constant 1 : index\n\
         \x20   %n = arith.constant {n} : index\n\
         \x20   %zero = arith.constant {zero} : {ty}\n\
         \x20   scf.for %e = %i0 to %n step %i1 {{\n\
         \x20     memref.store %zero, %c[%e] : memref<{n}x{ty}>\n\
         \x20   }}\n\
         \x20   return\n\
         }}\n"
    );
    (name, text)
}

/// `func.func @<attention>_start`: a round's rows' running maximum to -inf, sum and output to zero.
fn attention_start(name: &str, q_rows: u64, head_dim: u64) -> String {
    let no = q_rows * head_dim;
    format!(
        "func.func @{name}_start(%m: memref<{q_rows}xf32>, %l: memref<{q_rows}xf32>, %o: memref<{no}xf32>) {{\n\
         \x20   %i0 = arith.constant 0 : index\n\
         \x20   %i1 = arith.constant 1 : index\n\
         \x20   %qn = arith.constant {q_rows} : index\n\
         \x20   %n = arith.constant {no} : index\n\
         \x20   %zero = arith.constant 0x00000000 : f32\n\
         \x20   %ninf = arith.constant 0xFF800000 : f32\n\
         \x20   scf.for %r = %i0 to %qn step %i1 {{\n\
         \x20     memref.store %ninf, %m[%r] : memref<{q_rows}xf32>\n\
         \x20     memref.store %zero, %l[%r] : memref<{q_rows}xf32>\n\
         \x20   }}\n\
         \x20   scf.for %e = %i0 to %n step %i1 {{\n\
         \x20     memref.store %zero, %o[%e] : memref<{no}xf32>\n\
         \x20   }}\n\
         \x20   return\n\
         }}\n"
    )
}

/// The functions of `design`'s cores: their bodies (renamed where two bodies of one name differ), the zeroing
/// of matrix outputs and the start of attention rounds.
fn functions(design: &Design) -> Functions {
    let mut fs = Functions { defs: Vec::new(), body: Vec::new() };
    // Texts of each body function name, to tell apart two bodies of one name that differ (a parameter the
    // name does not show).
    let mut texts: Vec<(String, String)> = Vec::new();
    for core in &design.cores {
        let base = body_name(core.body);
        let Some(text) = core_body(core.body) else {
            fs.body.push(base);
            continue;
        };
        let text = format!("{}\n", text.trim_end());
        let variants = texts.iter().filter(|(n, _)| *n == base).count();
        let name = match texts.iter().position(|(n, t)| *n == base && *t == text) {
            Some(i) => {
                // The same body as an earlier one: its name, whatever that became.
                let same = texts[..=i].iter().filter(|(n, _)| *n == base).count() - 1;
                if same == 0 {
                    base.clone()
                } else {
                    format!("{base}_v{same}")
                }
            }
            None => {
                texts.push((base.clone(), text.clone()));
                let name = if variants == 0 { base.clone() } else { format!("{base}_v{variants}") };
                // `@base` also prefixes attention's `@base_tile` and `@base_finish`, which follow it.
                let text = text.replace(&format!("@{base}"), &format!("@{name}"));
                fs.add(&name, text);
                name
            }
        };
        match core.body {
            CoreBody::MatMul { .. } | CoreBody::MatVec { .. } | CoreBody::MatVecQ8 { .. } => {
                if let Some(out) = core.uses.get(2).and_then(|u| design.fifo(&u.fifo)) {
                    let (zname, ztext) = zero_fn(elements(out), out.elem);
                    fs.add(&zname, ztext);
                }
            }
            CoreBody::Attention { q_rows, head_dim, .. } => {
                fs.add(&format!("{name}_start"), attention_start(&name, q_rows, head_dim));
            }
            CoreBody::Rows { .. } | CoreBody::RowPieces(_) => {}
        }
        fs.body.push(name);
    }
    fs
}

/// A core's program, written into its `aie.core` region.
struct CoreWriter<'a> {
    s: String,
    design: &'a Design,
    core: &'a Core,
}

impl CoreWriter<'_> {
    fn line(&mut self, depth: usize, text: &str) {
        let _ = writeln!(self.s, "{:w$}{text}", "", w = 6 + 2 * depth);
    }

    /// Acquire `u`'s buffers and bind `%<v>` to the first as a flat memref; its type.
    fn acquire(&mut self, depth: usize, v: &str, u: &FifoUse) -> String {
        let (shape, elem) = match self.design.fifo(&u.fifo) {
            Some(f) => (f.shape.clone(), f.elem),
            None => (vec![1], Elem::I32),
        };
        let (ty, n) = (memref(&shape, elem), shape.iter().product::<u64>());
        let port = if u.port == Port::Produce { 0 } else { 1 };
        let sub = format!("!aie.objectfifosubview<{ty}>");
        self.line(
            depth,
            &format!(
                "%{v}_sv = \"aie.objectfifo.acquire\"() {{objFifo_name = {}, port = {port} : i32, size = {} : i32}} : \
                 () -> {sub}",
                sym(&u.fifo),
                u.acquire
            ),
        );
        let access = if shape.len() == 1 { v.to_string() } else { format!("{v}_buf") };
        self.line(
            depth,
            &format!("%{access} = \"aie.objectfifo.subview.access\"(%{v}_sv) {{index = 0 : i32}} : ({sub}) -> {ty}"),
        );
        if shape.len() == 1 {
            return ty;
        }
        let all: Vec<String> = (0..shape.len()).map(|i| i.to_string()).collect();
        let flat_ty = flat(n, elem);
        self.line(
            depth,
            &format!("%{v} = memref.collapse_shape %{access} [[{}]] : {ty} into {flat_ty}", all.join(", ")),
        );
        flat_ty
    }

    fn release(&mut self, depth: usize, u: &FifoUse) {
        let port = if u.port == Port::Produce { 0 } else { 1 };
        self.line(
            depth,
            &format!(
                "\"aie.objectfifo.release\"() {{objFifo_name = {}, port = {port} : i32, size = {} : i32}} : () -> ()",
                sym(&u.fifo),
                u.acquire
            ),
        );
    }

    fn call(&mut self, depth: usize, f: &str, args: &[(&str, &str)]) {
        let names: Vec<&str> = args.iter().map(|a| a.0).collect();
        let types: Vec<&str> = args.iter().map(|a| a.1).collect();
        self.line(depth, &format!("func.call @{f}({}) : ({}) -> ()", names.join(", "), types.join(", ")));
    }

    fn constant(&mut self, depth: usize, name: &str, v: u64) {
        self.line(depth, &format!("%{name} = arith.constant {v} : index"));
    }

    /// One pass of a matrix core: its output acquired and zeroed, `k_tiles` pairs of operands folded in, the
    /// output released.
    fn matrix(&mut self, name: &str, [a, b, c]: [&FifoUse; 3]) {
        let out = self.acquire(1, "out", c);
        let (n, elem) = self.design.fifo(&c.fifo).map_or((1, Elem::I32), |f| (elements(f), f.elem));
        self.call(1, &zero_fn(n, elem).0, &[("%out", &out)]);
        self.line(1, "scf.for %kt = %c0 to %k_tiles step %c1 {");
        let ta = self.acquire(2, "in0", a);
        let tb = self.acquire(2, "in1", b);
        self.call(2, name, &[("%in0", &ta), ("%in1", &tb), ("%out", &out)]);
        self.release(2, a);
        self.release(2, b);
        self.line(1, "}");
        self.release(1, c);
    }

    /// One pass of a row-wise core: a buffer of each operand into one of the output.
    fn rows(&mut self, name: &str, [a, b, c]: [&FifoUse; 3]) {
        let ta = self.acquire(1, "in0", a);
        let tb = self.acquire(1, "in1", b);
        let tc = self.acquire(1, "out", c);
        self.call(1, name, &[("%in0", &ta), ("%in1", &tb), ("%out", &tc)]);
        self.release(1, a);
        self.release(1, b);
        self.release(1, c);
    }

    /// One pass of a core of rows in pieces: a row's two passes over its `%pieces` pieces, the first folding
    /// each piece (and the softmax's mask's) into the row's statistics in its tile's buffer, the second taking
    /// the same pieces again with the second operand's into one output piece each.
    fn row_pieces(&mut self, name: &str, body: CoreBody, [a, b, c]: [&FifoUse; 3]) {
        let CoreBody::RowPieces(rp) = body else { return };
        let stats = format!("%{}", stats_buffer(self.core.tile));
        let ts = flat(2, Elem::F32);
        self.line(1, "scf.for %j = %c0 to %pieces step %c1 {");
        let ta = self.acquire(2, "x1", a);
        let mut args = vec![("%x1".to_string(), ta)];
        if rp.stats_read_second() {
            let tb = self.acquire(2, "m1", b);
            args.push(("%m1".to_string(), tb));
        }
        args.extend([(stats.clone(), ts.clone()), ("%j".to_string(), "index".to_string())]);
        let refs: Vec<(&str, &str)> = args.iter().map(|(v, t)| (v.as_str(), t.as_str())).collect();
        self.call(2, &format!("{name}_stats"), &refs);
        self.release(2, a);
        if rp.stats_read_second() {
            self.release(2, b);
        }
        self.line(1, "}");
        self.line(1, "scf.for %k = %c0 to %pieces step %c1 {");
        let ta = self.acquire(2, "x2", a);
        let tb = self.acquire(2, "b2", b);
        let tc = self.acquire(2, "y2", c);
        self.call(
            2,
            &format!("{name}_out"),
            &[("%x2", &ta), ("%b2", &tb), (&stats, &ts), ("%y2", &tc), ("%k", "index")],
        );
        self.release(2, a);
        self.release(2, b);
        self.release(2, c);
        self.line(1, "}");
    }

    /// One pass of an attention core: the rounds of [`attention_plan`], repeated over the heads.
    fn attention(&mut self, name: &str, body: CoreBody, [q, kv, o]: [&FifoUse; 3]) {
        let CoreBody::Attention { q_rows, keys: _, head_dim, rounds: _, slot } = body else { return };
        let (pattern, _) = attention_plan(body);
        let at = self.core.tile;
        let [m, l, acc] = ["m", "l", "o"].map(|part| format!("%{}", attention_buffer(at, part)));
        let (tm, to) = (flat(q_rows, Elem::F32), flat(q_rows * head_dim, Elem::F32));
        let words = self.design.rtp_of(at).map_or(0, |b| b.words.len() as u64);
        let (rtp, trtp) = (format!("%{}", rtp_buffer(at)), flat(words, Elem::I32));
        self.line(1, "scf.for %h = %c0 to %heads step %c1 {");
        for (i, r) in pattern.iter().enumerate() {
            let row0 = r.row0 + slot * q_rows;
            self.line(
                2,
                &format!(
                    "// round {i}: rows from q0 + {row0}; tiles: {}, from key {} (those it sees)",
                    r.tiles, r.key0
                ),
            );
            let tq = self.acquire(2, &format!("q{i}"), q);
            self.call(2, &format!("{name}_start"), &[(&m, &tm), (&l, &tm), (&acc, &to)]);
            self.constant(2, &format!("from{i}"), r.key0);
            self.constant(2, &format!("row{i}"), row0);
            self.constant(2, &format!("tiles{i}"), r.tiles);
            self.line(2, &format!("scf.for %t{i} = %c0 to %tiles{i} step %c1 {{"));
            let tkv = self.acquire(3, &format!("kv{i}"), kv);
            self.line(3, &format!("%skip{i} = arith.muli %t{i}, %keys : index"));
            self.line(3, &format!("%key{i} = arith.addi %from{i}, %skip{i} : index"));
            let (qv, kvv, key, row) = (format!("%q{i}"), format!("%kv{i}"), format!("%key{i}"), format!("%row{i}"));
            self.call(
                3,
                &format!("{name}_tile"),
                &[
                    (&qv, &tq),
                    (&kvv, &tkv),
                    (&m, &tm),
                    (&l, &tm),
                    (&acc, &to),
                    (&rtp, &trtp),
                    (&key, "index"),
                    (&row, "index"),
                ],
            );
            self.release(3, kv);
            self.line(2, "}");
            let tout = self.acquire(2, &format!("o{i}"), o);
            let ov = format!("%o{i}");
            self.call(2, &format!("{name}_finish"), &[(&acc, &to), (&l, &tm), (&ov, &tout)]);
            self.release(2, q);
            self.release(2, o);
        }
        self.line(1, "}");
    }
}

/// An attention core's rounds in one dispatch as the rounds of its first head and the number of heads that
/// repeat them exactly (its column's heads, whose rounds differ only in the head, which the core does not
/// see); all the rounds and one where they do not repeat.
fn attention_plan(body: CoreBody) -> (Vec<super::design::AttentionRound>, u64) {
    let CoreBody::Attention { q_rows, keys, rounds, .. } = body else { return (Vec::new(), 0) };
    let schedule = rounds.of(q_rows, keys);
    let Some(first) = schedule.first() else { return (schedule, 0) };
    let per_head = schedule.iter().take_while(|r| r.head == first.head).count();
    let repeats = schedule.len().is_multiple_of(per_head)
        && schedule.iter().enumerate().all(|(i, r)| {
            let p = &schedule[i % per_head];
            (r.row0, r.key0, r.tiles) == (p.row0, p.key0, p.tiles)
        });
    if repeats {
        let heads = (schedule.len() / per_head) as u64;
        (schedule[..per_head].to_vec(), heads)
    } else {
        (schedule, 1)
    }
}

/// The name of an attention core's buffer `part` (`m`, `l` or `o`: its rows' running maximum, sum and output).
fn attention_buffer(at: Coord, part: &str) -> String {
    format!("attn_{}_{}_{part}", at.col, at.row)
}

/// The name of a core's runtime parameter buffer; its barrier lock's is this with `_lock`.
fn rtp_buffer(at: Coord) -> String {
    format!("rtp_{}_{}", at.col, at.row)
}

/// The name of a core of rows in pieces' buffer of its row's statistics.
fn stats_buffer(at: Coord) -> String {
    format!("rows_{}_{}_stats", at.col, at.row)
}

/// Whether a core of `body` runs anything in a dispatch (an attention core of a column without heads does
/// not).
fn has_work(body: CoreBody) -> bool {
    match body {
        CoreBody::Attention { .. } => attention_plan(body).1 > 0,
        _ => true,
    }
}

/// The `aie.core` of `core`, its body function named `name`.
fn core_op(design: &Design, core: &Core, name: &str) -> String {
    let mut w = CoreWriter { s: String::new(), design, core };
    let at = core.tile;
    let uses: Vec<&FifoUse> = core.uses.iter().collect();
    if let (true, [a, b, c]) = (has_work(core.body), &uses[..]) {
        w.constant(0, "c0", 0);
        w.constant(0, "c1", 1);
        w.constant(0, "forever", FOREVER);
        match core.body {
            CoreBody::MatMul { k_tiles, .. }
            | CoreBody::MatVec { k_tiles, .. }
            | CoreBody::MatVecQ8 { k_tiles, .. } => w.constant(0, "k_tiles", k_tiles),
            CoreBody::Attention { keys, .. } => {
                w.constant(0, "heads", attention_plan(core.body).1);
                w.constant(0, "keys", keys);
            }
            CoreBody::RowPieces(rp) => w.constant(0, "pieces", rp.pieces()),
            CoreBody::Rows { .. } => {}
        }
        let barrier = design.rtp_of(at).map(|_| format!("%{}_lock", rtp_buffer(at)));
        if barrier.is_some() {
            w.line(0, "%one = arith.constant 1 : i32");
        }
        w.line(0, "scf.for %pass = %c0 to %forever step %c1 {");
        if let Some(lock) = barrier {
            // The dispatch's runtime parameters are written: the sequence has set the barrier.
            w.line(1, &format!("\"aie.use_lock\"({lock}, %one) {{action = 2 : i32}} : (index, i32) -> ()"));
        }
        match core.body {
            CoreBody::MatMul { .. } | CoreBody::MatVec { .. } | CoreBody::MatVecQ8 { .. } => w.matrix(name, [a, b, c]),
            CoreBody::Rows { .. } => w.rows(name, [a, b, c]),
            CoreBody::RowPieces(_) => w.row_pieces(name, core.body, [a, b, c]),
            CoreBody::Attention { .. } => w.attention(name, core.body, [a, b, c]),
        }
        w.line(0, "}");
    }
    w.line(0, "\"aie.end\"() : () -> ()");
    let stack = core.stack_bytes.map(|b| format!(" {{stack_size = {b} : i32}}")).unwrap_or_default();
    format!(
        "    %core_{}_{} = \"aie.core\"({}) ({{\n{}    }}){stack} : (index) -> index\n",
        at.col,
        at.row,
        tile_value(at),
        w.s
    )
}

/// The whole of `design` as one MLIR module for mlir-aie [`MLIR_AIE_RELEASE`] (see the module doc): the
/// `npu1` device with a tile op for every tile used, the objectfifos and links, the functions the cores call,
/// one core op per core, and the runtime sequence over [`runtime_args`].
pub fn module(design: &Design) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// Design {}: the aie / aiex dialects of mlir-aie {MLIR_AIE_RELEASE}, generic form.",
        design.name.replace('\n', " ")
    );
    s.push_str("module {\n  \"aie.device\"() ({\n");
    // Tiles.
    let mut tiles = BTreeSet::new();
    for f in &design.fifos {
        tiles.insert((f.producer.col, f.producer.row));
        tiles.extend(f.consumers.iter().map(|c| (c.col, c.row)));
    }
    tiles.extend(design.cores.iter().map(|c| (c.tile.col, c.tile.row)));
    for (col, row) in tiles {
        let _ = writeln!(
            s,
            "    %tile_{col}_{row} = \"aie.tile\"() {{col = {col} : i32, row = {row} : i32}} : () -> index"
        );
    }
    // An attention core's rows' running maximum, sum and output, in its tile's memory.
    for core in &design.cores {
        if let (CoreBody::Attention { q_rows, head_dim, .. }, true) = (core.body, has_work(core.body)) {
            let at = core.tile;
            for (part, n) in [("m", q_rows), ("l", q_rows), ("o", q_rows * head_dim)] {
                let name = attention_buffer(at, part);
                let _ = writeln!(
                    s,
                    "    %{name} = \"aie.buffer\"({}) {{sym_name = {}}} : (index) -> {}",
                    tile_value(at),
                    quoted(&name),
                    flat(n, Elem::F32)
                );
            }
        }
    }
    // A core of rows in pieces' row statistics, in its tile's memory.
    for core in &design.cores {
        if let CoreBody::RowPieces(_) = core.body {
            let name = stats_buffer(core.tile);
            let _ = writeln!(
                s,
                "    %{name} = \"aie.buffer\"({}) {{sym_name = {}}} : (index) -> {}",
                tile_value(core.tile),
                quoted(&name),
                flat(2, Elem::F32)
            );
        }
    }
    // Each core's runtime parameters and their barrier, in its tile's memory.
    for RtpBuffer { tile, words } in &design.rtp {
        let name = rtp_buffer(*tile);
        let _ = writeln!(
            s,
            "    %{name} = \"aie.buffer\"({}) {{sym_name = {}}} : (index) -> {}",
            tile_value(*tile),
            quoted(&name),
            flat(words.len() as u64, Elem::I32)
        );
        let _ = writeln!(
            s,
            "    %{name}_lock = \"aie.lock\"({}) {{init = 0 : i32, sym_name = {}}} : (index) -> index",
            tile_value(*tile),
            quoted(&format!("{name}_lock"))
        );
    }
    // Objectfifos.
    for f in &design.fifos {
        let operands: Vec<String> =
            std::iter::once(f.producer).chain(f.consumers.iter().copied()).map(tile_value).collect();
        let types = vec!["index"; operands.len()].join(", ");
        let from_stream = vec!["[]"; f.consumers.len()].join(", ");
        let _ = writeln!(
            s,
            "    \"aie.objectfifo\"({}) {{dimensionsFromStreamPerConsumer = #aie<bd_dim_layout_array_array[{from_stream}]>, \
             dimensionsToStream = {}, elemNumber = {} : i32, elemType = !aie.objectfifo<{}>, sym_name = {}}} : ({types}) -> ()",
            operands.join(", "),
            bd_dims(&f.to_stream),
            f.depth,
            memref(&f.shape, f.elem),
            quoted(&f.name)
        );
    }
    // Links: a join takes its inputs at offsets into the output's buffer, a split deals its input's buffer out
    // at offsets (in elements).
    for l in &design.links {
        let offsets = |names: &[String]| -> Vec<u64> {
            let mut at = 0;
            names
                .iter()
                .map(|n| {
                    let o = at;
                    at += design.fifo(n).map_or(0, elements);
                    o
                })
                .collect()
        };
        let src = if l.from.len() > 1 { offsets(&l.from) } else { Vec::new() };
        let dst = if l.to.len() > 1 { offsets(&l.to) } else { Vec::new() };
        let refs = |v: &[String]| v.iter().map(|n| sym(n)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            s,
            "    \"aie.objectfifo.link\"() {{dst_offsets = {}, fifoIns = [{}], fifoOuts = [{}], src_offsets = {}}} : () -> ()",
            i64_array(&dst),
            refs(&l.from),
            refs(&l.to),
            i64_array(&src)
        );
    }
    // The functions the cores call.
    let fs = functions(design);
    for (_, text) in &fs.defs {
        for line in text.lines() {
            let _ = writeln!(s, "    {line}");
        }
    }
    // Cores.
    for (core, name) in design.cores.iter().zip(&fs.body) {
        s.push_str(&core_op(design, core, name));
    }
    s.push_str(&sequence(design));
    s.push_str("    \"aie.end\"() : () -> ()\n");
    let _ = writeln!(s, "  }}) {{device = {NPU1_DEVICE} : i32, sym_name = \"main\"}} : () -> ()\n}}");
    s
}

/// The `aie.runtime_sequence` of `design`.
fn sequence(design: &Design) -> String {
    let args = runtime_args(design);
    let types: Vec<String> = args.iter().map(|&(e, n)| flat(n, e)).collect();
    let params: Vec<String> = types.iter().enumerate().map(|(i, t)| format!("%arg{i}: {t}")).collect();
    let mut s = String::from("    \"aie.runtime_sequence\"() ({\n");
    let _ = writeln!(s, "    ^bb0({}):", params.join(", "));
    // The dispatch's runtime parameters into every core's buffer, then the cores' barriers set.
    for (i, name) in design.params.iter().enumerate() {
        let _ = writeln!(
            s,
            "      // runtime parameter {i} ({}): the host writes each dispatch's value into this constant's words",
            name.replace('\n', " ")
        );
        let _ = writeln!(s, "      %param{i} = arith.constant 0 : i32");
    }
    for RtpBuffer { tile, words } in &design.rtp {
        for (index, p) in words.iter().enumerate() {
            let _ = writeln!(
                s,
                "      \"aiex.npu.rtp_write\"(%param{p}) {{buffer = {}, index = {index} : ui32}} : (i32) -> ()",
                sym(&rtp_buffer(*tile))
            );
        }
    }
    for b in &design.rtp {
        let _ =
            writeln!(s, "      \"aiex.set_lock\"(%{}_lock) {{value = 1 : i32}} : (index) -> ()", rtp_buffer(b.tile));
    }
    for (i, op) in design.sequence.iter().enumerate() {
        match op {
            SeqOp::Memcpy { arg, offset, dims, fifo, bd, .. } => {
                let levels = dma_levels(*offset, dims);
                let list = |f: &dyn Fn(&(u64, u64, u64)) -> u64| {
                    levels.iter().map(|l| f(l).to_string()).collect::<Vec<_>>().join(", ")
                };
                // A transfer that is waited on issues the token the wait takes.
                let waited = design.sequence[i + 1..].iter().any(|o| matches!(o, SeqOp::Wait { fifo: w } if w == fifo));
                let token = if waited { ", issue_token = true" } else { "" };
                let _ = writeln!(
                    s,
                    "      \"aiex.npu.dma_memcpy_nd\"(%arg{arg}) {{id = {bd} : i64{token}, metadata = {}, \
                     operandSegmentSizes = array<i32: 1, 0, 0, 0>, static_offsets = array<i64: {}>, \
                     static_sizes = array<i64: {}>, static_strides = array<i64: {}>}} : ({}) -> ()",
                    sym(fifo),
                    list(&|l| l.0),
                    list(&|l| l.1),
                    list(&|l| l.2),
                    types[*arg]
                );
            }
            SeqOp::Wait { fifo } => {
                let _ = writeln!(s, "      \"aiex.npu.dma_wait\"() {{symbol = {}}} : () -> ()", sym(fifo));
            }
        }
    }
    s.push_str("    }) {sym_name = \"sequence\"} : () -> ()\n");
    s
}

#[cfg(test)]
mod tests {
    use super::super::attention::{attention, llama_prefill, PrefillShape};
    use super::super::design::RowOp;
    use super::super::gemm::{gemm, gemm_bt, gemm_bt_multi};
    use super::super::gemv::{gemv, gemv_q8};
    use super::super::mlir::bodies::{projections, row_ops, LLAMA_SHAPES};
    use super::super::mlir::llvm::{pipe, tool};
    use super::super::model::NPU1;
    use super::super::rows::{rows, rows_in_pieces};
    use super::*;

    /// A `func.call` line's callee, operands and operand types.
    fn parse_call(line: &str) -> Option<(String, String, Vec<String>)> {
        let rest = line.trim_start().strip_prefix("func.call @")?;
        let (callee, rest) = rest.split_once('(')?;
        let (operands, rest) = rest.split_once(')')?;
        let types = rest.strip_prefix(" : (")?.strip_suffix(") -> ()")?;
        Some((callee.to_string(), operands.to_string(), types.split(", ").map(str::to_string).collect()))
    }

    /// `text` with each `func.call` line made an unregistered `"unicorn.call"` of the same operands and
    /// types (LLVM 19 cannot resolve a callee from inside an unregistered `aie.core`: see the module doc),
    /// and the calls.
    fn opaque_calls(text: &str) -> (String, Vec<(String, Vec<String>)>) {
        let mut out = String::new();
        let mut calls = Vec::new();
        for line in text.lines() {
            match parse_call(line) {
                Some((callee, operands, types)) => {
                    let indent = &line[..line.len() - line.trim_start().len()];
                    let _ = writeln!(
                        out,
                        "{indent}\"unicorn.call\"({operands}) {{callee = @{callee}}} : ({}) -> ()",
                        types.join(", ")
                    );
                    calls.push((callee, types));
                }
                None => {
                    assert!(!line.contains("func.call"), "a call the test does not read: {line}");
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        (out, calls)
    }

    /// `design`'s module re-parses and verifies under LLVM 19 (its calls as unregistered ops), every call
    /// names a function of the module with its exact argument types (verified by LLVM 19 from a caller at the
    /// top level), and what LLVM 19 prints back holds every op of the design.
    fn check_reparses(design: &Design) {
        let text = module(design);
        let (opaque, calls) = opaque_calls(&text);
        assert!(!calls.is_empty(), "{}: no calls", design.name);
        let printed = pipe(
            &tool("mlir-opt"),
            &["--allow-unregistered-dialect"],
            &opaque,
            &format!("{}: the module", design.name),
        );
        for (op, want) in [
            ("\"aie.objectfifo\"(", design.fifos.len()),
            ("\"aie.objectfifo.link\"(", design.links.len()),
            ("\"aie.core\"(", design.cores.len()),
            (
                "\"aiex.npu.dma_memcpy_nd\"(",
                design.sequence.iter().filter(|o| matches!(o, SeqOp::Memcpy { .. })).count(),
            ),
            ("\"aiex.npu.dma_wait\"(", design.sequence.iter().filter(|o| matches!(o, SeqOp::Wait { .. })).count()),
            ("\"aiex.npu.rtp_write\"(", design.rtp.iter().map(|b| b.words.len()).sum()),
            ("\"aiex.set_lock\"(", design.rtp.len()),
            ("\"aie.lock\"(", design.rtp.len()),
            ("\"aie.use_lock\"(", design.rtp.len()),
        ] {
            assert_eq!(printed.matches(op).count(), want, "{}: {op} after the round trip", design.name);
        }
        // The calls, each distinct one from a function of its operand types, beside the module's functions.
        let fs = functions(design);
        let mut check = String::from("module {\n");
        for (_, t) in &fs.defs {
            assert!(
                text.contains(&t.lines().next().unwrap().to_string()),
                "{}: a function not in the module",
                design.name
            );
            check.push_str(t);
        }
        let distinct: BTreeSet<_> = calls.into_iter().collect();
        for (i, (callee, types)) in distinct.iter().enumerate() {
            let params: Vec<String> = types.iter().enumerate().map(|(j, t)| format!("%x{j}: {t}")).collect();
            let args: Vec<String> = (0..types.len()).map(|j| format!("%x{j}")).collect();
            let _ = writeln!(
                check,
                "func.func @call_{i}({}) {{\n  func.call @{callee}({}) : ({}) -> ()\n  return\n}}",
                params.join(", "),
                args.join(", "),
                types.join(", ")
            );
        }
        check.push_str("}\n");
        pipe(&tool("mlir-opt"), &[], &check, &format!("{}: the calls", design.name));
    }

    /// The designs the compiler builds at the Llama-3.2-1B shapes (prefill 512 rows and decode): the GEMMs
    /// (and their transposed-weight forms) of the four projections, the multi-weight GEMMs of q / k / v and of
    /// gate / up, the GEMVs (bf16 and int8), the row-wise designs and the prefill attention.
    fn llama_1b_designs() -> Vec<Design> {
        let shape @ (hidden, ffn, q, kv, hd) = LLAMA_SHAPES[0];
        let mut designs = Vec::new();
        for (n, k) in projections(shape) {
            designs.push(gemm(&NPU1, 512, k, n).design);
            designs.push(gemm_bt(&NPU1, 512, k, n).design);
            designs.push(gemv(&NPU1, n, k).design);
            designs.push(gemv_q8(&NPU1, n, k).design);
        }
        // What a Phoenix plan's prefill launches: q / k / v and gate / up as one dispatch each.
        designs.push(gemm_bt_multi(&NPU1, 512, hidden, &[q, kv, kv]).design);
        designs.push(gemm_bt_multi(&NPU1, 512, hidden, &[ffn, ffn]).design);
        for (op, width) in row_ops(shape) {
            designs.push(rows(&NPU1, op, 512, width).unwrap().design);
        }
        // Prefill attention for chunks of 512 over up to 4,064 keys (a round's tiles past 64 in a second
        // transfer), and a decode step's up to depth 512.
        let shape = llama_prefill(hd, 4064);
        designs.push(attention(&NPU1, shape).design);
        designs.push(attention(&NPU1, PrefillShape { rows: 1, max_keys: 513, ..shape }).design);
        designs
    }

    /// Every design at the Llama-3.2-1B shapes emits a module LLVM 19 re-parses (see [`check_reparses`]).
    #[test]
    fn every_llama_1b_design_emits_a_module_llvm_19_reparses() {
        let designs = llama_1b_designs();
        assert!(designs.len() >= 23, "{} designs", designs.len());
        for d in &designs {
            check_reparses(d);
        }
    }

    /// Designs of rows in pieces: RMSNorm of Llama-3.1-70B's 8,192-wide rows and of ragged ones, the
    /// softmax over 16,384 scores.
    fn designs_in_pieces() -> Vec<Design> {
        let (norm, softmax) = (RowOp::RmsNorm { eps: 1e-5 }, RowOp::Softmax { scale: 0.125 });
        [(norm, 512, 8192), (norm, 19, 12000), (softmax, 512, 16384)]
            .into_iter()
            .map(|(op, rows_n, width)| rows(&NPU1, op, rows_n, width).unwrap().design)
            .collect()
    }

    /// The designs of rows in pieces emit modules LLVM 19 re-parses (see [`check_reparses`]), each core's
    /// two passes calling the body's two functions, and its statistics in a buffer of its tile.
    #[test]
    fn designs_in_pieces_emit_modules_llvm_19_reparses() {
        for d in designs_in_pieces() {
            check_reparses(&d);
            let text = module(&d);
            let name = body_name(d.cores[0].body);
            for f in ["stats", "out"] {
                let calls = text.matches(&format!("func.call @{name}_{f}(")).count();
                assert_eq!(calls, d.cores.len(), "{}: calls of {name}_{f}", d.name);
            }
            assert_eq!(text.matches("= \"aie.buffer\"(").count(), d.cores.len(), "{}", d.name);
        }
    }

    /// The small designs of the snapshots, by name: GEMM, GEMV (bf16 and int8) and attention at two shapes each, a
    /// three-weight GEMM of ragged widths, and the softmax in pieces (rows of 40 in pieces of 16).
    fn small_designs() -> Vec<(&'static str, Design)> {
        let small =
            PrefillShape { rows: 8, max_keys: 8, heads: 4, kv_heads: 2, head_dim: 16, window: None, scale: 0.25 };
        let softmax = RowOp::Softmax { scale: 0.25 };
        vec![
            ("softmax_8x40_in_16", rows_in_pieces(&NPU1, softmax, 8, 40, 16).unwrap().design),
            ("gemm_64x64x64", gemm(&NPU1, 64, 64, 64).design),
            ("gemm_23x100x300", gemm(&NPU1, 23, 100, 300).design),
            ("gemm_bt_23x100x40_24_24", gemm_bt_multi(&NPU1, 23, 100, &[40, 24, 24]).design),
            ("gemv_64x64", gemv(&NPU1, 64, 64).design),
            ("gemv_37x100", gemv(&NPU1, 37, 100).design),
            ("gemv_q8_64x64", gemv_q8(&NPU1, 64, 64).design),
            ("gemv_q8_37x100", gemv_q8(&NPU1, 37, 100).design),
            ("attention_8x4x16", attention(&NPU1, small).design),
            (
                "attention_5of12_2x8_w6",
                attention(
                    &NPU1,
                    PrefillShape {
                        rows: 5,
                        max_keys: 12,
                        heads: 2,
                        kv_heads: 1,
                        head_dim: 8,
                        window: Some(6),
                        ..small
                    },
                )
                .design,
            ),
        ]
    }

    /// The whole module of GEMM, GEMV (bf16 and int8) and attention at two small shapes each, of a three-weight GEMM
    /// and of the softmax in pieces, so that a change to what is emitted shows in review; each re-parses.
    #[test]
    fn module_snapshots() {
        for (name, d) in small_designs() {
            check_reparses(&d);
            insta::assert_snapshot!(format!("npu_module_{name}"), module(&d));
        }
    }

    /// The `array<i64: ...>` of attribute `key` in `line`.
    fn array(line: &str, key: &str) -> Vec<u64> {
        let prefix = format!("{key} = array<i64: ");
        let at = line.find(&prefix).unwrap_or_else(|| panic!("no {key} in {line}"));
        let rest = &line[at + prefix.len()..];
        rest[..rest.find('>').unwrap()].split(", ").map(|x| x.parse().unwrap()).collect()
    }

    /// The text says what the design says: one objectfifo op per fifo with its tiles, depth, type and
    /// re-layout, one link per link, one core per core, and the runtime sequence's transfers in order with
    /// their fifo, buffer descriptor, levels (padded outside to four with size 1, stride 0) and offset, and
    /// their waits; the runtime arguments reach exactly as far as the transfers.
    #[test]
    fn the_module_says_what_the_design_says() {
        let mut designs: Vec<Design> = small_designs().into_iter().map(|(_, d)| d).collect();
        designs.extend(llama_1b_designs());
        designs.extend(designs_in_pieces());
        designs.push(rows(&NPU1, RowOp::Rope { head_dim: 8 }, 6, 32).unwrap().design);
        for d in &designs {
            let text = module(d);
            let lines: Vec<&str> = text.lines().collect();
            let fifo_lines: Vec<&&str> =
                lines.iter().filter(|l| l.trim_start().starts_with("\"aie.objectfifo\"(")).collect();
            assert_eq!(fifo_lines.len(), d.fifos.len(), "{}", d.name);
            for (f, line) in d.fifos.iter().zip(&fifo_lines) {
                let tiles: Vec<String> =
                    std::iter::once(f.producer).chain(f.consumers.iter().copied()).map(tile_value).collect();
                assert!(line.contains(&format!("\"aie.objectfifo\"({})", tiles.join(", "))), "{line}");
                assert!(line.contains(&format!("sym_name = \"{}\"", f.name)), "{line}");
                assert!(line.contains(&format!("elemNumber = {} : i32", f.depth)), "{line}");
                assert!(line.contains(&format!("!aie.objectfifo<{}>", memref(&f.shape, f.elem))), "{line}");
                let to: Vec<String> =
                    f.to_stream.iter().map(|x| format!("<size = {}, stride = {}>", x.size, x.stride)).collect();
                assert!(line.contains(&format!("dimensionsToStream = #aie<bd_dim_layout_array[{}]>", to.join(", "))));
            }
            let count = |op: &str| lines.iter().filter(|l| l.trim_start().starts_with(op)).count();
            assert_eq!(count("\"aie.objectfifo.link\"("), d.links.len(), "{}", d.name);
            assert_eq!(lines.iter().filter(|l| l.contains("= \"aie.core\"(")).count(), d.cores.len(), "{}", d.name);
            let tiles: BTreeSet<Coord> = d
                .fifos
                .iter()
                .flat_map(|f| std::iter::once(f.producer).chain(f.consumers.iter().copied()))
                .chain(d.cores.iter().map(|c| c.tile))
                .collect();
            assert_eq!(count("%tile_"), tiles.len(), "{}", d.name);
            // The runtime parameters: each buffer and barrier on its tile, each word written with its
            // parameter's value before any transfer, each barrier set after the writes, acquired by its core.
            let rtp_lines: Vec<&&str> =
                lines.iter().filter(|l| l.trim_start().starts_with("\"aiex.npu.rtp_write\"(")).collect();
            let want: Vec<String> = d
                .rtp
                .iter()
                .flat_map(|b| {
                    b.words.iter().enumerate().map(move |(i, p)| {
                        format!(
                            "\"aiex.npu.rtp_write\"(%param{p}) {{buffer = @rtp_{}_{}, index = {i} : ui32}} : (i32) -> ()",
                            b.tile.col, b.tile.row
                        )
                    })
                })
                .collect();
            assert_eq!(rtp_lines.iter().map(|l| l.trim()).collect::<Vec<_>>(), want, "{}", d.name);
            let first_dma = lines.iter().position(|l| l.contains("\"aiex.npu.dma_memcpy_nd\"")).unwrap_or(lines.len());
            let last_write =
                lines.iter().rposition(|l| l.contains("\"aiex.npu.rtp_write\"") || l.contains("\"aiex.set_lock\""));
            assert!(last_write.is_none_or(|w| w < first_dma), "{}: a parameter written after a transfer", d.name);
            for b in &d.rtp {
                let (t, name) = (tile_value(b.tile), rtp_buffer(b.tile));
                let buffer = format!(
                    "%{name} = \"aie.buffer\"({t}) {{sym_name = \"{name}\"}} : (index) -> memref<{}xi32>",
                    b.words.len()
                );
                assert!(lines.iter().any(|l| l.trim() == buffer), "{}: {buffer}", d.name);
                let set = format!("\"aiex.set_lock\"(%{name}_lock) {{value = 1 : i32}} : (index) -> ()");
                let at = lines.iter().position(|l| l.trim() == set).unwrap_or_else(|| panic!("{}: {set}", d.name));
                let written = lines.iter().rposition(|l| l.contains(&format!("buffer = @{name}, ")));
                assert!(written.is_some_and(|w| w < at), "{}: {name} set before its words are written", d.name);
                assert_eq!(
                    text.matches(&format!("\"aie.use_lock\"(%{name}_lock, %one) {{action = 2 : i32}}")).count(),
                    1
                );
            }
            for (i, p) in d.params.iter().enumerate() {
                assert!(text.contains(&format!("// runtime parameter {i} ({p})")), "{}", d.name);
            }
            // The runtime sequence, in order.
            let seq: Vec<&&str> = lines
                .iter()
                .filter(|l| {
                    l.trim_start().starts_with("\"aiex.npu.dma_memcpy_nd\"")
                        || l.trim_start().starts_with("\"aiex.npu.dma_wait\"")
                })
                .collect();
            assert_eq!(seq.len(), d.sequence.len(), "{}", d.name);
            let args = runtime_args(d);
            for (op, line) in d.sequence.iter().zip(seq) {
                match op {
                    SeqOp::Memcpy { arg, elem, offset, dims, fifo, bd } => {
                        assert!(line.contains(&format!("(%arg{arg})")), "{line}");
                        assert!(line.contains(&format!("metadata = @{fifo},")), "{line}");
                        assert!(line.contains(&format!("id = {bd} : i64")), "{line}");
                        assert!(
                            line.ends_with(&format!(": (memref<{}x{}>) -> ()", args[*arg].1, elem_type(*elem))),
                            "{line}"
                        );
                        assert_eq!(args[*arg].0, *elem, "{}: argument {arg} moved as two types", d.name);
                        let (sizes, strides, offsets) =
                            (array(line, "static_sizes"), array(line, "static_strides"), array(line, "static_offsets"));
                        assert!(dims.len() <= 4, "{}: {dims:?}", d.name);
                        let pad = 4 - dims.len();
                        assert!(
                            sizes[..pad].iter().all(|&s| s == 1) && strides[..pad].iter().all(|&s| s == 0),
                            "{line}"
                        );
                        assert_eq!(&sizes[pad..], dims.iter().map(|x| x.size).collect::<Vec<_>>(), "{line}");
                        assert_eq!(&strides[pad..], dims.iter().map(|x| x.stride).collect::<Vec<_>>(), "{line}");
                        let start: u64 = offsets.iter().zip(&strides).map(|(o, s)| o * s).sum();
                        assert_eq!(start, *offset, "{line}");
                    }
                    SeqOp::Wait { fifo } => {
                        assert!(
                            line.trim() == format!("\"aiex.npu.dma_wait\"() {{symbol = @{fifo}}} : () -> ()"),
                            "{line}"
                        );
                    }
                }
            }
            // Each argument reaches its last element and no further.
            for (i, &(_, n)) in args.iter().enumerate() {
                let last = d
                    .sequence
                    .iter()
                    .filter_map(|o| match o {
                        SeqOp::Memcpy { arg, offset, dims, .. } if *arg == i => {
                            Some(offset + dims.iter().map(|x| (x.size - 1) * x.stride).sum::<u64>())
                        }
                        _ => None,
                    })
                    .max();
                assert_eq!(last.map(|l| l + 1), Some(n), "{}: argument {i}", d.name);
            }
        }
    }

    #[test]
    fn levels_pad_outside_and_offsets_land_on_a_stride_that_divides_them() {
        let d = super::super::design::dims(&[(32, 64), (16, 1)]);
        assert_eq!(dma_levels(0, &d), vec![(0, 1, 0), (0, 1, 0), (0, 32, 64), (0, 16, 1)]);
        assert_eq!(dma_levels(130, &d), vec![(0, 1, 0), (0, 1, 0), (0, 32, 64), (130, 16, 1)]);
        // An innermost stride of 2 (f32 every other element) and an offset of a whole row.
        let d = super::super::design::dims(&[(4, 64), (8, 2)]);
        assert_eq!(dma_levels(128, &d), vec![(0, 1, 0), (0, 1, 0), (0, 4, 64), (64, 8, 2)]);
        assert_eq!(dma_levels(64, &d)[3], (32, 8, 2));
        assert_eq!(sym("a0_in"), "@a0_in");
        assert_eq!(sym("odd name"), "@\"odd name\"");
    }
}
