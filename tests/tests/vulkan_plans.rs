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
            let matmuls = s.ops.iter().all(|o| matches!(o, unicorn_ir::Op::MatMul { .. }));
            assert!(s.ops.len() == 1 || matmuls, "{}: one op per launch, or a group of matmuls", s.label);
            let k = &h.kernels[s.kernel.0 as usize];
            let buffers = s.args.iter().filter(|a| !matches!(a, unicorn_ir::plan::Arg::Scalar(_))).count();
            assert_eq!(k.bindings.len(), buffers, "{}: {} binds {buffers} buffers", s.label, k.name);
        }
    }
}

/// Logits of one prefill pass of `ids` keeping every row, on the Vulkan executor.
fn vulkan_prefill(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut s = unicorn_runtime::Session::new(model, ids.len()).unwrap();
    s.forward(ids, true).unwrap().to_vec()
}

#[test]
fn a_vulkan_plan_on_the_gpu_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for name in fixtures() {
        let exp = expected(&name);
        let plan = compile_for(Target::Vulkan, &fixtures_dir().join(&name), dir.path(), WeightFormat::F32, None);
        let model = Model::load_with(&plan, Residency::Resident, DeviceKind::Vulkan(0)).unwrap();
        let got = vulkan_prefill(&model, &exp.prompt_ids);
        let a = compare(&got, &exp.logits, exp.vocab);
        println!("{name:32} vulkan plan on vulkan:0: max|dlogit|/max|logit| = {:.2e}", a.rel_err);
        assert!(a.rel_err <= FLOAT_TOL, "{name}: {:.2e} > {FLOAT_TOL}", a.rel_err);
        assert_eq!(a.argmax, 1.0, "{name}: argmax differs from transformers'");
    }
}
