//! The Vulkan executor: a plan's generated kernels run on a GPU through [`super::hal`].
//!
//! At load it creates every pipeline of the kernel table once, uploads the weights once into device-local
//! buffers of at most the device's `maxStorageBufferRange` each (every weight inside one), and allocates the
//! two activation arenas for the largest execution; each sequence gets a KV cache per layer on the device at the
//! plan's KV dtype. Descriptor sets are written once: per step, and per step and sequence for the attention
//! steps that bind a sequence's cache. An execution is a list of launches (a dispatch each, with rows and where
//! each activation slot starts as push constants) and the launches' positions, which the kernels read from the
//! launch values buffer ([`unicorn_ir::plan::vulkan_abi::VALUES_BINDING`]). The first execution of a list records it into a command buffer
//! that is kept ([`Replay`]); every later execution of the same list — the next decode step, the next full
//! prefill chunk — only writes the token ids and the positions to small host-visible buffers, submits the kept
//! command buffer once and reads back the kept rows' logits (or, greedy, their token ids): no recording, no
//! allocation and no pipeline creation per token. Decode's attention launches as many key ranges as the next
//! power of two above what its keys need, so one recording serves a span of positions.
//!
//! Most launches cover every row of the execution, so a batch of sequences reads each weight once; RoPE,
//! attention and the row selection run per sequence, at its own position and over its own cache.

use super::hal::{Buffer, Gpu, Kernel, Place, Replay, SetRef, Sets, Stream};
use crate::executor::{kernel_runs_op, Executor, SeqId, SeqRun, MAX_BATCH};
use crate::model::Model;
use crate::Error;
use std::collections::BTreeMap;
use unicorn_ir::container::SectionKind;
use unicorn_ir::plan::vulkan_abi::{
    argmax_scratch_words, attention_scratch_words, attention_splits, top_k_groups, top_k_scratch_words, ARGMAX_GROUPS,
    ATTN_MAX_SPLITS, MAX_BUFFERS, MAX_TOP_K, PUSH_WORDS, TOP_K_WORDS, WIDE,
};
use unicorn_ir::plan::{ActSlot, Arg, Backend, Expr, KernelEntry, Vars};
use unicorn_ir::quant::WeightLayout;
use unicorn_ir::validate::Capabilities;
use unicorn_ir::{DType, Op, Phase, WeightFormat};

/// What the Vulkan executor runs: the Vulkan target's kernels (a SPIR-V artifact, at most [`MAX_BUFFERS`]
/// bindings; one op each, or a group of matmuls of one operand), weights in the layouts those kernels read, f32 activations, f32 or f16 KV caches.
pub struct VulkanCapabilities;

impl Capabilities for VulkanCapabilities {
    fn name(&self) -> &str {
        "vulkan"
    }

    fn reads_weight(&self, format: WeightFormat, layout: WeightLayout) -> bool {
        layout == if format.is_quantized() { WeightLayout::Interleaved8 } else { WeightLayout::Rows }
    }

    fn runs_kernel(&self, kernel: &KernelEntry, ops: &[Op]) -> bool {
        kernel.backend == Backend::Vulkan
            && kernel.artifact.is_some()
            && kernel.bindings.len() <= MAX_BUFFERS
            && fused_kernel_runs(&kernel.name, ops)
    }

    fn holds_activation(&self, dtype: DType) -> bool {
        dtype == DType::F32
    }

    fn holds_kv(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::F16)
    }
}

/// Whether a (possibly fused) kernel belongs to a launch's ops: a fused kernel's name joins its units' names
/// with `+` (`rms_norm+gemv3_q4_0_dot`), and each unit's ops must be those its part names.
fn fused_kernel_runs(name: &str, ops: &[Op]) -> bool {
    let parts: Vec<&str> = name.split('+').collect();
    let units: Vec<_> = unicorn_ir::plan::units(ops).collect();
    parts.len() == units.len()
        && parts.iter().zip(&units).all(|(part, u)| ops[u.ops.clone()].iter().all(|op| kernel_runs_op(part, op)))
}

/// How the executor lays itself out on the device; the defaults are the device's limits.
#[derive(Debug, Clone, Copy, Default)]
pub struct VulkanOptions {
    /// Most bytes of weights bound as one storage buffer (default and ceiling: the device's
    /// `maxStorageBufferRange`); smaller values split the weights into more buffers.
    pub max_weight_binding: Option<u64>,
    /// Keep the weights, the KV caches and the activations in memory the host does not map, written through
    /// staging copies, whatever the device offers (a discrete GPU places them so by itself): to test that
    /// path on devices whose memory is all mappable.
    pub stage_device_buffers: bool,
    /// Run the plan's decode only (a hybrid plan, whose prefill runs elsewhere): no pipeline for the other
    /// kernels, no descriptor sets or arena rows for prefill's launches.
    pub decode_only: bool,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Where a step's descriptor set is: shared by every execution, or one per sequence (it binds a KV cache).
#[derive(Clone, Copy)]
enum SetAt {
    Shared(usize),
    PerSeq(usize),
}

struct PhaseSets {
    shared: Sets,
    /// Per step.
    at: Vec<SetAt>,
    /// Steps that bind a KV cache, in order (what a sequence's sets are made for).
    kv_steps: Vec<usize>,
}

struct GpuSeq {
    /// One buffer per layer: the keys, then the values.
    kv: Vec<Buffer>,
    /// Ring capacity per layer.
    caps: Vec<u32>,
    ctx: usize,
    /// Per phase, the sets of that phase's KV steps.
    sets: [Sets; 2],
}

/// One launch of an execution as it is recorded: everything but its position (a launch values word).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Planned {
    kernel: u32,
    set: SetRef,
    push: [u32; PUSH_WORDS],
    groups: [u32; 3],
}

/// What follows an execution's launches: the kept rows' logits copied to the readback buffer, or the launch of
/// the argmax or top-k kernel that picks from them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    Logits { arena: usize, offset: u64, len: u64 },
    Pick(Planned),
}

/// An execution as recorded; equal executions replay one recording.
#[derive(Clone, PartialEq, Eq)]
struct Recording {
    launches: Vec<Planned>,
    tail: Tail,
}

/// Recordings kept at most, the most recently used first (an execution is compared with them in turn, which
/// for the usual case — the next decode step — is one comparison); past it the least recently used goes. A
/// long prompt's last chunk, each decode batch shape and each power of two of attention ranges make one.
const MAX_REPLAYS: usize = 64;

/// A run's rows in one arena, with the position of its first row.
#[derive(Clone, Copy)]
struct Segment {
    row: u64,
    rows: u64,
    pos: u64,
}

pub struct VulkanExecutor<'m> {
    model: &'m Model,
    gpu: Gpu,
    name: String,
    /// By kernel-table index; `None` for a kernel of a phase this executor does not run.
    kernels: Vec<Option<Kernel>>,
    /// Which phases it runs, prefill then decode.
    runs: [bool; 2],
    /// The weights, split into bindable chunks.
    weights: Vec<Buffer>,
    /// Per weight: its chunk and its first word there.
    weight_at: Vec<(usize, u32)>,
    /// Arena 0 (the execution's rows) and arena 1 (the kept rows).
    arenas: [Buffer; 2],
    /// Rows each arena has room for.
    arena_rows: [u64; 2],
    tokens: Buffer,
    readback: Buffer,
    /// The greedy tokens the plan's argmax kernel writes, one per kept row.
    ids: Buffer,
    /// The plan's argmax kernel and its set per phase (binding that phase's result arena and `ids`).
    argmax: Option<(u32, Sets)>,
    /// The candidates the plan's top-k kernel writes ([`TOP_K_WORDS`] a kept row), its scratch, and the kernel
    /// with its set per phase (binding that phase's result arena, the candidates and the scratch).
    cands: Buffer,
    top_k: Option<(u32, Sets, Buffer)>,
    phases: [PhaseSets; 2],
    seqs: Vec<Option<GpuSeq>>,
    stream: Stream,
    /// The execution being made: its launches, and their positions (written to `values` before a submission).
    rec: Recording,
    positions: Vec<u32>,
    values: Buffer,
    replays: Vec<(Recording, Replay)>,
    /// Executions run, and recordings made for them.
    executions: u64,
    recorded: u64,
    segs: [Vec<Segment>; 2],
    profile: Option<BTreeMap<String, (f64, usize)>>,
    max_groups: [u32; 3],
    /// Per layer, the bytes of split-attention partials its KV binding holds after the cache.
    split_bytes: Vec<u64>,
}

fn phase_index(p: Phase) -> usize {
    match p {
        Phase::Prefill => 0,
        Phase::Decode => 1,
    }
}

fn plan_err(model: &Model, e: impl std::fmt::Display) -> Error {
    Error::Plan(format!("{}: {e}", model.path().display()))
}

/// Whether a step's launch runs once per sequence (it depends on the sequence's position or rows).
fn per_run(op: &Op) -> bool {
    matches!(op, Op::Rope { .. } | Op::Attention { .. } | Op::SelectRows)
}

/// The executions' largest row counts: a full prefill chunk, or a full decode batch (decode only: the batch).
fn most_rows(model: &Model, runs: [bool; 2]) -> u64 {
    if runs[0] {
        model.header().prefill_chunk.max(MAX_BATCH as u64)
    } else {
        MAX_BATCH as u64
    }
}

impl<'m> VulkanExecutor<'m> {
    /// Open Vulkan device `index` and make the plan resident there.
    pub fn new(model: &'m Model, index: u32, options: VulkanOptions) -> Result<Self, Error> {
        let gpu = Gpu::open(index as usize).map_err(Error::Input)?;
        gpu.stage_device_buffers(options.stage_device_buffers);
        let name = format!("vulkan:{index}");
        let h = model.header();
        let info = gpu.info().clone();
        let limit = info.max_storage_buffer_range as u64 & !3;
        let weight_limit = limit.min(options.max_weight_binding.unwrap_or(u64::MAX)) & !3;
        let dev_err = |what: &str, e: String| Error::Input(format!("{name} ({}): {what}: {e}", info.name));
        let runs = [!options.decode_only, true];
        let phases_run = || [Phase::Prefill, Phase::Decode].into_iter().filter(move |&p| runs[phase_index(p)]);
        // The kernels of the phases it runs, and the plan's token pickers.
        let mut used = vec![false; h.kernels.len()];
        for p in phases_run() {
            for st in &model.plan().phase(p).steps {
                used[st.kernel.0 as usize] = true;
            }
        }
        for id in h.argmax.iter().chain(&h.top_k) {
            used[id.0 as usize] = true;
        }

        // Kernels: first what each needs of the device, checked before anything is made.
        let profile = info.profile();
        for (i, k) in h.kernels.iter().enumerate().filter(|&(i, _)| used[i]) {
            if k.backend != Backend::Vulkan {
                return Err(plan_err(model, format!("kernels[{i}] ({}) is not a Vulkan kernel", k.name)));
            }
            if let Some(f) = profile.missing(&k.requires) {
                return Err(plan_err(
                    model,
                    format!(
                        "kernels[{i}] ({}) needs {f}, which {name} ({}) lacks; compile the plan with \
                         --device-profile {name} (or generic)",
                        k.name, info.name
                    ),
                ));
            }
        }
        // Then every artifact must be SPIR-V; one pipeline each, made once.
        let section = model.section(SectionKind::Kernels).unwrap_or(&[]);
        let mut kernels = Vec::with_capacity(h.kernels.len());
        for (i, k) in h.kernels.iter().enumerate() {
            if !used[i] {
                kernels.push(None);
                continue;
            }
            let a = k.artifact.expect("validated: a Vulkan kernel has an artifact");
            let bytes = &section[a.offset as usize..(a.offset + a.len) as usize];
            let field = format!("kernels[{i}] ({})", k.name);
            if bytes.len() < 20 || !bytes.len().is_multiple_of(4) || bytes[..4] != 0x0723_0203u32.to_le_bytes() {
                return Err(plan_err(model, format!("{field}: the artifact is not a SPIR-V module")));
            }
            let words: Vec<u32> = bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4"))).collect();
            let entry = std::ffi::CString::new(k.entry.as_str())
                .map_err(|_| plan_err(model, format!("{field}: the entry point name holds a NUL")))?;
            let kernel = gpu
                .kernel(&words, &entry, k.bindings.len() as u32, (PUSH_WORDS * 4) as u32)
                .map_err(|e| plan_err(model, format!("{field}: {e}")))?;
            kernels.push(Some(kernel));
        }

        // Weights: chunks of at most `weight_limit` bytes, each weight inside one.
        let wsec = model.section(SectionKind::Weights).unwrap_or(&[]);
        let mut order: Vec<usize> = (0..h.weights.len()).collect();
        order.sort_by_key(|&i| h.weights[i].offset);
        let mut spans: Vec<(u64, u64)> = Vec::new();
        let mut weight_at = vec![(0usize, 0u32); h.weights.len()];
        for &i in &order {
            let w = &h.weights[i];
            // The kernels read quantized blocks 16 bytes at a time.
            if !w.offset.is_multiple_of(16) {
                return Err(plan_err(
                    model,
                    format!("weights[{i}] ({}): offset {} is not 16-byte aligned", w.name, w.offset),
                ));
            }
            if w.bytes > weight_limit {
                return Err(dev_err(
                    "weights",
                    format!(
                        "{} is {}, above the largest buffer the device binds ({})",
                        w.name,
                        mib(w.bytes),
                        mib(weight_limit)
                    ),
                ));
            }
            match spans.last_mut() {
                Some((start, end)) if w.offset + w.bytes - *start <= weight_limit => {
                    *end = (*end).max(w.offset + w.bytes)
                }
                _ => spans.push((w.offset, w.offset + w.bytes)),
            }
            let (start, _) = *spans.last().expect("pushed");
            weight_at[i] = (spans.len() - 1, ((w.offset - start) / 4) as u32);
        }
        let mut weights = Vec::with_capacity(spans.len());
        let total: u64 = spans.iter().map(|(a, b)| b - a).sum();
        for &(start, end) in &spans {
            let mut b = gpu
                .buffer_in(end - start, Place::Device)
                .map_err(|e| dev_err(&format!("the weights ({} in all)", mib(total)), e))?;
            b.write(0, &wsec[start as usize..end as usize]).map_err(|e| dev_err("uploading the weights", e))?;
            weights.push(b);
        }

        // Arenas for the largest execution, within one binding each.
        let rows = most_rows(model, runs);
        let row_bytes =
            |a: usize| phases_run().map(|p| model.plan().phase(p).arenas[a].row_bytes).max().unwrap_or(0).max(4);
        let mut arena_rows = [0u64; 2];
        for (a, r) in arena_rows.iter_mut().enumerate() {
            *r = rows.min(limit / row_bytes(a));
            if *r == 0 {
                return Err(dev_err(
                    "activations",
                    format!("one row of arena {a} is {}, above the largest buffer the device binds", mib(row_bytes(a))),
                ));
            }
        }
        let arena = |a: usize| {
            gpu.buffer_in(row_bytes(a) * arena_rows[a], Place::Device).map_err(|e| dev_err("the activations", e))
        };
        let arenas = [arena(0)?, arena(1)?];
        let tokens = gpu.buffer_in(4 * rows, Place::Host).map_err(|e| dev_err("the token ids", e))?;
        // A launch values word per launch of the largest execution (a decode batch runs the per-sequence steps
        // once per sequence, attention up to twice), and one for the argmax launch.
        let launches: usize = phases_run()
            .map(|ph| {
                let p = model.plan().phase(ph);
                p.steps.iter().map(|s| if per_run(&s.ops[0]) { 2 * MAX_BATCH } else { 1 }).sum::<usize>()
            })
            .max()
            .unwrap_or(0)
            + 1;
        let values = gpu.buffer_in(4 * launches as u64, Place::Host).map_err(|e| dev_err("the launch values", e))?;
        let vocab = h.spec.vocab_size as u64;
        let readback = gpu.buffer_in(4 * vocab * arena_rows[1], Place::Host).map_err(|e| dev_err("the logits", e))?;

        let mut phases = Vec::with_capacity(2);
        for phase in [Phase::Prefill, Phase::Decode] {
            if !runs[phase_index(phase)] {
                let none = gpu.sets(&[], &values).map_err(|e| dev_err("descriptor sets", e))?;
                phases.push(PhaseSets { shared: none, at: Vec::new(), kv_steps: Vec::new() });
                continue;
            }
            let p = model.plan().phase(phase);
            let mut at = Vec::with_capacity(p.steps.len());
            let mut kv_steps = Vec::new();
            let mut entries: Vec<(usize, Vec<&Buffer>)> = Vec::new();
            for (i, st) in p.steps.iter().enumerate() {
                if st.args.iter().any(|a| matches!(a, Arg::Kv(_))) {
                    at.push(SetAt::PerSeq(kv_steps.len()));
                    kv_steps.push(i);
                    continue;
                }
                at.push(SetAt::Shared(entries.len()));
                entries.push((st.kernel.0 as usize, bound(&st.args, &arenas, &weights, &weight_at, &tokens, None)));
            }
            let list: Vec<(&Kernel, &[&Buffer])> =
                entries.iter().map(|(k, b)| (used_kernel(&kernels, *k), b.as_slice())).collect();
            let shared = gpu.sets(&list, &values).map_err(|e| dev_err("descriptor sets", e))?;
            phases.push(PhaseSets { shared, at, kv_steps });
        }
        let phases: [PhaseSets; 2] = match phases.try_into() {
            Ok(p) => p,
            Err(_) => unreachable!("two phases"),
        };
        // The greedy tokens, then the argmax kernel's scratch, zero to begin with.
        let id_words = arena_rows[1] * (1 + argmax_scratch_words());
        let mut ids = gpu.buffer_in(4 * id_words, Place::Host).map_err(|e| dev_err("the greedy tokens", e))?;
        ids.write(0, &vec![0u8; 4 * id_words as usize]).map_err(|e| dev_err("the greedy tokens", e))?;
        let argmax = match h.argmax {
            Some(id) => {
                let k = used_kernel(&kernels, id.0 as usize);
                let per_phase: Vec<[&Buffer; 2]> = [Phase::Prefill, Phase::Decode]
                    .iter()
                    .map(|&ph| [&arenas[model.plan().phase(ph).result.arena.0 as usize], &ids])
                    .collect();
                let list: Vec<(&Kernel, &[&Buffer])> = per_phase.iter().map(|b| (k, &b[..])).collect();
                Some((id.0, gpu.sets(&list, &values).map_err(|e| dev_err("descriptor sets", e))?))
            }
            None => None,
        };
        // The sampling candidates (read back), and the top-k kernel's scratch (zero, as buffers begin).
        let cands = gpu
            .buffer_in(4 * arena_rows[1] * TOP_K_WORDS, Place::Host)
            .map_err(|e| dev_err("the sampling candidates", e))?;
        let top_k = match h.top_k {
            Some(id) => {
                let scratch_bytes = 4 * arena_rows[1] * top_k_scratch_words(h.spec.vocab_size as u64);
                let scratch =
                    gpu.buffer_in(scratch_bytes, Place::Device).map_err(|e| dev_err("the top-k scratch", e))?;
                let k = used_kernel(&kernels, id.0 as usize);
                let per_phase: Vec<[&Buffer; 3]> = [Phase::Prefill, Phase::Decode]
                    .iter()
                    .map(|&ph| [&arenas[model.plan().phase(ph).result.arena.0 as usize], &cands, &scratch])
                    .collect();
                let list: Vec<(&Kernel, &[&Buffer])> = per_phase.iter().map(|b| (k, &b[..])).collect();
                let sets = gpu.sets(&list, &values).map_err(|e| dev_err("descriptor sets", e))?;
                Some((id.0, sets, scratch))
            }
            None => None,
        };
        // Room for a timestamp per launch of the largest execution.
        let stream = gpu.stream(launches as u32).map_err(|e| dev_err("a command stream", e))?;
        let mut split_bytes = vec![0u64; h.kv_caches.len()];
        for st in h.phases.iter().flat_map(|p| &p.steps) {
            if let Some(Op::Attention { layer, num_heads, head_dim, .. }) =
                st.ops.iter().find(|o| matches!(o, Op::Attention { .. }))
            {
                if let Some(b) = split_bytes.get_mut(*layer) {
                    *b = (*b).max(4 * attention_scratch_words(*num_heads as u64, *head_dim as u64));
                }
            }
        }
        Ok(Self {
            split_bytes,
            model,
            name,
            max_groups: info.max_workgroup_count,
            gpu,
            kernels,
            runs,
            weights,
            weight_at,
            arenas,
            arena_rows,
            tokens,
            readback,
            ids,
            argmax,
            cands,
            top_k,
            phases,
            seqs: Vec::new(),
            stream,
            rec: Recording { launches: Vec::new(), tail: Tail::Logits { arena: 0, offset: 0, len: 0 } },
            positions: Vec::new(),
            values,
            replays: Vec::new(),
            executions: 0,
            recorded: 0,
            segs: [Vec::new(), Vec::new()],
            profile: None,
        })
    }

    /// Buffers a step binds for sequence `seq` (its KV cache where the step has one).
    fn step_buffers<'a>(&'a self, args: &[Arg], seq: Option<&'a GpuSeq>) -> Vec<&'a Buffer> {
        bound(args, &self.arenas, &self.weights, &self.weight_at, &self.tokens, seq.map(|s| s.kv.as_slice()))
    }
}

impl VulkanExecutor<'_> {
    /// Write each `(offset, bytes)` region into layer `layer`'s cache buffer of sequence `seq` (the keys from
    /// byte 0, the values after `KVH x cap x HD` elements: [`KvCacheDecl`](unicorn_ir::plan::KvCacheDecl)'s
    /// layout), in one transfer where the buffer is not mapped.
    pub fn write_cache(&mut self, seq: SeqId, layer: usize, regions: &[(u64, &[u8])]) -> Result<(), Error> {
        let name = self.name.clone();
        let b = self.cache_buffer(seq, layer)?;
        if regions.iter().any(|&(offset, bytes)| offset.saturating_add(bytes.len() as u64) > b.len()) {
            return Err(Error::Input(format!("{name}: a write past layer {layer}'s cache")));
        }
        b.write_regions(regions).map_err(|e| Error::Input(format!("{name}: writing the KV cache: {e}")))
    }

    /// Each `(offset, len)` region of layer `layer`'s cache buffer of sequence `seq` ([`Self::write_cache`]).
    pub fn read_cache(&mut self, seq: SeqId, layer: usize, regions: &[(u64, u64)]) -> Result<Vec<Vec<u8>>, Error> {
        let name = self.name.clone();
        let b = self.cache_buffer(seq, layer)?;
        if regions.iter().any(|&(offset, len)| offset.saturating_add(len) > b.len()) {
            return Err(Error::Input(format!("{name}: a read past layer {layer}'s cache")));
        }
        b.fetch_regions(regions).map_err(|e| Error::Input(format!("{name}: reading the KV cache: {e}")))
    }

    fn cache_buffer(&mut self, seq: SeqId, layer: usize) -> Result<&mut Buffer, Error> {
        let name = &self.name;
        self.seqs
            .get_mut(seq.0)
            .and_then(Option::as_mut)
            .and_then(|s| s.kv.get_mut(layer))
            .ok_or_else(|| Error::Input(format!("{name}: no layer {layer} cache for sequence {}", seq.0)))
    }
}

/// The pipeline of kernel `i`, which a launch of a phase the executor runs uses (so it was made).
fn used_kernel(kernels: &[Option<Kernel>], i: usize) -> &Kernel {
    kernels[i].as_ref().expect("a kernel of a phase the executor runs has a pipeline")
}

/// The buffers a step's arguments bind, in order: the arena of each activation, the chunk of each weight,
/// the token ids, and the layer's cache in `kv` (none without it); scalars bind nothing.
fn bound<'a>(
    args: &[Arg],
    arenas: &'a [Buffer; 2],
    weights: &'a [Buffer],
    weight_at: &[(usize, u32)],
    tokens: &'a Buffer,
    kv: Option<&'a [Buffer]>,
) -> Vec<&'a Buffer> {
    args.iter()
        .filter_map(|a| match a {
            Arg::Act(s) => Some(&arenas[s.arena.0 as usize]),
            Arg::Weight(w) => Some(&weights[weight_at[w.0 as usize].0]),
            Arg::Tokens => Some(tokens),
            Arg::Kv(l) => kv.map(|c| &c[*l as usize]),
            Arg::Scalar(_) => None,
        })
        .collect()
}

/// The value of a work-size expression, or an error naming the step.
fn eval(e: &Expr, v: Vars, label: &str) -> Result<u32, Error> {
    e.eval(v)
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| Error::Input(format!("step {label}: work size {e} overflows")))
}

impl Executor for VulkanExecutor<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn add_sequence(&mut self, ctx: usize) -> Result<SeqId, Error> {
        let h = self.model.header();
        let ctx = ctx.clamp(1, h.spec.max_context);
        let need = h.kv_cache_bytes(ctx as u64);
        let mut kv = Vec::with_capacity(h.kv_caches.len());
        let mut caps = Vec::with_capacity(h.kv_caches.len());
        for (c, split) in h.kv_caches.iter().zip(&self.split_bytes) {
            let bytes = c.bytes(ctx as u64).unwrap_or(u64::MAX).saturating_add(*split);
            let b = self.gpu.buffer_in(bytes, Place::Device).map_err(|e| {
                Error::Input(format!("{}: the KV cache for {ctx} positions needs {}: {e}", self.name, mib(need)))
            })?;
            kv.push(b);
            caps.push(c.positions(ctx as u64) as u32);
        }
        let mut seq = GpuSeq { kv, caps, ctx, sets: [self.empty_sets()?, self.empty_sets()?] };
        for (pi, phase) in [Phase::Prefill, Phase::Decode].into_iter().enumerate() {
            let p = self.model.plan().phase(phase);
            let bufs: Vec<Vec<&Buffer>> =
                self.phases[pi].kv_steps.iter().map(|&i| self.step_buffers(&p.steps[i].args, Some(&seq))).collect();
            let list: Vec<(&Kernel, &[&Buffer])> = self.phases[pi]
                .kv_steps
                .iter()
                .zip(&bufs)
                .map(|(&i, b)| (used_kernel(&self.kernels, p.steps[i].kernel.0 as usize), b.as_slice()))
                .collect();
            let sets = self.gpu.sets(&list, &self.values).map_err(|e| Error::Input(format!("{}: {e}", self.name)))?;
            drop(list);
            drop(bufs);
            seq.sets[pi] = sets;
        }
        Ok(crate::executor::insert_sequence(&mut self.seqs, seq))
    }

    fn remove_sequence(&mut self, seq: SeqId) {
        // The recordings bind the sequence's sets, which go with it.
        self.replays.clear();
        crate::executor::remove_sequence(&mut self.seqs, seq)
    }

    fn execute(&mut self, phase: Phase, runs: &[SeqRun], logits: &mut Vec<f32>) -> Result<(), Error> {
        let (keep, at) = self.plan_launches(phase, runs)?;
        let plan = self.model.plan().phase(phase);
        // The kept rows' logits: the whole result slot (in decode every row is kept, so either arena holds them).
        let len = plan.result.width * 4 * keep;
        self.rec.tail = Tail::Logits { arena: plan.result.arena.0 as usize, offset: at * 4, len };
        self.submit()?;
        logits.resize(keep as usize * self.model.header().spec.vocab_size, 0.0);
        let bytes: &mut [u8] = bytemuck_f32(logits);
        self.readback.read_into(0, bytes);
        Ok(())
    }

    fn execute_greedy(&mut self, phase: Phase, runs: &[SeqRun], ids: &mut Vec<u32>) -> Result<(), Error> {
        let Some((kernel, sets)) = &self.argmax else {
            return crate::executor::greedy_on_host(self, phase, runs, ids);
        };
        let (kernel, set) = (*kernel, sets.sets[phase_index(phase)]);
        let (keep, at) = self.plan_launches(phase, runs)?;
        // The greedy token of each kept row, picked where its logits are: 4 bytes a row come back.
        let mut push = [0u32; PUSH_WORDS];
        push[0] = keep as u32;
        push[1] = self.positions.len() as u32;
        push[3] = self.arena_rows[1] as u32;
        push[5] = u32::try_from(at).map_err(|_| Error::Input("the logits' offset overflows 32 bits".into()))?;
        self.positions.push(0);
        self.rec.tail = Tail::Pick(Planned { kernel, set, push, groups: [ARGMAX_GROUPS, keep as u32, 1] });
        self.submit()?;
        ids.resize(keep as usize, 0);
        let bytes: &mut [u8] = bytemuck_u32_mut(ids);
        self.ids.read_into(0, bytes);
        Ok(())
    }

    fn execute_top_k(
        &mut self,
        phase: Phase,
        runs: &[SeqRun],
        k: usize,
        cands: &mut Vec<(f32, u32)>,
    ) -> Result<(), Error> {
        let Some((kernel, sets, _)) = self.top_k.as_ref().filter(|_| (1..=MAX_TOP_K as usize).contains(&k)) else {
            return crate::executor::top_k_on_host(self, phase, runs, k, cands);
        };
        let (kernel, set) = (*kernel, sets.sets[phase_index(phase)]);
        let (keep, at) = self.plan_launches(phase, runs)?;
        // Each kept row's k largest logits, picked where they are: 8k bytes a row come back.
        let mut push = [0u32; PUSH_WORDS];
        push[0] = keep as u32;
        push[1] = self.positions.len() as u32;
        push[2] = k as u32;
        push[5] = u32::try_from(at).map_err(|_| Error::Input("the logits' offset overflows 32 bits".into()))?;
        self.positions.push(0);
        let groups = [top_k_groups(self.model.header().spec.vocab_size as u64) as u32, keep as u32, 1];
        self.rec.tail = Tail::Pick(Planned { kernel, set, push, groups });
        self.submit()?;
        let words = keep as usize * TOP_K_WORDS as usize;
        let mut raw = vec![0u32; words];
        self.cands.read_into(0, bytemuck_u32_mut(&mut raw));
        cands.clear();
        for row in raw.chunks(TOP_K_WORDS as usize) {
            cands.extend(row.chunks(2).take(k).map(|p| match p[1] {
                u32::MAX => (f32::NEG_INFINITY, u32::MAX),
                id => (f32::from_bits(p[0]), id),
            }));
        }
        Ok(())
    }

    fn enable_profile(&mut self) {
        self.profile.get_or_insert_with(Default::default);
    }

    fn recordings(&self) -> Option<(u64, u64)> {
        Some((self.executions, self.recorded))
    }

    fn profile(&self) -> Vec<(String, f64, usize)> {
        let mut v: Vec<_> = self.profile.iter().flatten().map(|(k, (d, n))| (k.clone(), *d, *n)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

impl VulkanExecutor<'_> {
    /// The launches of `phase` over `runs` into `rec` and their positions into `positions` (the token ids are
    /// written to their buffer here); the kept rows and the first word of the result slot in its arena.
    fn plan_launches(&mut self, phase: Phase, runs: &[SeqRun]) -> Result<(u64, u64), Error> {
        if !self.runs[phase_index(phase)] {
            return Err(Error::Input(format!("{}: this executor runs the plan's decode only", self.name)));
        }
        let model = self.model;
        let h = model.header();
        let plan = model.plan().phase(phase);
        let (s, keep) = crate::executor::check_runs(h, phase, runs, |id| {
            self.seqs.get(id.0).and_then(Option::as_ref).map(|q| q.ctx)
        })?;
        for (a, rows) in [s, keep].into_iter().enumerate() {
            if rows as u64 > self.arena_rows[a] {
                return Err(Error::Input(format!(
                    "{}: {rows} rows of arena {a} do not fit the largest buffer the device binds ({} rows); use a \
                     smaller --prefill-chunk",
                    self.name, self.arena_rows[a]
                )));
            }
        }
        let (s64, keep64) = (s as u64, keep as u64);
        // The token ids straight into the mapped buffer, run after run.
        let mut at = 0;
        for r in runs {
            let bytes: &[u8] = bytemuck_u32(r.tokens);
            self.tokens.write(at, bytes).map_err(Error::Input)?;
            at += bytes.len() as u64;
        }
        let mut segs = std::mem::take(&mut self.segs);
        segs.iter_mut().for_each(Vec::clear);
        let (mut row, mut kept) = (0u64, 0u64);
        for r in runs {
            let (n, k) = (r.tokens.len() as u64, r.keep as u64);
            segs[0].push(Segment { row, rows: n, pos: r.pos as u64 });
            segs[1].push(Segment { row: kept, rows: k, pos: (r.pos + r.tokens.len() - r.keep) as u64 });
            row += n;
            kept += k;
        }
        // A slot's first word: slots are laid out per row, so their starts scale with the arena's rows.
        let start = |slot: &ActSlot| slot.offset / 4 * if slot.arena.0 == 0 { s64 } else { keep64 };
        let pi = phase_index(phase);
        self.rec.launches.clear();
        self.positions.clear();
        let vars = Vars { s: s64, r: keep64, pos: runs[0].pos as u64 };
        let mut push = [0u32; PUSH_WORDS];
        for (i, step) in plan.steps.iter().enumerate() {
            let op = &step.ops[0];
            // Per-sequence steps launch once per run, offset to its rows; the others once over every row.
            let n_launch = if per_run(op) { runs.len() } else { 1 };
            for j in 0..n_launch {
                let (run_vars, seg) = if per_run(op) {
                    let r = &runs[j];
                    (Vars { s: r.tokens.len() as u64, r: r.keep as u64, pos: r.pos as u64 }, Some(j))
                } else {
                    (vars, None)
                };
                let (mut b, mut acts) = (0, 0);
                let mut first_slot: Option<ActSlot> = None;
                for a in &step.args {
                    let base = match a {
                        Arg::Act(slot) => {
                            first_slot.get_or_insert(*slot);
                            acts += 1;
                            let mut w = start(slot);
                            if let Some(j) = seg {
                                let g = segs[slot.arena.0 as usize][j];
                                // select_rows writes a run's last `keep` rows of its segment of the result.
                                let row = if matches!(op, Op::SelectRows) && acts == 2 {
                                    g.row + g.rows - runs[j].keep as u64
                                } else {
                                    g.row
                                };
                                w += row * slot.width;
                            }
                            w
                        }
                        Arg::Weight(id) => self.weight_at[id.0 as usize].1 as u64,
                        Arg::Kv(_) | Arg::Tokens => 0,
                        Arg::Scalar(_) => continue,
                    };
                    push[5 + b] = u32::try_from(base)
                        .map_err(|_| Error::Input(format!("step {}: a buffer offset overflows 32 bits", step.label)))?;
                    b += 1;
                }
                let (rows, pos) = match seg {
                    Some(j) => {
                        let x = first_slot.expect("a per-sequence step reads an activation");
                        let g = segs[x.arena.0 as usize][j];
                        (g.rows, g.pos)
                    }
                    // The launch's rows are those of its result (the kept rows for a slot of arena 1).
                    None => {
                        let out = step.args.iter().rev().find_map(|a| match a {
                            Arg::Act(slot) => Some(slot.arena.0),
                            _ => None,
                        });
                        (if out == Some(1) { keep64 } else { s64 }, vars.pos)
                    }
                };
                push[0] = rows as u32;
                let pos = u32::try_from(pos)
                    .map_err(|_| Error::Input(format!("step {}: position {pos} overflows 32 bits", step.label)))?;
                push[2] = run_vars.r as u32;
                push[4] = 0;
                let mut groups = [0u32; 3];
                for (d, e) in step.work.iter().enumerate() {
                    groups[d] = eval(e, run_vars, &step.label)?;
                }
                let set = match self.phases[pi].at[i] {
                    SetAt::Shared(k) => self.phases[pi].shared.sets[k],
                    SetAt::PerSeq(k) => {
                        let seq = self.seqs[runs[seg.unwrap_or(0)].seq.0].as_ref().expect("checked above");
                        seq.sets[pi].sets[k]
                    }
                };
                // The attention of the step (after the ropes fused into it, where they are).
                let attention = step.ops.iter().find(|o| matches!(o, Op::Attention { .. }));
                if let Some(Op::Attention { layer, num_kv_heads, head_dim, window, .. }) = attention {
                    let seq = self.seqs[runs[seg.unwrap_or(0)].seq.0].as_ref().expect("checked above");
                    push[3] = seq.caps[*layer];
                    if let Some(splits) = attention_splits(rows, pos as u64, window.map(|w| w as u64)) {
                        // A decode row, flash-decoding: its keys in ranges, each attended by its own workgroups
                        // (which also append the row to the cache and combine the ranges). As many ranges as
                        // the next power of two, so that the recording serves the positions up to there (a
                        // range past the keys is empty: it adds nothing).
                        let splits = splits.next_power_of_two().min(ATTN_MAX_SPLITS) as u32;
                        (push[2], push[4]) = (splits, 2);
                        self.add_launch(step.kernel.0, set, &push, pos, [groups[0], groups[1], splits], &step.label)?;
                    } else {
                        self.add_launch(step.kernel.0, set, &push, pos, groups, &step.label)?;
                        push[4] = 1;
                        let append = [((num_kv_heads * head_dim / 2) as u32).div_ceil(WIDE), rows as u32, 1];
                        self.add_launch(step.kernel.0, set, &push, pos, append, &step.label)?;
                    }
                } else {
                    push[3] = 0;
                    self.add_launch(step.kernel.0, set, &push, pos, groups, &step.label)?;
                }
            }
        }
        self.segs = segs;
        Ok((keep64, start(&plan.result)))
    }

    /// Add a launch at position `pos` to the execution (none for an empty work size).
    fn add_launch(
        &mut self,
        kernel: u32,
        set: SetRef,
        push: &[u32; PUSH_WORDS],
        pos: u32,
        groups: [u32; 3],
        label: &str,
    ) -> Result<(), Error> {
        let max = self.max_groups;
        if groups.iter().zip(max).any(|(&g, m)| g > m) {
            return Err(Error::Input(format!(
                "step {label}: {groups:?} workgroups exceed the device's limit {max:?}; use a smaller --prefill-chunk"
            )));
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let mut push = *push;
        push[1] = self.positions.len() as u32;
        self.positions.push(pos);
        self.rec.launches.push(Planned { kernel, set, push, groups });
        Ok(())
    }

    /// Run the execution in `rec`: its positions written, its recording replayed (made and kept the first
    /// time), and waited for. Profiling, it is recorded afresh with timestamps and its launches added to the
    /// profile.
    fn submit(&mut self) -> Result<(), Error> {
        let err = |name: &str, e: String| Error::Input(format!("{name}: {e}"));
        if self.positions.len() as u64 * 4 > self.values.len() {
            return Err(Error::Input(format!(
                "{}: {} launches, above the plan's steps",
                self.name,
                self.positions.len()
            )));
        }
        self.values.write(0, bytemuck_u32(&self.positions)).map_err(|e| err(&self.name, e))?;
        self.executions += 1;
        if self.profile.is_some() {
            self.record(true).map_err(|e| err(&self.name, e))?;
            self.stream.submit_wait().map_err(|e| err(&self.name, e))?;
            let h = self.model.header();
            let times = self.stream.launch_seconds();
            let p = self.profile.as_mut().expect("profiling");
            let kernels = self.rec.launches.iter().chain(match &self.rec.tail {
                Tail::Pick(a) => Some(a),
                Tail::Logits { .. } => None,
            });
            for (l, t) in kernels.zip(times) {
                let e = p.entry(h.kernels[l.kernel as usize].name.clone()).or_default();
                e.0 += t;
                e.1 += 1;
            }
            return Ok(());
        }
        if let Some(i) = self.replays.iter().position(|(rec, _)| *rec == self.rec) {
            self.replays[..=i].rotate_right(1);
            return self.stream.replay(&self.replays[0].1).map_err(|e| err(&self.name, e));
        }
        self.record(false).map_err(|e| err(&self.name, e))?;
        self.recorded += 1;
        let r = self.stream.keep().map_err(|e| err(&self.name, e))?;
        self.stream.replay(&r).map_err(|e| err(&self.name, e))?;
        self.replays.truncate(MAX_REPLAYS - 1);
        self.replays.insert(0, (self.rec.clone(), r));
        Ok(())
    }

    /// Record the execution in `rec` into the stream.
    fn record(&mut self, timed: bool) -> Result<(), String> {
        self.stream.begin_timed(timed)?;
        for l in &self.rec.launches {
            self.stream.dispatch(used_kernel(&self.kernels, l.kernel as usize), l.set, &l.push, l.groups);
        }
        match self.rec.tail {
            // A prefill chunk before the last keeps no rows: nothing to copy (a copy of 0 bytes is invalid usage).
            Tail::Logits { len: 0, .. } => {}
            Tail::Logits { arena, offset, len } => {
                self.stream.copy(&self.arenas[arena], offset, &self.readback, 0, len)
            }
            Tail::Pick(l) if l.groups.contains(&0) => {}
            Tail::Pick(l) => {
                self.stream.dispatch(used_kernel(&self.kernels, l.kernel as usize), l.set, &l.push, l.groups)
            }
        }
        Ok(())
    }

    fn empty_sets(&self) -> Result<Sets, Error> {
        self.gpu.sets(&[], &self.values).map_err(|e| Error::Input(format!("{}: {e}", self.name)))
    }
}

// The buffers hold little-endian words, which the host's own slices are only on a little-endian host.
#[cfg(target_endian = "big")]
compile_error!("the Vulkan executor writes and reads buffers in host byte order, which must be little-endian");

/// The bytes of a u32 slice, as the kernels read them.
fn bytemuck_u32(v: &[u32]) -> &[u8] {
    // SAFETY: u32 has no padding; the byte slice covers exactly the same memory for the same lifetime.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// The bytes of an f32 slice, to read logits into in place.
fn bytemuck_u32_mut(v: &mut [u32]) -> &mut [u8] {
    // SAFETY: u32 has no padding and any bit pattern is a valid u32; the byte view has the same extent.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn bytemuck_f32(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: f32 has no invalid bit patterns and no padding; the byte slice covers exactly the same memory
    // and borrows it mutably for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}
