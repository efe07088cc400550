//! The executable plan: what `unicornc` writes and `unicorn-rt` runs, at the level of kernel launches. It is
//! stored as the header of a `.ucp` file (see [`crate::container`]); weights, kernels and the tokenizer live in
//! the file's sections.
//!
//! A plan declares everything an executor must allocate before it runs anything — the kernel table, the weights
//! in the format and layout their target chose, one KV cache per layer, and per phase the activation arenas —
//! and then lists each phase's launches. A [`Step`] names a kernel of the table, binds typed arguments (an
//! activation slot, a weight, a layer's KV cache, the token ids, a scalar), gives its work size as
//! [`Expr`]essions of the execution's variables, and keeps the IR ops it implements, so that any plan, whatever
//! its target, can still run on the CPU reference kernels.
//!
//! A header read from a file is untrusted: [`PlanHeader::validate`] turns it into a [`crate::validate::ValidPlan`],
//! the only form an executor accepts.

use crate::graph::{Op, Phase, WeightId, WeightRole};
use crate::quant::WeightLayout;
use crate::spec::ModelSpec;
use crate::types::{DType, Device, Dim, WeightFormat};
use serde::{Deserialize, Serialize};

/// A weight as stored in the weights section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanWeight {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: WeightRole,
    pub format: WeightFormat,
    /// Arrangement of the rows, chosen by the target (q4_0 / q8_0 matrices may be interleaved).
    pub layout: WeightLayout,
    /// Alignment of `offset` that the target asked for (a power of two, at most [`WEIGHT_ALIGN`]).
    pub align: u64,
    /// Byte offset inside the weights section.
    pub offset: u64,
    pub bytes: u64,
}

/// Largest alignment of a weight inside the weights section (the section itself starts on a page).
pub const WEIGHT_ALIGN: u64 = 64;

/// Which kind of executor a kernel was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// A kernel built into the runtime; it has no artifact.
    Cpu,
    /// A SPIR-V compute shader.
    Vulkan,
    /// An AIE2 design: MLIR, or an xclbin and its instruction stream.
    Npu,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Vulkan => "vulkan",
            Backend::Npu => "npu",
        }
    }
}

/// A byte range of the `kernels` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRange {
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingKind {
    StorageRead,
    StorageReadWrite,
    Uniform,
}

/// One resource binding of a kernel; argument `i` of a step binds to `bindings[i]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub binding: u32,
    pub kind: BindingKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecConstant {
    pub id: u32,
    pub value: u32,
}

/// One entry of the kernel table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelEntry {
    /// Stable name (`matmul_q8_0`, `rms_norm+gemm3_f16_coop`, `attention_f16`), shown by `unicornc inspect` and used in
    /// profiles.
    pub name: String,
    pub backend: Backend,
    /// The compiled kernel in the `kernels` section; `None` for built-in CPU kernels.
    #[serde(default)]
    pub artifact: Option<ArtifactRange>,
    /// Entry point inside the artifact.
    pub entry: String,
    #[serde(default)]
    pub bindings: Vec<Binding>,
    #[serde(default)]
    pub spec_constants: Vec<SpecConstant>,
    /// Invocations per workgroup (1, 1, 1 for CPU kernels).
    pub workgroup: [u32; 3],
    /// What the kernel needs of the device beyond its backend's baseline (Vulkan 1.2); the executor refuses a
    /// plan whose kernels need what its device lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<crate::device::Feature>,
}

/// Index into [`PlanHeader::kernels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KernelId(pub u32);

/// A value known only when a phase executes: a work size or a per-step parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expr {
    Const(u64),
    /// Rows of this execution (the tokens of a prefill chunk; 1 in decode).
    S,
    /// Kept rows (the rows whose logits the caller wants).
    R,
    /// Absolute position of the execution's first row.
    Pos,
    /// Keys visible to the execution's last row: `pos + S` (before any window).
    KvLen,
    Add(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    /// `ceil(a / b)`; `b` is a nonzero constant.
    CeilDiv(Box<Expr>, u64),
}

/// The values of [`Expr`]'s variables for one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vars {
    pub s: u64,
    pub r: u64,
    pub pos: u64,
}

impl Expr {
    /// Evaluate with checked arithmetic: `None` on overflow or a zero divisor. Every operation is monotone, so
    /// a value checked at the largest variables bounds every execution.
    pub fn eval(&self, v: Vars) -> Option<u64> {
        match self {
            Expr::Const(c) => Some(*c),
            Expr::S => Some(v.s),
            Expr::R => Some(v.r),
            Expr::Pos => Some(v.pos),
            Expr::KvLen => v.pos.checked_add(v.s),
            Expr::Add(a, b) => a.eval(v)?.checked_add(b.eval(v)?),
            Expr::Mul(a, b) => a.eval(v)?.checked_mul(b.eval(v)?),
            Expr::CeilDiv(a, d) => (*d != 0).then(|| a.eval(v).map(|x| x.div_ceil(*d)))?,
        }
    }
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expr::Const(c) => write!(f, "{c}"),
            Expr::S => f.write_str("S"),
            Expr::R => f.write_str("R"),
            Expr::Pos => f.write_str("pos"),
            Expr::KvLen => f.write_str("kv_len"),
            Expr::Add(a, b) => write!(f, "({a} + {b})"),
            Expr::Mul(a, b) => write!(f, "{a}*{b}"),
            Expr::CeilDiv(a, d) => write!(f, "ceil({a}/{d})"),
        }
    }
}

/// An activation arena of a phase: `rows` rows (`S`, or `R` for the kept rows) of `row_bytes` bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArenaDecl {
    pub rows: Dim,
    pub row_bytes: u64,
}

/// Index into [`PlanPhase::arenas`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArenaId(pub u32);

/// A value in an arena. The arena is a sequence of slots, each all its rows together: with `n` rows, the slot
/// starts at byte `offset * n` and holds `n` rows of `width` elements of `dtype`. Slots are measured per row
/// because every activation has one row per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActSlot {
    pub arena: ArenaId,
    /// Bytes per row before the slot.
    pub offset: u64,
    /// Elements per row.
    pub width: u64,
    pub dtype: DType,
}

impl ActSlot {
    /// Bytes per row.
    pub fn row_bytes(&self) -> Option<u64> {
        self.width.checked_mul(self.dtype.size() as u64)
    }
}

/// How a KV cache is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvLayout {
    /// Kv head `g`'s entry at ring slot `t` is element `(g * capacity + t) * head_dim`: one kv head's positions
    /// are one contiguous stream. Position `p` lives at ring slot `p % capacity`.
    HeadMajor,
}

/// Positions a cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvCapacity {
    /// The session's context.
    Context,
    /// The last `n` positions (a sliding-window layer); capped by the context.
    Window(u64),
}

/// The keys and values of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCacheDecl {
    pub layer: u32,
    pub dtype: DType,
    pub layout: KvLayout,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub capacity: KvCapacity,
    pub device: Device,
}

impl KvCacheDecl {
    /// Positions held in a session of `ctx` positions.
    pub fn positions(&self, ctx: u64) -> u64 {
        match self.capacity {
            KvCapacity::Context => ctx,
            KvCapacity::Window(w) => w.min(ctx),
        }
    }

    /// Bytes of keys and values in a session of `ctx` positions, or `None` on overflow.
    pub fn bytes(&self, ctx: u64) -> Option<u64> {
        self.positions(ctx)
            .checked_mul(self.kv_heads)?
            .checked_mul(self.head_dim)?
            .checked_mul(self.dtype.size() as u64)?
            .checked_mul(2)
    }
}

/// A typed argument of a launch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arg {
    Act(ActSlot),
    Weight(WeightId),
    /// The KV cache of a layer.
    Kv(u32),
    /// The execution's token ids (`S` of them).
    Tokens,
    Scalar(Expr),
}

/// One kernel launch.
///
/// The arguments follow the op: `embed` [tokens, table, out]; `scale`, `softcap` [x, out]; `rms_norm`
/// [x, weight, out]; `rope` [x, out, pos]; `attention` [q, k, v, kv cache, out, pos]; `glu`, `add` [a, b, out];
/// `select_rows` [x, out]; `matmul` [x, then per op: weight, bias if the op has one, out] — a launch of several
/// matmuls of one operand (q/k/v, gate/up) lists each op, and the target decides which to group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub kernel: KernelId,
    pub device: Device,
    pub args: Vec<Arg>,
    /// Work size: workgroups for a GPU kernel, (rows, columns, 1) for a CPU one.
    pub work: [Expr; 3],
    /// The IR ops this launch implements, in order.
    pub ops: Vec<Op>,
    pub label: String,
}

/// Most units one launch fuses.
pub const MAX_UNITS: usize = 4;

/// A unit of a launch: one op, or a group of consecutive matmuls of one operand; `ops` and `args` are the
/// ranges of the step's ops and arguments it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub ops: std::ops::Range<usize>,
    pub args: std::ops::Range<usize>,
}

/// Arguments an op takes in a launch (see [`Step`]); for a matmul, its weight, bias and result (the group's
/// operand comes once, first).
fn op_args(op: &Op) -> usize {
    match op {
        Op::Embed { .. } | Op::RmsNorm { .. } | Op::Rope { .. } | Op::Glu { .. } | Op::Add => 3,
        Op::Scale { .. } | Op::Softcap { .. } | Op::SelectRows => 2,
        Op::Attention { .. } => 6,
        Op::MatMul { bias, .. } => 2 + bias.is_some() as usize,
        Op::Tokens | Op::Output => 0,
    }
}

impl Step {
    /// The step's units in order. A fused launch (an RMSNorm and the projections that read it, say) lists each
    /// unit's ops and arguments one after the other, as if each were its own launch, so that an executor
    /// without the fused kernel runs the units one by one; the fused kernel itself needs only the launch's
    /// inputs and final results, and may leave the values passed between its units unwritten.
    pub fn units(&self) -> Units<'_> {
        units(&self.ops)
    }
}

/// The units of a launch of `ops` (see [`Step::units`]).
pub fn units(ops: &[Op]) -> Units<'_> {
    Units { ops, op: 0, arg: 0 }
}

/// The units of a step, in order (allocates nothing: executors walk it for every launch).
pub struct Units<'a> {
    ops: &'a [Op],
    op: usize,
    arg: usize,
}

impl Iterator for Units<'_> {
    type Item = Unit;

    fn next(&mut self) -> Option<Unit> {
        let (i, rest) = (self.op, self.ops.get(self.op..).filter(|r| !r.is_empty())?);
        let matmul = matches!(rest[0], Op::MatMul { .. });
        let group = if matmul { rest.iter().take_while(|o| matches!(o, Op::MatMul { .. })).count() } else { 1 };
        let n = usize::from(matmul) + rest[..group].iter().map(op_args).sum::<usize>();
        let u = Unit { ops: i..i + group, args: self.arg..self.arg + n };
        self.op += group;
        self.arg += n;
        Some(u)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanPhase {
    pub phase: Phase,
    /// Arena 0 holds the execution's rows (`S`), arena 1 the kept rows (`R`).
    pub arenas: Vec<ArenaDecl>,
    pub steps: Vec<Step>,
    /// The slot holding the phase result (logits rows).
    pub result: ActSlot,
}

impl PlanPhase {
    /// Activation bytes for an execution of `rows` tokens keeping `kept`, or `None` on overflow.
    pub fn activation_bytes(&self, rows: u64, kept: u64) -> Option<u64> {
        self.arenas.iter().try_fold(0u64, |acc, a| {
            let n = match a.rows {
                Dim::Seq => rows,
                Dim::Out => kept,
                Dim::Const(c) => c as u64,
            };
            acc.checked_add(a.row_bytes.checked_mul(n)?)
        })
    }
}

/// Everything the runtime needs besides the sections' bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanHeader {
    /// The `unicornc` that wrote the plan.
    pub producer: String,
    pub target: String,
    pub spec: ModelSpec,
    /// Inverse RoPE frequencies, one table per entry of `spec.ropes`, computed at compile time.
    pub rope_inv_freq: Vec<Vec<f32>>,
    pub kernels: Vec<KernelEntry>,
    pub weights: Vec<PlanWeight>,
    /// One per layer, in layer order.
    pub kv_caches: Vec<KvCacheDecl>,
    /// Most tokens one prefill execution takes; longer prompts run in chunks, so the activation arenas are
    /// bounded by this rather than by the prompt.
    pub prefill_chunk: u64,
    pub phases: Vec<PlanPhase>,
    /// Peak activation bytes: the larger of a full prefill chunk (keeping every row) and a decode step.
    pub peak_activation_bytes: u64,
    /// A kernel that writes each kept row's greedy token, the index of its largest logit (the first of equals),
    /// so that a greedy step reads back 4 bytes a row instead of its logits. Bindings [the phase's result slot,
    /// the ids (u32, one per row)]; work `[rows, 1, 1]`; the push constants of every kernel. Executors without
    /// it take the argmax of the logits on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argmax: Option<KernelId>,
    /// A kernel that writes each kept row's `k` largest logits (`k` in push word `keep`, at most
    /// [`vulkan_abi::MAX_TOP_K`]) with their indices, largest first (of equals the smaller index first; NaNs
    /// never), so that a sampling step reads back a few hundred bytes a row instead of its logits. Bindings
    /// [the phase's result slot, the results (per row [`vulkan_abi::TOP_K_WORDS`] words), the scratch
    /// ([`vulkan_abi::top_k_scratch_words`] per row, zero before the first launch)]; work
    /// `[top_k_groups(vocab), rows, 1]`. Executors without it pick on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<KernelId>,
}

impl PlanHeader {
    pub fn phase(&self, phase: Phase) -> Option<&PlanPhase> {
        self.phases.iter().find(|p| p.phase == phase)
    }

    /// Lay the weights out in the weights section, each at its alignment; returns the section's length.
    pub fn assign_weight_offsets(weights: &mut [PlanWeight]) -> u64 {
        let mut at = 0u64;
        for w in weights {
            at = at.next_multiple_of(w.align.max(1));
            w.offset = at;
            at += w.bytes;
        }
        at
    }

    /// KV cache bytes of a session of `ctx` positions.
    pub fn kv_cache_bytes(&self, ctx: u64) -> u64 {
        self.kv_caches.iter().map(|c| c.bytes(ctx).unwrap_or(u64::MAX)).fold(0, u64::saturating_add)
    }
}

/// The launch ABI of the Vulkan target's kernels, shared by the shader generator and the Vulkan executor (the
/// generator's module doc describes it in full): binding `i` is the step's `i`-th buffer argument, and every
/// kernel takes the push block `{ rows, pos, keep, cap, pass, base[MAX_BUFFERS] }` of 32-bit words, and can
/// read its position from the launch values ([`vulkan_abi::VALUES_BINDING`]).
pub mod vulkan_abi {
    /// Most buffer arguments of one kernel (the length of the push block's `base`).
    pub const MAX_BUFFERS: usize = 12;
    /// The binding of the launch values, which every kernel's descriptor set has after its buffer arguments:
    /// words the host writes before each submission, so that a recorded command buffer can be submitted again
    /// for the next token. Push word `pos` of a launch is not its position but the index of the word that holds
    /// it (a kernel reads `values[pc.pos]`).
    pub const VALUES_BINDING: u32 = MAX_BUFFERS as u32;

    /// Workgroups per row of the argmax kernel (`PlanHeader::argmax`), launched over `[ARGMAX_GROUPS, rows, 1]`
    /// with push word `cap` the first word of its scratch in the ids binding, after the ids of the launch's
    /// largest batch: [`argmax_scratch_words`] per row, zero before the first launch (each launch leaves it so).
    pub const ARGMAX_GROUPS: u32 = 64;
    const _: () = assert!(ARGMAX_GROUPS <= 256);

    /// Words of argmax scratch per row: each workgroup's pick (its value and index), then a counter.
    pub const fn argmax_scratch_words() -> u64 {
        2 * ARGMAX_GROUPS as u64 + 1
    }

    /// Most candidates the top-k kernel (`PlanHeader::top_k`) keeps per row; a sampler that wants more (or no
    /// limit) takes the logits.
    pub const MAX_TOP_K: u64 = 64;
    /// Logits each thread of the top-k kernel's 256 holds, so a workgroup takes 4096 of a row.
    pub const TOP_K_PER_THREAD: u64 = 16;

    /// Workgroups per row of the top-k kernel over a vocabulary of `vocab`: one per 4096 logits.
    pub const fn top_k_groups(vocab: u64) -> u64 {
        vocab.div_ceil(256 * TOP_K_PER_THREAD)
    }

    /// Words of the top-k kernel's results per row: [`MAX_TOP_K`] pairs (the logit's bits, its index).
    pub const TOP_K_WORDS: u64 = 2 * MAX_TOP_K;

    /// Words of top-k scratch per row: each workgroup's sorted picks ([`TOP_K_WORDS`]), then a counter.
    pub const fn top_k_scratch_words(vocab: u64) -> u64 {
        top_k_groups(vocab) * TOP_K_WORDS + 1
    }
    /// Words of the push block: five scalars, then a base per buffer.
    pub const PUSH_WORDS: usize = 5 + MAX_BUFFERS;
    // Every Vulkan device offers at least 128 bytes of push constants.
    const _: () = assert!(PUSH_WORDS * 4 <= 128);
    /// Threads per workgroup of the elementwise kernels, the norm and attention (and of attention's append pass,
    /// whose work the executor derives: `[ceil(kv_heads * head_dim / 2 / WIDE), rows, 1]`).
    pub const WIDE: u32 = 64;

    /// Split-key attention (flash-decoding), for launches of one row (a decode step): the visible keys are cut
    /// into up to [`ATTN_MAX_SPLITS`] ranges, each attended by its own workgroups in chunks of
    /// [`ATTN_SPLIT_KEYS`], and the last range of a head to finish folds the ranges' partial softmax sums
    /// together. The partials
    /// live in the KV cache's binding, after the keys and values: [`attention_scratch_words`] per layer. The
    /// ranges' pass also appends the row to the cache, which only a single row allows (its slot holds no
    /// position it sees; a second row's slot may hold one the first sees).
    pub const ATTN_SPLIT_ROWS: u64 = 1;
    const _: () = assert!(ATTN_SPLIT_ROWS == 1);
    pub const ATTN_MAX_SPLITS: u64 = 64;
    pub const ATTN_SPLIT_KEYS: u64 = 64;

    /// Words of split scratch after a layer's keys and values: per row, head and split its maximum score, its
    /// sum of exponentials and its `head_dim` weighted values; then per row and head the count of its ranges
    /// done (zero before a launch: the cache is allocated zeroed, and each launch leaves it so).
    pub fn attention_scratch_words(heads: u64, head_dim: u64) -> u64 {
        ATTN_SPLIT_ROWS * heads * (ATTN_MAX_SPLITS * (head_dim + 2) + 1)
    }

    /// Key ranges an attention launch of `rows` rows at `pos` is split into: one per chunk of the keys a row
    /// sees, at most [`ATTN_MAX_SPLITS`]; `None` for launches the split passes do not take (more than
    /// [`ATTN_SPLIT_ROWS`] rows).
    pub fn attention_splits(rows: u64, pos: u64, window: Option<u64>) -> Option<u64> {
        if rows == 0 || rows > ATTN_SPLIT_ROWS {
            return None;
        }
        let keys = (pos + rows).min(window.unwrap_or(u64::MAX));
        Some(keys.div_ceil(ATTN_SPLIT_KEYS).clamp(1, ATTN_MAX_SPLITS))
    }
}
