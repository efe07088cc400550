//! Phoenix plans (`--target phoenix`) end to end on the NPU emulator: prefill's projections as AIE2 GEMM designs
//! executed by the emulator of their dataflow (transfers, fifos, re-layouts, bf16 tile math), the rest on the
//! CPU. No NPU exists here; what these tests prove is what the emulator proves (docs/npu.md).
//!
//! The fixtures' weights are exact in bf16 (tests/fixtures/README.md), so an NPU projection differs from
//! transformers' float32 one only by its operand rounded to bf16 (and f32 sums in another order). Two checks:
//! - against transformers: within the error transformers itself makes run entirely in bf16
//!   (`stats.bf16_compute` of each fixture's expected.json, which rounds far more: every activation, every op),
//!   and the same argmax at >= 90% of the positions;
//! - against a reference NPU device that computes each projection directly from the bf16-rounded operand and
//!   weight, summing in the cores' order: the emulator, which gets there through the design's own transfers and
//!   re-layouts, must give the same bits (a looser bound would not do: one bf16 rounding moved by a last-bit
//!   difference grows to ~1e-3 of the logits through the layers), so a wrong access pattern cannot hide inside
//!   the bf16 tolerance.

use unicorn_ir::container::Residency;
use unicorn_ir::plan::Backend;
use unicorn_ir::{Phase, WeightFormat};
use unicorn_passes::Target;
use unicorn_runtime::cpu::exec::CpuExecutor;
use unicorn_runtime::cpu::matmul::{dequant_row, WeightRef};
use unicorn_runtime::executor::{DeviceKind, Executor, SeqRun};
use unicorn_runtime::npu::{emu::Emulator, AttentionChunk, NpuCounts, NpuDevice, PlanAttention, PlanGemm, PlanNpu};
use unicorn_runtime::{Error, Model};
use unicorn_tests::*;

/// Prefill logits of every position through `exec`.
fn prefill(exec: &mut dyn Executor, ids: &[u32]) -> Vec<f32> {
    let seq = exec.add_sequence(ids.len()).expect("sequence");
    let mut logits = Vec::new();
    let run = SeqRun { seq, tokens: ids, pos: 0, keep: ids.len() };
    exec.execute(Phase::Prefill, &[run], &mut logits).expect("prefill");
    logits
}

fn bf16(x: f32) -> f32 {
    unicorn_aie::emu::bf16(x)
}

/// An NPU that multiplies without a design: each projection straight from the bf16-rounded operand and weight,
/// summed in f32 as the design's cores sum (the mmul's blocks of 8 along k in order, each block's products
/// summed from 0 and then added), so the emulator must give these bits exactly.
struct Reference;

impl NpuDevice for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn gemm(
        &mut self,
        g: &PlanGemm,
        x: &[f32],
        ws: &[WeightRef],
        ys: &mut [&mut [f32]],
        c: &mut NpuCounts,
    ) -> Result<(), Error> {
        let k = g.gemm.k as usize;
        assert_eq!((ws.len(), ys.len()), (g.gemm.outputs.len(), g.gemm.outputs.len()), "{}", g.name);
        for (&w, y) in ws.iter().zip(ys.iter_mut()) {
            let mut row = vec![0.0f32; k];
            let weights: Vec<Vec<f32>> = (0..w.n)
                .map(|j| {
                    dequant_row(w, j, &mut row);
                    row.clone()
                })
                .collect();
            for (xr, yr) in x.chunks(k).zip(y.chunks_mut(w.n)) {
                for (yv, wr) in yr.iter_mut().zip(&weights) {
                    *yv = xr.chunks(8).zip(wr.chunks(8)).fold(0.0f32, |acc, (xs, ws)| {
                        acc + xs.iter().zip(ws).fold(0.0f32, |p, (a, b)| p + bf16(*a) * b)
                    });
                }
            }
        }
        c.dispatches += 1;
        Ok(())
    }

    /// Attention as the emulator runs it: the bit-exact comparison covers the projections (attention's own
    /// accuracy is checked against transformers, and against an f64 attention in the design's tests).
    fn attention(&mut self, a: &PlanAttention, chunk: AttentionChunk, c: &mut NpuCounts) -> Result<(), Error> {
        Emulator.attention(a, chunk, c)
    }
}

fn phoenix_plan(name: &str, dir: &std::path::Path) -> std::path::PathBuf {
    compile_for(Target::Phoenix, &fixtures_dir().join(name), dir, WeightFormat::Bf16, None)
}

#[test]
fn phoenix_plans_match_transformers_on_the_npu_emulator() {
    let dir = tempfile::tempdir().unwrap();
    for name in fixtures() {
        let exp = expected(&name);
        let plan = phoenix_plan(&name, dir.path());
        let model = Model::load_with(&plan, Residency::Resident, DeviceKind::NpuEmu).expect("plan loads");
        let kernels = || unicorn_runtime::npu::plan_kernels(&model).expect("NPU kernels check");
        let mut emu = CpuExecutor::with_npu(&model, Box::new(Emulator), kernels());
        let got = prefill(&mut emu, &exp.prompt_ids);
        let counts = emu.npu_counts().expect("an NPU device")[0];
        let mut reference = CpuExecutor::with_npu(&model, Box::new(Reference), kernels());
        let want = prefill(&mut reference, &exp.prompt_ids);

        let to_tf = compare(&got, &exp.logits, exp.vocab);
        let to_ref = compare(&got, &want, exp.vocab);
        let bf16_tf = &exp.json["stats"]["bf16_compute"];
        let (tf_err, tf_argmax) =
            (bf16_tf["rel_err"].as_f64().unwrap() as f32, bf16_tf["argmax_agree"].as_f64().unwrap());
        println!(
            "{name:32} npu-emu: {} NPU dispatches; to transformers f32 {:.2e} (transformers in bf16: {tf_err:.2e}), \
             argmax {:.0}% (bf16: {:.0}%); to the bf16 reference {:.2e}",
            counts.dispatches,
            to_tf.rel_err,
            to_tf.argmax * 100.0,
            tf_argmax * 100.0,
            to_ref.rel_err
        );
        let layers = model.header().spec.num_layers as u64;
        // q / k / v, attention, o, gate / up and down: one dispatch each a layer (fewer where biases keep
        // q / k / v on the CPU), and one chunk: every fixture's prompt is within the plan's prefill chunk.
        let h = model.header();
        assert!(exp.prompt_ids.len() as u64 <= h.prefill_chunk, "{name}: one chunk");
        let npu_steps = h.phase(Phase::Prefill).unwrap().steps.iter();
        let on_npu: Vec<_> = npu_steps.filter(|s| h.kernels[s.kernel.0 as usize].backend == Backend::Npu).collect();
        let per_chunk = on_npu.len() as u64;
        // Attention: on the NPU in every layer where the design covers the fixture's heads and context, else
        // on the CPU in every layer.
        let attention = on_npu.iter().filter(|s| matches!(s.ops[..], [unicorn_ir::Op::Attention { .. }])).count();
        let s = &h.spec;
        let keys = unicorn_ir::npu::attention_max_keys(s.max_context as u64, h.prefill_chunk);
        let covered = unicorn_passes::npu_attention_placed(s.num_heads, s.num_kv_heads, s.head_dim, keys);
        if !covered {
            println!("{name:32} attention stays on the CPU: the placement rule keeps it off the NPU");
        }
        assert_eq!(attention as u64, if covered { layers } else { 0 }, "{name}: NPU attention steps");
        let projections = per_chunk - attention as u64;
        assert!(projections <= 4 * layers && projections >= 3 * layers, "{name}: {per_chunk} NPU steps");
        assert_eq!(counts.dispatches, per_chunk, "{name}: one dispatch per NPU step");
        assert!(to_ref.rel_err == 0.0, "{name}: the emulator is {:.2e} from the bf16 reference", to_ref.rel_err);
        // Within 1.5x the error transformers makes run entirely in bf16: the NPU attention rounds its
        // probabilities to bf16 for the PV product beside q, k and v, which takes one fixture (llama_mha, all
        // heads their own kv heads) 5% past transformers' own bf16 error; the argmax is the tolerance's test.
        assert!(
            to_tf.rel_err <= 1.5 * tf_err,
            "{name}: {:.2e} from transformers, over 1.5x its own bf16 run",
            to_tf.rel_err
        );
        assert!(to_tf.argmax >= 0.9, "{name}: argmax agreement {:.0}%", to_tf.argmax * 100.0);
    }
}

/// A phoenix plan's layout: every bias-free projection of prefill is on the NPU, those of one operand in one
/// launch of a multi-weight design for the plan's prefill chunk, and prefill attention (q / k / v, attention,
/// o, gate / up, down: 5 a layer); decode and the LM head stay on the CPU; the NPU kernels carry MLIR, no
/// xclbin.
#[test]
fn phoenix_plans_put_prefill_projections_on_the_npu() {
    let dir = tempfile::tempdir().unwrap();
    for (name, per_layer) in [("llama_gqa", 5), ("qwen2_bias", 4)] {
        let plan = phoenix_plan(name, dir.path());
        let model = Model::load(&plan).unwrap();
        let h = model.header();
        let npu_steps = |phase: Phase| {
            h.phase(phase)
                .unwrap()
                .steps
                .iter()
                .filter(|s| h.kernels[s.kernel.0 as usize].backend == Backend::Npu)
                .count()
        };
        // Qwen2's q, k and v carry biases: they stay on the CPU, attention / o / gate + up / down go to the NPU.
        assert_eq!(npu_steps(Phase::Prefill), per_layer * h.spec.num_layers, "{name}");
        assert_eq!(npu_steps(Phase::Decode), 0, "{name}");
        let prefill = h.phase(Phase::Prefill).unwrap();
        let weights: Vec<usize> = prefill
            .steps
            .iter()
            .filter(|s| h.kernels[s.kernel.0 as usize].backend == Backend::Npu)
            .map(|s| s.ops.len())
            .take(per_layer)
            .collect();
        // q / k / v (three weights), the attention (one op), o, gate / up, down.
        let want: &[usize] = if per_layer == 5 { &[3, 1, 1, 2, 1] } else { &[1, 1, 2, 1] };
        assert_eq!(weights, want, "{name}: the first layer's NPU launches, by weights");
        let kernels = unicorn_runtime::npu::plan_kernels(&model).unwrap();
        for k in kernels.iter().flatten() {
            let rows = match k {
                PlanNpu::Gemm(g) => g.gemm.m,
                PlanNpu::Attention(a) => a.shape.rows,
            };
            assert!(rows >= h.prefill_chunk, "{name}: {} made for {rows} rows", k.name());
            assert!(k.kernel().built.is_none(), "{name}: built without aiecc");
            assert!(
                k.kernel().mlir.contains("aie.device") && k.kernel().mlir.contains("func.func"),
                "{name}: {}",
                k.name()
            );
        }
        // The same plan runs on the CPU alone, through the ops' reference kernels.
        let exp = expected(name);
        let cpu = prefill_logits(&plan, &exp.prompt_ids);
        assert!(compare(&cpu, &exp.logits, exp.vocab).rel_err <= 1e-5, "{name} on the cpu");
    }
}

/// Fixture `name`'s module after the Phoenix target's passes (placed, not lowered).
fn phoenix_module(name: &str) -> unicorn_ir::Module {
    let ck = unicorn_compiler::frontend::Checkpoint::open(&fixtures_dir().join(name), None).unwrap();
    let mut module = unicorn_compiler::build::build_module(&ck).unwrap();
    let options = unicorn_passes::Options { target: Target::Phoenix, weights: WeightFormat::Bf16 };
    unicorn_passes::pipeline(&mut module, &options).unwrap();
    module
}

/// The placement rule puts a layer's projections of one operand on the NPU together or not at all: with one
/// layer's k_proj in a format the NPU designs do not take, that layer's q, k and v all stay on the CPU, while
/// its o, gate, up and down and every other layer's projections are on the NPU.
#[test]
fn projections_of_one_operand_are_placed_on_the_npu_together_or_not_at_all() {
    use unicorn_ir::{Device, Module, Op};
    let mut module = phoenix_module("llama_gqa");
    // Each prefill projection of a layer by its weight's name, and its device.
    let placed = |module: &Module| -> Vec<(String, Device)> {
        let g = module.graph(Phase::Prefill).unwrap();
        let named = |n: unicorn_ir::NodeId| match &g.g[n].op {
            Op::MatMul { weight, .. } => Some((module.weight(*weight).name.clone(), g.g[n].device)),
            _ => None,
        };
        g.g.node_indices().filter_map(named).filter(|(w, _)| w.contains("layers.")).collect()
    };
    let before = placed(&module);
    assert_eq!(before.len(), 7 * 3);
    assert!(before.iter().all(|(_, d)| *d == Device::Npu), "{before:?}");
    let k = module.weights.iter().position(|w| w.name.contains("layers.1.self_attn.k_proj")).unwrap();
    module.weights[k].format = WeightFormat::F16;
    unicorn_passes::place(&mut module, Target::Phoenix).unwrap();
    for (w, d) in placed(&module) {
        let qkv = ["q_proj", "k_proj", "v_proj"].iter().any(|p| w.contains(&format!("layers.1.self_attn.{p}")));
        assert_eq!(d, if qkv { Device::Cpu } else { Device::Npu }, "{w}");
    }
}

/// Decoding after a prefill on the emulator: the runtime's own generation loop gives transformers' greedy
/// tokens (the decode steps run on the CPU over a KV cache the NPU's projections filled).
#[test]
fn greedy_generation_after_an_emulated_prefill_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["llama_gqa", "mistral_sliding", "gemma3_text"] {
        let exp = expected(name);
        let plan = phoenix_plan(name, dir.path());
        let model = Model::load_with(&plan, Residency::Resident, DeviceKind::NpuEmu).unwrap();
        let mut session = unicorn_runtime::Session::new(&model, 64).expect("session");
        let mut sampler = unicorn_runtime::sampler::Sampler::new(unicorn_runtime::sampler::SamplerOptions {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        });
        let eos = model.header().spec.eos_token_ids.clone();
        let mut ids = Vec::new();
        unicorn_runtime::generate::generate(&mut session, &exp.prompt_ids, 8, &mut sampler, &eos, |t| {
            ids.push(t);
            Ok(())
        })
        .unwrap();
        assert_eq!(ids, exp.greedy_ids, "{name}");
    }
}

/// Write `src` to `dst` with its kernels section and header as `edit` leaves them (the sections' checksums
/// recomputed, as a forger would).
fn forge(
    src: &std::path::Path,
    dst: &std::path::Path,
    edit: impl FnOnce(&mut Vec<u8>, &mut unicorn_ir::plan::PlanHeader),
) {
    use unicorn_ir::container::{PlanFile, PlanWriter, SectionKind};
    let file = PlanFile::open(src).unwrap();
    let mut header = file.header.clone();
    let mut kernels = file.section(SectionKind::Kernels).unwrap().to_vec();
    edit(&mut kernels, &mut header);
    let mut w = PlanWriter::create(dst, &[]).unwrap();
    for s in file.sections() {
        let bytes = if s.kind == SectionKind::Kernels { &kernels[..] } else { file.section(s.kind).unwrap() };
        w.section(s.kind, bytes).unwrap();
    }
    w.finish(header).unwrap();
}

/// Re-encode NPU kernel `i` of a plan after `edit`, in place of its artifact (the section grows at its end).
fn edit_kernel(
    section: &mut Vec<u8>,
    h: &mut unicorn_ir::plan::PlanHeader,
    i: usize,
    edit: impl FnOnce(&mut unicorn_ir::npu::NpuKernel),
) {
    let a = h.kernels[i].artifact.unwrap();
    let bytes = &section[a.offset as usize..(a.offset + a.len) as usize];
    let mut k = unicorn_ir::npu::NpuKernel::decode(bytes, &unicorn_aie::model::NPU1).unwrap();
    edit(&mut k);
    let new = k.encode();
    h.kernels[i].artifact =
        Some(unicorn_ir::plan::ArtifactRange { offset: section.len() as u64, len: new.len() as u64 });
    section.extend_from_slice(&new);
}

/// A forged NPU kernel or launch is refused in one line before anything runs: bytes that are no design, a
/// design that breaks the AIE2 rules, a transfer past its buffer, a launch of a kernel made for another shape,
/// a multi-weight kernel whose widths disagree with its step's weights and results.
#[test]
fn forged_npu_kernels_and_launches_are_refused_in_one_line() {
    use unicorn_aie::design::SeqOp;
    let dir = tempfile::tempdir().unwrap();
    let plan = phoenix_plan("llama_gqa", dir.path());
    let h = unicorn_ir::container::PlanFile::open(&plan).unwrap().header;
    let npu: Vec<usize> = (0..h.kernels.len()).filter(|&i| h.kernels[i].backend == Backend::Npu).collect();
    assert!(npu.len() >= 2, "llama_gqa has NPU kernels of several shapes");
    let i = npu[0];
    // The q / k / v kernel (three weights), and the o and down ones (one each).
    let qkv = npu.iter().copied().find(|&j| h.kernels[j].name.matches('+').count() == 2).expect("a q / k / v kernel");
    let single: Vec<usize> = npu
        .iter()
        .copied()
        .filter(|&j| h.kernels[j].name.starts_with("npu_gemm") && !h.kernels[j].name.contains('+'))
        .collect();
    type Forgery = Box<dyn FnOnce(&mut Vec<u8>, &mut unicorn_ir::plan::PlanHeader)>;
    let cases: Vec<(&str, Forgery)> = vec![
        (
            "no UNPU magic",
            Box::new(move |s, h| {
                let a = h.kernels[i].artifact.unwrap();
                s[a.offset as usize] ^= 0xff;
            }),
        ),
        ("breaks the AIE2 rules", Box::new(move |s, h| edit_kernel(s, h, i, |k| k.design.fifos[0].depth = 64))),
        (
            "is not whole 4 x 8 x 4 mmul blocks (core body)",
            Box::new(move |s, h| {
                // A core's GEMM body two columns short of a block: it would index past its tiles.
                edit_kernel(s, h, qkv, |k| {
                    let unicorn_aie::design::CoreBody::MatMul { n, .. } = &mut k.design.cores[0].body else {
                        unreachable!("a GEMM kernel's cores multiply")
                    };
                    *n -= 2;
                })
            }),
        ),
        (
            "reaches past argument",
            Box::new(move |s, h| {
                edit_kernel(s, h, i, |k| {
                    let Some(SeqOp::Memcpy { offset, .. }) =
                        k.design.sequence.iter_mut().find(|o| matches!(o, SeqOp::Memcpy { arg: 1, .. }))
                    else {
                        unreachable!()
                    };
                    *offset += 1 << 20;
                })
            }),
        ),
        (
            "for what it does not compute: an operand of 64 columns, for its k = 160",
            Box::new(move |_, h| {
                // The o projection's launch pointed at the down projection's kernel: one weight each (the same
                // bindings), another shape.
                let (o, down) = (single[0], single[1]);
                assert!(h.kernels[o].name.contains("x64x64") && h.kernels[down].name.contains("x160x64"));
                let p = h.phases.iter_mut().find(|p| p.phase == Phase::Prefill).unwrap();
                let st = p.steps.iter_mut().find(|s| s.kernel.0 as usize == o).unwrap();
                st.kernel = unicorn_ir::plan::KernelId(down as u32);
            }),
        ),
        (
            "n[1] = ",
            Box::new(move |s, h| {
                // k's width stated 8 short (its padded width, the design, the transfers unchanged: the kernel
                // itself decodes), so the kernel no longer says what its step's k weight and result are.
                edit_kernel(s, h, qkv, |k| {
                    let unicorn_ir::npu::NpuOp::GemmBtMulti { n, .. } = &mut k.op else { unreachable!() };
                    n[1] -= 8;
                })
            }),
        ),
    ];
    for (n, (want, forgery)) in cases.into_iter().enumerate() {
        let bad = dir.path().join(format!("forged{n}.ucp"));
        forge(&plan, &bad, forgery);
        for device in ["npu-emu", "auto"] {
            let out = run("unicorn-rt", &[bad.to_str().unwrap(), "--device", device, "--tokens", "1,2,3"]);
            let err = assert_one_line_error(&out, want);
            assert!(err.contains("forged"), "names the plan: {err}");
        }
    }
}

/// A prompt prefilled in chunks shorter than the plan's (7 rows: four chunks of a 25-token prompt) through
/// the NPU attention on the emulator: the one design serves every chunk with its `q0` (0, 7, 14, 21) and
/// `kv_len`, reading the earlier chunks' keys from the CPU's KV cache, and the logits of every position match
/// transformers as one pass does — across sliding windows the chunks split (Mistral's and Gemma 3's 8
/// positions), Gemma 3's mix of sliding and global layers, GQA and Qwen3's head_dim.
#[test]
fn a_prompt_prefilled_in_chunks_on_the_npu_attention_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["mistral_sliding", "gemma3_text", "llama_gqa", "qwen3_qknorm"] {
        let exp = expected(name);
        let plan = phoenix_plan(name, dir.path());
        let model = Model::load_with(&plan, Residency::Resident, DeviceKind::NpuEmu).expect("plan loads");
        let kernels = unicorn_runtime::npu::plan_kernels(&model).expect("NPU kernels check");
        let attention = kernels.iter().flatten().filter(|k| matches!(k, PlanNpu::Attention(_))).count();
        assert!(attention >= 1, "{name}: attention on the NPU");
        let mut emu = CpuExecutor::with_npu(&model, Box::new(Emulator), kernels);
        let ids = &exp.prompt_ids;
        let chunk = 7;
        assert!(ids.len() > 2 * chunk, "{name}: several chunks");
        let seq = emu.add_sequence(ids.len()).expect("sequence");
        let mut got = Vec::new();
        for (i, part) in ids.chunks(chunk).enumerate() {
            let mut logits = Vec::new();
            let run = SeqRun { seq, tokens: part, pos: i * chunk, keep: part.len() };
            emu.execute(Phase::Prefill, &[run], &mut logits).expect("prefill chunk");
            got.extend(logits);
        }
        let counts = emu.npu_counts().expect("an NPU device")[0];
        let layers = model.header().spec.num_layers as u64;
        let chunks = ids.len().div_ceil(chunk) as u64;
        let h = model.header();
        let per_chunk = h
            .phase(Phase::Prefill)
            .unwrap()
            .steps
            .iter()
            .filter(|s| h.kernels[s.kernel.0 as usize].backend == Backend::Npu)
            .count() as u64;
        assert_eq!(counts.dispatches, chunks * per_chunk, "{name}: every chunk's NPU steps dispatched");
        assert!(per_chunk >= 4 * layers, "{name}: attention among them");
        let to_tf = compare(&got, &exp.logits, exp.vocab);
        let tf_err = exp.json["stats"]["bf16_compute"]["rel_err"].as_f64().unwrap() as f32;
        println!(
            "{name:32} npu-emu in {chunks} chunks of {chunk}: to transformers f32 {:.2e}, argmax {:.0}%",
            to_tf.rel_err,
            to_tf.argmax * 100.0
        );
        assert!(to_tf.rel_err <= 1.5 * tf_err, "{name}: {:.2e} from transformers", to_tf.rel_err);
        assert!(to_tf.argmax >= 0.9, "{name}: argmax agreement {:.0}%", to_tf.argmax * 100.0);
    }
}

/// A forged NPU attention kernel or launch is refused in one line before anything runs: a kernel whose
/// stated shape disagrees with its design's cores (a field named), a global layer's attention launched
/// with the sliding layers' kernel (Gemma 3's two attention designs), and a design that reads the keys and
/// values in another layout than by position (as plans of an older unicornc did), which is told to recompile.
#[test]
fn forged_npu_attention_kernels_and_launches_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let plan = phoenix_plan("gemma3_text", dir.path());
    let h = unicorn_ir::container::PlanFile::open(&plan).unwrap().header;
    let attention: Vec<usize> =
        (0..h.kernels.len()).filter(|&i| h.kernels[i].name.starts_with("npu_attention")).collect();
    assert_eq!(attention.len(), 2, "gemma3_text: a sliding and a global attention design");
    let windowed = |i: usize| h.kernels[i].name.contains("_w");
    let (sliding, global) =
        if windowed(attention[0]) { (attention[0], attention[1]) } else { (attention[1], attention[0]) };
    type Forgery = Box<dyn FnOnce(&mut Vec<u8>, &mut unicorn_ir::plan::PlanHeader)>;
    let cases: Vec<(&str, Forgery)> = vec![
        (
            "its attention's kv_heads = 2, where its design's cores take 1",
            Box::new(move |s, h| {
                edit_kernel(s, h, global, |k| {
                    let unicorn_ir::npu::NpuOp::Attention(a) = &mut k.op else { unreachable!() };
                    assert_eq!(a.geometry.kv_heads, 1, "gemma3_text's kv heads");
                    a.geometry.kv_heads = 2;
                })
            }),
        ),
        (
            "recompile the plan with this unicornc",
            Box::new(move |s, h| {
                edit_kernel(s, h, global, |k| {
                    let unicorn_ir::npu::NpuOp::Attention(a) = &k.op else { unreachable!() };
                    let row = a.kv_row();
                    let mut edited = 0;
                    for op in &mut k.design.sequence {
                        let unicorn_aie::design::SeqOp::Memcpy { arg: 1, dims, .. } = op else { continue };
                        // A position's key row, then its value row `row` elements on: step half a row instead,
                        // a layout the host never writes, within the same transfer's bounds.
                        for i in 1..dims.len() {
                            if dims[i - 1].stride == 2 * row && dims[i].size == 2 && dims[i].stride == row {
                                dims[i].stride = row / 2;
                                edited += 1;
                            }
                        }
                    }
                    assert!(edited > 0, "the design reads keys and values by position");
                })
            }),
        ),
        (
            "its window = 8, for an attention of window 0",
            Box::new(move |_, h| {
                let p = h.phases.iter_mut().find(|p| p.phase == Phase::Prefill).unwrap();
                let st = p.steps.iter_mut().find(|s| s.kernel.0 as usize == global).unwrap();
                st.kernel = unicorn_ir::plan::KernelId(sliding as u32);
            }),
        ),
    ];
    for (n, (want, forgery)) in cases.into_iter().enumerate() {
        let bad = dir.path().join(format!("forged_attention{n}.ucp"));
        forge(&plan, &bad, forgery);
        let out = run("unicorn-rt", &[bad.to_str().unwrap(), "--device", "npu-emu", "--tokens", "1,2,3"]);
        let err = assert_one_line_error(&out, want);
        assert!(err.contains("forged_attention"), "names the plan: {err}");
    }
}

/// The capability table against real graphs (Qwen2's: biases on q, k and v): in prefill the NPU takes the
/// bias-free projections and attention, not the biased q / k / v nor the LM head (its kept rows are not a row
/// per token), nor any norm, RoPE or GLU; in decode nothing; every node has the CPU. With its context past what
/// the attention design's transfers take, attention loses its NPU row.
#[test]
fn the_capability_table_admits_what_the_npu_designs_take() {
    use unicorn_ir::{Device, Op};
    use unicorn_passes::{capable, PHOENIX_CAPABILITIES};
    let mut module = phoenix_module("qwen2_bias");
    let layers = module.spec.num_layers;
    for g in &module.graphs {
        let mut admitted = std::collections::BTreeMap::<String, usize>::new();
        for n in g.g.node_indices() {
            assert!(capable(PHOENIX_CAPABILITIES, Device::Cpu, &module, g, n).is_some(), "{}", g.g[n].op.name());
            if capable(PHOENIX_CAPABILITIES, Device::Npu, &module, g, n).is_some() {
                let what = match &g.g[n].op {
                    Op::MatMul { weight, bias } => {
                        assert!(bias.is_none(), "{}", module.weight(*weight).name);
                        let name = &module.weight(*weight).name;
                        name.rsplit('.').nth(1).unwrap().to_string()
                    }
                    op => op.name().to_string(),
                };
                *admitted.entry(what).or_default() += 1;
                // The rule places what the table admits here (no operand shares a matmul with a biased one).
                assert_eq!(g.g[n].device, Device::Npu);
            }
        }
        let want: Vec<(String, usize)> = match g.phase {
            Phase::Prefill => ["attention", "down_proj", "gate_proj", "o_proj", "up_proj"]
                .iter()
                .map(|w| (w.to_string(), layers))
                .collect(),
            Phase::Decode => Vec::new(),
        };
        assert_eq!(admitted.into_iter().collect::<Vec<_>>(), want, "{}", g.phase);
    }
    // A context whose keys the attention design's transfers cannot take: no NPU row for attention.
    module.spec.max_context = 1 << 31;
    let g = module.graph(Phase::Prefill).unwrap();
    for n in g.g.node_indices().filter(|&n| matches!(g.g[n].op, Op::Attention { .. })) {
        assert!(capable(PHOENIX_CAPABILITIES, Device::Npu, &module, g, n).is_none());
    }
}
