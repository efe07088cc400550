//! The backend boundary. An [`Executor`] owns a device's buffers — the activation arenas, each sequence's KV
//! cache — and runs a [`ValidPlan`]'s launches there; everything above it ([`crate::Session`], the generation
//! loop, the sampler, the benchmarks) is the same for every device.
//!
//! One [`Executor::execute`] advances a batch of sequences through one phase: their rows are stacked into one
//! execution, so every weight is read once for all of them, while each sequence attends over its own KV cache
//! at its own position. A batch of one is the single-stream path.

use crate::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use unicorn_ir::validate::Capabilities;
use unicorn_ir::{Op, Phase};

/// A sequence an executor holds a KV cache for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(pub usize);

/// One sequence's part of a batched execution.
#[derive(Debug, Clone, Copy)]
pub struct SeqRun<'a> {
    pub seq: SeqId,
    /// The tokens to run, at positions `pos..pos + tokens.len()`.
    pub tokens: &'a [u32],
    pub pos: usize,
    /// How many of the last rows' logits to return (0 ..= `tokens.len()`).
    pub keep: usize,
}

/// Most sequences one decode execution advances together.
pub const MAX_BATCH: usize = 64;

pub trait Executor {
    /// The device, as `--device` names it (`cpu`).
    fn name(&self) -> String;

    /// Make room for a sequence of up to `ctx` positions (its KV cache); fails with a one-line error when the
    /// memory cannot be had.
    fn add_sequence(&mut self, ctx: usize) -> Result<SeqId, Error>;

    /// Forget a sequence and free its cache.
    fn remove_sequence(&mut self, seq: SeqId);

    /// Run `phase` once over `runs`, stacked into one execution; the kept rows' logits, run after run, go to
    /// `logits` (`vocab` values per row). The caller keeps positions and checks inputs: every run fits its
    /// sequence's context, token ids are below the vocabulary, a decode run has one token and keeps it, a
    /// prefill execution has at most the plan's `prefill_chunk` rows, a decode one at most [`MAX_BATCH`].
    fn execute(&mut self, phase: Phase, runs: &[SeqRun], logits: &mut Vec<f32>) -> Result<(), Error>;

    /// [`Executor::execute`] keeping only each kept row's greedy token, the index of its largest logit (the
    /// first of equals, as [`crate::sampler::argmax`] picks), run after run in `ids`. An executor that can pick
    /// it where the logits are reads back 4 bytes a row; this default takes the logits and picks on the host.
    fn execute_greedy(&mut self, phase: Phase, runs: &[SeqRun], ids: &mut Vec<u32>) -> Result<(), Error> {
        greedy_on_host(self, phase, runs, ids)
    }

    /// [`Executor::execute`] keeping only each kept row's `k` largest logits with their tokens, as
    /// [`crate::sampler::top_k`] orders them (largest first, of equals the smaller token first, no NaNs), `k`
    /// per row run after run in `cands`; a row with fewer than `k` numbers is padded with token `u32::MAX`. An
    /// executor that can pick them where the logits are reads back `8k` bytes a row; this default takes the
    /// logits and picks on the host.
    fn execute_top_k(
        &mut self,
        phase: Phase,
        runs: &[SeqRun],
        k: usize,
        cands: &mut Vec<(f32, u32)>,
    ) -> Result<(), Error> {
        top_k_on_host(self, phase, runs, k, cands)
    }

    /// Record the time spent in each kernel from now on.
    fn enable_profile(&mut self);

    /// Seconds and calls per kernel name, most expensive first.
    fn profile(&self) -> Vec<(String, f64, usize)>;

    /// Executions run and command buffers recorded for them so far, where the executor records command
    /// buffers and replays them (the rest of the executions were replays); `None` elsewhere.
    fn recordings(&self) -> Option<(u64, u64)> {
        None
    }

    /// What the plan's NPU launches did so far, prefill then decode, where an NPU device runs them.
    fn npu_counts(&self) -> Option<[crate::npu::NpuCounts; 2]> {
        None
    }
}

/// [`Executor::execute_greedy`] by way of the logits: each kept row's argmax, picked on the host.
pub fn greedy_on_host<E: Executor + ?Sized>(
    exec: &mut E,
    phase: Phase,
    runs: &[SeqRun],
    ids: &mut Vec<u32>,
) -> Result<(), Error> {
    let mut logits = Vec::new();
    exec.execute(phase, runs, &mut logits)?;
    let rows: usize = runs.iter().map(|r| r.keep).sum();
    ids.clear();
    if let Some(vocab) = logits.len().checked_div(rows) {
        ids.extend(logits.chunks(vocab).map(crate::sampler::argmax));
    }
    Ok(())
}

/// [`Executor::execute_top_k`] by way of the logits: each kept row's `k` largest, picked on the host.
pub fn top_k_on_host<E: Executor + ?Sized>(
    exec: &mut E,
    phase: Phase,
    runs: &[SeqRun],
    k: usize,
    cands: &mut Vec<(f32, u32)>,
) -> Result<(), Error> {
    let mut logits = Vec::new();
    exec.execute(phase, runs, &mut logits)?;
    let rows: usize = runs.iter().map(|r| r.keep).sum();
    cands.clear();
    let mut row = Vec::new();
    if let Some(vocab) = logits.len().checked_div(rows) {
        for l in logits.chunks(vocab) {
            crate::sampler::top_k(l, k, &mut row);
            row.resize(k, (f32::NEG_INFINITY, u32::MAX));
            cands.extend_from_slice(&row);
        }
    }
    Ok(())
}

/// Check an execution's runs as every executor must before it touches memory: 1 ..= `most` rows in all (the
/// plan's prefill chunk, or [`MAX_BATCH`] in decode), each run's sequence alive (`ctx_of` gives its context),
/// its kept rows within its tokens (a decode run one token, kept), its positions within its context, its token
/// ids within the vocabulary. Returns the execution's rows and kept rows.
pub fn check_runs(
    h: &unicorn_ir::plan::PlanHeader,
    phase: Phase,
    runs: &[SeqRun],
    ctx_of: impl Fn(SeqId) -> Option<usize>,
) -> Result<(usize, usize), Error> {
    let vocab = h.spec.vocab_size;
    let s: usize = runs.iter().map(|r| r.tokens.len()).sum();
    let keep: usize = runs.iter().map(|r| r.keep).sum();
    let most = if phase == Phase::Prefill { h.prefill_chunk as usize } else { MAX_BATCH };
    if runs.is_empty() || s == 0 || s > most {
        return Err(Error::Input(format!("a {phase} execution of {s} rows (1..={most})")));
    }
    for r in runs {
        let Some(ctx) = ctx_of(r.seq) else {
            return Err(Error::Input(format!("sequence {} does not exist", r.seq.0)));
        };
        if r.keep > r.tokens.len() || (phase == Phase::Decode && (r.tokens.len() != 1 || r.keep != 1)) {
            return Err(Error::Input(format!("a {phase} run of {} tokens keeping {}", r.tokens.len(), r.keep)));
        }
        if r.pos.checked_add(r.tokens.len()).is_none_or(|end| end > ctx) {
            return Err(Error::Input(format!(
                "{} tokens at position {} exceed the context of {ctx} tokens",
                r.tokens.len(),
                r.pos
            )));
        }
        if let Some(&bad) = r.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Input(format!("token id {bad} is out of range (vocabulary size {vocab})")));
        }
    }
    Ok((s, keep))
}

/// Put `seq` in the first free slot of `seqs` (or a new one); its index is the sequence's id.
pub fn insert_sequence<T>(seqs: &mut Vec<Option<T>>, seq: T) -> SeqId {
    match seqs.iter().position(Option::is_none) {
        Some(i) => {
            seqs[i] = Some(seq);
            SeqId(i)
        }
        None => {
            seqs.push(Some(seq));
            SeqId(seqs.len() - 1)
        }
    }
}

/// Free a sequence's slot (an id already removed, or never given, is ignored).
pub fn remove_sequence<T>(seqs: &mut [Option<T>], seq: SeqId) {
    if let Some(s) = seqs.get_mut(seq.0) {
        *s = None;
    }
}

/// Whether a kernel's name belongs to the op it is launched for (`matmul_q8_0` to a matmul, `rope` to a rope).
pub fn kernel_runs_op(name: &str, op: &Op) -> bool {
    match op {
        // The CPU's (`matmul_q8_0`) and the GPU's (`gemm2_f16_coop`, `gemv3_q4_0_dot`).
        Op::MatMul { .. } => ["matmul", "gemm", "gemv"].iter().any(|p| name.starts_with(p)),
        Op::Embed { .. } => name.starts_with("embed_"),
        Op::Glu { .. } => name.starts_with("glu_"),
        Op::Attention { .. } => name.starts_with("attention"),
        other => name == other.name(),
    }
}

/// The executors this build has, as `--device` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// What the plan was made for, where this machine has it: a Phoenix plan's NPU (through XRT), or its
    /// emulator with a one-line note when there is none; the CPU for every other plan.
    Auto,
    Cpu,
    /// Vulkan device `N` in the loader's order (`vulkan` is `vulkan:0`).
    Vulkan(u32),
    /// A Phoenix plan's NPU launches on the NPU through XRT, the rest on the CPU.
    Npu,
    /// A Phoenix plan's NPU launches on the emulator of their designs, the rest on the CPU.
    NpuEmu,
}

impl DeviceKind {
    pub fn name(self) -> String {
        match self {
            DeviceKind::Auto => "auto".into(),
            DeviceKind::Cpu => "cpu".into(),
            DeviceKind::Vulkan(i) => format!("vulkan:{i}"),
            DeviceKind::Npu => "npu".into(),
            DeviceKind::NpuEmu => "npu-emu".into(),
        }
    }

    /// Parse a `--device` value: `auto`, `cpu`, `vulkan`, `vulkan:N`, `npu` or `npu-emu`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceKind::Auto),
            "cpu" => Ok(DeviceKind::Cpu),
            "vulkan" => Ok(DeviceKind::Vulkan(0)),
            "npu" => Ok(DeviceKind::Npu),
            "npu-emu" => Ok(DeviceKind::NpuEmu),
            _ => match s.strip_prefix("vulkan:").map(str::parse::<u32>) {
                Some(Ok(i)) => Ok(DeviceKind::Vulkan(i)),
                Some(Err(_)) => Err(format!("'{s}': expected vulkan:N with N a device number (see --list-devices)")),
                None => {
                    Err(format!("unknown device '{s}' (this build has: auto, cpu, vulkan, vulkan:N, npu, npu-emu)"))
                }
            },
        }
    }

    /// What the device's executor runs, to validate a plan against.
    pub fn capabilities(self) -> &'static dyn Capabilities {
        use crate::cpu::exec::CpuCapabilities;
        match self {
            DeviceKind::Auto => &CpuCapabilities("auto"),
            DeviceKind::Cpu => &CpuCapabilities("cpu"),
            DeviceKind::Npu => &CpuCapabilities("npu"),
            DeviceKind::NpuEmu => &CpuCapabilities("npu-emu"),
            DeviceKind::Vulkan(_) => &crate::vulkan::exec::VulkanCapabilities,
        }
    }
}

impl DeviceKind {
    /// What the device's executor runs for the plan `h` (not yet validated): a hybrid plan
    /// ([`crate::hybrid::is_hybrid`]) takes both sides' kernels on every device but the CPU, which runs every
    /// plan.
    pub fn capabilities_for(self, h: &unicorn_ir::plan::PlanHeader) -> &'static dyn Capabilities {
        if self != DeviceKind::Cpu && crate::hybrid::is_hybrid(h) {
            &crate::hybrid::HybridCapabilities
        } else {
            self.capabilities()
        }
    }
}

/// One line per device this machine offers, for `unicorn-rt --list-devices`.
pub fn list_devices() -> Vec<String> {
    let isa = crate::cpu::isa::Isa::detect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut v = vec![format!("cpu        {cores} threads, {} kernels (all plans run here)", isa.name())];
    match crate::vulkan::hal::devices() {
        Ok(list) if list.is_empty() => v.push("vulkan     none: the Vulkan loader found no device".into()),
        Ok(list) => v.extend(list.iter().enumerate().map(|(i, d)| {
            let (ma, mi, pa) = d.api_version;
            let coop = if d.cooperative_matrix.is_empty() {
                "no cooperative matrices".to_string()
            } else {
                format!("cooperative matrices {}", d.cooperative_matrix.join(" "))
            };
            let dot = if d.integer_dot { "integer dot products" } else { "no integer dot products" };
            format!(
                "{:<10} {} ({}, Vulkan {ma}.{mi}.{pa}), {:.1} GiB device-local, subgroup {}, binds up to {} MiB, {coop}, {dot}",
                format!("vulkan:{i}"),
                d.name,
                d.kind,
                d.device_local_bytes as f64 / (1u64 << 30) as f64,
                d.subgroup_size,
                d.max_storage_buffer_range >> 20,
            )
        })),
        Err(e) => v.push(format!("vulkan     none: {}", e.strip_prefix("vulkan: ").unwrap_or(&e))),
    }
    v.push(crate::npu::xrt::describe());
    v.push(
        "npu-emu    the emulator of the NPU designs' dataflow (Phoenix plans' NPU steps; for checking, not speed)"
            .into(),
    );
    v
}

/// Whether the process has said that a plan's NPU steps run on the emulator, and that a hybrid plan decodes on
/// the CPU: once is enough where it opens several executors (a benchmark's runs, a chat that starts over).
static EMULATOR_NOTE: AtomicBool = AtomicBool::new(false);
static CPU_DECODE_NOTE: AtomicBool = AtomicBool::new(false);

/// `note: MSG` on stderr, unless `said` says it was printed already.
fn note_once(said: &AtomicBool, msg: std::fmt::Arguments) {
    if !said.swap(true, Ordering::Relaxed) {
        eprintln!("note: {msg}");
    }
}

/// A validated plan's executor on `device`; fails with a one-line error when the device cannot be opened or
/// cannot hold the plan. `auto` on a Phoenix plan takes the NPU, or says in one line on stderr why not and takes
/// the emulator.
pub fn executor_for<'m>(device: DeviceKind, model: &'m crate::Model) -> Result<Box<dyn Executor + 'm>, Error> {
    use crate::cpu::exec::CpuExecutor;
    let phoenix = model.header().kernels.iter().any(|k| k.backend == unicorn_ir::plan::Backend::Npu);
    if device != DeviceKind::Cpu && crate::hybrid::is_hybrid(model.header()) {
        return hybrid_executor(device, model);
    }
    Ok(match device {
        DeviceKind::Auto if phoenix => {
            let kernels = crate::npu::plan_kernels(model)?;
            match crate::npu::xrt::Npu::open(model, &kernels) {
                Ok(npu) => Box::new(CpuExecutor::with_npu(model, Box::new(npu), kernels)),
                Err(e) => {
                    note_once(
                        &EMULATOR_NOTE,
                        format_args!("{e}; running the NPU steps on the emulator (--device npu-emu)"),
                    );
                    Box::new(CpuExecutor::with_npu(model, Box::new(crate::npu::emu::Emulator), kernels))
                }
            }
        }
        DeviceKind::Auto | DeviceKind::Cpu => Box::new(CpuExecutor::new(model)),
        DeviceKind::Npu | DeviceKind::NpuEmu if !phoenix => {
            return Err(Error::Input(format!(
                "--device {}: the plan has no NPU steps (compile it with --target phoenix)",
                device.name()
            )))
        }
        DeviceKind::Npu => {
            let kernels = crate::npu::plan_kernels(model)?;
            let npu = crate::npu::xrt::Npu::open(model, &kernels)?;
            Box::new(CpuExecutor::with_npu(model, Box::new(npu), kernels))
        }
        DeviceKind::NpuEmu => Box::new(CpuExecutor::with_npu(
            model,
            Box::new(crate::npu::emu::Emulator),
            crate::npu::plan_kernels(model)?,
        )),
        DeviceKind::Vulkan(i) => {
            Box::new(crate::vulkan::exec::VulkanExecutor::new(model, i, crate::vulkan::exec::VulkanOptions::default())?)
        }
    })
}

/// A hybrid plan's executor on `device`: prefill on the CPU with the NPU (`npu`: through XRT, or an error;
/// `npu-emu`: the emulator; `auto` and `vulkan[:N]`: the NPU where there is one, else the emulator with a
/// one-line note), decode on Vulkan device N (0 unless `vulkan:N` names one). Without that Vulkan device,
/// `vulkan:N` fails in one line, and the others say so in one line on stderr and decode on the CPU.
fn hybrid_executor<'m>(device: DeviceKind, model: &'m crate::Model) -> Result<Box<dyn Executor + 'm>, Error> {
    use crate::cpu::exec::CpuExecutor;
    use crate::vulkan::exec::{VulkanExecutor, VulkanOptions};
    // The GPU first: a device asked for by number that is not there fails before anything else is said.
    let index = match device {
        DeviceKind::Vulkan(i) => i,
        _ => 0,
    };
    let gpu = match VulkanExecutor::new(model, index, VulkanOptions { decode_only: true, ..Default::default() }) {
        Ok(gpu) => Some(gpu),
        Err(e) if matches!(device, DeviceKind::Vulkan(_)) => return Err(e),
        Err(e) => {
            note_once(&CPU_DECODE_NOTE, format_args!("{e}; decoding on the CPU"));
            None
        }
    };
    let has_npu = model.header().kernels.iter().any(|k| k.backend == unicorn_ir::plan::Backend::Npu);
    if !has_npu {
        // Prefill took no NPU design (its weights are not the NPU's bf16): the CPU's alone.
        if matches!(device, DeviceKind::Npu | DeviceKind::NpuEmu) {
            return Err(Error::Input(format!(
                "--device {}: the plan has no NPU steps (its prefill weights are not bf16)",
                device.name()
            )));
        }
        let cpu = CpuExecutor::new(model);
        return Ok(match gpu {
            Some(gpu) => Box::new(crate::hybrid::HybridExecutor::new(cpu, gpu)),
            None => Box::new(cpu),
        });
    }
    let kernels = crate::npu::plan_kernels(model)?;
    let npu: Box<dyn crate::npu::NpuDevice> = match device {
        DeviceKind::Npu => Box::new(crate::npu::xrt::Npu::open(model, &kernels)?),
        DeviceKind::NpuEmu => Box::new(crate::npu::emu::Emulator),
        _ => match crate::npu::xrt::Npu::open(model, &kernels) {
            Ok(npu) => Box::new(npu),
            Err(e) => {
                note_once(
                    &EMULATOR_NOTE,
                    format_args!("{e}; running the NPU steps on the emulator (--device npu-emu)"),
                );
                Box::new(crate::npu::emu::Emulator)
            }
        },
    };
    let cpu = CpuExecutor::with_npu(model, npu, kernels);
    Ok(match gpu {
        Some(gpu) => Box::new(crate::hybrid::HybridExecutor::new(cpu, gpu)),
        None => Box::new(cpu),
    })
}
