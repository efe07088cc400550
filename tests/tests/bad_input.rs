//! Bad input: each case fails with one line naming the file, tensor or flag, a non-zero exit and no panic.

use std::path::Path;
use unicorn_tests::*;

fn compile_err(model: &Path, extra: &[&str]) -> std::process::Output {
    let plan = model.parent().unwrap().join("out.ucp");
    let mut args = vec!["compile", model.to_str().unwrap(), "-o", plan.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run("unicornc", &args);
    assert!(!plan.exists(), "a failed compile left {}", plan.display());
    out
}

fn damaged(edit: impl FnOnce(&Path)) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_fixture("llama_gqa", dir.path());
    edit(&model);
    (dir, model)
}

#[test]
fn truncated_safetensors() {
    let (_d, model) = damaged(|m| {
        let f = m.join("model.safetensors");
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len / 2).unwrap();
    });
    assert_one_line_error(&compile_err(&model, &[]), "model.safetensors");
}

#[test]
fn header_with_offsets_out_of_range() {
    let (_d, model) = damaged(|m| {
        edit_safetensors_header(&m.join("model.safetensors"), |h| {
            h["model.norm.weight"]["data_offsets"] = serde_json::json!([0, 1u64 << 40]);
        })
    });
    let err = assert_one_line_error(&compile_err(&model, &[]), "model.safetensors");
    assert!(err.contains("model.norm.weight"), "{err}");
}

#[test]
fn header_size_not_matching_dtype_and_shape() {
    let (_d, model) = damaged(|m| {
        edit_safetensors_header(&m.join("model.safetensors"), |h| {
            h["model.norm.weight"]["shape"] = serde_json::json!([65]);
        })
    });
    assert_one_line_error(&compile_err(&model, &[]), "model.norm.weight");
}

#[test]
fn missing_tensor() {
    let (_d, model) = damaged(|m| {
        edit_safetensors_header(&m.join("model.safetensors"), |h| {
            h.remove("model.layers.1.mlp.down_proj.weight");
        })
    });
    assert_one_line_error(&compile_err(&model, &[]), "model.layers.1.mlp.down_proj.weight");
}

#[test]
fn shape_contradicting_config() {
    let (_d, model) = damaged(|m| {
        let p = m.join("config.json");
        let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let ffn = c["intermediate_size"].as_u64().unwrap();
        c["intermediate_size"] = serde_json::json!(ffn * 2);
        std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
    });
    let err = assert_one_line_error(&compile_err(&model, &[]), "mlp");
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let (_d, model) = damaged(|m| {
        let p = m.join("config.json");
        let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
    });
    let err = assert_one_line_error(&compile_err(&model, &[]), "GPT2LMHeadModel");
    for arch in ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM"]
    {
        assert!(err.contains(arch), "{err}");
    }
}

#[test]
fn no_config_json() {
    let (_d, model) = damaged(|m| std::fs::remove_file(m.join("config.json")).unwrap());
    assert_one_line_error(&compile_err(&model, &[]), "config.json");
}

#[test]
fn bad_flag_values_name_the_flag() {
    let model = fixtures_dir().join("llama_gqa");
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("p.ucp");
    let m = model.to_str().unwrap();
    let p = plan.to_str().unwrap();
    assert_one_line_error(&run("unicornc", &["compile", m, "-o", p, "--weights", "q3_k"]), "--weights");
    assert_one_line_error(&run("unicornc", &["compile", m, "-o", p, "--max-context", "0"]), "--max-context");
    assert_one_line_error(&run("unicornc", &["compile", m, "-o", p, "--max-context", "99999999999"]), "--max-context");
    assert_one_line_error(&run("unicornc", &["compile", m, "-o", p, "--kv-cache", "bf16"]), "--kv-cache");
    assert_one_line_error(&run("unicornc", &["compile", m, "-o", p, "--target", "tpu"]), "--target");
    assert_one_line_error(&run("unicornc", &["compile", "/nonexistent/model", "-o", p]), "/nonexistent/model");
}

fn good_plan(dir: &Path, max_context: Option<usize>) -> std::path::PathBuf {
    compile_to(&fixtures_dir().join("llama_gqa"), dir, unicorn_ir::WeightFormat::Q8_0, max_context)
}

#[test]
fn plan_with_wrong_magic_or_version() {
    let dir = tempfile::tempdir().unwrap();
    let plan = good_plan(dir.path(), None);
    let mut bytes = std::fs::read(&plan).unwrap();
    let p = plan.to_str().unwrap();

    bytes[8] = 99; // format version
    std::fs::write(&plan, &bytes).unwrap();
    let err = assert_one_line_error(&run("unicorn-rt", &[p, "--tokens", "1,2"]), p);
    assert!(err.contains("version 99"), "{err}");

    bytes[0] = b'X';
    std::fs::write(&plan, &bytes).unwrap();
    let err = assert_one_line_error(&run("unicorn-rt", &[p, "--tokens", "1,2"]), p);
    assert!(err.contains("not a Unicorn plan"), "{err}");
    assert_one_line_error(&run("unicornc", &["inspect", p]), p);

    // Files shorter than the prologue, read into memory or mapped.
    for len in [0, 10] {
        std::fs::write(&plan, &bytes[..len]).unwrap();
        for extra in [None, Some("--mmap")] {
            let args: Vec<&str> = [p, "--tokens", "1,2"].into_iter().chain(extra).collect();
            let err = assert_one_line_error(&run("unicorn-rt", &args), p);
            assert!(err.contains("not a Unicorn plan"), "{len} bytes, {extra:?}: {err}");
        }
    }
}

#[test]
fn corrupted_section_fails_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let plan = good_plan(dir.path(), None);
    let mut bytes = std::fs::read(&plan).unwrap();
    bytes[4096 + 100] ^= 0x40; // inside the weights section, which starts at the first page boundary
    std::fs::write(&plan, &bytes).unwrap();
    let p = plan.to_str().unwrap();
    for extra in [None, Some("--mmap")] {
        let args: Vec<&str> = [p, "--tokens", "1,2"].into_iter().chain(extra).collect();
        let err = assert_one_line_error(&run("unicorn-rt", &args), p);
        assert!(err.contains("Weights") && err.contains("checksum"), "{extra:?}: {err}");
    }
}

#[test]
fn prompt_longer_than_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let plan = good_plan(dir.path(), Some(8));
    let tokens = (1..=12).map(|t| t.to_string()).collect::<Vec<_>>().join(",");
    let err = assert_one_line_error(&run("unicorn-rt", &[plan.to_str().unwrap(), "--tokens", &tokens]), "context");
    assert!(err.contains("12") && err.contains('8'), "{err}");
}

#[test]
fn token_id_beyond_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let plan = good_plan(dir.path(), None);
    let err =
        assert_one_line_error(&run("unicorn-rt", &[plan.to_str().unwrap(), "--tokens", "1,5,384", "-n", "2"]), "384");
    assert!(err.contains("vocabulary"), "{err}");
    assert_one_line_error(&run("unicorn-rt", &[plan.to_str().unwrap(), "--tokens", "1,x"]), "--tokens");
    assert_one_line_error(&run("unicorn-rt", &["/no/such.ucp", "--tokens", "1"]), "/no/such.ucp");
}
