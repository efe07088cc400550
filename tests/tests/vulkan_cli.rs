//! The Vulkan executor through `unicorn-rt`: `--device vulkan` generates what transformers generates, the
//! devices are listed, and a wrong device, a plan of another target or a forged kernel table is refused with
//! one line.

use serde_json::Value;
use std::path::{Path, PathBuf};
use unicorn_ir::container::Residency;
use unicorn_ir::{Phase, WeightFormat};
use unicorn_passes::Target;
use unicorn_runtime::executor::{DeviceKind, Executor, SeqRun};
use unicorn_runtime::vulkan::exec::{VulkanExecutor, VulkanOptions};
use unicorn_runtime::Model;
use unicorn_tests::*;

fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
}

fn vulkan_plan(dir: &Path, name: &str, format: WeightFormat) -> PathBuf {
    compile_for(Target::Vulkan, &fixtures_dir().join(name), dir, format, None)
}

#[test]
fn device_vulkan_generates_what_transformers_generates() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["qwen3_qknorm", "gemma3_text", "mistral_sliding"] {
        let exp = expected(name);
        let plan = vulkan_plan(dir.path(), name, WeightFormat::F32);
        let (p, tokens, n) = (plan.to_str().unwrap(), ids_arg(&exp.prompt_ids), exp.greedy_ids.len().to_string());
        let npy = dir.path().join(format!("{name}.npy"));
        let out =
            run("unicorn-rt", &[p, "--device", "vulkan", "--tokens", &tokens, "--logits-out", npy.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (_, logits) = read_npy_f32(&npy);
        let a = compare(&logits, &exp.logits, exp.vocab);
        assert!(a.rel_err <= 1e-5, "{name}: {:.2e}", a.rel_err);
        let args = [p, "--device", "vulkan:0", "--tokens", &tokens, "-n", &n, "--temperature", "0", "--print-ids"];
        let out = run("unicorn-rt", &args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), ids_arg(&exp.greedy_ids), "{name}");
    }
}

/// The features a plan's kernels need, from its header.
fn plan_requires(plan: &Path) -> Vec<unicorn_ir::device::Feature> {
    let file = unicorn_ir::container::PlanFile::open(plan).unwrap();
    file.header.kernels.iter().flat_map(|k| k.requires.clone()).collect()
}

/// `--device-profile`: generic kernels need nothing beyond Vulkan 1.2; the GPU found here (lavapipe has
/// subgroup shuffles) gets the subgroup reductions and records that it needs them; a profile file claiming
/// cooperative matrices gets the cooperative-matrix GEMM, and its plan is refused in one line by a device
/// without them; a bad profile is one line naming it, and leaves no plan behind.
#[test]
fn device_profiles_choose_the_kernels_and_the_executor_enforces_them() {
    use unicorn_ir::device::{Feature, COOPMAT_F16_F32};
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures_dir().join("llama_gqa");
    let compile = |out: &str, profile: &str| {
        let plan = dir.path().join(out);
        let args = [
            "compile",
            model.to_str().unwrap(),
            "-o",
            plan.to_str().unwrap(),
            "--target",
            "vulkan",
            "--weights",
            "q4_0",
            "--device-profile",
            profile,
        ];
        (run("unicornc", &args), plan)
    };
    let (out, generic) = compile("generic.ucp", "generic");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(plan_requires(&generic), []);
    let (out, here) = compile("here.ucp", "vulkan:0");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(plan_requires(&here).contains(&Feature::SubgroupShuffle), "{:?}", plan_requires(&here));
    let coop = dir.path().join("coop.json");
    std::fs::write(
        &coop,
        format!(
            r#"{{"name": "a GPU with matrix cores", "subgroup_shuffle": true, "subgroup_size": 32,
                "max_shared_bytes": 65536, "cooperative_matrix": ["{COOPMAT_F16_F32}"]}}"#
        ),
    )
    .unwrap();
    let (out, matrix) = compile("coop.ucp", coop.to_str().unwrap());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(plan_requires(&matrix).contains(&Feature::CooperativeMatrix(COOPMAT_F16_F32.into())));
    // Prefill's GLU fuses into both GEMMs, the portable and the cooperative-matrix one.
    let prefill_glus = |plan: &Path| {
        let model = Model::load(plan).unwrap();
        let h = model.header();
        let p = h.phases.iter().find(|p| p.phase == Phase::Prefill).unwrap();
        p.steps.iter().filter(|s| h.kernels[s.kernel.0 as usize].name.contains("+glu_")).count()
    };
    assert_eq!(prefill_glus(&generic), 3, "one per layer");
    assert_eq!(prefill_glus(&matrix), 3, "one per layer");
    let lavapipe_has_no_matrices = unicorn_runtime::vulkan::hal::devices().unwrap()[0].cooperative_matrix.is_empty();
    if lavapipe_has_no_matrices {
        let args = [matrix.to_str().unwrap(), "--device", "vulkan", "--tokens", "1,2"];
        let err = assert_one_line_error(&run("unicorn-rt", &args), "cooperative matrices of 16x16x16:f16/f32");
        assert!(err.contains("--device-profile"), "{err}");
        // The CPU executor runs any plan.
        let out = run("unicorn-rt", &[matrix.to_str().unwrap(), "--tokens", "1,2", "-n", "2"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name": "no sizes"}"#).unwrap();
    for (profile, culprit) in [
        ("nope", "--device-profile"),
        ("vulkan:77", "vulkan:77"),
        (bad.to_str().unwrap(), "bad.json"),
        ("/nonexistent/p.json", "p.json"),
    ] {
        let (out, plan) = compile("bad.ucp", profile);
        assert_one_line_error(&out, culprit);
        assert!(!plan.exists(), "{profile}: a plan was left behind");
    }
    let cpu = dir.path().join("cpu.ucp");
    let args = ["compile", model.to_str().unwrap(), "-o", cpu.to_str().unwrap(), "--device-profile", "generic"];
    assert_one_line_error(&run("unicornc", &args), "--target vulkan");
}

#[test]
fn list_devices_shows_the_gpu() {
    let out = run("unicorn-rt", &["--list-devices"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let gpu = text.lines().find(|l| l.starts_with("vulkan:0")).unwrap_or_else(|| panic!("no vulkan:0 in {text}"));
    for part in ["Vulkan 1.", "GiB device-local", "subgroup ", "binds up to ", "cooperative matrices", "integer dot"] {
        assert!(gpu.contains(part), "'{part}' missing from: {gpu}");
    }
    // What it says is what the device reports: its subgroup size, its cooperative-matrix shapes or their
    // absence, and whether it has integer dot products.
    let d = &unicorn_runtime::vulkan::hal::devices().unwrap()[0];
    assert!(gpu.contains(&format!("subgroup {},", d.subgroup_size)), "{gpu}");
    let coop = match d.cooperative_matrix.is_empty() {
        true => "no cooperative matrices".to_string(),
        false => format!("cooperative matrices {}", d.cooperative_matrix.join(" ")),
    };
    assert!(gpu.contains(&coop), "'{coop}' missing from: {gpu}");
    assert_eq!(gpu.contains("no integer dot"), !d.integer_dot, "{gpu}");
}

#[test]
fn a_wrong_device_or_a_plan_of_another_target_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vk = vulkan_plan(dir.path(), "llama_gqa", WeightFormat::Q8_0);
    let cpu = compile_to(&fixtures_dir().join("llama_gqa"), dir.path(), WeightFormat::Q8_0, None);
    let ask =
        |plan: &Path, device: &str| run("unicorn-rt", &[plan.to_str().unwrap(), "--device", device, "--tokens", "1,2"]);
    assert_one_line_error(&ask(&vk, "vulkan:9"), "vulkan:9");
    assert_one_line_error(&ask(&vk, "vulkan:x"), "vulkan:x");
    assert_one_line_error(&ask(&vk, "tpu"), "tpu");
    let err = assert_one_line_error(&ask(&cpu, "vulkan"), "--target vulkan");
    assert!(err.contains(cpu.to_str().unwrap()), "{err}");
}

/// A Vulkan plan with its header edited (checksum recomputed) is refused on the GPU with one line naming `field`.
fn forged_refused(plan: &Path, field: &str, edit: impl FnOnce(&mut Value)) {
    let forged = plan.with_extension("forged.ucp");
    edit_plan_header(plan, &forged, |h| edit(&mut h["plan"]));
    let out = run("unicorn-rt", &[forged.to_str().unwrap(), "--device", "vulkan", "--tokens", "1,2", "-n", "2"]);
    assert_one_line_error(&out, field);
}

#[test]
fn a_forged_kernel_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plan = vulkan_plan(dir.path(), "llama_gqa", WeightFormat::Q4_0);
    // An artifact that starts one word late is not SPIR-V.
    forged_refused(&plan, "not a SPIR-V module", |h| {
        let a = &mut h["kernels"][0]["artifact"];
        a["offset"] = (a["offset"].as_u64().unwrap() + 4).into();
        a["len"] = (a["len"].as_u64().unwrap() - 4).into();
    });
    // A kernel that binds fewer buffers than its steps pass.
    forged_refused(&plan, "bindings", |h| {
        h["kernels"][0]["bindings"].as_array_mut().unwrap().pop();
    });
    // Bindings out of order.
    forged_refused(&plan, "bindings", |h| {
        h["kernels"][0]["bindings"][0]["binding"] = 5.into();
    });
    // A CPU kernel in a Vulkan plan.
    forged_refused(&plan, "does not run kernel", |h| {
        h["kernels"][0]["backend"] = "cpu".into();
    });
    // A kernel that needs what no device here has, and one that needs something no profile names.
    forged_refused(&plan, "cooperative matrices of 99x99x99:f16/f32", |h| {
        h["kernels"][0]["requires"] = serde_json::json!([{"cooperative_matrix": "99x99x99:f16/f32"}]);
    });
    // (refused where the header is parsed: the line names the file and the unknown value)
    forged_refused(&plan, "unknown variant `warp_drive`", |h| {
        h["kernels"][0]["requires"] = serde_json::json!(["warp_drive"]);
    });
    // An argmax kernel outside the table, and one that is not a two-binding kernel.
    forged_refused(&plan, "argmax", |h| h["argmax"] = 9999.into());
    forged_refused(&plan, "argmax", |h| h["argmax"] = 0.into());
}

/// The weights split into many small buffers (as on a device with a small `maxStorageBufferRange`) give the
/// same logits as one buffer, and so do weights, caches and activations in unmapped memory written through
/// staging copies (as a discrete GPU holds them).
#[test]
fn weights_split_across_bindings_or_staged_give_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let exp = expected("gemma3_text");
    for format in [WeightFormat::F32, WeightFormat::Q4_0] {
        let plan = vulkan_plan(dir.path(), "gemma3_text", format);
        let model = Model::load_with(&plan, Residency::Resident, DeviceKind::Vulkan(0)).unwrap();
        let logits = |max: Option<u64>, staged: bool| {
            let options = VulkanOptions { max_weight_binding: max, stage_device_buffers: staged, ..Default::default() };
            let mut x = VulkanExecutor::new(&model, 0, options).unwrap();
            let seq = x.add_sequence(exp.prompt_ids.len()).unwrap();
            let run = SeqRun { seq, tokens: &exp.prompt_ids, pos: 0, keep: exp.prompt_ids.len() };
            let mut l = Vec::new();
            x.execute(Phase::Prefill, &[run], &mut l).unwrap();
            l
        };
        let largest = model.header().weights.iter().map(|w| w.bytes).max().unwrap();
        let whole = logits(None, false);
        assert_eq!(whole, logits(Some(largest), false), "{format}");
        assert_eq!(whole, logits(Some(largest), true), "{format}: staged");
        let a = compare(&whole, &exp.logits, exp.vocab);
        assert!(a.rel_err <= 1e-5, "{format}: {:.2e}", a.rel_err);
        // Smaller than the largest weight: refused, naming it.
        let err = VulkanExecutor::new(
            &model,
            0,
            VulkanOptions { max_weight_binding: Some(largest - 4), ..Default::default() },
        )
        .err()
        .expect("a weight larger than a binding is refused")
        .to_string();
        assert!(err.contains("above the largest buffer the device binds"), "{err}");
    }
}

/// Prefill and decode under the Khronos validation layer with synchronization validation: the layer
/// (which does report a missing barrier between two launches) reports nothing, for a prompt in one prefill and
/// in chunks (whose earlier executions keep no rows), greedy and sampled (the top-k kernel). The loader's own
/// log shows the layer was inserted, so the test cannot pass with the layer absent.
#[test]
fn the_validation_layer_reports_nothing() {
    let layer = Path::new("/usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json");
    assert!(layer.is_file(), "the Khronos validation layer is not installed (bash .ci/deps installs it)");
    let dir = tempfile::tempdir().unwrap();
    let greedy: &[&str] = &["--temperature", "0", "--print-ids"];
    let sampled: &[&str] = &["--temperature", "0.8", "--top-k", "5", "--seed", "7"];
    let cases = [
        ("mistral_sliding", WeightFormat::Q4_0, "12", greedy),
        ("qwen2_bias", WeightFormat::F16, "5", greedy),
        ("llama_gqa", WeightFormat::Q8_0, "12", sampled),
    ];
    for (name, format, chunk, sampling) in cases {
        let plan = vulkan_plan(dir.path(), name, format);
        let out = std::process::Command::new(bin("unicorn-rt"))
            .args([plan.to_str().unwrap(), "--device", "vulkan", "--tokens", "1,2,3,4,5,6,7,8,9,10,11,12"])
            .args(["-n", "16", "--prefill-chunk", chunk])
            .args(sampling)
            .env("VK_INSTANCE_LAYERS", "VK_LAYER_KHRONOS_validation")
            .env("VK_LAYER_ENABLES", "VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT")
            .env("VK_LOADER_DEBUG", "layer")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{name}: {text}");
        let inserted = "Insert instance layer \"VK_LAYER_KHRONOS_validation\"";
        assert!(text.contains(inserted), "{name}: the loader did not insert the validation layer:\n{text}");
        for bad in ["Validation Error", "VUID", "HAZARD"] {
            assert!(!text.contains(bad), "{name}: the validation layer reports:\n{text}");
        }
    }
}

/// A machine whose Vulkan loader finds no driver (here: the loader pointed at a driver file that does not
/// exist) gets one line saying so, for the run and for --list-devices.
#[test]
fn no_vulkan_driver_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let plan = vulkan_plan(dir.path(), "llama_gqa", WeightFormat::Q8_0);
    let missing = dir.path().join("no_such_icd.json");
    let run_without_driver = |args: &[&str]| {
        std::process::Command::new(bin("unicorn-rt"))
            .args(args)
            .env("VK_ICD_FILENAMES", &missing)
            .env("VK_DRIVER_FILES", &missing)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap()
    };
    let out = run_without_driver(&[plan.to_str().unwrap(), "--device", "vulkan", "--tokens", "1,2"]);
    assert_one_line_error(&out, "no Vulkan driver found");
    let out = run_without_driver(&["--list-devices"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().any(|l| l.starts_with("vulkan     none: no Vulkan driver found")), "{text}");
}

#[test]
fn a_head_too_wide_for_the_vulkan_target_is_one_line() {
    // A one-layer Llama whose config asks for 520-dimension heads: the CPU target takes it, the Vulkan
    // target's attention (at most 512) refuses it naming the layer, and no plan is left behind.
    let (hidden, hd, vocab) = (64usize, 520usize, 16usize);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "head_dim": hd,
        "intermediate_size": 32, "num_attention_heads": 1, "num_key_value_heads": 1, "num_hidden_layers": 1,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "vocab_size": vocab, "tie_word_embeddings": true,
        "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2
    });
    let l = "model.layers.0";
    let shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, hidden]),
        (format!("{l}.input_layernorm.weight"), vec![hidden]),
        (format!("{l}.self_attn.q_proj.weight"), vec![hd, hidden]),
        (format!("{l}.self_attn.k_proj.weight"), vec![hd, hidden]),
        (format!("{l}.self_attn.v_proj.weight"), vec![hd, hidden]),
        (format!("{l}.self_attn.o_proj.weight"), vec![hidden, hd]),
        (format!("{l}.post_attention_layernorm.weight"), vec![hidden]),
        (format!("{l}.mlp.gate_proj.weight"), vec![32, hidden]),
        (format!("{l}.mlp.up_proj.weight"), vec![32, hidden]),
        (format!("{l}.mlp.down_proj.weight"), vec![hidden, 32]),
        ("model.norm.weight".into(), vec![hidden]),
    ];
    let tensors: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = shapes
        .iter()
        .map(|(n, s)| {
            let len: usize = s.iter().product();
            let bytes = (0..len).flat_map(|i| (((i % 7) as f32 - 3.0) / 64.0).to_le_bytes()).collect();
            (n.as_str(), "F32", s.clone(), bytes)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("wide");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    write_safetensors(&model.join("model.safetensors"), &tensors);
    let ok = dir.path().join("cpu.ucp");
    let out = run("unicornc", &["compile", model.to_str().unwrap(), "-o", ok.to_str().unwrap()]);
    assert!(out.status.success(), "the CPU target takes it: {}", String::from_utf8_lossy(&out.stderr));
    let plan = dir.path().join("vk.ucp");
    let out =
        run("unicornc", &["compile", model.to_str().unwrap(), "--target", "vulkan", "-o", plan.to_str().unwrap()]);
    let err = assert_one_line_error(&out, "layer 0");
    assert!(err.contains("520") && err.contains("512"), "{err}");
    assert!(!plan.exists(), "no plan is left behind");
}

/// `--bench` on the GPU: the greedy tokens are picked there (the profile shows the argmax kernel, once per
/// step), the decode steps replay one recorded command buffer, and the device's copy bandwidth is measured
/// beside the decode bandwidth.
#[test]
fn a_gpu_bench_picks_tokens_on_the_gpu_and_measures_the_copy_bandwidth() {
    let dir = tempfile::tempdir().unwrap();
    let plan = vulkan_plan(dir.path(), "llama_gqa", WeightFormat::Q8_0);
    let p = plan.to_str().unwrap();
    let common = [p, "--device", "vulkan", "--bench", "--prompt-len", "8", "--gen", "4", "--repeat", "1"];
    let out = run("unicorn-rt", &[&common[..], &["--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["device_copy_gb_s"].as_f64().is_some_and(|c| c > 0.0), "{j}");
    // A prefill and 4 decode steps at positions 8..12: one recording for the prefill, and one for the decode
    // steps (their attention launches the same 1 key range), which the other three replay.
    assert_eq!((j["executions"].as_u64(), j["recordings"].as_u64()), (Some(5), Some(2)), "{j}");
    let out = run("unicorn-rt", &[&common[..], &["--profile"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("device copies"), "{text}");
    let argmax = text.lines().find(|l| l.starts_with("argmax ")).unwrap_or_else(|| panic!("no argmax in {text}"));
    // Its decode column: 4 steps, each one launch.
    assert!(!argmax.contains(" 0.000 ("), "{argmax}");
}
