//! config.json -> ModelSpec: every family, both spellings, transformers' defaults, and the error paths.

use super::{parse, GenerationConfig};
use serde_json::{json, Value};
use std::path::Path;
use unicorn_ir::spec::{Activation, Family, ModelSpec, RopeScaling, RopeSpec};

const CFG: &str = "/ckpt/config.json";
const GEN: &str = "/ckpt/generation_config.json";

fn try_spec(cfg: &Value, gen: Option<&Value>, max_context: Option<usize>) -> Result<ModelSpec, String> {
    let gen_text = gen.map(|g| g.to_string());
    let gen = gen_text.as_deref().map(|text| GenerationConfig { path: Path::new(GEN), text });
    parse(Path::new(CFG), &cfg.to_string(), gen, max_context).map_err(|e| e.to_string())
}

fn spec(cfg: &Value) -> ModelSpec {
    try_spec(cfg, None, None).unwrap()
}

/// The error for `cfg`, checked to be one line naming config.json.
fn err(cfg: &Value) -> String {
    let e = try_spec(cfg, None, None).unwrap_err();
    assert!(e.starts_with(CFG), "{e}");
    assert!(!e.contains('\n'), "{e}");
    e
}

fn with(mut base: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn without(mut base: Value, keys: &[&str]) -> Value {
    for k in keys {
        base.as_object_mut().unwrap().remove(*k);
    }
    base
}

fn rope(theta: f64) -> RopeSpec {
    RopeSpec { theta, scaling: RopeScaling::None }
}

/// tests/fixtures/llama_gqa/config.json (old spelling, as transformers 5.23 would write it after the rewrite).
fn llama_old() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 1,
        "dtype": "float32", "eos_token_id": 2, "head_dim": 16, "hidden_act": "silu", "hidden_size": 64,
        "initializer_range": 0.02, "intermediate_size": 160, "max_position_embeddings": 256, "mlp_bias": false,
        "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 3, "num_key_value_heads": 2,
        "pad_token_id": 0, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "transformers_version": "5.23.0", "use_cache": true, "vocab_size": 384
    })
}

/// New spelling: rope_parameters.
fn llama_new() -> Value {
    with(
        without(llama_old(), &["rope_scaling", "rope_theta"]),
        json!({"rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}),
    )
}

#[test]
fn llama_old_spelling() {
    let s = spec(&llama_old());
    assert_eq!(s.architecture, "LlamaForCausalLM");
    assert_eq!(s.family, Family::Llama);
    assert_eq!(
        (s.vocab_size, s.hidden_size, s.intermediate_size, s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim),
        (384, 64, 160, 3, 4, 2, 16)
    );
    assert_eq!(s.norm_eps, 1e-5);
    assert!(!s.norm_unit_offset && !s.qk_norm && !s.sandwich_norms && !s.tie_embeddings);
    assert!(!s.qkv_bias && !s.o_bias && !s.mlp_bias);
    assert_eq!(s.activation, Activation::Silu);
    assert_eq!(s.embedding_scale, None);
    assert_eq!(s.attn_scale, 0.25);
    assert_eq!(s.final_logit_softcap, None);
    assert_eq!(s.ropes, vec![rope(10000.0)]);
    assert!(s.layers.iter().all(|l| l.window.is_none() && l.rope == 0));
    assert_eq!(s.layers.len(), 3);
    assert_eq!(s.max_context, 256);
    assert_eq!((s.bos_token_id, s.eos_token_ids.clone()), (Some(1), vec![2]));
}

#[test]
fn llama_both_spellings_agree() {
    assert_eq!(spec(&llama_old()), spec(&llama_new()));
    // rope_theta absent altogether: transformers' default 10000.
    assert_eq!(spec(&without(llama_old(), &["rope_theta"])).ropes, vec![rope(10000.0)]);
    // rope_scaling {"type": "linear"} (old Llama 2 spelling with "type")
    let s = spec(&with(llama_old(), json!({"rope_scaling": {"type": "linear", "factor": 2.0}})));
    assert_eq!(s.ropes, vec![RopeSpec { theta: 10000.0, scaling: RopeScaling::Linear { factor: 2.0 } }]);
}

#[test]
fn llama_defaults_and_head_dim() {
    // head_dim absent or null: hidden / heads; num_key_value_heads absent: = heads.
    let c = without(llama_old(), &["head_dim", "num_key_value_heads"]);
    let s = spec(&c);
    assert_eq!((s.head_dim, s.num_kv_heads), (16, 4));
    let s = spec(&with(llama_old(), json!({"head_dim": null})));
    assert_eq!(s.head_dim, 16);
    // explicit head_dim != hidden / heads is honoured
    let s = spec(&with(llama_old(), json!({"head_dim": 32})));
    assert_eq!((s.head_dim, s.q_width(), s.kv_width()), (32, 128, 64));
    assert!((s.attn_scale - 32f32.powf(-0.5)).abs() < 1e-9);
    // rms_norm_eps absent: 1e-6; tie absent: false
    let s = spec(&without(llama_old(), &["rms_norm_eps", "tie_word_embeddings"]));
    assert_eq!(s.norm_eps, 1e-6);
    assert!(!s.tie_embeddings);
}

#[test]
fn llama_biases() {
    let s = spec(&with(llama_old(), json!({"attention_bias": true})));
    assert!(s.qkv_bias && s.o_bias && !s.mlp_bias);
    let s = spec(&with(llama_old(), json!({"mlp_bias": true})));
    assert!(!s.qkv_bias && !s.o_bias && s.mlp_bias);
}

#[test]
fn llama3_rope_new_and_old_spelling() {
    // tests/fixtures/llama3_mqa_tied: new spelling
    let new = with(
        llama_new(),
        json!({"rope_parameters": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 32, "rope_theta": 10000.0, "rope_type": "llama3"},
            "tie_word_embeddings": true, "num_key_value_heads": 1, "head_dim": 32}),
    );
    let s = spec(&new);
    let want = RopeSpec {
        theta: 10000.0,
        scaling: RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 32.0,
        },
    };
    assert_eq!(s.ropes, vec![want]);
    assert!(s.tie_embeddings);
    assert_eq!((s.num_kv_heads, s.head_dim), (1, 32));

    // meta-llama/Llama-3.1-8B-Instruct's spelling
    let old = with(
        llama_old(),
        json!({"rope_theta": 500000.0, "max_position_embeddings": 131072, "rope_scaling": {"factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
            "rope_type": "llama3"}}),
    );
    let s = spec(&old);
    assert_eq!(
        s.ropes,
        vec![RopeSpec {
            theta: 500000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position: 8192.0
            }
        }]
    );
    assert_eq!(s.max_context, 131072);

    // original_max_position_embeddings absent: transformers uses max_position_embeddings
    let mut c = old.clone();
    c["rope_scaling"].as_object_mut().unwrap().remove("original_max_position_embeddings");
    match &spec(&c).ropes[0].scaling {
        RopeScaling::Llama3 { original_max_position, .. } => assert_eq!(*original_max_position, 131072.0),
        other => panic!("{other:?}"),
    }
    // a required llama3 parameter missing
    let mut c = old;
    c["rope_scaling"].as_object_mut().unwrap().remove("low_freq_factor");
    let e = err(&c);
    assert!(e.contains("rope_scaling.low_freq_factor") && e.contains("llama3"), "{e}");
}

#[test]
fn rope_errors() {
    let e = err(&with(llama_new(), json!({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}})));
    assert!(e.contains("rope_parameters.rope_type") && e.contains("'yarn'") && e.contains("default, linear, llama3"));
    let e = err(&with(llama_old(), json!({"rope_scaling": {"type": "dynamic", "factor": 2.0}})));
    assert!(e.contains("rope_scaling.type") && e.contains("'dynamic'"), "{e}");
    let e = err(&with(llama_old(), json!({"partial_rotary_factor": 0.5})));
    assert!(e.contains("partial_rotary_factor") && e.contains("0.5"), "{e}");
    let e = err(&with(
        llama_new(),
        json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25}}),
    ));
    assert!(e.contains("rope_parameters.partial_rotary_factor"), "{e}");
    // partial_rotary_factor 1.0 is fine
    spec(&with(llama_old(), json!({"partial_rotary_factor": 1.0})));
    let e = err(&with(llama_new(), json!({"rope_parameters": {"rope_type": "linear"}})));
    assert!(e.contains("rope_parameters.factor"), "{e}");
    // A base or a factor must be positive: zero and negative values are refused, naming the key.
    for bad in [0.0, -10000.0] {
        let e = err(&with(llama_old(), json!({"rope_theta": bad})));
        assert!(e.contains("rope_theta") && e.contains("must be positive"), "{e}");
        let e = err(&with(llama_new(), json!({"rope_parameters": {"rope_type": "linear", "factor": bad}})));
        assert!(e.contains("rope_parameters.factor") && e.contains("must be positive"), "{e}");
    }
    // RoPE parameters keyed by layer type are Gemma 3's: a single-RoPE family refuses them, whether both layer
    // types are listed or only one (which would otherwise leave the real parameters unread and fall back to
    // the defaults).
    let full = json!({"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6});
    for nested in [
        json!({"full_attention": full, "sliding_attention": {"rope_type": "default"}}),
        json!({"full_attention": full}),
        json!({"sliding_attention": full}),
    ] {
        for key in ["rope_parameters", "rope_scaling"] {
            let e = err(&with(llama_new(), json!({ key: nested })));
            assert!(e.contains(key) && e.contains("keyed by layer type"), "{key} {nested}: {e}");
        }
    }
}

#[test]
fn mistral() {
    // tests/fixtures/mistral_sliding
    let c = json!({
        "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "dtype": "float32",
        "eos_token_id": 2, "head_dim": null, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 192, "max_position_embeddings": 256, "model_type": "mistral", "num_attention_heads": 4,
        "num_hidden_layers": 3, "num_key_value_heads": 2, "pad_token_id": 0, "rms_norm_eps": 1e-05,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}, "sliding_window": 8,
        "tie_word_embeddings": false, "transformers_version": "5.23.0", "use_cache": true, "vocab_size": 384
    });
    let s = spec(&c);
    assert_eq!(s.family, Family::Mistral);
    assert_eq!((s.head_dim, s.intermediate_size, s.num_kv_heads), (16, 192, 2));
    assert!(s.layers.iter().all(|l| l.window == Some(8) && l.rope == 0));
    assert_eq!(s.ropes, vec![rope(1e6)]);
    assert!(!s.qkv_bias && !s.o_bias && !s.mlp_bias && !s.tie_embeddings);
    // published configs often say null: no window
    assert!(spec(&with(c.clone(), json!({"sliding_window": null}))).layers.iter().all(|l| l.window.is_none()));
    // absent: MistralConfig's default 4096
    assert!(spec(&without(c.clone(), &["sliding_window"])).layers.iter().all(|l| l.window == Some(4096)));
    // Mistral's projections never have biases, whatever attention_bias says
    let s = spec(&with(c.clone(), json!({"attention_bias": true})));
    assert!(!s.qkv_bias && !s.o_bias);
    let e = err(&with(c, json!({"sliding_window": 0})));
    assert!(e.contains("sliding_window") && e.contains("positive"), "{e}");
}

fn qwen2() -> Value {
    // tests/fixtures/qwen2_bias
    json!({
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "dtype": "bfloat16",
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 128, "layer_types": ["full_attention", "full_attention"],
        "max_position_embeddings": 256, "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": 0, "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}, "sliding_window": null,
        "tie_word_embeddings": true, "transformers_version": "5.23.0", "use_cache": true,
        "use_sliding_window": false, "vocab_size": 384
    })
}

#[test]
fn qwen2_biases_and_windows() {
    let s = spec(&qwen2());
    assert_eq!(s.family, Family::Qwen2);
    assert!(s.qkv_bias && !s.o_bias && !s.mlp_bias && s.tie_embeddings && !s.qk_norm);
    assert!(s.layers.iter().all(|l| l.window.is_none()));
    // attention_bias does not switch Qwen2's biases
    assert!(spec(&with(qwen2(), json!({"attention_bias": false}))).qkv_bias);

    // Qwen2.5-style old config: use_sliding_window false -> no windows, even with a sliding_window value
    let old = with(
        without(qwen2(), &["layer_types", "rope_parameters"]),
        json!({"rope_theta": 1e6, "sliding_window": 131072, "max_window_layers": 1}),
    );
    assert!(spec(&old).layers.iter().all(|l| l.window.is_none()));
    // use_sliding_window true: layers >= max_window_layers slide
    let s = spec(&with(old.clone(), json!({"use_sliding_window": true, "sliding_window": 16})));
    assert_eq!(s.layers.iter().map(|l| l.window).collect::<Vec<_>>(), vec![None, Some(16)]);
    // layer_types takes precedence
    let s = spec(&with(
        old.clone(),
        json!({"use_sliding_window": true, "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"]}),
    ));
    assert_eq!(s.layers.iter().map(|l| l.window).collect::<Vec<_>>(), vec![Some(16), None]);
    // a sliding layer with no window
    let e = err(&with(qwen2(), json!({"layer_types": ["sliding_attention", "full_attention"]})));
    assert!(e.contains("sliding_window") && e.contains("layer 0"), "{e}");
    let e = err(&with(qwen2(), json!({"layer_types": ["full_attention"]})));
    assert!(e.contains("layer_types") && e.contains("num_hidden_layers is 2"), "{e}");
    let e = err(&with(qwen2(), json!({"layer_types": ["full_attention", "chunked_attention"]})));
    assert!(e.contains("layer_types[1]") && e.contains("chunked_attention"), "{e}");
}

#[test]
fn qwen3() {
    // tests/fixtures/qwen3_qknorm
    let c = json!({
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 1,
        "dtype": "float32", "eos_token_id": 2, "head_dim": 32, "hidden_act": "silu", "hidden_size": 96,
        "initializer_range": 0.02, "intermediate_size": 192, "layer_types": ["full_attention", "full_attention"],
        "max_position_embeddings": 256, "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": 0, "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}, "sliding_window": null,
        "tie_word_embeddings": false, "transformers_version": "5.23.0", "use_cache": true,
        "use_sliding_window": false, "vocab_size": 384
    });
    let s = spec(&c);
    assert_eq!(s.family, Family::Qwen3);
    assert_eq!((s.head_dim, s.q_width(), s.kv_width()), (32, 128, 64));
    assert!(s.qk_norm && !s.qkv_bias && !s.o_bias && !s.sandwich_norms && !s.norm_unit_offset);
    assert!((s.attn_scale - 32f32.powf(-0.5)).abs() < 1e-9);
    // Qwen3Config's head_dim default is 128, not hidden / heads
    assert_eq!(spec(&without(c.clone(), &["head_dim"])).head_dim, 128);
    // Qwen3's attention_bias -> q, k, v and o
    let s = spec(&with(c.clone(), json!({"attention_bias": true})));
    assert!(s.qkv_bias && s.o_bias);
    // Qwen3's default bos / eos are None: only what configs say
    let s = spec(&without(c, &["bos_token_id", "eos_token_id"]));
    assert_eq!((s.bos_token_id, s.eos_token_ids.len()), (None, 0));
}

/// tests/fixtures/gemma3_text: OLD spelling.
fn gemma3_text_old() -> Value {
    json!({
        "architectures": ["Gemma3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
        "attn_logit_softcapping": null, "bos_token_id": 1, "dtype": "float32", "eos_token_id": 2,
        "final_logit_softcapping": 30.0, "head_dim": 32, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128, "max_position_embeddings": 256,
        "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 4, "num_key_value_heads": 1,
        "pad_token_id": 0, "query_pre_attn_scalar": 48, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "rope_theta": 1000000.0, "sliding_window": 8,
        "sliding_window_pattern": 2, "tie_word_embeddings": true, "transformers_version": "5.23.0",
        "use_bidirectional_attention": false, "use_cache": true, "vocab_size": 384
    })
}

#[test]
fn gemma3_text_old_spelling() {
    let s = spec(&gemma3_text_old());
    assert_eq!(s.family, Family::Gemma3);
    assert_eq!(s.activation, Activation::GeluTanh);
    assert!(s.qk_norm && s.sandwich_norms && s.norm_unit_offset && s.tie_embeddings);
    assert!(!s.qkv_bias && !s.o_bias && !s.mlp_bias);
    assert_eq!(s.embedding_scale, Some(8.0));
    assert_eq!(s.attn_scale, (48f64).powf(-0.5) as f32);
    assert_eq!(s.final_logit_softcap, Some(30.0));
    let global = RopeSpec { theta: 1e6, scaling: RopeScaling::Linear { factor: 8.0 } };
    let windows: Vec<_> = s.layers.iter().map(|l| l.window).collect();
    assert_eq!(windows, vec![Some(8), None, Some(8), None]);
    let ropes: Vec<_> = s.layers.iter().map(|l| s.ropes[l.rope].clone()).collect();
    assert_eq!(ropes, vec![rope(1e4), global.clone(), rope(1e4), global]);
    assert_eq!(s.ropes.len(), 2, "each distinct rope once");
}

#[test]
fn gemma3_new_spelling() {
    // tests/fixtures/gemma3_layer_types: layer_types wins over the stale _sliding_window_pattern 6.
    let c = json!({
        "_sliding_window_pattern": 6, "architectures": ["Gemma3ForCausalLM"], "attention_bias": false,
        "attn_logit_softcapping": null, "bos_token_id": 1, "eos_token_id": 2, "final_logit_softcapping": null,
        "head_dim": 32, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 96, "intermediate_size": 192,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "max_position_embeddings": 256, "model_type": "gemma3_text", "num_attention_heads": 4,
        "num_hidden_layers": 3, "num_key_value_heads": 2, "query_pre_attn_scalar": 32, "rms_norm_eps": 1e-06,
        "rope_parameters": {"full_attention": {"factor": 4.0, "rope_theta": 1000000.0, "rope_type": "linear"},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
        "sliding_window": 8, "tie_word_embeddings": true, "use_bidirectional_attention": false, "vocab_size": 384
    });
    let s = spec(&c);
    assert_eq!(s.layers.iter().map(|l| l.window).collect::<Vec<_>>(), vec![Some(8), None, Some(8)]);
    let global = RopeSpec { theta: 1e6, scaling: RopeScaling::Linear { factor: 4.0 } };
    assert_eq!(s.ropes[s.layers[1].rope], global);
    assert_eq!(s.ropes[s.layers[0].rope], rope(1e4));
    assert_eq!(s.layers[0].rope, s.layers[2].rope);
    assert_eq!(s.embedding_scale, Some(96f64.sqrt() as f32));
    assert_eq!(s.final_logit_softcap, None);
    assert_eq!(s.attn_scale, 32f64.powf(-0.5) as f32);

    // an all-sliding model lists only the rope it uses
    let s =
        spec(&with(c.clone(), json!({"layer_types": ["sliding_attention", "sliding_attention", "sliding_attention"]})));
    assert_eq!(s.ropes, vec![rope(1e4)]);
    // without layer_types or a pattern: transformers assumes 6 (layer 5 of 7 is the only global one)
    let s =
        spec(&with(without(c.clone(), &["layer_types", "_sliding_window_pattern"]), json!({"num_hidden_layers": 7})));
    let global: Vec<_> = s.layers.iter().enumerate().filter(|(_, l)| l.window.is_none()).map(|(i, _)| i).collect();
    assert_eq!(global, vec![5]);
    // rope_parameters must be keyed by layer type
    let e = err(&with(c.clone(), json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})));
    assert!(e.contains("rope_parameters") && e.contains("full_attention"), "{e}");
    let e = err(&with(c.clone(), json!({"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0}}})));
    assert!(e.contains("rope_parameters.full_attention.rope_type") && e.contains("'yarn'"), "{e}");
    let e = err(&with(c.clone(), json!({"attn_logit_softcapping": 50.0})));
    assert!(e.contains("attn_logit_softcapping") && e.contains("not supported"), "{e}");
    let e = err(&with(c.clone(), json!({"use_bidirectional_attention": true})));
    assert!(e.contains("use_bidirectional_attention"), "{e}");
    // exact GELU is not the tanh approximation
    let e = err(&with(c, json!({"hidden_activation": "gelu"})));
    assert!(e.contains("hidden_activation") && e.contains("'gelu'") && e.contains("gelu_pytorch_tanh"), "{e}");
}

/// google/gemma-3-4b-it's config.json (vision_config trimmed): the text_config relies on Gemma3TextConfig's
/// defaults for most fields.
fn gemma3_4b_it() -> Value {
    json!({
        "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
        "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02,
        "mm_tokens_per_image": 256, "model_type": "gemma3",
        "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
            "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
        "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
        "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
            "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
            "patch_size": 14, "vision_use_head": false}
    })
}

#[test]
fn gemma3_multimodal_defaults() {
    let gen = json!({"bos_token_id": 2, "cache_implementation": "hybrid", "do_sample": true,
        "eos_token_id": [1, 106], "pad_token_id": 0, "top_k": 64, "top_p": 0.95});
    let s = try_spec(&gemma3_4b_it(), Some(&gen), None).unwrap();
    assert_eq!(s.architecture, "Gemma3ForConditionalGeneration");
    assert_eq!(s.family, Family::Gemma3);
    assert_eq!((s.vocab_size, s.hidden_size, s.intermediate_size, s.num_layers), (262208, 2560, 10240, 34));
    assert_eq!((s.num_heads, s.num_kv_heads, s.head_dim), (8, 4, 256));
    assert_eq!(s.attn_scale, 1.0 / 16.0, "query_pre_attn_scalar 256");
    assert_eq!(s.norm_eps, 1e-6);
    assert_eq!(s.final_logit_softcap, None);
    assert!(s.tie_embeddings);
    assert_eq!(s.activation, Activation::GeluTanh);
    assert_eq!(s.max_context, 131072);
    assert_eq!(s.embedding_scale, Some(2560f64.sqrt() as f32));
    let global: Vec<_> = s.layers.iter().enumerate().filter(|(_, l)| l.window.is_none()).map(|(i, _)| i).collect();
    assert_eq!(global, vec![5, 11, 17, 23, 29], "sliding_window_pattern 6");
    assert!(s.layers.iter().all(|l| l.window.is_none() || l.window == Some(1024)));
    assert_eq!(s.ropes[s.layers[5].rope], RopeSpec { theta: 1e6, scaling: RopeScaling::Linear { factor: 8.0 } });
    assert_eq!(s.ropes[s.layers[0].rope], rope(1e4));
    assert_eq!((s.bos_token_id, s.eos_token_ids.clone()), (Some(2), vec![1, 106]));

    // Without generation_config.json: the top-level eos list, and Gemma3TextConfig's default bos 2.
    let s = spec(&gemma3_4b_it());
    assert_eq!((s.bos_token_id, s.eos_token_ids.clone()), (Some(2), vec![1, 106]));
    // Tie: the top-level flag rules; absent at the top, the text_config's; absent in both, true.
    let mut c = gemma3_4b_it();
    c["text_config"]["tie_word_embeddings"] = json!(false);
    assert!(!spec(&c).tie_embeddings);
    c["tie_word_embeddings"] = json!(true);
    assert!(spec(&c).tie_embeddings);
    // field names in errors carry the text_config prefix
    let mut c = gemma3_4b_it();
    c["text_config"]["num_key_value_heads"] = json!(3);
    let e = err(&c);
    assert!(e.contains("text_config.num_key_value_heads") && e.contains("does not divide"), "{e}");
}

#[test]
fn architecture_from_model_type() {
    let cases = [
        ("llama", "LlamaForCausalLM"),
        ("mistral", "MistralForCausalLM"),
        ("qwen2", "Qwen2ForCausalLM"),
        ("qwen3", "Qwen3ForCausalLM"),
        ("gemma3_text", "Gemma3ForCausalLM"),
    ];
    for (mt, arch) in cases {
        let c = with(without(llama_old(), &["architectures"]), json!({"model_type": mt}));
        assert_eq!(spec(&c).architecture, arch);
    }
    let c = without(gemma3_4b_it(), &["architectures"]);
    assert_eq!(spec(&c).architecture, "Gemma3ForConditionalGeneration");
    let e = err(&with(without(llama_old(), &["architectures"]), json!({"model_type": "phi3"})));
    assert!(e.contains("model_type 'phi3'") && e.contains("llama"), "{e}");
}

#[test]
fn unsupported_architecture_lists_supported() {
    let e = err(&with(llama_old(), json!({"architectures": ["Phi3ForCausalLM"]})));
    assert!(e.contains("architectures: unsupported architecture 'Phi3ForCausalLM'"), "{e}");
    for a in [
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Gemma3ForCausalLM",
        "Gemma3ForConditionalGeneration",
    ] {
        assert!(e.contains(a), "{e}");
    }
}

#[test]
fn dimension_errors() {
    let e = err(&with(llama_old(), json!({"num_key_value_heads": 3})));
    assert!(e.contains("num_key_value_heads") && e.contains("does not divide"), "{e}");
    let e = err(&with(llama_old(), json!({"head_dim": 15})));
    assert!(e.contains("head_dim") && e.contains("even"), "{e}");
    let e = err(&with(llama_old(), json!({"hidden_size": 0})));
    assert!(e.contains("hidden_size") && e.contains("positive"), "{e}");
    let e = err(&with(llama_old(), json!({"num_hidden_layers": -1})));
    assert!(e.contains("num_hidden_layers"), "{e}");
    let e = err(&with(llama_old(), json!({"vocab_size": "many"})));
    assert!(e.contains("vocab_size"), "{e}");
    let e = err(&with(llama_old(), json!({"hidden_act": "relu"})));
    assert!(e.contains("hidden_act") && e.contains("'relu'"), "{e}");
    let e = err(&with(without(llama_old(), &["head_dim"]), json!({"hidden_size": 66})));
    assert!(e.contains("head_dim"), "{e}");
    let e = try_spec(&json!([1]), None, None).unwrap_err();
    assert!(e.starts_with(CFG), "{e}");
}

#[test]
fn max_context() {
    assert_eq!(try_spec(&llama_old(), None, Some(64)).unwrap().max_context, 64);
    let e = try_spec(&llama_old(), None, Some(0)).unwrap_err();
    assert!(e.contains("--max-context"), "{e}");
}

#[test]
fn token_ids_union() {
    // tests/fixtures/llama_gqa: generation_config's list [2, 3], config's 2
    let gen = json!({"bos_token_id": 1, "eos_token_id": [2, 3], "pad_token_id": 0});
    let s = try_spec(&llama_old(), Some(&gen), None).unwrap();
    assert_eq!((s.bos_token_id, s.eos_token_ids), (Some(1), vec![2, 3]));
    // order kept: generation_config first, then config.json
    let gen = json!({"bos_token_id": 7, "eos_token_id": 9});
    let s = try_spec(&with(llama_old(), json!({"eos_token_id": [2, 9, 5]})), Some(&gen), None).unwrap();
    assert_eq!((s.bos_token_id, s.eos_token_ids), (Some(7), vec![9, 2, 5]));
    // nulls
    let gen = json!({"bos_token_id": null, "eos_token_id": null});
    let s = try_spec(&with(llama_old(), json!({"eos_token_id": null})), Some(&gen), None).unwrap();
    assert_eq!((s.bos_token_id, s.eos_token_ids), (Some(1), vec![]));
    // a bad generation_config names that file and field
    let gen = json!({"eos_token_id": "x"});
    let e = try_spec(&llama_old(), Some(&gen), None).unwrap_err();
    assert!(e.starts_with(GEN) && e.contains("eos_token_id"), "{e}");
}
