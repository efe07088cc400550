//! A hybrid plan (`unicornc compile --target hybrid`) on a Ryzen AI laptop's NPU and iGPU together: prefill on
//! the CPU executor with its NPU (or the NPU's emulator), decode on a Vulkan device. The phases share nothing
//! but each sequence's KV cache, which both sides hold in the plan's layout (per layer, kv head `g`'s ring slot
//! `t` at `(g * cap + t) * head_dim`, keys then values, f32 or f16), so a hand-over is a copy of the positions
//! one side wrote and the other has not seen: prefill's chunk to the GPU after it runs, and decode's steps back
//! to the CPU before a later prefill of the same sequence (a chat's next turn). On an integrated GPU the GPU's
//! cache is host-visible memory and the copies are plain memory copies.

use crate::cpu::exec::CpuExecutor;
use crate::executor::{Executor, SeqId, SeqRun};
use crate::npu::NpuCounts;
use crate::vulkan::exec::VulkanExecutor;
use crate::Error;
use unicorn_ir::plan::{Backend, KernelEntry, PlanHeader};
use unicorn_ir::quant::WeightLayout;
use unicorn_ir::validate::Capabilities;
use unicorn_ir::{DType, Op, Phase, WeightFormat};

/// What the two sides of a hybrid plan's executor run together: each Vulkan kernel as the Vulkan executor takes
/// it, every other kernel as the CPU executor does (the NPU's through its device).
pub struct HybridCapabilities;

const CPU: crate::cpu::exec::CpuCapabilities = crate::cpu::exec::CpuCapabilities("cpu");

impl Capabilities for HybridCapabilities {
    fn name(&self) -> &str {
        "hybrid"
    }

    fn reads_weight(&self, format: WeightFormat, layout: WeightLayout) -> bool {
        CPU.reads_weight(format, layout) && crate::vulkan::exec::VulkanCapabilities.reads_weight(format, layout)
    }

    fn runs_kernel(&self, kernel: &KernelEntry, ops: &[Op]) -> bool {
        match kernel.backend {
            Backend::Vulkan => crate::vulkan::exec::VulkanCapabilities.runs_kernel(kernel, ops),
            Backend::Cpu | Backend::Npu => CPU.runs_kernel(kernel, ops),
        }
    }

    fn holds_activation(&self, dtype: DType) -> bool {
        CPU.holds_activation(dtype) && crate::vulkan::exec::VulkanCapabilities.holds_activation(dtype)
    }

    fn holds_kv(&self, dtype: DType) -> bool {
        CPU.holds_kv(dtype) && crate::vulkan::exec::VulkanCapabilities.holds_kv(dtype)
    }
}

/// Whether a plan is a hybrid one: its prefill launches run on the CPU or the NPU, and every decode launch is a
/// Vulkan kernel. Reads the header as it is (before or after validation), so it checks what it indexes.
pub fn is_hybrid(h: &PlanHeader) -> bool {
    let backend = |p: Phase| {
        let steps = h.phase(p).map(|p| p.steps.as_slice()).unwrap_or_default();
        steps.iter().map(|s| h.kernels.get(s.kernel.0 as usize).map(|k| k.backend)).collect::<Vec<_>>()
    };
    let (prefill, decode) = (backend(Phase::Prefill), backend(Phase::Decode));
    !decode.is_empty()
        && decode.iter().all(|&b| b == Some(Backend::Vulkan))
        && prefill.iter().all(|&b| matches!(b, Some(Backend::Cpu | Backend::Npu)))
}

/// One sequence on both sides, and how many of its first positions each side's cache holds as computed.
struct Seq {
    cpu: SeqId,
    gpu: SeqId,
    /// Positions `0..cpu_has` of the CPU side's caches are current, as are `0..gpu_has` of the GPU's.
    cpu_has: usize,
    gpu_has: usize,
}

pub struct HybridExecutor<'m> {
    cpu: CpuExecutor<'m>,
    gpu: VulkanExecutor<'m>,
    seqs: Vec<Option<Seq>>,
    /// With profiling on: seconds and count of the cache hand-overs.
    hand_overs: Option<(f64, usize)>,
}

impl<'m> HybridExecutor<'m> {
    /// Prefill on `cpu` (a CPU executor with the plan's NPU device), decode on `gpu` (a Vulkan executor of the
    /// plan's decode only).
    pub fn new(cpu: CpuExecutor<'m>, gpu: VulkanExecutor<'m>) -> Self {
        Self { cpu, gpu, seqs: Vec::new(), hand_overs: None }
    }

    fn seq(&self, id: SeqId) -> Result<&Seq, Error> {
        self.seqs.get(id.0).and_then(Option::as_ref).ok_or_else(|| Error::Input(format!("no sequence {}", id.0)))
    }

    /// Bring `phase`'s side of each run's sequence up to the run's position, from the other side's cache.
    fn catch_up(&mut self, phase: Phase, runs: &[SeqRun]) -> Result<(), Error> {
        for r in runs {
            let s = self.seq(r.seq)?;
            let (has, other) = if phase == Phase::Prefill { (s.cpu_has, s.gpu_has) } else { (s.gpu_has, s.cpu_has) };
            if has >= r.pos {
                continue;
            }
            if other < r.pos {
                return Err(Error::Input(format!(
                    "sequence {}: positions {has}..{} were computed on neither device",
                    r.seq.0, r.pos
                )));
            }
            let to_gpu = phase == Phase::Decode;
            let t = std::time::Instant::now();
            self.hand_over(r.seq, has, r.pos, to_gpu)?;
            if let Some((secs, n)) = &mut self.hand_overs {
                *secs += t.elapsed().as_secs_f64();
                *n += 1;
            }
            let s = self.seqs[r.seq.0].as_mut().expect("checked");
            if to_gpu {
                s.gpu_has = r.pos;
            } else {
                s.cpu_has = r.pos;
            }
        }
        Ok(())
    }

    /// After `phase` wrote positions `pos..pos + n` of each run's sequence on its side: that side holds them,
    /// and the other side's positions from `pos` on are stale.
    fn wrote(&mut self, phase: Phase, runs: &[SeqRun]) {
        for r in runs {
            let Some(s) = self.seqs.get_mut(r.seq.0).and_then(Option::as_mut) else { continue };
            let end = r.pos + r.tokens.len();
            if phase == Phase::Prefill {
                s.cpu_has = end;
                s.gpu_has = s.gpu_has.min(r.pos);
            } else {
                s.gpu_has = end;
                s.cpu_has = s.cpu_has.min(r.pos);
            }
        }
    }

    /// Copy positions `from..to` of every layer's keys and values of sequence `id` from the CPU's caches to the
    /// GPU's (`to_gpu`) or back. A ring (a sliding window's cache) keeps its last `cap` positions, so only
    /// those are copied.
    fn hand_over(&mut self, id: SeqId, from: usize, to: usize, to_gpu: bool) -> Result<(), Error> {
        let (cpu_id, gpu_id) = {
            let s = self.seq(id)?;
            (s.cpu, s.gpu)
        };
        for layer in 0..self.cpu.layers() {
            let cache = self.cpu.cache_mut(cpu_id, layer).ok_or_else(|| Error::Input("no CPU cache".into()))?;
            let (cap, heads, hd) = (cache.cap, cache.kv_heads, cache.head_dim);
            let elem = cache.k.elem_bytes();
            let from = from.max(to.saturating_sub(cap));
            // The ring slots of from..to: one run, or two where it wraps.
            let (a, b) = (from % cap, (to - 1) % cap + 1);
            let spans: Vec<(usize, usize)> = if to == from {
                Vec::new()
            } else if a < b {
                vec![(a, b - a)]
            } else {
                vec![(a, cap - a), (0, b)]
            };
            // Each kv head's keys and values of those slots: element offsets within a store, and the
            // regions' byte offsets in the GPU's buffer (the values after the keys).
            let values_at = heads * cap * hd;
            let mut runs = Vec::new();
            for values in [false, true] {
                for g in 0..heads {
                    for &(slot, n) in &spans {
                        let at = (g * cap + slot) * hd;
                        let offset = ((at + if values { values_at } else { 0 }) * elem) as u64;
                        runs.push((values, at, n * hd, offset));
                    }
                }
            }
            if to_gpu {
                let bytes: Vec<Vec<u8>> = runs
                    .iter()
                    .map(|&(values, at, len, _)| if values { cache.v.bytes(at, len) } else { cache.k.bytes(at, len) })
                    .collect();
                let regions: Vec<(u64, &[u8])> = runs.iter().zip(&bytes).map(|(r, b)| (r.3, b.as_slice())).collect();
                self.gpu.write_cache(gpu_id, layer, &regions)?;
            } else {
                let regions: Vec<(u64, u64)> = runs.iter().map(|r| (r.3, (r.2 * elem) as u64)).collect();
                let got = self.gpu.read_cache(gpu_id, layer, &regions)?;
                let cache = self.cpu.cache_mut(cpu_id, layer).expect("present above");
                for (&(values, at, _, _), bytes) in runs.iter().zip(&got) {
                    if values { &mut cache.v } else { &mut cache.k }.set_bytes(at, bytes);
                }
            }
        }
        Ok(())
    }

    /// Which side runs `phase`, with the runs' sequences as that side numbers them.
    fn side_runs<'r>(&self, phase: Phase, runs: &[SeqRun<'r>]) -> Result<Vec<SeqRun<'r>>, Error> {
        runs.iter()
            .map(|r| {
                let s = self.seq(r.seq)?;
                Ok(SeqRun { seq: if phase == Phase::Prefill { s.cpu } else { s.gpu }, ..*r })
            })
            .collect()
    }

    fn side(&mut self, phase: Phase) -> &mut dyn Executor {
        match phase {
            Phase::Prefill => &mut self.cpu,
            Phase::Decode => &mut self.gpu,
        }
    }

    /// Run `phase` over `runs` on its side, `f` doing the execution, with the caches handed over around it.
    fn run(
        &mut self,
        phase: Phase,
        runs: &[SeqRun],
        f: impl FnOnce(&mut dyn Executor, &[SeqRun]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.catch_up(phase, runs)?;
        let side_runs = self.side_runs(phase, runs)?;
        f(self.side(phase), &side_runs)?;
        self.wrote(phase, runs);
        Ok(())
    }
}

impl Executor for HybridExecutor<'_> {
    fn name(&self) -> String {
        format!("{} (prefill) + {} (decode)", self.cpu.name(), self.gpu.name())
    }

    fn add_sequence(&mut self, ctx: usize) -> Result<SeqId, Error> {
        let cpu = self.cpu.add_sequence(ctx)?;
        let gpu = match self.gpu.add_sequence(ctx) {
            Ok(g) => g,
            Err(e) => {
                self.cpu.remove_sequence(cpu);
                return Err(e);
            }
        };
        Ok(crate::executor::insert_sequence(&mut self.seqs, Seq { cpu, gpu, cpu_has: 0, gpu_has: 0 }))
    }

    fn remove_sequence(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.get_mut(seq.0).and_then(Option::take) {
            self.cpu.remove_sequence(s.cpu);
            self.gpu.remove_sequence(s.gpu);
        }
    }

    fn execute(&mut self, phase: Phase, runs: &[SeqRun], logits: &mut Vec<f32>) -> Result<(), Error> {
        self.run(phase, runs, |e, r| e.execute(phase, r, logits))
    }

    fn execute_greedy(&mut self, phase: Phase, runs: &[SeqRun], ids: &mut Vec<u32>) -> Result<(), Error> {
        self.run(phase, runs, |e, r| e.execute_greedy(phase, r, ids))
    }

    fn execute_top_k(
        &mut self,
        phase: Phase,
        runs: &[SeqRun],
        k: usize,
        cands: &mut Vec<(f32, u32)>,
    ) -> Result<(), Error> {
        self.run(phase, runs, |e, r| e.execute_top_k(phase, r, k, cands))
    }

    fn enable_profile(&mut self) {
        self.cpu.enable_profile();
        self.gpu.enable_profile();
        self.hand_overs = Some((0.0, 0));
    }

    /// Both sides' kernels, the CPU's (prefill) named `cpu:` and the GPU's (decode) `gpu:`, and the KV cache
    /// hand-overs between them (`kv hand-over`, host time), most expensive first.
    fn profile(&self) -> Vec<(String, f64, usize)> {
        let mut all: Vec<_> = (self.cpu.profile().into_iter().map(|(n, t, c)| (format!("cpu:{n}"), t, c)))
            .chain(self.gpu.profile().into_iter().map(|(n, t, c)| (format!("gpu:{n}"), t, c)))
            .chain(self.hand_overs.map(|(t, c)| ("kv hand-over".to_string(), t, c)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all
    }

    fn recordings(&self) -> Option<(u64, u64)> {
        self.gpu.recordings()
    }

    fn npu_counts(&self) -> Option<[NpuCounts; 2]> {
        self.cpu.npu_counts()
    }
}
