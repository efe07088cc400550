//! Executes a plan's phases on the CPU: one activation arena, the KV cache, and a loop over the steps.

use crate::cpu::matmul::{dequant_row, matmul, matmul_many, MatMulOut, Scratch, MAX_FUSED};
use crate::cpu::ops::{self, AttnShape, KvCache};
use crate::model::Model;
use crate::Error;
use unicorn_ir::memory::Slot;
use unicorn_ir::plan::PlanPhase;
use unicorn_ir::{Dim, Op, Phase};

/// The state of one generation: position, caches, buffers. Buffers grow to the largest execution and are then
/// reused, so steady-state decoding allocates nothing.
pub struct Session<'m> {
    model: &'m Model,
    caches: Vec<KvCache>,
    /// Tokens processed so far (the position of the next one).
    pos: usize,
    /// Positions this session can hold.
    ctx: usize,
    arena: Vec<f32>,
    scratch: Scratch,
    logits: Vec<f32>,
    /// Per phase, for each step: how many steps the group starting there runs as one call (see
    /// [`fusable_matmuls`]; 1 for an unfused step). Derived from the plan once, not per token.
    fusion: Vec<(Phase, Vec<usize>)>,
    /// Time spent per kernel name, when profiling.
    profile: Option<std::collections::BTreeMap<String, (std::time::Duration, usize)>>,
}

impl<'m> Session<'m> {
    /// A session for up to `ctx` positions (at most the plan's context).
    pub fn new(model: &'m Model, ctx: usize) -> Self {
        let spec = &model.header().spec;
        let ctx = ctx.clamp(1, spec.max_context);
        let caches = spec
            .layers
            .iter()
            .map(|l| KvCache::new(l.window.map_or(ctx, |w| w.min(ctx)), spec.num_kv_heads, spec.head_dim))
            .collect();
        let fusion = model
            .header()
            .phases
            .iter()
            .map(|ph| (ph.phase, (0..ph.steps.len()).map(|i| fusable_matmuls(model, &ph.steps[i..])).collect()))
            .collect();
        Self {
            model,
            caches,
            fusion,
            pos: 0,
            ctx,
            arena: Vec::new(),
            scratch: Scratch::default(),
            logits: Vec::new(),
            profile: None,
        }
    }

    /// Record the time spent in each kernel from now on.
    pub fn enable_profile(&mut self) {
        self.profile.get_or_insert_with(Default::default);
    }

    /// Seconds and calls per kernel name, most expensive first.
    pub fn profile(&self) -> Vec<(String, f64, usize)> {
        let mut v: Vec<_> = self.profile.iter().flatten().map(|(k, (d, n))| (k.clone(), d.as_secs_f64(), *n)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn context(&self) -> usize {
        self.ctx
    }

    /// Run `tokens` at the next positions; returns the logits of the last token, or of every token when
    /// `all_rows` (row-major, `rows x vocab`).
    pub fn forward(&mut self, tokens: &[u32], all_rows: bool) -> Result<&[f32], Error> {
        let h = self.model.header();
        let vocab = h.spec.vocab_size;
        if tokens.is_empty() {
            return Err(Error::Input("no tokens to run".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Input(format!("token id {bad} is out of range (vocabulary size {vocab})")));
        }
        if self.pos + tokens.len() > self.ctx {
            return Err(Error::Input(format!(
                "{} tokens at position {} exceed the context of {} tokens",
                tokens.len(),
                self.pos,
                self.ctx
            )));
        }
        let phase = if tokens.len() == 1 && self.pos > 0 { Phase::Decode } else { Phase::Prefill };
        let phase = h.phase(phase).ok_or_else(|| Error::Plan(format!("plan has no {phase} phase")))?;
        let keep = if all_rows { tokens.len() } else { 1 };
        self.run(phase, tokens, keep);
        self.pos += tokens.len();
        Ok(&self.logits[..keep * vocab])
    }

    fn run(&mut self, phase: &PlanPhase, tokens: &[u32], keep: usize) {
        let model = self.model;
        let h = model.header();
        let s = tokens.len();
        // The main arena (slots scaled by S), then the kept-rows arena (slots scaled by `keep`).
        let kept_base = phase.arena_width * s;
        let need = kept_base + phase.kept_width * keep;
        if self.arena.len() < need {
            self.arena.resize(need, 0.0);
        }
        let base = self.arena.as_mut_ptr();
        let rows_of = |d: Dim| match d {
            Dim::Seq => s,
            Dim::Out => keep,
            Dim::Const(n) => n,
        };
        // Slots of values live at the same time never overlap (the memory plan guarantees it), and a step's
        // result is never one of its operands, so these views do not alias.
        let at = |slot: Slot| if slot.kept_rows { kept_base + slot.offset * keep } else { slot.offset * s };
        let view = |slot: Slot, rows: usize| unsafe {
            std::slice::from_raw_parts(base.add(at(slot)) as *const f32, slot.width * rows)
        };
        let steps = &phase.steps;
        let groups = &self.fusion.iter().find(|(p, _)| *p == phase.phase).expect("every phase has its groups").1;
        let mut i = 0;
        while i < steps.len() {
            let step = &steps[i];
            let started = self.profile.is_some().then(std::time::Instant::now);
            let rows = rows_of(step.rows);
            let fused = groups[i];
            if fused > 1 {
                // Matmuls of the same operand that follow each other (q/k/v; gate and up) run as one call.
                let x = view(step.inputs[0].expect("operand has a slot"), rows);
                let out = |st: &unicorn_ir::plan::Step| {
                    let Op::MatMul { weight, bias } = &st.op else { unreachable!("fusable_matmuls checked") };
                    // SAFETY: the outputs are distinct values, live together until their consumers run after
                    // the group, so the memory plan keeps them apart and away from the operand.
                    let y = unsafe { std::slice::from_raw_parts_mut(base.add(at(st.output)), st.output.width * rows) };
                    MatMulOut { w: model.matrix(*weight), bias: bias.map(|b| model.vector(b)), y }
                };
                // A fixed-size array per group size, so that decoding allocates nothing.
                let (g, scratch) = (&steps[i..i + fused], &mut self.scratch);
                match fused {
                    2 => matmul_many(x, rows, &mut [out(&g[0]), out(&g[1])], scratch),
                    3 => matmul_many(x, rows, &mut [out(&g[0]), out(&g[1]), out(&g[2])], scratch),
                    _ => matmul_many(x, rows, &mut [out(&g[0]), out(&g[1]), out(&g[2]), out(&g[3])], scratch),
                }
            } else {
                let out =
                    unsafe { std::slice::from_raw_parts_mut(base.add(at(step.output)), step.output.width * rows) };
                let arg = |i: usize| view(step.inputs[i].expect("operand has a slot"), rows);
                match &step.op {
                    Op::Embed { table, scale } => {
                        let w = model.matrix(*table);
                        for (row, &t) in out.chunks_mut(w.k).zip(tokens) {
                            dequant_row(w, t as usize, row);
                            if *scale != 1.0 {
                                row.iter_mut().for_each(|v| *v *= scale);
                            }
                        }
                    }
                    Op::Scale { factor } => ops::scale(arg(0), *factor, out),
                    Op::RmsNorm { weight, eps, unit_offset } => {
                        ops::rms_norm(arg(0), model.vector(*weight), *eps, *unit_offset, out)
                    }
                    Op::MatMul { weight, bias } => {
                        let bias = bias.map(|b| model.vector(b));
                        matmul(arg(0), rows, model.matrix(*weight), bias, out, &mut self.scratch);
                    }
                    Op::Rope { rope, head_dim } => {
                        ops::rope(arg(0), step.output.width, *head_dim, self.pos, &h.rope_inv_freq[*rope], out)
                    }
                    Op::Attention { layer, num_heads, num_kv_heads, head_dim, window, scale } => {
                        let shape = AttnShape {
                            heads: *num_heads,
                            kv_heads: *num_kv_heads,
                            head_dim: *head_dim,
                            window: *window,
                            scale: *scale,
                        };
                        let (q, k, v) = (arg(0), arg(1), arg(2));
                        ops::attention(q, k, v, &self.caches[*layer], self.pos, shape, out);
                        self.caches[*layer].append(self.pos, k, v);
                    }
                    Op::Glu { activation } => match activation {
                        unicorn_ir::spec::Activation::Silu => ops::glu_silu(arg(0), arg(1), out),
                        unicorn_ir::spec::Activation::GeluTanh => ops::glu_gelu_tanh(arg(0), arg(1), out),
                    },
                    Op::Add => ops::add(arg(0), arg(1), out),
                    Op::SelectRows => {
                        let src = view(step.inputs[0].expect("operand has a slot"), s);
                        out.copy_from_slice(&src[(s - keep) * step.output.width..]);
                    }
                    Op::Softcap { cap } => ops::softcap(arg(0), *cap, out),
                    Op::Tokens | Op::Output => {}
                }
            }
            if let (Some(t), Some(p)) = (started, self.profile.as_mut()) {
                let e = p.entry(step.kernel.clone()).or_default();
                e.0 += t.elapsed();
                e.1 += fused;
            }
            i += fused;
        }
        let result = view(phase.result, keep);
        self.logits.clear();
        self.logits.extend_from_slice(result);
    }
}

/// How many of the matmuls at the start of `steps` can run as one [`matmul_many`] call: consecutive, reading the
/// same operand over the same rows, with weights of equal `k` and of the same kind (quantized or float).
/// Returns 1 when there is nothing to fuse.
fn fusable_matmuls(model: &Model, steps: &[unicorn_ir::plan::Step]) -> usize {
    let key = |st: &unicorn_ir::plan::Step| match &st.op {
        Op::MatMul { weight, .. } => {
            let w = model.matrix(*weight);
            Some((st.inputs[0], st.rows, w.k, w.format.is_quantized()))
        }
        _ => None,
    };
    let Some(first) = steps.first().and_then(key) else { return 1 };
    steps.iter().take(MAX_FUSED).take_while(|st| key(st) == Some(first)).count()
}
