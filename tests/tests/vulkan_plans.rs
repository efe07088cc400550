//! Plans compiled for the Vulkan target: what they hold, and that they run anywhere — on the CPU executor,
//! through the reference kernels of their ops, they match transformers as a CPU plan does.

use unicorn_ir::container::Residency;
use unicorn_ir::plan::Backend;
use unicorn_ir::WeightFormat;
use unicorn_passes::Target;
use unicorn_runtime::executor::DeviceKind;
use unicorn_runtime::Model;
use unicorn_tests::*;

/// The float parity tolerance (parity.rs).
const FLOAT_TOL: f32 = 1e-5;

#[test]
fn a_vulkan_plan_runs_on_the_cpu_and_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for name in fixtures() {
        let exp = expected(&name);
        let plan = compile_for(Target::Vulkan, &fixtures_dir().join(&name), dir.path(), WeightFormat::F32, None);
        let got = prefill_logits(&plan, &exp.prompt_ids);
        let a = compare(&got, &exp.logits, exp.vocab);
        println!("{name:32} vulkan plan on the cpu: max|dlogit|/max|logit| = {:.2e}", a.rel_err);
        assert!(a.rel_err <= FLOAT_TOL, "{name}: {:.2e} > {FLOAT_TOL}", a.rel_err);
        assert_eq!(a.argmax, 1.0, "{name}: argmax differs from transformers'");
    }
}

#[test]
fn every_launch_of_a_vulkan_plan_is_a_spirv_kernel_of_its_section() {
    let dir = tempfile::tempdir().unwrap();
    let plan = compile_for(Target::Vulkan, &fixtures_dir().join("gemma3_text"), dir.path(), WeightFormat::Q4_0, None);
    let model = Model::load(&plan).unwrap();
    let h = model.header();
    assert_eq!(h.target, "vulkan");
    for k in &h.kernels {
        assert_eq!(k.backend, Backend::Vulkan, "{}", k.name);
        let a = k.artifact.unwrap_or_else(|| panic!("{} has no SPIR-V", k.name));
        assert!(a.len > 20 && a.len % 4 == 0 && a.offset % 4 == 0, "{}: {a:?}", k.name);
        assert!(k.bindings.len() >= 2 && k.workgroup.iter().product::<u32>() >= 32, "{}: {k:?}", k.name);
    }
    for p in &h.phases {
        for s in &p.steps {
            // One op, a group of matmuls of one operand, a norm fused in front of such a group, a residual add
            // behind one matmul or one norm, a GLU behind gate and up (and their norm), two ropes side by side,
            // or (in decode) two ropes fused into the attention that reads them.
            use unicorn_ir::Op;
            let units: Vec<_> = s.units().collect();
            let matmuls = |ops: &[Op]| ops.iter().all(|o| matches!(o, Op::MatMul { .. }));
            let unit = |i: usize| &s.ops[units[i].ops.clone()];
            let glu = |u: usize| matches!(unit(u), [Op::Glu { .. }]);
            let fused = match (units.len(), &s.ops[0], s.ops.last()) {
                (2, Op::RmsNorm { .. }, Some(Op::Add | Op::RmsNorm { .. })) => s.ops.len() == 2,
                (2, Op::RmsNorm { .. }, _) => matmuls(unit(1)),
                (3, Op::RmsNorm { .. }, _) => matmuls(unit(1)) && unit(1).len() == 2 && glu(2),
                (2, Op::MatMul { .. }, Some(Op::Add)) => unit(0).len() == 1 && unit(1).len() == 1,
                (2, Op::MatMul { .. }, Some(Op::Glu { .. })) => unit(0).len() == 2 && glu(1),
                (2, Op::Rope { .. }, Some(Op::Rope { .. })) => s.ops.len() == 2,
                (3, Op::Rope { .. }, Some(Op::Attention { .. })) => {
                    p.phase == unicorn_ir::Phase::Decode && matches!(unit(1), [Op::Rope { .. }]) && s.ops.len() == 3
                }
                _ => false,
            };
            assert!(units.len() == 1 || fused, "{}: an unexpected fusion", s.label);
            let k = &h.kernels[s.kernel.0 as usize];
            let buffers = s.args.iter().filter(|a| !matches!(a, unicorn_ir::plan::Arg::Scalar(_))).count();
            assert_eq!(k.bindings.len(), buffers, "{}: {} binds {buffers} buffers", s.label, k.name);
        }
    }
}

/// Launches per layer. Llama: the norm fused into q/k/v, the two ropes in one, attention, o_proj with the
/// residual add, the norm fused into gate/up with the GLU behind them, down with the second add (6); Gemma 3
/// adds its q and k norms (one launch) and the norms after attention and after the MLP, each with the
/// residual add behind it (9). In decode the ropes fuse into attention: one launch fewer. Then the embedding,
/// the final norm and the LM head, the selection of the kept rows, and Gemma's final logit softcap: at most 5
/// more.
#[test]
fn norms_and_residual_adds_fuse_into_the_projections_beside_them() {
    let dir = tempfile::tempdir().unwrap();
    // Llama: norm + q/k/v, rope q + rope k, attention, o + residual, norm + gate/up + glu, down + residual.
    // Gemma 3 normalizes each projection's result (and q, k), so its residual adds follow a norm and fuse
    // behind it.
    for (name, per_layer) in [("llama_gqa", 6), ("gemma3_text", 9)] {
        let plan = compile_for(Target::Vulkan, &fixtures_dir().join(name), dir.path(), WeightFormat::Q8_0, None);
        let model = Model::load(&plan).unwrap();
        let h = model.header();
        for p in &h.phases {
            // The final norm fuses into the LM head too where the memory plan lets it (not over its operand).
            let decode = p.phase == unicorn_ir::Phase::Decode;
            let per_layer = per_layer - decode as usize;
            let most = per_layer * h.spec.num_layers + 5;
            assert!(p.steps.len() <= most, "{name} {}: {} launches, expected at most {most}", p.phase, p.steps.len());
            let fused = p.steps.iter().filter(|s| h.kernels[s.kernel.0 as usize].name.starts_with("rms_norm+")).count();
            assert!(fused >= 2 * h.spec.num_layers, "{name} {}: {fused} fused norms", p.phase);
            let kernel = |s: &unicorn_ir::plan::Step| h.kernels[s.kernel.0 as usize].name.clone();
            let residual = p.steps.iter().filter(|s| kernel(s).ends_with("+add")).count();
            let behind_norms = p.steps.iter().filter(|s| kernel(s) == "rms_norm+add").count();
            let pairs = p.steps.iter().filter(|s| kernel(s) == "rms_norm+rms_norm").count();
            assert_eq!(pairs, if name == "llama_gqa" { 0 } else { h.spec.num_layers }, "{name}: q and k norms");
            let want = if name == "llama_gqa" { (2, 0) } else { (2, 2) };
            assert_eq!(
                (residual, behind_norms),
                (want.0 * h.spec.num_layers, want.1 * h.spec.num_layers),
                "{name} {}: residual adds fused into the matmul or norm before them",
                p.phase
            );
            let glus = p.steps.iter().filter(|s| h.kernels[s.kernel.0 as usize].name.contains("+glu_")).count();
            assert_eq!(glus, h.spec.num_layers, "{name} {}: GLUs fused behind gate and up", p.phase);
            let ropes = p.steps.iter().filter(|s| h.kernels[s.kernel.0 as usize].name == "rope+rope").count();
            let fused =
                p.steps.iter().filter(|s| h.kernels[s.kernel.0 as usize].name.starts_with("rope+rope+attention"));
            let (ropes, fused) = (ropes, fused.count());
            let n = h.spec.num_layers;
            let want = if decode { (0, n) } else { (n, 0) };
            assert_eq!(
                (ropes, fused),
                want,
                "{name} {}: q and k rotated in one launch per layer (decode: in attention)",
                p.phase
            );
        }
    }
}

/// Logits of one prefill pass of `ids` keeping every row, on the Vulkan executor.
fn vulkan_prefill(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut s = unicorn_runtime::Session::new(model, ids.len()).unwrap();
    s.forward(ids, true).unwrap().to_vec()
}

/// Every fixture's Vulkan plan on the GPU against transformers' float32 logits, in weight formats that hold its
/// weights exactly: f32, the quantized format of its own grid (tests/fixtures/README.md), and f16 or bf16 (every
/// other fixture each, which keeps the lavapipe run short). Prefill's matmuls widen the weights and keep the
/// activations in f32 on every path a device without cooperative matrices takes (lavapipe's), so each is held
/// to the float tolerance.
#[test]
fn a_vulkan_plan_on_the_gpu_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in fixtures().into_iter().enumerate() {
        let exp = expected(&name);
        let half = if i % 2 == 0 { WeightFormat::F16 } else { WeightFormat::Bf16 };
        for format in [WeightFormat::F32, half, exp.grid] {
            let plan = compile_for(Target::Vulkan, &fixtures_dir().join(&name), dir.path(), format, None);
            let model = Model::load_with(&plan, Residency::Resident, DeviceKind::Vulkan(0)).unwrap();
            let got = vulkan_prefill(&model, &exp.prompt_ids);
            let a = compare(&got, &exp.logits, exp.vocab);
            println!("{name:32} {format:5} vulkan plan on vulkan:0: max|dlogit|/max|logit| = {:.2e}", a.rel_err);
            assert!(a.rel_err <= FLOAT_TOL, "{name} {format}: {:.2e} > {FLOAT_TOL}", a.rel_err);
            assert_eq!(a.argmax, 1.0, "{name} {format}: argmax differs from transformers'");
        }
    }
}

/// Sampling from the k largest logits, which the GPU picks where the logits are (the plan's top-k kernel),
/// hands the sampler exactly the candidates it would take from the logits themselves: after the prompt and
/// at each decode step of a q8_0 plan, for a k inside the kernel's limit and the largest it takes; a k
/// beyond it falls back to the host, with the same result.
#[test]
fn the_gpu_picks_the_same_sampling_candidates_as_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let name = &fixtures()[0];
    let exp = expected(name);
    let plan = compile_for(Target::Vulkan, &fixtures_dir().join(name), dir.path(), WeightFormat::Q8_0, None);
    let model = Model::load_with(&plan, Residency::Resident, DeviceKind::Vulkan(0)).unwrap();
    assert!(model.header().top_k.is_some(), "a Vulkan plan carries the top-k kernel");
    let vocab = exp.vocab;
    for k in [1, 40, 64, 100] {
        let mut on_gpu = unicorn_runtime::Session::new(&model, 64).unwrap();
        let mut on_host = unicorn_runtime::Session::new(&model, 64).unwrap();
        let mut tokens = exp.prompt_ids.clone();
        let mut want = Vec::new();
        for step in 0..4 {
            let got = on_gpu.forward_top_k(&tokens, k).unwrap().to_vec();
            let logits = on_host.forward(&tokens, false).unwrap();
            assert_eq!(logits.len(), vocab);
            unicorn_runtime::sampler::top_k(logits, k, &mut want);
            assert_eq!(got.len(), k.min(vocab), "k {k}, step {step}");
            let bits = |v: &[(f32, u32)]| v.iter().map(|c| (c.0.to_bits(), c.1)).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "k {k}, step {step}");
            // The next step feeds the third candidate (or the last), so the steps differ from greedy ones.
            tokens = vec![got[2.min(got.len() - 1)].1];
        }
    }
}
