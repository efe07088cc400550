//! Plan validation: a plan file is untrusted input. Its checksums only catch accidents — anyone can edit a header
//! and recompute them — so before any executor allocates or launches anything, [`PlanHeader::validate`] checks
//! every size, offset, slot, argument and parameter the executor will use, with checked arithmetic, against the
//! buffers they index and against what the chosen executor can run. It returns a [`ValidPlan`], the only form an
//! executor accepts, so an unchecked header cannot reach one.
//!
//! What holds for a [`ValidPlan`] (executors rely on each):
//! - the spec's sizes are within [`limits`] and consistent (heads divide into kv heads, an even head_dim, one
//!   layer spec, RoPE table and KV cache per layer, windows and caches agreeing);
//! - every weight's shape, format, layout and byte size agree, it lies inside the weights section at its
//!   alignment, and the executor reads its (format, layout); vectors are f32; the embedding table and the LM
//!   head have `vocab_size` rows;
//! - every step names a kernel of the table that the executor runs, its arguments follow its ops' pattern
//!   (see [`crate::plan::Step`]) with the widths the ops and weights imply, every slot lies inside its arena,
//!   every operand is the value an earlier step wrote and no later step has overwritten, and no output
//!   overlaps an operand of its own launch or another output of it;
//! - work sizes, arena sizes and KV cache sizes evaluate without overflow for every execution the runtime can
//!   make (prefill chunks up to `prefill_chunk` rows, contexts up to `max_context`).

use crate::graph::{Op, Phase, WeightRole};
use crate::plan::{
    ActSlot, ArenaDecl, Arg, Expr, KernelEntry, KvCacheDecl, KvCapacity, PlanHeader, PlanPhase, PlanWeight, Step, Vars,
    MAX_UNITS, WEIGHT_ALIGN,
};
use crate::quant::WeightLayout;
use crate::types::{DType, Dim, WeightFormat};
use thiserror::Error;

/// Upper bounds on a plan's sizes. They are far above any released model and far below what would overflow
/// the arithmetic that derives buffer sizes from them.
pub mod limits {
    /// Largest model dimension: vocabulary, hidden, intermediate, heads, head_dim, any weight dimension.
    pub const MAX_DIM: u64 = 1 << 24;
    pub const MAX_LAYERS: u64 = 1 << 12;
    /// Longest context a plan may declare.
    pub const MAX_CONTEXT: u64 = 1 << 24;
    /// Most rows of one prefill execution.
    pub const MAX_PREFILL_CHUNK: u64 = 1 << 16;
    /// Largest row of an activation arena.
    pub const MAX_ROW_BYTES: u64 = 1 << 32;
    /// Most matmuls one launch groups.
    pub const MAX_GROUP: usize = 4;
    pub const MAX_STEPS: usize = 1 << 20;
}
use limits::*;

/// What the executor a plan is validated for can run.
pub trait Capabilities {
    /// The executor's name, for errors (`cpu`, `vulkan:0`).
    fn name(&self) -> &str;
    /// Whether it reads weights stored in `format` and `layout`.
    fn reads_weight(&self, format: WeightFormat, layout: WeightLayout) -> bool;
    /// Whether it runs `kernel` for these ops (an executor may run any op through its reference kernels).
    fn runs_kernel(&self, kernel: &KernelEntry, ops: &[Op]) -> bool;
    /// Whether it keeps activations of `dtype`.
    fn holds_activation(&self, dtype: DType) -> bool;
    /// Whether it keeps a KV cache of `dtype`.
    fn holds_kv(&self, dtype: DType) -> bool;
}

/// Sizes of the plan file's sections that the header points into.
#[derive(Debug, Clone, Copy)]
pub struct SectionSizes {
    pub weights: u64,
    pub kernels: u64,
}

/// Why a plan was refused: the header field at fault and what is wrong with it.
#[derive(Debug, Error, PartialEq)]
#[error("{field}: {message}")]
pub struct PlanError {
    pub field: String,
    pub message: String,
}

/// A plan whose header passed [`PlanHeader::validate`] for one executor.
#[derive(Debug, Clone)]
pub struct ValidPlan {
    header: PlanHeader,
    executor: String,
}

impl ValidPlan {
    pub fn header(&self) -> &PlanHeader {
        &self.header
    }

    /// The executor it was validated for.
    pub fn executor(&self) -> &str {
        &self.executor
    }

    pub fn phase(&self, phase: Phase) -> &PlanPhase {
        self.header.phase(phase).expect("a valid plan has both phases")
    }
}

fn fail<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError { field: field.into(), message: message.into() })
}

fn dim_ok(field: &str, v: u64) -> Result<(), PlanError> {
    if v == 0 || v > MAX_DIM {
        return fail(field, format!("{v} is outside 1..={MAX_DIM}"));
    }
    Ok(())
}

fn finite(field: &str, v: f32) -> Result<(), PlanError> {
    if !v.is_finite() {
        return fail(field, format!("{v} is not a finite number"));
    }
    Ok(())
}

impl PlanHeader {
    /// Check the header against the sections it indexes and the executor `caps`; see the module doc for what a
    /// [`ValidPlan`] guarantees.
    pub fn validate(self, sections: SectionSizes, caps: &dyn Capabilities) -> Result<ValidPlan, PlanError> {
        check_spec(&self)?;
        for (i, w) in self.weights.iter().enumerate() {
            check_weight(&format!("weights[{i}] ({})", w.name), w, sections.weights, caps)?;
        }
        check_kv_caches(&self, caps)?;
        for (i, k) in self.kernels.iter().enumerate() {
            let field = format!("kernels[{i}] ({})", k.name);
            if let Some(a) = k.artifact {
                if a.offset.checked_add(a.len).is_none_or(|end| end > sections.kernels) {
                    return fail(field, format!("artifact {}+{} is outside the kernels section", a.offset, a.len));
                }
            }
            if k.workgroup.contains(&0) {
                return fail(field, "a workgroup dimension is 0");
            }
        }
        for (field, id, bindings) in [("argmax", self.argmax, 2), ("top_k", self.top_k, 3)] {
            let Some(id) = id else { continue };
            match self.kernels.get(id.0 as usize) {
                None => return fail(field, format!("kernel {} is not in the kernel table", id.0)),
                Some(k) if k.bindings.len() != bindings => {
                    return fail(
                        field,
                        format!("kernel {} has {} bindings, expected {bindings}", k.name, k.bindings.len()),
                    )
                }
                Some(_) => {}
            }
        }
        let ctx = self.spec.max_context as u64;
        if self.prefill_chunk == 0 || self.prefill_chunk > MAX_PREFILL_CHUNK.min(ctx) {
            return fail(
                "prefill_chunk",
                format!("{} is outside 1..={}", self.prefill_chunk, MAX_PREFILL_CHUNK.min(ctx)),
            );
        }
        for phase in [Phase::Prefill, Phase::Decode] {
            let n = self.phases.iter().filter(|p| p.phase == phase).count();
            if n != 1 {
                return fail("phases", format!("{n} {phase} phases, expected 1"));
            }
        }
        for (i, p) in self.phases.iter().enumerate() {
            PhaseCheck { h: &self, caps, field: format!("phases[{i}] ({})", p.phase) }.run(p)?;
        }
        Ok(ValidPlan { header: self, executor: caps.name().to_string() })
    }
}

fn check_spec(h: &PlanHeader) -> Result<(), PlanError> {
    let s = &h.spec;
    for (name, v) in [
        ("spec.vocab_size", s.vocab_size),
        ("spec.hidden_size", s.hidden_size),
        ("spec.intermediate_size", s.intermediate_size),
        ("spec.num_heads", s.num_heads),
        ("spec.num_kv_heads", s.num_kv_heads),
        ("spec.head_dim", s.head_dim),
    ] {
        dim_ok(name, v as u64)?;
    }
    if !s.num_heads.is_multiple_of(s.num_kv_heads) {
        return fail(
            "spec.num_kv_heads",
            format!("{} heads do not group over {} kv heads", s.num_heads, s.num_kv_heads),
        );
    }
    if !s.head_dim.is_multiple_of(2) {
        return fail("spec.head_dim", format!("{} is odd; rotary embeddings pair the halves of a head", s.head_dim));
    }
    if s.num_layers == 0 || s.num_layers as u64 > MAX_LAYERS {
        return fail("spec.num_layers", format!("{} is outside 1..={MAX_LAYERS}", s.num_layers));
    }
    if s.layers.len() != s.num_layers {
        return fail("spec.layers", format!("{} entries for {} layers", s.layers.len(), s.num_layers));
    }
    if s.max_context == 0 || s.max_context as u64 > MAX_CONTEXT {
        return fail("spec.max_context", format!("{} is outside 1..={MAX_CONTEXT}", s.max_context));
    }
    if h.rope_inv_freq.len() != s.ropes.len() {
        return fail("rope_inv_freq", format!("{} tables for {} rope kinds", h.rope_inv_freq.len(), s.ropes.len()));
    }
    for (i, t) in h.rope_inv_freq.iter().enumerate() {
        if t.len() != s.head_dim / 2 || t.iter().any(|f| !f.is_finite()) {
            return fail(format!("rope_inv_freq[{i}]"), format!("expected {} finite frequencies", s.head_dim / 2));
        }
    }
    for (i, l) in s.layers.iter().enumerate() {
        if l.rope >= s.ropes.len() {
            return fail(format!("spec.layers[{i}].rope"), format!("rope kind {} does not exist", l.rope));
        }
        if l.window == Some(0) {
            return fail(format!("spec.layers[{i}].window"), "a window of 0 positions");
        }
    }
    finite("spec.norm_eps", s.norm_eps)?;
    finite("spec.attn_scale", s.attn_scale)?;
    Ok(())
}

fn check_weight(field: &str, w: &PlanWeight, section: u64, caps: &dyn Capabilities) -> Result<(), PlanError> {
    let vector = matches!(w.role, WeightRole::Norm | WeightRole::Bias);
    if w.shape.len() != if vector { 1 } else { 2 } {
        return fail(
            field,
            format!("shape {:?} is not a {} for a {:?} weight", w.shape, ["matrix", "vector"][vector as usize], w.role),
        );
    }
    for &d in &w.shape {
        dim_ok(field, d as u64)?;
    }
    if vector && w.format != WeightFormat::F32 {
        return fail(field, format!("vector weights are stored f32, not {}", w.format));
    }
    let cols = *w.shape.last().expect("checked");
    let rows = if vector { 1 } else { w.shape[0] };
    let Some(row_bytes) = w.format.row_bytes(cols) else {
        return fail(field, format!("{cols} columns are not whole {} blocks", w.format));
    };
    if !w.layout.fits(w.format, &w.shape) {
        return fail(
            field,
            format!("a {} matrix of shape {:?} cannot be laid out {}", w.format, w.shape, w.layout.name()),
        );
    }
    let stored = w.layout.stored_rows(rows);
    if (row_bytes as u64).checked_mul(stored as u64) != Some(w.bytes) {
        return fail(
            field,
            format!(
                "{} bytes, but {rows} x {cols} {} laid out {} take {}",
                w.bytes,
                w.format,
                w.layout.name(),
                row_bytes * stored
            ),
        );
    }
    if !caps.reads_weight(w.format, w.layout) {
        return fail(
            field,
            format!("the {} executor does not read {} weights laid out {}", caps.name(), w.format, w.layout.name()),
        );
    }
    if !w.align.is_power_of_two() || w.align > WEIGHT_ALIGN || !w.offset.is_multiple_of(w.align) {
        return fail(
            field,
            format!("offset {} at alignment {} (a power of two up to {WEIGHT_ALIGN})", w.offset, w.align),
        );
    }
    if w.offset.checked_add(w.bytes).is_none_or(|end| end > section) {
        return fail(
            field,
            format!("bytes {}+{} are outside the weights section ({section} bytes)", w.offset, w.bytes),
        );
    }
    Ok(())
}

fn check_kv_caches(h: &PlanHeader, caps: &dyn Capabilities) -> Result<(), PlanError> {
    let s = &h.spec;
    if h.kv_caches.len() != s.num_layers {
        return fail("kv_caches", format!("{} caches for {} layers", h.kv_caches.len(), s.num_layers));
    }
    for (i, c) in h.kv_caches.iter().enumerate() {
        let field = format!("kv_caches[{i}]");
        let window = match c.capacity {
            KvCapacity::Context => None,
            KvCapacity::Window(w) => Some(w),
        };
        if c.layer as usize != i
            || c.kv_heads != s.num_kv_heads as u64
            || c.head_dim != s.head_dim as u64
            || window != s.layers[i].window.map(|w| w as u64)
        {
            return fail(field, format!("{c:?} does not match layer {i} of the spec"));
        }
        if !caps.holds_kv(c.dtype) {
            return fail(field, format!("the {} executor does not keep a {} KV cache", caps.name(), c.dtype));
        }
        if c.bytes(s.max_context as u64).is_none() {
            return fail(field, "its size overflows");
        }
    }
    Ok(())
}

/// The checks of one phase, in launch order.
struct PhaseCheck<'a> {
    h: &'a PlanHeader,
    caps: &'a dyn Capabilities,
    field: String,
}

/// The largest variables of an execution of `phase`.
fn max_vars(h: &PlanHeader, phase: Phase) -> Vars {
    let ctx = h.spec.max_context as u64;
    let s = if phase == Phase::Prefill { h.prefill_chunk } else { 1 };
    Vars { s, r: s, pos: ctx - s.min(ctx) }
}

impl PhaseCheck<'_> {
    fn run(&self, p: &PlanPhase) -> Result<(), PlanError> {
        let f = &self.field;
        let want = [Dim::Seq, Dim::Out];
        if p.arenas.len() != 2 || p.arenas.iter().zip(want).any(|(a, d)| a.rows != d) {
            return fail(
                format!("{f}.arenas"),
                "expected two arenas: the execution's rows (seq), then the kept rows (out)",
            );
        }
        for (i, a) in p.arenas.iter().enumerate() {
            if a.row_bytes > MAX_ROW_BYTES {
                return fail(
                    format!("{f}.arenas[{i}]"),
                    format!("{} bytes per row, above {MAX_ROW_BYTES}", a.row_bytes),
                );
            }
        }
        let v = max_vars(self.h, p.phase);
        if p.activation_bytes(v.s, v.r).is_none() {
            return fail(format!("{f}.arenas"), "the arenas' size overflows");
        }
        if p.steps.is_empty() || p.steps.len() > MAX_STEPS {
            return fail(format!("{f}.steps"), format!("{} steps", p.steps.len()));
        }
        // Values written so far and not overwritten since: an operand must be one of them.
        let mut live: Vec<ActSlot> = Vec::new();
        for (i, st) in p.steps.iter().enumerate() {
            let field = format!("{f}.steps[{i}] ({})", st.label);
            let outs = self.step(&field, p, st, &live)?;
            for o in outs {
                live.retain(|l| !overlaps(l, &o));
                live.push(o);
            }
        }
        let r = &p.result;
        self.slot(&format!("{f}.result"), &p.arenas, r)?;
        if !live.contains(r) {
            return fail(format!("{f}.result"), "no step writes the result");
        }
        if r.width != self.h.spec.vocab_size as u64 || r.dtype != DType::F32 {
            return fail(
                format!("{f}.result"),
                format!("{} {} per row, expected {} f32 logits", r.width, r.dtype, self.h.spec.vocab_size),
            );
        }
        if p.phase == Phase::Prefill && r.arena.0 != 1 {
            return fail(format!("{f}.result"), "prefill logits are kept rows (arena 1)");
        }
        Ok(())
    }

    fn slot(&self, field: &str, arenas: &[ArenaDecl], s: &ActSlot) -> Result<(), PlanError> {
        let Some(a) = arenas.get(s.arena.0 as usize) else {
            return fail(field, format!("arena {} does not exist", s.arena.0));
        };
        if s.width == 0 || s.width > MAX_DIM {
            return fail(field, format!("width {} is outside 1..={MAX_DIM}", s.width));
        }
        if !self.caps.holds_activation(s.dtype) {
            return fail(field, format!("the {} executor does not keep {} activations", self.caps.name(), s.dtype));
        }
        let end = s.row_bytes().and_then(|b| b.checked_add(s.offset));
        if end.is_none_or(|e| e > a.row_bytes) || !s.offset.is_multiple_of(s.dtype.size() as u64) {
            return fail(
                field,
                format!(
                    "bytes {}+{}x{} per row do not fit arena {} ({} bytes per row)",
                    s.offset, s.width, s.dtype, s.arena.0, a.row_bytes
                ),
            );
        }
        Ok(())
    }

    /// Check one step; returns the slots it writes.
    fn step(&self, field: &str, p: &PlanPhase, st: &Step, live: &[ActSlot]) -> Result<Vec<ActSlot>, PlanError> {
        let h = self.h;
        let Some(kernel) = h.kernels.get(st.kernel.0 as usize) else {
            return fail(
                field,
                format!("kernel {} is not in the kernel table ({} entries)", st.kernel.0, h.kernels.len()),
            );
        };
        if st.ops.is_empty() {
            return fail(field, "a launch of no ops");
        }
        if !self.caps.runs_kernel(kernel, &st.ops) {
            return fail(
                field,
                format!(
                    "the {} executor does not run kernel {} ({})",
                    self.caps.name(),
                    kernel.name,
                    kernel.backend.name()
                ),
            );
        }
        // A compiled kernel binds the step's buffer arguments in order, one binding each.
        if kernel.artifact.is_some() {
            let buffers = st.args.iter().filter(|a| !matches!(a, Arg::Scalar(_))).count();
            let numbered = kernel.bindings.iter().enumerate().all(|(i, b)| b.binding == i as u32);
            if kernel.bindings.len() != buffers || !numbered {
                return fail(
                    field,
                    format!(
                        "kernel {} has {} bindings (numbered from 0 expected) for the step's {buffers} buffer arguments",
                        kernel.name,
                        kernel.bindings.len()
                    ),
                );
            }
        }
        let v = max_vars(h, p.phase);
        for (d, e) in st.work.iter().enumerate() {
            if e.eval(v).is_none() {
                return fail(field, format!("work[{d}] = {e} overflows"));
            }
        }
        let mut args = Args {
            field,
            check: self,
            arenas: &p.arenas,
            live: live.to_vec(),
            args: &st.args,
            next: 0,
            outs: Vec::new(),
            ins: Vec::new(),
        };
        let units = st.units().count();
        if units > MAX_UNITS {
            return fail(field, format!("{units} units fused in one launch, at most {MAX_UNITS}"));
        }
        for u in st.units() {
            let ops = &st.ops[u.ops.clone()];
            if ops.len() > MAX_GROUP {
                return fail(field, format!("{} matmuls share a launch, at most {MAX_GROUP}", ops.len()));
            }
            let written = args.outs.len();
            self.unit(field, p, ops, &mut args)?;
            if args.next != u.args.end {
                return fail(field, format!("unit of {} takes arguments {:?}", ops[0].name(), u.args));
            }
            // What a unit writes, the units after it read.
            let outs = args.outs[written..].to_vec();
            args.live.extend(outs);
        }
        args.finish()
    }

    /// Check one unit of a launch (one op, or a group of matmuls of one operand), consuming its arguments.
    fn unit(&self, field: &str, p: &PlanPhase, ops: &[Op], args: &mut Args) -> Result<(), PlanError> {
        let h = self.h;
        let spec = &h.spec;
        match &ops[0] {
            Op::Embed { table, scale } => {
                args.tokens()?;
                let w = args.weight(*table)?;
                let out = args.output()?;
                if w.shape.len() != 2
                    || w.shape[0] != spec.vocab_size
                    || out.width != w.shape[1] as u64
                    || out.arena.0 != 0
                {
                    return fail(
                        field,
                        format!(
                            "embedding table {:?} does not give {} rows of width {}",
                            w.shape, spec.vocab_size, out.width
                        ),
                    );
                }
                finite(field, *scale)?;
            }
            Op::Scale { factor: x } | Op::Softcap { cap: x } => {
                finite(field, *x)?;
                let a = args.input()?;
                let out = args.output()?;
                same_rows(field, &a, &out)?;
            }
            Op::RmsNorm { weight, eps, .. } => {
                finite(field, *eps)?;
                let x = args.input()?;
                let w = args.weight(*weight)?;
                let out = args.output()?;
                same_rows(field, &x, &out)?;
                if w.role != WeightRole::Norm || !x.width.is_multiple_of(w.shape[0] as u64) {
                    return fail(field, format!("norm weight {:?} does not divide width {}", w.shape, x.width));
                }
            }
            Op::MatMul { .. } => {
                let x = args.input()?;
                let mut quantized = None;
                for op in ops {
                    let Op::MatMul { weight, bias } = op else { unreachable!("checked above") };
                    let w = args.weight(*weight)?;
                    if !matches!(w.role, WeightRole::Matrix | WeightRole::Embedding) || w.shape[1] as u64 != x.width {
                        return fail(field, format!("weight {} {:?} does not take width {}", w.name, w.shape, x.width));
                    }
                    if *quantized.get_or_insert(w.format.is_quantized()) != w.format.is_quantized() {
                        return fail(field, "grouped matmuls mix quantized and float weights");
                    }
                    if let Some(b) = bias {
                        let b = args.weight(*b)?;
                        if b.role != WeightRole::Bias || b.shape != [w.shape[0]] {
                            return fail(
                                field,
                                format!("bias {} {:?} does not match {} outputs", b.name, b.shape, w.shape[0]),
                            );
                        }
                    }
                    let out = args.output()?;
                    if out.width != w.shape[0] as u64 || out.arena != x.arena || out.dtype != x.dtype {
                        return fail(
                            field,
                            format!("output of width {} for weight {} {:?}", out.width, w.name, w.shape),
                        );
                    }
                }
            }
            Op::Rope { rope, head_dim } => {
                let x = args.input()?;
                let out = args.output()?;
                args.scalar(&Expr::Pos)?;
                same_rows(field, &x, &out)?;
                if *rope >= spec.ropes.len() || *head_dim != spec.head_dim || !x.width.is_multiple_of(*head_dim as u64)
                {
                    return fail(field, format!("rope {rope} with head_dim {head_dim} over width {}", x.width));
                }
            }
            Op::Attention { layer, num_heads, num_kv_heads, head_dim, window, scale } => {
                finite(field, *scale)?;
                let (q, k, val) = (args.input()?, args.input()?, args.input()?);
                let Some(cache) = h.kv_caches.get(*layer) else {
                    return fail(field, format!("layer {layer} has no KV cache"));
                };
                args.kv(*layer)?;
                let out = args.output()?;
                args.scalar(&Expr::Pos)?;
                check_attention(field, cache, (*num_heads, *num_kv_heads, *head_dim, *window), [&q, &k, &val, &out])?;
            }
            Op::Glu { .. } | Op::Add => {
                let (a, b) = (args.input()?, args.input()?);
                let out = args.output()?;
                same_rows(field, &a, &b)?;
                same_rows(field, &a, &out)?;
            }
            Op::SelectRows => {
                let x = args.input()?;
                let out = args.output()?;
                let kept = if p.phase == Phase::Prefill { 1 } else { out.arena.0 };
                if x.arena.0 != 0 || out.arena.0 != kept || x.width != out.width || x.dtype != out.dtype {
                    return fail(field, "select_rows reads the execution's rows and writes the kept rows, same width");
                }
            }
            Op::Tokens | Op::Output => return fail(field, format!("{} is not a launch", ops[0].name())),
        }
        Ok(())
    }
}

fn check_attention(
    field: &str,
    cache: &KvCacheDecl,
    (heads, kv_heads, hd, window): (usize, usize, usize, Option<usize>),
    [q, k, v, out]: [&ActSlot; 4],
) -> Result<(), PlanError> {
    let cache_window = match cache.capacity {
        KvCapacity::Context => None,
        KvCapacity::Window(w) => Some(w),
    };
    if kv_heads as u64 != cache.kv_heads || hd as u64 != cache.head_dim || window.map(|w| w as u64) != cache_window {
        return fail(
            field,
            format!("{kv_heads} kv heads x {hd}, window {window:?}, do not match layer {}'s KV cache", cache.layer),
        );
    }
    if heads == 0 || !heads.is_multiple_of(kv_heads) {
        return fail(field, format!("{heads} heads do not group over {kv_heads} kv heads"));
    }
    let (qw, kw) = ((heads * hd) as u64, (kv_heads * hd) as u64);
    if q.width != qw || k.width != kw || v.width != kw || out.width != qw {
        return fail(
            field,
            format!(
                "q/k/v/out widths {}/{}/{}/{} do not match {heads}x{hd} and {kv_heads}x{hd}",
                q.width, k.width, v.width, out.width
            ),
        );
    }
    if [q, k, v, out].iter().any(|s| s.arena.0 != 0 || s.dtype != q.dtype) {
        return fail(field, "attention reads and writes the execution's rows");
    }
    Ok(())
}

fn same_rows(field: &str, a: &ActSlot, b: &ActSlot) -> Result<(), PlanError> {
    if a.arena != b.arena || a.width != b.width || a.dtype != b.dtype {
        return fail(
            field,
            format!(
                "operands differ: {} {} in arena {} vs {} {} in arena {}",
                a.width, a.dtype, a.arena.0, b.width, b.dtype, b.arena.0
            ),
        );
    }
    Ok(())
}

/// Whether two slots share bytes (slots of one arena scale alike with the rows, so per-row ranges decide).
fn overlaps(a: &ActSlot, b: &ActSlot) -> bool {
    let end = |s: &ActSlot| s.offset + s.width * s.dtype.size() as u64;
    a.arena == b.arena && a.offset < end(b) && b.offset < end(a)
}

/// Walks a step's arguments in the order its op prescribes.
struct Args<'a> {
    field: &'a str,
    check: &'a PhaseCheck<'a>,
    arenas: &'a [ArenaDecl],
    live: Vec<ActSlot>,
    args: &'a [Arg],
    next: usize,
    ins: Vec<ActSlot>,
    outs: Vec<ActSlot>,
}

impl<'a> Args<'a> {
    fn take(&mut self, what: &str) -> Result<&Arg, PlanError> {
        let i = self.next;
        self.next += 1;
        match self.args.get(i) {
            Some(a) => Ok(a),
            None => fail(self.field, format!("argument {i} ({what}) is missing")),
        }
    }

    fn mismatch<T>(&self, what: &str) -> Result<T, PlanError> {
        fail(self.field, format!("argument {} is not the {what} the op takes", self.next - 1))
    }

    fn act(&mut self, what: &str) -> Result<ActSlot, PlanError> {
        let Arg::Act(s) = *self.take(what)? else { return self.mismatch(what) };
        self.check.slot(&format!("{} argument {}", self.field, self.next - 1), self.arenas, &s)?;
        Ok(s)
    }

    fn input(&mut self) -> Result<ActSlot, PlanError> {
        let s = self.act("operand")?;
        if !self.live.contains(&s) {
            return fail(
                self.field,
                format!("operand {} reads a slot no earlier step wrote (or one overwritten since)", self.next - 1),
            );
        }
        self.ins.push(s);
        Ok(s)
    }

    fn output(&mut self) -> Result<ActSlot, PlanError> {
        let s = self.act("result")?;
        if let Some(o) = self.ins.iter().chain(&self.outs).find(|o| overlaps(o, &s)) {
            return fail(
                self.field,
                format!(
                    "result at bytes {}+{} overlaps an operand or result of the same launch at {}+{}",
                    s.offset, s.width, o.offset, o.width
                ),
            );
        }
        self.outs.push(s);
        Ok(s)
    }

    fn weight(&mut self, want: crate::WeightId) -> Result<&'a PlanWeight, PlanError> {
        let Arg::Weight(id) = *self.take("weight")? else { return self.mismatch("weight") };
        if id != want {
            return fail(self.field, format!("binds weight {id} where the op reads {want}"));
        }
        let h: &'a PlanHeader = self.check.h;
        match h.weights.get(id.0 as usize) {
            Some(w) => Ok(w),
            None => fail(self.field, format!("weight {id} does not exist")),
        }
    }

    fn tokens(&mut self) -> Result<(), PlanError> {
        match self.take("token ids")? {
            Arg::Tokens => Ok(()),
            _ => self.mismatch("token ids"),
        }
    }

    fn kv(&mut self, layer: usize) -> Result<(), PlanError> {
        match self.take("KV cache")? {
            Arg::Kv(l) if *l as usize == layer => Ok(()),
            _ => self.mismatch("layer's KV cache"),
        }
    }

    fn scalar(&mut self, want: &Expr) -> Result<(), PlanError> {
        match self.take("scalar")? {
            Arg::Scalar(e) if e == want => Ok(()),
            _ => self.mismatch(&format!("scalar {want}")),
        }
    }

    fn finish(self) -> Result<Vec<ActSlot>, PlanError> {
        if self.next != self.args.len() {
            return fail(self.field, format!("{} arguments, the op takes {}", self.args.len(), self.next));
        }
        Ok(self.outs)
    }
}
