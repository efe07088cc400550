//! The core bodies of [`super::mlir`] checked in-process by LLVM 19's MLIR through melior (feature `mlir`):
//! each body's functions parsed into a module of a context holding every upstream dialect and run through
//! the verifier ([`verify_body`], [`verify_design_bodies`], which the compiler calls on each NPU kernel's
//! design), and a body lowered to the LLVM dialect by the pass pipeline the `mlir-opt` tests of
//! [`super::mlir`] use, then compiled for this CPU by MLIR's `ExecutionEngine` and run on buffers ([`jit`]).
//!
//! Calling convention: [`Jit::call`] goes through `ExecutionEngine::invoke_packed`, which in MLIR's C API
//! (the one melior binds) calls `_mlir__mlir_ciface_NAME`: the packed wrapper the engine makes of the C
//! interface that `convert-func-to-llvm` emits only for a function marked `llvm.emit_c_interface`. So before
//! lowering, each function of the (already verified) module gets that unit attribute — in the module, not in
//! the text, which stays exactly what [`super::mlir::core_body`] emits and [`verify_body`] checks, and no
//! wrapper function is written. The packed wrapper takes one pointer per argument of the C interface: for a
//! `memref<Nxf32>`, a pointer to a pointer to its descriptor (allocated and aligned pointers, offset, size,
//! stride); for an `index`, a pointer to an `i64`. [`Jit::call`] builds the descriptors over the caller's
//! buffers after checking each against the function's signature (read from the module before lowering), so
//! that no call can reach past a buffer.
//!
//! melior links all of LLVM statically (it adds ~165 MB to a debug binary that uses it): it stays in this crate behind the
//! `mlir` feature, out of the runtime; the compiler turns it on by its default feature `npu-mlir`.

use super::design::{CoreBody, Design};
use super::mlir::{body_name, core_body, LLVM_LOWERING};
use melior::dialect::DialectRegistry;
use melior::ir::attribute::{StringAttribute, TypeAttribute};
use melior::ir::operation::{OperationRef, OperationRefMut};
use melior::ir::r#type::{FunctionType, IntegerType, MemRefType};
use melior::ir::{Attribute, BlockLike, Module, ShapedTypeLike, Type, TypeLike};
use melior::pass::PassManager;
use melior::utility::{
    parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes,
};
use melior::{Context, ExecutionEngine};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// A context with every upstream dialect loaded, whose diagnostics are kept in
/// `.1` (one line each) rather than printed. Single-threaded: the bodies are small.
fn context() -> (Context, Rc<RefCell<Vec<String>>>) {
    let context = Context::new();
    context.enable_multi_threading(false);
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();
    let diagnostics = Rc::new(RefCell::new(Vec::new()));
    let kept = diagnostics.clone();
    context.attach_diagnostic_handler(move |d| {
        // The parser's locations are `loc("-":LINE:COLUMN)` (the text has no file name).
        let at = d.location().to_string();
        let message = d.to_string().replace('\n', " ").trim().to_string();
        kept.borrow_mut().push(match at.rsplit_once("\":").and_then(|(_, a)| a.strip_suffix(')')) {
            Some(line_col) => format!("at {line_col}: {message}"),
            None => message,
        });
        true
    });
    (context, diagnostics)
}

/// `what` parsed and verified in `context`: the module, or one line naming `what` and MLIR's first diagnostic.
fn parse<'c>(
    context: &'c Context,
    diagnostics: &RefCell<Vec<String>>,
    text: &str,
    what: &str,
) -> Result<Module<'c>, String> {
    diagnostics.borrow_mut().clear();
    let first = |d: &RefCell<Vec<String>>| d.borrow().first().cloned().unwrap_or_else(|| "no diagnostic".into());
    let module = Module::parse(context, text)
        .ok_or_else(|| format!("{what} does not parse and verify: {}", first(diagnostics)))?;
    if !module.as_operation().verify() {
        return Err(format!("{what} fails MLIR's verifier: {}", first(diagnostics)));
    }
    Ok(module)
}

/// The MLIR of `body`, or one line saying it has none.
fn body_text(body: CoreBody) -> Result<String, String> {
    core_body(body).ok_or_else(|| format!("core body {} has no MLIR", body_name(body)))
}

/// Check `text` (the functions of a core body, or any upstream-MLIR module) as LLVM 19's MLIR does: parsed
/// with every upstream dialect registered (no unregistered op allowed) and verified. One line on error, naming
/// `what`.
pub fn verify_text(text: &str, what: &str) -> Result<(), String> {
    let (context, diagnostics) = context();
    parse(&context, &diagnostics, text, what).map(drop)
}

/// Verify `body`'s functions ([`super::mlir::core_body`]) as a standalone module. One line on error, naming
/// the body.
pub fn verify_body(body: CoreBody) -> Result<(), String> {
    verify_text(&body_text(body)?, &format!("core body {}", body_name(body)))
}

/// Verify each distinct body (by [`body_name`]) of `design`'s cores, in one context; how many there were.
/// One line on error, naming the design and the body.
pub fn verify_design_bodies(design: &Design) -> Result<usize, String> {
    let (context, diagnostics) = context();
    let mut seen = BTreeSet::new();
    for core in &design.cores {
        let name = body_name(core.body);
        if seen.insert(name.clone()) {
            let what = format!("design {}: core body {name}", design.name);
            parse(&context, &diagnostics, &body_text(core.body)?, &what)?;
        }
    }
    Ok(seen.len())
}

/// One parameter of a body's function as [`Jit::call`] checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    Bf16(usize),
    F32(usize),
    I8(usize),
    I32(usize),
    Index,
}

/// An argument of [`Jit::call`]: a buffer of bf16 values (their bits), of f32 values, of bytes (i8) or of i32
/// words (a core's runtime parameters), or an `index`.
#[derive(Debug)]
pub enum Arg<'a> {
    Bf16(&'a mut [u16]),
    F32(&'a mut [f32]),
    I8(&'a mut [i8]),
    I32(&'a mut [i32]),
    Index(u64),
}

/// A core body compiled for this CPU: its functions, callable on buffers.
pub struct Jit {
    name: String,
    engine: ExecutionEngine,
    /// Each function's parameters.
    signatures: BTreeMap<String, Vec<Param>>,
}

/// The operations at the top of `module`, in order.
fn top_level<'c, 'a>(module: &'a Module<'c>) -> impl Iterator<Item = OperationRef<'c, 'a>> {
    // SAFETY: each operation is the module's, which outlives `'a`; `to_ref` only gives the next one that
    // lifetime rather than the temporary reference's.
    std::iter::successors(module.body().first_operation(), |op| unsafe { op.to_ref() }.next_in_block())
}

fn is_func(op: &OperationRef) -> bool {
    op.name().as_string_ref().as_str() == Ok("func.func")
}

/// The parameters of each `func.func` of `module` (1-D static memrefs of bf16, f32, i8 or i32, and `index`).
fn signatures(module: &Module, what: &str) -> Result<BTreeMap<String, Vec<Param>>, String> {
    let mut out = BTreeMap::new();
    for f in top_level(module) {
        if is_func(&f) {
            let attr = |n: &str| f.attribute(n).map_err(|e| format!("{what}: a function without {n}: {e}"));
            let name = StringAttribute::try_from(attr("sym_name")?).map_err(|e| format!("{what}: {e}"))?;
            let ty = TypeAttribute::try_from(attr("function_type")?).map_err(|e| format!("{what}: {e}"))?;
            let ty = FunctionType::try_from(ty.value()).map_err(|e| format!("{what}: {e}"))?;
            let name = name.value().to_string();
            let params = (0..ty.input_count())
                .map(|i| {
                    let t: Type = ty.input(i).map_err(|e| e.to_string())?;
                    if t.is_index() {
                        return Ok(Param::Index);
                    }
                    let m = MemRefType::try_from(t).map_err(|_| format!("parameter {i}: {t} is not a memref"))?;
                    let n = if m.rank() == 1 { m.dim_size(0).ok() } else { None };
                    match (n, m.element()) {
                        (Some(n), e) if e.is_bf16() => Ok(Param::Bf16(n)),
                        (Some(n), e) if e.is_f32() => Ok(Param::F32(n)),
                        (Some(n), e) if IntegerType::try_from(e).is_ok_and(|t| t.width() == 8 && t.is_signless()) => {
                            Ok(Param::I8(n))
                        }
                        (Some(n), e) if IntegerType::try_from(e).is_ok_and(|t| t.width() == 32 && t.is_signless()) => {
                            Ok(Param::I32(n))
                        }
                        _ => Err(format!("parameter {i}: {t} is not a static 1-D memref of bf16, f32, i8 or i32")),
                    }
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| format!("{what}: function @{name}: {e}"))?;
            out.insert(name, params);
        }
    }
    Ok(out)
}

/// Compile `text` (upstream-MLIR functions over 1-D static memrefs and indices) for this CPU: parsed,
/// verified, lowered to the LLVM dialect by [`super::mlir::LLVM_LOWERING`] (the passes `mlir-opt` is given in
/// [`super::mlir`]'s tests) and handed to MLIR's `ExecutionEngine` at LLVM's `-O2`. One line on error, naming `what`.
pub fn jit_text(text: &str, what: &str) -> Result<Jit, String> {
    let (context, diagnostics) = context();
    register_all_llvm_translations(&context);
    let mut module = parse(&context, &diagnostics, text, what)?;
    let signatures = signatures(&module, what)?;
    // invoke_packed calls a function's C interface (see the module's documentation).
    let funcs: Vec<_> = top_level(&module).filter(|f| is_func(f)).map(|f| f.to_raw()).collect();
    for raw in funcs {
        // SAFETY: `raw` is a live operation of `module`, and no other reference to it is in use.
        unsafe { OperationRefMut::from_raw(raw) }.set_attribute("llvm.emit_c_interface", Attribute::unit(&context));
    }
    register_all_passes();
    let passes = PassManager::new(&context);
    let pipeline = format!("builtin.module({})", LLVM_LOWERING.join(","));
    parse_pass_pipeline(passes.as_operation_pass_manager(), &pipeline)
        .map_err(|e| format!("{what}: the LLVM lowering pipeline does not parse: {e}"))?;
    diagnostics.borrow_mut().clear();
    passes.run(&mut module).map_err(|e| {
        let first = diagnostics.borrow().first().cloned().unwrap_or_else(|| e.to_string());
        format!("{what} does not lower to LLVM: {first}")
    })?;
    // Everything must be the LLVM dialect now, or the engine cannot translate it (and melior does not report
    // the engine's failure to build).
    for o in top_level(&module) {
        let name = o.name().as_string_ref().as_str().unwrap_or("?").to_string();
        if !name.starts_with("llvm.") {
            return Err(format!("{what}: {name} is left after lowering to LLVM"));
        }
    }
    let engine = ExecutionEngine::new(&module, 2, &[], false);
    for f in signatures.keys() {
        if engine.lookup(&format!("_mlir__mlir_ciface_{f}")).is_null() {
            return Err(format!("{what}: the JIT has no function @{f}"));
        }
    }
    Ok(Jit { name: what.to_string(), engine, signatures })
}

/// Compile `body`'s functions for this CPU ([`jit_text`]). One line on error, naming the body.
pub fn jit(body: CoreBody) -> Result<Jit, String> {
    jit_text(&body_text(body)?, &format!("core body {}", body_name(body)))
}

impl Jit {
    /// The names of its functions (a body's own name; for attention, `NAME_tile` and `NAME_finish`).
    pub fn functions(&self) -> impl Iterator<Item = &str> {
        self.signatures.keys().map(String::as_str)
    }

    /// Run function `function` on `args`, which must match its parameters one by one: a bf16 memref of `n`
    /// elements takes an [`Arg::Bf16`] of `n`, an f32 one an [`Arg::F32`] of `n`, an i8 one an [`Arg::I8`] of
    /// `n`, an i32 one an [`Arg::I32`] of `n`, an `index` an [`Arg::Index`]. The buffers hold what the function leaves in them afterwards. One line on error.
    pub fn call(&self, function: &str, args: &mut [Arg<'_>]) -> Result<(), String> {
        let what = format!("{}: @{function}", self.name);
        let params = self.signatures.get(function).ok_or_else(|| format!("{what}: no such function"))?;
        if params.len() != args.len() {
            return Err(format!("{what} takes {} arguments, given {}", params.len(), args.len()));
        }
        // Each memref's descriptor (allocated and aligned pointers, offset, size, stride) and a pointer to it;
        // each index's value. They must stay put while `packed` points at them.
        let mut descriptors: Vec<[u64; 5]> = Vec::with_capacity(args.len());
        for (i, (p, a)) in params.iter().zip(args.iter_mut()).enumerate() {
            let (ptr, n) = match (*p, a) {
                (Param::Bf16(n), Arg::Bf16(v)) if v.len() == n => (v.as_mut_ptr() as u64, n),
                (Param::F32(n), Arg::F32(v)) if v.len() == n => (v.as_mut_ptr() as u64, n),
                (Param::I8(n), Arg::I8(v)) if v.len() == n => (v.as_mut_ptr() as u64, n),
                (Param::I32(n), Arg::I32(v)) if v.len() == n => (v.as_mut_ptr() as u64, n),
                (Param::Index, Arg::Index(x)) => {
                    descriptors.push([*x, 0, 0, 0, 0]);
                    continue;
                }
                (p, a) => {
                    let given = match a {
                        Arg::Bf16(v) => format!("{} bf16", v.len()),
                        Arg::F32(v) => format!("{} f32", v.len()),
                        Arg::I8(v) => format!("{} i8", v.len()),
                        Arg::I32(v) => format!("{} i32", v.len()),
                        Arg::Index(_) => "an index".into(),
                    };
                    return Err(format!("{what}: argument {i} is {p:?}, given {given}"));
                }
            };
            descriptors.push([ptr, ptr, 0, n as u64, 1]);
        }
        let mut to_descriptor: Vec<*mut [u64; 5]> = descriptors.iter_mut().map(|d| d as *mut [u64; 5]).collect();
        let mut packed: Vec<*mut ()> = params
            .iter()
            .zip(&mut to_descriptor)
            .map(|(p, d)| match p {
                // The index itself is the descriptor's first word.
                Param::Index => *d as *mut (),
                _ => d as *mut *mut [u64; 5] as *mut (),
            })
            .collect();
        // SAFETY: `packed` holds one pointer per argument of the function's C interface, each to a live
        // descriptor pointer of `to_descriptor` or index of `descriptors`; each buffer was checked against the
        // static size of its memref above, and the functions touch their memrefs only within those sizes (their
        // loops' bounds are the same constants), so the function reads and writes only the buffers borrowed
        // mutably here.
        unsafe { self.engine.invoke_packed(function, &mut packed) }.map_err(|e| format!("{what}: {e}"))
    }

    /// Run one step of a matrix or row-wise body (one function of `(a, b, c)`) on the operands `a` and `b`
    /// and the result buffer `c`, a bf16 operand given as f32 values that are bf16 already, an i8 one as f32
    /// values that are bytes. One line on error.
    pub fn step(&self, a: &[f32], b: &[f32], c: &mut [f32]) -> Result<(), String> {
        let mut functions = self.signatures.iter();
        let (Some((function, params)), None) = (functions.next(), functions.next()) else {
            return Err(format!("{}: not one function", self.name));
        };
        let &[pa, pb, _] = &params[..] else {
            return Err(format!("{}: @{function} is not a function of (a, b, c)", self.name));
        };
        // An operand as its memref holds it: bf16 bits, bytes, or the f32 values themselves.
        let operand = |p: Param, v: &[f32], i: usize| {
            match p {
                Param::Bf16(_) => bf16_bits(v).map(Held::Bf16),
                Param::I8(_) => i8_bytes(v).map(Held::I8),
                _ => Ok(Held::F32(v.to_vec())),
            }
            .map_err(|e| format!("{}: operand {i}: {e}", self.name))
        };
        let (mut ha, mut hb) = (operand(pa, a, 0)?, operand(pb, b, 1)?);
        self.call(function, &mut [ha.arg(), hb.arg(), Arg::F32(c)])
    }
}

/// An operand of [`Jit::step`] as its memref holds it.
enum Held {
    Bf16(Vec<u16>),
    F32(Vec<f32>),
    I8(Vec<i8>),
}

impl Held {
    fn arg(&mut self) -> Arg<'_> {
        match self {
            Held::Bf16(v) => Arg::Bf16(v),
            Held::F32(v) => Arg::F32(v),
            Held::I8(v) => Arg::I8(v),
        }
    }
}

/// The bytes of `v`, whose values must be bytes already (integers of -128..=127).
pub fn i8_bytes(v: &[f32]) -> Result<Vec<i8>, String> {
    v.iter()
        .enumerate()
        .map(|(i, &x)| {
            if x.fract() != 0.0 || !(-128.0..=127.0).contains(&x) {
                return Err(format!("element {i} ({x}) is not a byte"));
            }
            Ok(x as i8)
        })
        .collect()
}

/// The bf16 bits of `v`, whose values must be bf16 already (their low 16 bits zero).
pub fn bf16_bits(v: &[f32]) -> Result<Vec<u16>, String> {
    v.iter()
        .enumerate()
        .map(|(i, x)| {
            let b = x.to_bits();
            if b & 0xFFFF != 0 {
                return Err(format!("element {i} ({x}) is not a bf16 value"));
            }
            Ok((b >> 16) as u16)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::design::RowOp;
    use super::super::emu::body;
    use super::*;

    /// The bodies of [`super::super::mlir`]'s JIT test: GEMM tiles (B plain and transposed), GEMV tiles (bf16
    /// and int8) and each row-wise op.
    use super::super::mlir::bodies::{
        attention, attention_case, in_pieces, piece_outputs, piece_tiles, small as bodies, tiles, ATTENTION_CASES,
    };

    fn same_bits(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(g.to_bits() == w.to_bits(), "{what} [{i}]: the JIT gives {g}, the emulator {w}");
        }
    }

    /// Every body kind verifies in-process, and a design's distinct bodies are counted once each.
    #[test]
    fn every_body_kind_verifies_in_process() {
        let pieces = in_pieces().into_iter().map(CoreBody::RowPieces);
        for b in bodies().into_iter().chain([attention(0), attention(6)]).chain(pieces) {
            verify_body(b).unwrap_or_else(|e| panic!("{e}"));
        }
        let g = super::super::gemm::gemm(&super::super::model::NPU1, 128, 256, 256);
        assert_eq!(verify_design_bodies(&g.design), Ok(1), "a GEMM's cores share one body");
        // Rows too wide for a core, in pieces: Llama-3.1-70B's norm, a softmax over 16,384 scores.
        for (op, width) in [(RowOp::RmsNorm { eps: 1e-5 }, 8192), (RowOp::Softmax { scale: 0.125 }, 16384)] {
            let g = super::super::rows::rows(&super::super::model::NPU1, op, 512, width).unwrap();
            assert_eq!(verify_design_bodies(&g.design), Ok(1), "{op:?} {width}: one body in pieces");
        }
    }

    /// The two functions of rows in pieces JIT-run in-process over a row's pieces (pass 1 over every piece,
    /// then pass 2) give the emulator's statistics and outputs bit for bit: RMSNorm, and the softmax with its
    /// first piece masked, some keys of the others masked, and a row masked entirely (zeros); the ragged last
    /// piece's pad NaN on the way in and zeros on the way out.
    #[test]
    fn the_bodies_of_rows_in_pieces_run_in_process_as_the_emulator_computes_them() {
        let mut seed = 31;
        for rp in in_pieces() {
            for hidden in [false, true] {
                if hidden && !rp.stats_read_second() {
                    continue;
                }
                let (xs, bs) = piece_tiles(rp, hidden, &mut seed);
                let (want, want_stats) = piece_outputs(rp, &xs, &bs);
                let b = CoreBody::RowPieces(rp);
                let name = body_name(b);
                let jit = jit(b).unwrap_or_else(|e| panic!("{e}"));
                let mut fns: Vec<&str> = jit.functions().collect();
                fns.sort();
                assert_eq!(fns, [format!("{name}_out"), format!("{name}_stats")]);
                // The statistics start as NaN: piece 0 must start them afresh.
                let mut stats = [f32::NAN; 2];
                let bits = |v: &[f32]| bf16_bits(v).unwrap();
                for (j, (x, m)) in xs.iter().zip(&bs).enumerate() {
                    let (mut xh, mut mh) = (bits(x), bits(m));
                    let mut args = vec![Arg::Bf16(&mut xh)];
                    if rp.stats_read_second() {
                        args.push(Arg::Bf16(&mut mh));
                    }
                    args.extend([Arg::F32(&mut stats), Arg::Index(j as u64)]);
                    jit.call(&format!("{name}_stats"), &mut args).unwrap_or_else(|e| panic!("{e}"));
                }
                same_bits(&stats, &want_stats, &format!("{name}: the row's statistics"));
                for (j, (x, m)) in xs.iter().zip(&bs).enumerate() {
                    let (mut xh, mut mh) = (bits(x), bits(m));
                    let mut y = vec![f32::NAN; rp.piece as usize];
                    let mut args = [
                        Arg::Bf16(&mut xh),
                        Arg::Bf16(&mut mh),
                        Arg::F32(&mut stats),
                        Arg::F32(&mut y),
                        Arg::Index(j as u64),
                    ];
                    jit.call(&format!("{name}_out"), &mut args).unwrap_or_else(|e| panic!("{e}"));
                    same_bits(&y, &want[j], &format!("{name}: piece {j}"));
                }
                if hidden {
                    assert!(want.concat().iter().all(|&v| v == 0.0), "{name}: a row masked entirely");
                }
            }
        }
    }

    /// Every design at the Llama-3.2-1B and Llama-3.1-8B shapes (prefill 512 and decode: the GEMMs and GEMVs, bf16 and int8, of
    /// the projections, the row-wise ops, attention) has its bodies verified in-process, as the compiler does.
    #[test]
    fn the_model_designs_bodies_verify_in_process() {
        let designs = super::super::mlir::bodies::model_designs();
        let verified: usize = designs.iter().map(|d| verify_design_bodies(d).unwrap_or_else(|e| panic!("{e}"))).sum();
        assert!(verified >= designs.len(), "{verified} bodies of {} designs", designs.len());
    }

    /// Broken text is refused with one line naming what was checked and where MLIR found the fault: a syntax
    /// error, an op of no registered dialect, a value used at two types, a loop whose body yields nothing for
    /// its sum (the verifier's catch), a function defined twice.
    #[test]
    fn broken_bodies_are_refused_in_one_line() {
        let good = core_body(CoreBody::MatVec { rows: 6, k: 64, k_tiles: 1 }).unwrap();
        for (broken, says) in [
            (good.replace("scf.yield %next : f32", "scf.yield %next f32"), "expected ':'"),
            (good.replace("arith.mulf", "aie.mulf"), "Dialect `aie' not found"),
            (good.replace("memref.store %sum, %c[%r]", "memref.store %r, %c[%r]"), "expects different type"),
            (good.replace("scf.yield %next : f32", "scf.yield"), "'scf.for' op"),
            (format!("{good}{good}"), "redefinition of symbol named 'matvec_6x64'"),
        ] {
            assert_ne!(broken, good);
            let e = verify_text(&broken, "core body matvec_6x64").unwrap_err();
            assert!(e.starts_with("core body matvec_6x64 "), "{e}");
            assert!(e.contains(says), "{e}");
            assert!(!e.contains('\n'), "{e}");
            assert!(e.starts_with("core body matvec_6x64 does not parse and verify: at "), "{e}");
        }
        assert!(verify_text(&good, "core body matvec_6x64").is_ok());
    }

    /// Each body JIT-run in-process on random tiles gives the emulator's result bit for bit: bf16 operands
    /// widened, f32 sums in the emulator's order, accumulating into what the result buffer held.
    #[test]
    fn core_bodies_run_in_process_as_the_emulator_computes_them() {
        let mut seed = 99;
        for b in bodies() {
            let (a, bv, c) = tiles(b, &mut seed);
            let mut want = c.clone();
            body(b, &a, &bv, &mut want);
            let jit = jit(b).unwrap_or_else(|e| panic!("{e}"));
            let mut got = c.clone();
            jit.step(&a, &bv, &mut got).unwrap_or_else(|e| panic!("{e}"));
            same_bits(&got, &want, &body_name(b));
            // A buffer of the wrong size is refused, not run.
            let e = jit.step(&a, &bv, &mut got[1..]).unwrap_err();
            assert!(e.contains("argument 2"), "{e}");
            // So is an int8 operand that is not bytes.
            if let CoreBody::MatVecQ8 { .. } = b {
                let mut half = a.clone();
                half[3] = 0.5;
                let e = jit.step(&half, &bv, &mut got).unwrap_err();
                assert!(e.contains("operand 0: element 3 (0.5) is not a byte"), "{e}");
            }
        }
    }

    /// The attention body JIT-run in-process over three tiles of a block, then finished, gives the emulator's
    /// outputs bit for bit, `q0` and `kv_len` read from the parameter buffer (the cases of
    /// [`super::super::mlir::bodies::ATTENTION_CASES`]: the causal mask, a window, a padding row, tiles of NaN the
    /// block skips), one compiled function at three pairs of values; a parameter buffer of the wrong size is
    /// refused.
    #[test]
    fn the_attention_body_runs_in_process_as_the_emulator_computes_it() {
        for window in [0u64, 6] {
            let b = attention(window);
            let CoreBody::Attention { q_rows, head_dim: hd, .. } = b else { unreachable!() };
            let name = body_name(b);
            let jit = jit(b).unwrap_or_else(|e| panic!("{e}"));
            let mut fns: Vec<&str> = jit.functions().collect();
            fns.sort();
            assert_eq!(fns, [format!("{name}_finish"), format!("{name}_tile")]);
            for case @ (q0, kv_len, row0) in ATTENTION_CASES {
                let c = attention_case(window, case);
                let (mut jm, mut jl) = (vec![f32::NEG_INFINITY; q_rows as usize], vec![0.0; q_rows as usize]);
                let mut jo = vec![0.0; (q_rows * hd) as usize];
                let mut qh = bf16_bits(&c.q).unwrap();
                let mut rtp = [q0 as i32, kv_len as i32];
                let mut fold = |kv: &[f32], rtp: &mut [i32], key0: u64| {
                    let mut kvh: Vec<u16> = kv.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
                    let mut args = [
                        Arg::Bf16(&mut qh),
                        Arg::Bf16(&mut kvh),
                        Arg::F32(&mut jm),
                        Arg::F32(&mut jl),
                        Arg::F32(&mut jo),
                        Arg::I32(rtp),
                        Arg::Index(key0),
                        Arg::Index(row0),
                    ];
                    jit.call(&format!("{name}_tile"), &mut args)
                };
                // The parameter buffer is checked like every buffer (and nothing runs).
                let e = fold(&c.tiles[0].0, &mut rtp[..1], 0).unwrap_err();
                assert!(e.contains("argument 5 is I32(2), given 1 i32"), "{e}");
                for (kv, key0) in &c.tiles {
                    fold(kv, &mut rtp, *key0).unwrap_or_else(|e| panic!("{e}"));
                }
                same_bits(&jm, &c.m, &format!("{name} {case:?}: m"));
                same_bits(&jl, &c.l, &format!("{name} {case:?}: l"));
                let mut out = vec![f32::NAN; (q_rows * hd) as usize];
                let mut args = [Arg::F32(&mut jo), Arg::F32(&mut jl), Arg::F32(&mut out)];
                jit.call(&format!("{name}_finish"), &mut args).unwrap_or_else(|e| panic!("{e}"));
                same_bits(&out, &c.want, &format!("{name} {case:?}"));
                if q0 + row0 + q_rows > kv_len {
                    assert!(out[3 * hd as usize..].iter().all(|&v| v == 0.0), "{name}: the row at kv_len is padding");
                }
            }
        }
    }
}
