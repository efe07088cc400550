//! The CPU executor: one activation arena in host memory, a KV cache per layer per sequence, and a loop over the
//! plan's launches that binds each argument to its buffer. It runs the built-in kernel a CPU plan names, and any
//! other plan's launches through the reference kernel of their IR ops — or, made with an NPU device
//! ([`CpuExecutor::with_npu`]), a Phoenix plan's NPU launches on that device, their operands taken from and
//! their results put back into its arena.

use super::attention::{attention, AttnShape};
use super::elementwise::{add, glu_gelu_tanh, glu_silu, scale, softcap};
use super::kv::KvCache;
use super::matmul::{dequant_row, matmul, matmul_many, MatMulOut, Scratch};
use super::norm::rms_norm;
use super::rope;
use crate::executor::{kernel_runs_op, Executor, SeqId, SeqRun};
use crate::model::Model;
use crate::npu::{attention_keys, gemm_rows, AttentionChunk, NpuCounts, NpuDevice, PlanAttention, PlanNpu};
use crate::Error;
use unicorn_ir::plan::{ActSlot, Arg, Backend, KernelEntry, Step};
use unicorn_ir::quant::WeightLayout;
use unicorn_ir::validate::limits::MAX_GROUP;
use unicorn_ir::validate::Capabilities;
use unicorn_ir::{DType, Op, Phase, WeightFormat};

/// What the CPU executor runs: every format in row order, q4_0 / q8_0 also interleaved; f32 activations; f32 or
/// f16 KV caches; its built-in kernels by name, and every other backend's kernels through the ops' reference
/// kernels. The executors that hand a Phoenix plan's NPU launches to an NPU device (`npu`, `npu-emu`) are CPU
/// executors too, and read what it reads.
pub struct CpuCapabilities(pub &'static str);

impl Capabilities for CpuCapabilities {
    fn name(&self) -> &str {
        self.0
    }

    fn reads_weight(&self, format: WeightFormat, layout: WeightLayout) -> bool {
        // The int8 kernels read interleaved groups only (the CPU target pads every quantized matrix to them).
        layout == if format.is_quantized() { WeightLayout::Interleaved8 } else { WeightLayout::Rows }
    }

    fn runs_kernel(&self, kernel: &KernelEntry, ops: &[Op]) -> bool {
        kernel.backend != Backend::Cpu || kernel_runs_op(&kernel.name, &ops[0])
    }

    fn holds_activation(&self, dtype: DType) -> bool {
        dtype == DType::F32
    }

    fn holds_kv(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::F16)
    }
}

/// An NPU device and the plan's NPU kernels, by kernel-table index.
type NpuSide = (Box<dyn NpuDevice>, Vec<Option<PlanNpu>>);

struct Sequence {
    caches: Vec<KvCache>,
    ctx: usize,
}

pub struct CpuExecutor<'m> {
    model: &'m Model,
    seqs: Vec<Option<Sequence>>,
    /// The execution's rows (arena 0), then the kept rows (arena 1). Grows to the largest execution and is then
    /// reused, so steady-state decoding allocates nothing.
    arena: Vec<f32>,
    scratch: Scratch,
    /// Each run's rows in arena 0 and in arena 1, kept between executions so decoding allocates nothing.
    segs: [Vec<Segment>; 2],
    /// Time spent per kernel name, when profiling.
    profile: Option<std::collections::BTreeMap<String, (std::time::Duration, usize)>>,
    /// The device that runs the plan's NPU kernels, and those kernels by kernel-table index.
    npu: Option<NpuSide>,
    /// What the NPU launches did: prefill, then decode.
    npu_counts: [NpuCounts; 2],
}

impl<'m> CpuExecutor<'m> {
    pub fn new(model: &'m Model) -> Self {
        Self {
            model,
            seqs: Vec::new(),
            arena: Vec::new(),
            scratch: Scratch::default(),
            segs: [Vec::new(), Vec::new()],
            profile: None,
            npu: None,
            npu_counts: Default::default(),
        }
    }

    /// A CPU executor that runs the plan's NPU launches on `device`: `kernels` are the plan's NPU kernels as
    /// [`crate::npu::plan_kernels`] decoded and checked them.
    pub fn with_npu(model: &'m Model, device: Box<dyn NpuDevice>, kernels: Vec<Option<PlanNpu>>) -> Self {
        Self { npu: Some((device, kernels)), ..Self::new(model) }
    }
}

impl CpuExecutor<'_> {
    /// The plan's layers (one KV cache each).
    pub fn layers(&self) -> usize {
        self.model.header().kv_caches.len()
    }

    /// Layer `layer`'s cache of sequence `seq`, if both exist (the hybrid executor hands positions between
    /// this cache and a GPU's).
    pub fn cache_mut(&mut self, seq: SeqId, layer: usize) -> Option<&mut KvCache> {
        self.seqs.get_mut(seq.0)?.as_mut()?.caches.get_mut(layer)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// A row range of one arena that belongs to one run, with the position of its first row.
#[derive(Clone, Copy)]
struct Segment {
    row: usize,
    rows: usize,
    pos: usize,
}

/// A segment's rows of a `width`-wide slot.
fn seg_of(v: &[f32], width: usize, g: Segment) -> &[f32] {
    &v[g.row * width..(g.row + g.rows) * width]
}

/// One NPU dispatch of prefill attention `pa` for a chunk of q's rows at `pos`: the keys and values of its
/// design's positions from the layer's cache (the source of truth, read in its own dtype) and the chunk's `k`
/// and `v`, at `q0 = pos` and `kv_len = pos + rows`, into `o`.
#[allow(clippy::too_many_arguments)]
fn npu_attention(
    dev: &mut dyn NpuDevice,
    pa: &PlanAttention,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cache: &KvCache,
    pos: usize,
    o: &mut [f32],
    counts: &mut NpuCounts,
) -> Result<(), Error> {
    let kv_len = pos + k.len() / pa.shape.kv_row() as usize;
    if kv_len as u64 > pa.shape.max_keys {
        return Err(Error::Input(format!(
            "an NPU attention up to position {kv_len}, past the {} keys of {}",
            pa.shape.max_keys, pa.name
        )));
    }
    thread_local! {
        /// The keys and values a dispatch streams, reused from one dispatch to the next (megabytes a layer).
        static KV: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    KV.with_borrow_mut(|kv| {
        let fill = |head, p, kd: &mut [f32], vd: &mut [f32]| {
            // A ring keeps the last `cap` positions: older ones are outside any row's window.
            if p + cache.cap >= pos {
                let at = cache.at(head, p);
                cache.k.read_into(at, kd);
                cache.v.read_into(at, vd);
            }
        };
        attention_keys(&pa.shape, pos, k, v, fill, kv);
        dev.attention(pa, AttentionChunk { q, kv, q0: pos as u64, kv_len: kv_len as u64, out: o }, counts)
    })
}

fn act(arg: &Arg) -> &ActSlot {
    match arg {
        Arg::Act(s) => s,
        _ => unreachable!("a valid plan binds an activation here"),
    }
}

impl Executor for CpuExecutor<'_> {
    fn name(&self) -> String {
        self.npu.as_ref().map_or("cpu", |(d, _)| d.name()).into()
    }

    fn add_sequence(&mut self, ctx: usize) -> Result<SeqId, Error> {
        let h = self.model.header();
        let ctx = ctx.clamp(1, h.spec.max_context);
        let bytes = h.kv_cache_bytes(ctx as u64);
        if unicorn_ir::container::available_memory().is_some_and(|free| bytes > free) {
            return Err(Error::Input(format!(
                "the KV cache for {ctx} positions needs {}, more than is free",
                mib(bytes)
            )));
        }
        let mut caches = Vec::with_capacity(h.kv_caches.len());
        for c in &h.kv_caches {
            let cache = KvCache::with_storage(
                c.positions(ctx as u64) as usize,
                c.kv_heads as usize,
                c.head_dim as usize,
                c.dtype == DType::F16,
            )
            .map_err(|_| {
                Error::Input(format!("the KV cache for {ctx} positions needs {}, more than is free", mib(bytes)))
            })?;
            caches.push(cache);
        }
        let seq = Sequence { caches, ctx };
        Ok(crate::executor::insert_sequence(&mut self.seqs, seq))
    }

    fn remove_sequence(&mut self, seq: SeqId) {
        crate::executor::remove_sequence(&mut self.seqs, seq)
    }

    fn execute(&mut self, phase: Phase, runs: &[SeqRun], logits: &mut Vec<f32>) -> Result<(), Error> {
        let model = self.model;
        let h = model.header();
        let plan = model.plan().phase(phase);
        let (s, keep) = crate::executor::check_runs(h, phase, runs, |id| {
            self.seqs.get(id.0).and_then(Option::as_ref).map(|q| q.ctx)
        })?;
        // Arena 0 holds `s` rows of every slot, arena 1 `keep` rows; slot offsets are bytes per row.
        let (w0, w1) = (plan.arenas[0].row_bytes as usize / 4, plan.arenas[1].row_bytes as usize / 4);
        let kept_base = w0 * s;
        let need = kept_base + w1 * keep;
        if self.arena.len() < need {
            let more = need - self.arena.len();
            let bytes = more as u64 * 4;
            if unicorn_ir::container::available_memory().is_some_and(|free| bytes > free) {
                return Err(Error::Input(format!(
                    "the activations of {s} rows need {} more, more than is free",
                    mib(bytes)
                )));
            }
            self.arena.try_reserve_exact(more).map_err(|_| {
                Error::Input(format!("the activations of {s} rows need {}, more than is free", mib(need as u64 * 4)))
            })?;
            self.arena.resize(need, 0.0);
        }
        let mut segs = std::mem::take(&mut self.segs);
        segs.iter_mut().for_each(Vec::clear);
        let (mut row, mut kept) = (0, 0);
        for r in runs {
            segs[0].push(Segment { row, rows: r.tokens.len(), pos: r.pos });
            segs[1].push(Segment { row: kept, rows: r.keep, pos: r.pos + r.tokens.len() - r.keep });
            row += r.tokens.len();
            kept += r.keep;
        }
        let base = self.arena.as_mut_ptr();
        let rows_of = |slot: &ActSlot| if slot.arena.0 == 0 { s } else { keep };
        let start = |slot: &ActSlot| {
            let per_row = slot.offset as usize / 4;
            if slot.arena.0 == 0 {
                per_row * s
            } else {
                kept_base + per_row * keep
            }
        };
        // The plan was validated: every slot lies inside its arena, a launch's results overlap none of its
        // operands nor each other, so these views never alias a mutable one.
        let view = |slot: &ActSlot| unsafe {
            std::slice::from_raw_parts(base.add(start(slot)) as *const f32, slot.width as usize * rows_of(slot))
        };
        let view_mut = |slot: &ActSlot| unsafe {
            std::slice::from_raw_parts_mut(base.add(start(slot)), slot.width as usize * rows_of(slot))
        };
        let counts = &mut self.npu_counts[(phase == Phase::Decode) as usize];
        counts.tokens += s as u64;
        for step in &plan.steps {
            let started = self.profile.is_some().then(std::time::Instant::now);
            let npu_kernel = self.npu.as_mut().map(|(d, k)| (d, k.get(step.kernel.0 as usize)));
            if let Some((dev, Some(Some(PlanNpu::Gemm(g))))) = npu_kernel {
                // A launch the plan placed on the NPU (checked by `plan_kernels`: [x, weight, y, weight, y, ...]
                // of bias-free matmuls of one operand), every weight and result handed to one dispatch.
                let [Arg::Act(x), pairs @ ..] = &step.args[..] else {
                    unreachable!("an NPU launch's arguments were checked")
                };
                let (mut ws, mut ys) = (Vec::with_capacity(pairs.len() / 2), Vec::with_capacity(pairs.len() / 2));
                for pair in pairs.chunks(2) {
                    let [Arg::Weight(w), Arg::Act(y)] = pair else {
                        unreachable!("an NPU launch's arguments were checked")
                    };
                    ws.push(model.matrix(*w));
                    ys.push(view_mut(y));
                }
                gemm_rows(dev.as_mut(), g, view(x), &ws, &mut ys, counts)?;
                if let (Some(t), Some(p)) = (started, self.profile.as_mut()) {
                    let e = p.entry(g.name.clone()).or_default();
                    e.0 += t.elapsed();
                    e.1 += 1;
                }
                continue;
            }
            // A fused launch runs here unit by unit (each unit's results are in its own slots).
            for unit in step.units() {
                let (ops, a) = (&step.ops[unit.ops], &step.args[unit.args]);
                match &ops[0] {
                    Op::MatMul { .. } => {
                        let x = act(&a[0]);
                        // Member j's weight, bias and result follow the operand in order.
                        let mut at = [0usize; MAX_GROUP];
                        let mut i = 1;
                        for (j, op) in ops.iter().enumerate() {
                            at[j] = i;
                            i += 2 + matches!(op, Op::MatMul { bias: Some(_), .. }) as usize;
                        }
                        let out = |j: usize| {
                            let Op::MatMul { weight, bias } = &ops[j] else { unreachable!("a validated group") };
                            let y = view_mut(act(&a[at[j] + 1 + bias.is_some() as usize]));
                            MatMulOut { w: model.matrix(*weight), bias: bias.map(|b| model.vector(b)), y }
                        };
                        let (xs, rows, scratch) = (view(x), rows_of(x), &mut self.scratch);
                        match ops.len() {
                            1 => {
                                let o = out(0);
                                matmul(xs, rows, o.w, o.bias, o.y, scratch)
                            }
                            2 => matmul_many(xs, rows, &mut [out(0), out(1)], scratch),
                            3 => matmul_many(xs, rows, &mut [out(0), out(1), out(2)], scratch),
                            _ => matmul_many(xs, rows, &mut [out(0), out(1), out(2), out(3)], scratch),
                        }
                    }
                    Op::Embed { table, scale } => {
                        let w = model.matrix(*table);
                        let out = view_mut(act(&a[2]));
                        let tokens = runs.iter().flat_map(|r| r.tokens);
                        for (row, &t) in out.chunks_mut(w.k).zip(tokens) {
                            dequant_row(w, t as usize, row);
                            if *scale != 1.0 {
                                row.iter_mut().for_each(|v| *v *= scale);
                            }
                        }
                    }
                    Op::Scale { factor } => scale(view(act(&a[0])), *factor, view_mut(act(&a[1]))),
                    Op::Softcap { cap } => softcap(view(act(&a[0])), *cap, view_mut(act(&a[1]))),
                    Op::RmsNorm { weight, eps, unit_offset } => {
                        rms_norm(view(act(&a[0])), model.vector(*weight), *eps, *unit_offset, view_mut(act(&a[2])))
                    }
                    Op::Rope { rope, head_dim } => {
                        let (x, out) = (act(&a[0]), act(&a[1]));
                        let (xs, ys, w) = (view(x), view_mut(out), x.width as usize);
                        for &g in &segs[x.arena.0 as usize] {
                            let y = &mut ys[g.row * w..(g.row + g.rows) * w];
                            rope::rope(seg_of(xs, w, g), w, *head_dim, g.pos, &h.rope_inv_freq[*rope], y);
                        }
                    }
                    Op::Attention { layer, num_heads, num_kv_heads, head_dim, window, scale } => {
                        let shape = AttnShape {
                            heads: *num_heads,
                            kv_heads: *num_kv_heads,
                            head_dim: *head_dim,
                            window: *window,
                            scale: *scale,
                        };
                        // Prefill attention placed on the NPU (checked by `plan_kernels`: [q, k, v, cache, out,
                        // pos] of the kernel's shape) is a dispatch per sequence at its chunk's position.
                        let mut npu = match self.npu.as_mut() {
                            Some((d, k)) => match k.get(step.kernel.0 as usize) {
                                Some(Some(PlanNpu::Attention(pa))) => Some((d, pa)),
                                _ => None,
                            },
                            None => None,
                        };
                        let (q, k, v, out) = (act(&a[0]), act(&a[1]), act(&a[2]), act(&a[4]));
                        let (qs, ks, vs, os) = (view(q), view(k), view(v), view_mut(out));
                        let (qw, kw) = (q.width as usize, k.width as usize);
                        for (r, &g) in runs.iter().zip(&segs[0]) {
                            let seq = self.seqs[r.seq.0].as_mut().expect("checked above");
                            let cache = &mut seq.caches[*layer];
                            let (kg, vg) = (seg_of(ks, kw, g), seg_of(vs, kw, g));
                            let o = &mut os[g.row * qw..(g.row + g.rows) * qw];
                            match &mut npu {
                                Some((dev, pa)) => {
                                    npu_attention(dev.as_mut(), pa, seg_of(qs, qw, g), kg, vg, cache, g.pos, o, counts)?
                                }
                                None => attention(seg_of(qs, qw, g), kg, vg, cache, g.pos, shape, o),
                            }
                            cache.append(g.pos, kg, vg);
                        }
                    }
                    Op::Glu { activation } => {
                        let (g, u, out) = (view(act(&a[0])), view(act(&a[1])), view_mut(act(&a[2])));
                        match activation {
                            unicorn_ir::spec::Activation::Silu => glu_silu(g, u, out),
                            unicorn_ir::spec::Activation::GeluTanh => glu_gelu_tanh(g, u, out),
                        }
                    }
                    Op::Add => add(view(act(&a[0])), view(act(&a[1])), view_mut(act(&a[2]))),
                    Op::SelectRows => {
                        let (x, out) = (act(&a[0]), act(&a[1]));
                        let (xs, ys, w) = (view(x), view_mut(out), x.width as usize);
                        for ((r, src), dst) in runs.iter().zip(&segs[0]).zip(&segs[out.arena.0 as usize]) {
                            // The run's last `keep` rows, to the last `keep` rows of its segment of the result (all
                            // of it in the kept-rows arena; its one row in decode).
                            let from = &xs[(src.row + src.rows - r.keep) * w..(src.row + src.rows) * w];
                            ys[(dst.row + dst.rows - r.keep) * w..(dst.row + dst.rows) * w].copy_from_slice(from);
                        }
                    }
                    Op::Tokens | Op::Output => {}
                }
            }
            if let (Some(t), Some(p)) = (started, self.profile.as_mut()) {
                let e = p.entry(kernel_name(model, step).to_string()).or_default();
                e.0 += t.elapsed();
                e.1 += step.ops.len();
            }
        }
        logits.clear();
        logits.extend_from_slice(view(&plan.result));
        self.segs = segs;
        Ok(())
    }

    fn enable_profile(&mut self) {
        self.profile.get_or_insert_with(Default::default);
    }

    fn npu_counts(&self) -> Option<[NpuCounts; 2]> {
        self.npu.is_some().then_some(self.npu_counts)
    }

    fn profile(&self) -> Vec<(String, f64, usize)> {
        let mut v: Vec<_> = self.profile.iter().flatten().map(|(k, (d, n))| (k.clone(), d.as_secs_f64(), *n)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

fn kernel_name<'a>(model: &'a Model, step: &Step) -> &'a str {
    &model.header().kernels[step.kernel.0 as usize].name
}
