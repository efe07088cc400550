//! Checkpoint::open on synthetic checkpoints (every error path) and on the committed fixtures.

use super::safetensors::testutil::{self, T};
use super::*;
use serde_json::{json, Value};
use unicorn_ir::spec::{Family, RopeScaling};

fn llama_config(layers: usize, tie: bool) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": layers,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "vocab_size": 40, "tie_word_embeddings": tie,
        "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2
    })
}

/// The tensors a config implies, as (name, shape).
fn tensors_for(config: &Value) -> Vec<(String, Vec<usize>)> {
    let spec = config::parse(Path::new("config.json"), &config.to_string(), None, None).unwrap();
    text_model_tensors(&spec)
}

/// Write config.json and a single model.safetensors holding `tensors` (renamed by `rename`) in `dtype`.
fn write_checkpoint(dir: &Path, config: &Value, dtype: &str, rename: impl Fn(&str) -> String) {
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tensors = tensors_for(config);
    let names: Vec<String> = tensors.iter().map(|(n, _)| rename(n)).collect();
    let ts: Vec<T> = tensors.iter().zip(&names).map(|((_, s), n)| T(n, dtype, s.clone())).collect();
    testutil::write(&dir.join(SINGLE), &ts);
}

fn open_err(path: &Path) -> String {
    let e = Checkpoint::open(path, None).map(|_| ()).unwrap_err().to_string();
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn opens_folder_file_and_reads_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama_config(2, false);
    write_checkpoint(dir.path(), &cfg, "F32", str::to_string);
    std::fs::write(dir.path().join("tokenizer.json"), b"{\"tok\": 1}").unwrap();
    std::fs::write(dir.path().join("generation_config.json"), r#"{"eos_token_id": [2, 7]}"#).unwrap();

    let ck = Checkpoint::open(dir.path(), None).unwrap();
    assert_eq!(ck.source, dir.path());
    assert_eq!(ck.spec.family, Family::Llama);
    assert_eq!(ck.spec.eos_token_ids, vec![2, 7]);
    assert_eq!(ck.config_json, cfg.to_string());
    assert_eq!(ck.tokenizer_json.as_deref(), Some(&b"{\"tok\": 1}"[..]));
    assert!(ck.generation_config_json.as_deref().unwrap().contains("[2, 7]"));
    let expected: u64 = tensors_for(&cfg).iter().map(|(_, s)| s.iter().product::<usize>() as u64 * 4).sum();
    assert_eq!(ck.total_bytes(), expected);

    let t = ck.require("model.embed_tokens.weight", &[40, 64]).unwrap();
    assert_eq!((t.dtype, t.numel(), t.byte_len()), (SourceDType::F32, 40 * 64, 40 * 64 * 4));
    let b = ck.bytes(t);
    assert_eq!(b.len(), 40 * 64 * 4);
    assert_eq!(&b[..3], &[0, 1, 2]);
    // release drops pages; the bytes read back the same afterwards
    let copy = b.to_vec();
    for t in ck.tensors() {
        ck.release(t);
    }
    assert_eq!(ck.bytes(t), &copy[..]);
    assert!(ck.get("model.layers.1.mlp.down_proj.weight").is_some());
    assert!(ck.get("model.layers.2.mlp.down_proj.weight").is_none());

    // the .safetensors file itself
    let ck = Checkpoint::open(&dir.path().join(SINGLE), Some(32)).unwrap();
    assert_eq!(ck.spec.max_context, 32);
    assert!(ck.tensors().count() > 0);
}

#[test]
fn missing_config_and_weights() {
    let dir = tempfile::tempdir().unwrap();
    testutil::write(&dir.path().join("w.safetensors"), &[T("model.norm.weight", "F32", vec![4])]);
    let e = open_err(&dir.path().join("w.safetensors"));
    assert!(e.contains("no config.json") && e.contains(&dir.path().join("config.json").display().to_string()), "{e}");

    let empty = tempfile::tempdir().unwrap();
    let e = open_err(empty.path());
    assert!(e.contains(SINGLE) && e.contains(INDEX) && e.contains(&empty.path().display().to_string()), "{e}");

    let e = open_err(&empty.path().join("nope.safetensors"));
    assert!(e.contains("nope.safetensors"), "{e}");

    let e = Checkpoint::open(dir.path(), Some(0)).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("--max-context"), "{e}");
}

#[test]
fn missing_tensor_and_shape_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama_config(2, false);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let tensors = tensors_for(&cfg);
    let file = dir.path().join(SINGLE);

    let ts: Vec<T> = tensors
        .iter()
        .filter(|(n, _)| n != "model.layers.1.mlp.up_proj.weight")
        .map(|(n, s)| T(n, "F16", s.clone()))
        .collect();
    testutil::write(&file, &ts);
    let e = open_err(dir.path());
    assert!(e.contains("tensor 'model.layers.1.mlp.up_proj.weight' not found in"), "{e}");
    assert!(e.contains(&file.display().to_string()), "{e}");

    let ts: Vec<T> = tensors
        .iter()
        .map(|(n, s)| T(n, "F16", if n == "model.layers.0.self_attn.k_proj.weight" { vec![16, 64] } else { s.clone() }))
        .collect();
    testutil::write(&file, &ts);
    let e = open_err(dir.path());
    assert!(e.starts_with(&file.display().to_string()), "{e}");
    assert!(
        e.contains(
            "tensor 'model.layers.0.self_attn.k_proj.weight' has shape [16, 64] but config.json implies [32, 64]"
        ),
        "{e}"
    );

    // require on an open checkpoint says the same
    write_checkpoint(dir.path(), &cfg, "BF16", str::to_string);
    let ck = Checkpoint::open(dir.path(), None).unwrap();
    let e = ck.require("model.norm.weight", &[65]).unwrap_err().to_string();
    assert!(e.contains("tensor 'model.norm.weight' has shape [64] but config.json implies [65]"), "{e}");
    let e = ck.require("model.layers.9.input_layernorm.weight", &[64]).unwrap_err().to_string();
    assert!(e.contains("'model.layers.9.input_layernorm.weight' not found"), "{e}");
    assert_eq!(ck.require("model.norm.weight", &[64]).unwrap().dtype, SourceDType::Bf16);
}

#[test]
fn tied_lm_head_is_optional_and_unused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama_config(1, true);
    write_checkpoint(dir.path(), &cfg, "F32", str::to_string);
    let ck = Checkpoint::open(dir.path(), None).unwrap();
    assert!(ck.spec.tie_embeddings && ck.get("lm_head.weight").is_none());
    // untied config without lm_head: an error naming it
    std::fs::write(dir.path().join("config.json"), llama_config(1, false).to_string()).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("'lm_head.weight' not found"), "{e}");
}

#[test]
fn unsupported_dtype_only_matters_for_used_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama_config(1, false);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let tensors = tensors_for(&cfg);
    let file = dir.path().join(SINGLE);
    let mut ts: Vec<T> = tensors.iter().map(|(n, s)| T(n, "F32", s.clone())).collect();
    ts.push(T("model.layers.0.self_attn.rotary_emb.inv_freq_i64", "I64", vec![4]));
    ts.push(T("vision_tower.patch", "F8_E4M3", vec![4]));
    testutil::write(&file, &ts);
    let ck = Checkpoint::open(dir.path(), None).unwrap();
    assert!(ck.get("model.layers.0.self_attn.rotary_emb.inv_freq_i64").is_none());

    let mut ts: Vec<T> = tensors.iter().map(|(n, s)| T(n, "F32", s.clone())).collect();
    ts[1].1 = "I8";
    let name = ts[1].0;
    testutil::write(&file, &ts);
    let e = open_err(dir.path());
    assert!(e.contains(&format!("tensor '{name}' has dtype I8")) && e.contains(&file.display().to_string()), "{e}");
}

#[test]
fn duplicate_canonical_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama_config(1, false);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let tensors = tensors_for(&cfg);
    let mut ts: Vec<T> = tensors.iter().map(|(n, s)| T(n, "F32", s.clone())).collect();
    ts.push(T("language_model.model.norm.weight", "F32", vec![64]));
    testutil::write(&dir.path().join(SINGLE), &ts);
    let e = open_err(dir.path());
    assert!(e.contains("'model.norm.weight' is stored twice"), "{e}");
}

fn gemma3_mm_config() -> Value {
    json!({
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "query_pre_attn_scalar": 32,
            "vocab_size": 48, "sliding_window": 8, "max_position_embeddings": 256,
            "layer_types": ["sliding_attention", "full_attention"]},
        "vision_config": {"hidden_size": 32}
    })
}

#[test]
fn multimodal_layouts() {
    type Rename = fn(&str) -> String;
    let layouts: [(&str, Rename); 2] = [
        ("language_model", |n| n.replacen("model.", "language_model.model.", 1)),
        ("native", |n| n.replacen("model.", "model.language_model.", 1)),
    ];
    for (what, rename) in layouts {
        let dir = tempfile::tempdir().unwrap();
        let cfg = gemma3_mm_config();
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        let tensors = tensors_for(&cfg);
        let names: Vec<String> = tensors.iter().map(|(n, _)| rename(n)).collect();
        let mut ts: Vec<T> = tensors.iter().zip(&names).map(|((_, s), n)| T(n, "BF16", s.clone())).collect();
        // vision tensors in any dtype, even with a lying header, are skipped
        ts.push(T("vision_tower.vision_model.embeddings.patch_embedding.weight", "F64", vec![4, 3]));
        ts.push(T("model.vision_tower.vision_model.post_layernorm.weight", "I32", vec![2]));
        ts.push(T("multi_modal_projector.mm_input_projection_weight", "F32", vec![2, 2]));
        ts.push(T("model.multi_modal_projector.mm_soft_emb_norm.weight", "U8", vec![2]));
        testutil::write(&dir.path().join(SINGLE), &ts);
        let ck = Checkpoint::open(dir.path(), None).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(ck.spec.tie_embeddings);
        assert_eq!(ck.tensors().count(), tensors.len(), "{what}");
        assert!(ck.get("model.layers.1.post_feedforward_layernorm.weight").is_some());
        assert!(ck.tensors().all(|t| t.name.starts_with("model.")), "{what}");

        // a shape mismatch names the stored name too
        let e = ck.require("model.norm.weight", &[3]).unwrap_err().to_string();
        assert!(e.contains(&format!("(stored as '{}')", rename("model.norm.weight"))), "{e}");
    }
}

/// A sharded Llama: `n` shards, tensors spread round-robin; returns the shard file names.
fn write_sharded(dir: &Path, cfg: &Value, n: usize, extra_index: &[(&str, &str)]) -> Vec<String> {
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let tensors = tensors_for(cfg);
    let files: Vec<String> = (1..=n).map(|i| format!("model-{i:05}-of-{n:05}.safetensors")).collect();
    let mut weight_map = serde_json::Map::new();
    for (i, f) in files.iter().enumerate() {
        let ts: Vec<T> = tensors.iter().skip(i).step_by(n).map(|(name, s)| T(name, "BF16", s.clone())).collect();
        for t in &ts {
            weight_map.insert(t.0.to_string(), json!(f));
        }
        testutil::write(&dir.join(f), &ts);
    }
    for (k, v) in extra_index {
        weight_map.insert(k.to_string(), json!(v));
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join(INDEX), index.to_string()).unwrap();
    files
}

#[test]
fn sharded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama_config(3, false);
    let files = write_sharded(dir.path(), &cfg, 3, &[("vision_tower.x", "model-vision.safetensors")]);
    for path in [dir.path().to_path_buf(), dir.path().join(INDEX)] {
        let ck = Checkpoint::open(&path, None).unwrap();
        assert_eq!(ck.shards.len(), 3, "the vision-only shard (absent) is not opened");
        let expected: u64 = tensors_for(&cfg).iter().map(|(_, s)| s.iter().product::<usize>() as u64 * 2).sum();
        assert_eq!(ck.total_bytes(), expected);
        for (name, shape) in tensors_for(&cfg) {
            let t = ck.require(&name, &shape).unwrap();
            assert_eq!(ck.bytes(t).len(), t.numel() * 2);
        }
    }

    // a missing tensor lists the index and its shards
    let e = Checkpoint::open(dir.path(), None).unwrap().require("model.x", &[1]).unwrap_err().to_string();
    assert!(e.contains(INDEX) && e.contains(&files[0]) && e.contains(&files[2]), "{e}");

    // a shard listed but missing
    std::fs::remove_file(dir.path().join(&files[1])).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains(INDEX) && e.contains(&format!("shard '{}'", files[1])) && e.contains("missing"), "{e}");
}

#[test]
fn sharded_index_that_lies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama_config(1, false);
    let files = write_sharded(dir.path(), &cfg, 2, &[]);
    // weight_map puts a tensor in a shard that does not hold it
    let mut index: Value = serde_json::from_slice(&std::fs::read(dir.path().join(INDEX)).unwrap()).unwrap();
    index["weight_map"]["model.norm.weight"] =
        json!(if index["weight_map"]["model.norm.weight"] == json!(files[0]) { &files[1] } else { &files[0] });
    std::fs::write(dir.path().join(INDEX), index.to_string()).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains(INDEX) && e.contains("'model.norm.weight'") && e.contains("no such tensor"), "{e}");

    std::fs::write(dir.path().join(INDEX), "{\"metadata\": {}}").unwrap();
    let e = open_err(dir.path());
    assert!(e.contains(INDEX) && e.contains("weight_map"), "{e}");
    std::fs::write(dir.path().join(INDEX), "not json").unwrap();
    let e = open_err(dir.path());
    assert!(e.contains(INDEX) && e.contains("JSON"), "{e}");
}

#[test]
fn truncated_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &llama_config(1, false), "F32", str::to_string);
    let file = dir.path().join(SINGLE);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let e = open_err(dir.path());
    assert!(e.starts_with(&file.display().to_string()) && e.contains("truncated") && e.contains("tensor '"), "{e}");
}

// ---------------------------------------------------------------------------------------------------------------
// The committed fixtures (tests/fixtures/*/), written by transformers.

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

#[test]
fn every_fixture_opens_and_matches_its_config() {
    let Ok(entries) = std::fs::read_dir(fixtures_dir()) else { return };
    let mut dirs: Vec<PathBuf> =
        entries.map(|e| e.unwrap().path()).filter(|p| p.join("config.json").is_file()).collect();
    dirs.sort();
    assert!(dirs.len() >= 10, "fixtures found: {dirs:?}");
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let ck = Checkpoint::open(dir, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        let s = &ck.spec;
        let top: Value = serde_json::from_str(&ck.config_json).unwrap();
        let c = top.get("text_config").cloned().unwrap_or_else(|| top.clone());
        assert_eq!(s.architecture, top["architectures"][0].as_str().unwrap(), "{name}");
        assert_eq!(s.hidden_size as f64, num(&c["hidden_size"]), "{name}");
        assert_eq!(s.intermediate_size as f64, num(&c["intermediate_size"]), "{name}");
        assert_eq!(s.num_layers as f64, num(&c["num_hidden_layers"]), "{name}");
        assert_eq!(s.num_heads as f64, num(&c["num_attention_heads"]), "{name}");
        assert_eq!(s.num_kv_heads as f64, num(&c["num_key_value_heads"]), "{name}");
        assert_eq!(s.vocab_size as f64, num(&c["vocab_size"]), "{name}");
        assert_eq!(s.max_context as f64, num(&c["max_position_embeddings"]), "{name}");
        assert_eq!(s.norm_eps, num(&c["rms_norm_eps"]) as f32, "{name}");
        if let Some(hd) = c["head_dim"].as_f64() {
            assert_eq!(s.head_dim as f64, hd, "{name}");
        }
        let tie = top.get("tie_word_embeddings").or(c.get("tie_word_embeddings")).and_then(Value::as_bool);
        assert_eq!(Some(s.tie_embeddings), tie, "{name}");
        assert_eq!(s.layers.len(), s.num_layers);
        assert!(ck.total_bytes() > 0);
        assert!(ck.tokenizer_json.is_some(), "{name}");

        // what transformers computed from it
        let expected: Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
        if let Some(eos) = expected.get("eos_token_ids").and_then(Value::as_array) {
            let mut want: Vec<u32> = eos.iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let mut got = s.eos_token_ids.clone();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{name}");
        }

        let windows: Vec<Option<usize>> = s.layers.iter().map(|l| l.window).collect();
        match name.as_str() {
            "llama_gqa" => {
                assert_eq!(s.eos_token_ids, vec![2, 3]);
                assert_eq!(s.ropes.len(), 1);
                assert_eq!(s.ropes[0].theta, 10000.0);
            }
            "llama3_mqa_tied" => {
                assert_eq!((s.num_kv_heads, s.head_dim), (1, 32));
                assert!(matches!(s.ropes[0].scaling, RopeScaling::Llama3 { factor, original_max_position, .. }
                    if factor == 8.0 && original_max_position == 32.0));
            }
            "llama_mha" => {
                assert_eq!((s.num_heads, s.num_kv_heads), (4, 4));
                // generation_config's single id first, then config.json's
                assert_eq!(s.eos_token_ids, vec![3, 2]);
            }
            "mistral_sliding" => assert!(windows.iter().all(|w| *w == Some(8))),
            "qwen2_bias" => assert!(s.qkv_bias && !s.o_bias),
            "qwen3_qknorm" => assert!(s.qk_norm && s.head_dim == 32),
            "gemma3_text" => {
                assert_eq!(windows, vec![Some(8), None, Some(8), None]);
                assert_eq!(s.final_logit_softcap, Some(30.0));
                assert_eq!(s.attn_scale, 48f64.powf(-0.5) as f32);
                assert_eq!(s.ropes[s.layers[1].rope].scaling, RopeScaling::Linear { factor: 8.0 });
                assert_eq!(s.ropes[s.layers[0].rope].theta, 10000.0);
            }
            "gemma3_layer_types" => {
                assert_eq!(windows, vec![Some(8), None, Some(8)]);
                assert_eq!(s.ropes[s.layers[1].rope].scaling, RopeScaling::Linear { factor: 4.0 });
            }
            n if n.starts_with("gemma3_multimodal") => {
                assert_eq!(s.family, Family::Gemma3);
                assert_eq!(windows, vec![Some(8), None]);
                assert!(ck.get("model.embed_tokens.weight").is_some());
                assert!(ck.tensors().all(|t| !t.name.contains("vision") && !t.name.contains("projector")));
            }
            "llama_sharded_bf16" => {
                assert!(ck.shards.len() >= 3);
                assert!(ck.tensors().all(|t| t.dtype == SourceDType::Bf16));
            }
            _ => {}
        }
    }
}
