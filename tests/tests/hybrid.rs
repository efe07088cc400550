//! Hybrid plans (`--target hybrid`): prefill on the CPU with the NPU (here its emulator), decode on a Vulkan
//! device (here lavapipe). The two halves meet only in the KV cache, which the runtime hands from one device to
//! the other; these tests judge that hand-over. The reference is the same plan with decode on the CPU
//! (`CpuExecutor` with the same emulated NPU): its prefill is bit for bit the hybrid's, so the two sequences of
//! logits differ only by decode's kernels (the GPU's against the CPU's, ~1e-6 of the logits with an f32
//! cache) — unless a position reaches the other device wrong, which moves them by far more.

use std::path::{Path, PathBuf};
use unicorn_compiler::compile::{compile, CompileOptions};
use unicorn_ir::container::Residency;
use unicorn_ir::{DType, Phase, WeightFormat};
use unicorn_passes::{Options, Target};
use unicorn_runtime::cpu::exec::CpuExecutor;
use unicorn_runtime::executor::{executor_for, DeviceKind};
use unicorn_runtime::hybrid::HybridExecutor;
use unicorn_runtime::npu::{emu::Emulator, plan_kernels};
use unicorn_runtime::vulkan::exec::{VulkanExecutor, VulkanOptions};
use unicorn_runtime::{Model, Session};
use unicorn_tests::*;

fn hybrid_plan(name: &str, kv: DType, dir: &Path) -> PathBuf {
    let plan = dir.join(format!("{name}.{}.hybrid.ucp", kv.name()));
    let options = CompileOptions {
        passes: Options { target: Target::Hybrid, weights: WeightFormat::Bf16 },
        kv_cache: Some(kv),
        max_context: None,
        device_profile: Default::default(),
        progress: false,
        emit_mlir: None,
    };
    compile(&fixtures_dir().join(name), &plan, &options).unwrap_or_else(|e| panic!("compiling {name}: {e:#}"));
    plan
}

/// A fixed token sequence of `n` ids below `vocab`.
fn tokens(vocab: usize, n: usize) -> Vec<u32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

/// The turns of a chat: a prompt, decode steps, a second prompt (prefilled after decode wrote positions the CPU
/// has not seen), more decode steps. Each turn's logits, row after row.
fn chat(session: &mut Session, ids: &[u32], turns: &[(usize, bool)]) -> Vec<f32> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(n, prefill) in turns {
        if prefill {
            out.extend_from_slice(session.forward(&ids[at..at + n], true).expect("prefill"));
        } else {
            for t in &ids[at..at + n] {
                out.extend_from_slice(session.forward(std::slice::from_ref(t), false).expect("decode"));
            }
        }
        at += n;
    }
    out
}

/// Worst row's max |a - b| / max |b|.
fn worst_row(a: &[f32], b: &[f32], vocab: usize) -> f32 {
    a.chunks(vocab)
        .zip(b.chunks(vocab))
        .map(|(x, y)| max_abs_diff(x, y) / y.iter().fold(0.0f32, |m, v| m.max(v.abs())))
        .fold(0.0, f32::max)
}

/// How far the hybrid's logits may be from decode on the CPU. Decode's rows differ by the GPU's sums against
/// the CPU's (measured 1e-6 at most with an f32 cache, 1e-4 with f16, where the GPU's f16 rounding of a key
/// can differ from the CPU's by one step). A later prefill's rows are the CPU's and the NPU's in both, over
/// caches that hold decode's keys and values as the GPU computed them: a last-bit difference there can move
/// one of the NPU's bf16 roundings of an operand (2^-8 of it), which these tiny random models carry to
/// 7e-4 .. 2.1e-3 of a row's logits (measured; most rows are bit for bit the same). Without the hand-over
/// (neither direction copied), the same check is off by 1.9.
const TOLERANCE: f32 = 1e-2;

/// Decode on the GPU after an NPU prefill, and a second prefill after decode, give the logits that decode on
/// the CPU gives: grouped attention, sliding-window rings lapped several times (Mistral's window of 8 over 49
/// positions) and Gemma 3's mix of ring and full caches, with f32 and f16 caches.
#[test]
fn a_hybrid_plan_decodes_on_the_gpu_what_the_cpu_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let turns = [(5, true), (20, false), (7, true), (17, false)];
    let n: usize = turns.iter().map(|t| t.0).sum();
    let mut report = Vec::new();
    for name in ["llama_gqa", "mistral_sliding", "gemma3_layer_types"] {
        for kv in [DType::F32, DType::F16] {
            let plan = hybrid_plan(name, kv, dir.path());
            let model = Model::load_with(&plan, Residency::Resident, DeviceKind::NpuEmu).unwrap();
            let vocab = model.header().spec.vocab_size;
            let ids = tokens(vocab, n);
            let hybrid = executor_for(DeviceKind::NpuEmu, &model).unwrap();
            assert!(hybrid.name().contains("vulkan"), "{name}: decode is not on the GPU: {}", hybrid.name());
            let mut a = Session::with_executor(&model, hybrid, n).unwrap();
            let cpu = CpuExecutor::with_npu(&model, Box::new(Emulator), plan_kernels(&model).unwrap());
            let mut b = Session::with_executor(&model, Box::new(cpu), n).unwrap();
            let (got, want) = (chat(&mut a, &ids, &turns), chat(&mut b, &ids, &turns));
            let err = worst_row(&got, &want, vocab);
            // The first decode turn, before any prefill ran over keys the GPU computed: decode's sums alone.
            let first = turns[0].0 * vocab..(turns[0].0 + turns[1].0) * vocab;
            let decode_err = worst_row(&got[first.clone()], &want[first], vocab);
            let decode_tol = if kv == DType::F32 { 2e-5 } else { 1e-3 };
            report.push(format!(
                "{name} kv={}: {err:.1e} (tolerance {TOLERANCE:.0e}); first decode turn {decode_err:.1e} ({decode_tol:.0e})",
                kv.name()
            ));
            assert!(err <= TOLERANCE && decode_err <= decode_tol, "{}", report.join("\n"));
        }
    }
    eprintln!("hybrid decode on the GPU vs on the CPU:\n{}", report.join("\n"));
}

/// On a discrete GPU the caches live in memory the host does not map, and the hand-over goes through one staging
/// copy a layer: forced here on lavapipe, it gives the logits of the mapped hand-over bit for bit.
#[test]
fn a_staged_hand_over_gives_the_mapped_ones_bits() {
    let dir = tempfile::tempdir().unwrap();
    let turns = [(5, true), (20, false), (7, true), (6, false)];
    let n: usize = turns.iter().map(|t| t.0).sum();
    let plan = hybrid_plan("mistral_sliding", DType::F16, dir.path());
    let model = Model::load_with(&plan, Residency::Resident, DeviceKind::NpuEmu).unwrap();
    let vocab = model.header().spec.vocab_size;
    let ids = tokens(vocab, n);
    let logits = |staged: bool| {
        let options = VulkanOptions { decode_only: true, stage_device_buffers: staged, ..Default::default() };
        let gpu = VulkanExecutor::new(&model, 0, options).unwrap();
        let cpu = CpuExecutor::with_npu(&model, Box::new(Emulator), plan_kernels(&model).unwrap());
        let mut s = Session::with_executor(&model, Box::new(HybridExecutor::new(cpu, gpu)), n).unwrap();
        chat(&mut s, &ids, &turns)
    };
    let (mapped, staged) = (logits(false), logits(true));
    assert!(
        mapped.iter().zip(&staged).all(|(a, b)| a.to_bits() == b.to_bits()),
        "{}",
        worst_row(&staged, &mapped, vocab)
    );
}

/// A hybrid plan splits where it says: prefill's launches on the CPU and the NPU, every decode launch a Vulkan
/// kernel, and the whole plan runs on the CPU alone too.
#[test]
fn a_hybrid_plan_puts_prefill_on_the_npu_and_decode_on_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let plan = hybrid_plan("llama_gqa", DType::F16, dir.path());
    let model = Model::load_with(&plan, Residency::Resident, DeviceKind::NpuEmu).unwrap();
    let h = model.header();
    let backends = |p: Phase| -> Vec<_> {
        h.phase(p).unwrap().steps.iter().map(|s| h.kernels[s.kernel.0 as usize].backend).collect()
    };
    use unicorn_ir::plan::Backend;
    assert!(backends(Phase::Prefill).contains(&Backend::Npu));
    assert!(!backends(Phase::Prefill).contains(&Backend::Vulkan));
    assert!(backends(Phase::Decode).iter().all(|&b| b == Backend::Vulkan));
    assert!(unicorn_runtime::hybrid::is_hybrid(h));
    // On the CPU alone, through the reference kernels of every launch, it matches transformers (the fixtures'
    // weights are exact in bf16).
    let exp = expected("llama_gqa");
    let cpu = prefill_logits(&plan, &exp.prompt_ids);
    assert!(compare(&cpu, &exp.logits, exp.vocab).rel_err <= 1e-5, "on the cpu");
}
