//! The supported families, one table each: transformers' config-class defaults (what a config.json may omit)
//! and the switches that tell the families apart; the architectures that select them, and the activations.

use super::json::{Obj, R};
use serde_json::Value;
use unicorn_ir::spec::{Activation, Family};

/// Defaults of the family's transformers config class (transformers 5.23) for fields a config.json omits.
pub(super) struct Defaults {
    pub(super) vocab_size: usize,
    pub(super) hidden_size: usize,
    pub(super) intermediate_size: usize,
    pub(super) num_hidden_layers: usize,
    pub(super) num_attention_heads: usize,
    /// `None`: equal to num_attention_heads.
    pub(super) num_key_value_heads: Option<usize>,
    /// `None`: hidden_size / num_attention_heads. (An explicit `null` always means that.)
    pub(super) head_dim: Option<usize>,
    pub(super) activation: &'static str,
    pub(super) max_position_embeddings: usize,
    pub(super) rms_norm_eps: f64,
    pub(super) tie_word_embeddings: bool,
    pub(super) bos_token_id: Option<u32>,
    pub(super) eos_token_id: Option<u32>,
    /// RoPE base of the (global) layers when neither rope_parameters nor rope_theta gives one.
    pub(super) rope_theta: f64,
    /// Gemma 3: RoPE base of the sliding layers (`rope_local_base_freq`).
    pub(super) rope_local_theta: f64,
    /// `sliding_window` when absent (transformers' class default; configs usually set it, often to null).
    pub(super) sliding_window: Option<usize>,
    /// Qwen: the first `max_window_layers` layers never slide.
    pub(super) max_window_layers: usize,
    /// Gemma 3 old spelling: every `sliding_window_pattern`-th layer is global.
    pub(super) sliding_window_pattern: usize,
    /// Gemma 3: attention scale = query_pre_attn_scalar^-0.5.
    pub(super) query_pre_attn_scalar: f64,
}

/// Which projections carry biases.
#[derive(Clone, Copy)]
pub(super) enum Biases {
    /// Never (Mistral and Qwen2's MLP hard-code bias=False).
    None,
    /// q, k, v always; o never (Qwen2).
    QkvAlways,
    /// `attention_bias` -> q, k, v and o (Llama, Qwen3, Gemma 3).
    AttentionBias,
}

/// Where sliding windows come from.
#[derive(Clone, Copy)]
pub(super) enum Windows {
    /// Never (Llama's attention has no window, whatever the config says).
    Never,
    /// `sliding_window` (int or null) on every layer; layer_types ignored (Mistral).
    EveryLayer,
    /// `layer_types`, else `use_sliding_window` and layers >= `max_window_layers` (Qwen2, Qwen3).
    Qwen,
    /// `layer_types`, else `sliding_window_pattern` (Gemma 3).
    Gemma,
}

/// How RoPE parameters are spelled.
#[derive(Clone, Copy)]
pub(super) enum Ropes {
    /// One kind for every layer: `rope_parameters` (new) or `rope_theta` + `rope_scaling` (old).
    Single,
    /// One per layer type: `rope_parameters` keyed by layer type (new) or `rope_theta` + `rope_scaling` for the
    /// global layers and `rope_local_base_freq` for the sliding ones (old) (Gemma 3).
    PerLayerType,
}

pub(super) struct Rules {
    pub(super) family: Family,
    /// The config key holding the activation name.
    pub(super) activation_field: &'static str,
    pub(super) biases: Biases,
    /// Llama's `mlp_bias` switch is honoured.
    pub(super) mlp_bias_field: bool,
    pub(super) qk_norm: bool,
    pub(super) sandwich_norms: bool,
    pub(super) norm_unit_offset: bool,
    /// Embeddings multiplied by sqrt(hidden_size).
    pub(super) embedding_scale: bool,
    /// Attention scale from `query_pre_attn_scalar` instead of head_dim.
    pub(super) query_pre_attn_scalar: bool,
    /// `final_logit_softcapping` / `attn_logit_softcapping` exist.
    pub(super) softcapping: bool,
    /// `use_bidirectional_attention` exists (must be false).
    pub(super) bidirectional_field: bool,
    pub(super) windows: Windows,
    pub(super) ropes: Ropes,
    pub(super) d: Defaults,
}

const LLAMA: Rules = Rules {
    family: Family::Llama,
    activation_field: "hidden_act",
    biases: Biases::AttentionBias,
    mlp_bias_field: true,
    qk_norm: false,
    sandwich_norms: false,
    norm_unit_offset: false,
    embedding_scale: false,
    query_pre_attn_scalar: false,
    softcapping: false,
    bidirectional_field: false,
    windows: Windows::Never,
    ropes: Ropes::Single,
    d: Defaults {
        vocab_size: 32000,
        hidden_size: 4096,
        intermediate_size: 11008,
        num_hidden_layers: 32,
        num_attention_heads: 32,
        num_key_value_heads: None,
        head_dim: None,
        activation: "silu",
        max_position_embeddings: 2048,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        rope_theta: 10000.0,
        rope_local_theta: 10000.0,
        sliding_window: None,
        max_window_layers: 0,
        sliding_window_pattern: 1,
        query_pre_attn_scalar: 0.0,
    },
};

const MISTRAL: Rules = Rules {
    family: Family::Mistral,
    biases: Biases::None,
    mlp_bias_field: false,
    windows: Windows::EveryLayer,
    d: Defaults {
        intermediate_size: 14336,
        num_key_value_heads: Some(8),
        max_position_embeddings: 4096 * 32,
        sliding_window: Some(4096),
        ..LLAMA.d
    },
    ..LLAMA
};

const QWEN2: Rules = Rules {
    family: Family::Qwen2,
    biases: Biases::QkvAlways,
    mlp_bias_field: false,
    windows: Windows::Qwen,
    d: Defaults {
        vocab_size: 151936,
        intermediate_size: 22016,
        num_key_value_heads: Some(32),
        max_position_embeddings: 32768,
        bos_token_id: None,
        eos_token_id: None,
        sliding_window: Some(4096),
        max_window_layers: 28,
        ..LLAMA.d
    },
    ..LLAMA
};

const QWEN3: Rules = Rules {
    family: Family::Qwen3,
    biases: Biases::AttentionBias,
    qk_norm: true,
    d: Defaults { head_dim: Some(128), ..QWEN2.d },
    ..QWEN2
};

const GEMMA3: Rules = Rules {
    family: Family::Gemma3,
    activation_field: "hidden_activation",
    biases: Biases::AttentionBias,
    mlp_bias_field: false,
    qk_norm: true,
    sandwich_norms: true,
    norm_unit_offset: true,
    embedding_scale: true,
    query_pre_attn_scalar: true,
    softcapping: true,
    bidirectional_field: true,
    windows: Windows::Gemma,
    ropes: Ropes::PerLayerType,
    d: Defaults {
        vocab_size: 262_208,
        hidden_size: 2304,
        intermediate_size: 9216,
        num_hidden_layers: 26,
        num_attention_heads: 8,
        num_key_value_heads: Some(4),
        head_dim: Some(256),
        activation: "gelu_pytorch_tanh",
        max_position_embeddings: 131_072,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        bos_token_id: Some(2),
        eos_token_id: Some(1),
        rope_theta: 1_000_000.0,
        rope_local_theta: 10_000.0,
        sliding_window: Some(4096),
        max_window_layers: 0,
        sliding_window_pattern: 6,
        query_pre_attn_scalar: 256.0,
    },
};

/// A supported `architectures[0]`.
pub(super) struct Arch {
    pub(super) name: &'static str,
    /// The `model_type` that implies it when `architectures` is absent.
    model_type: &'static str,
    pub(super) rules: &'static Rules,
    /// The text model's config is the nested `text_config` (multimodal checkpoints); tie_word_embeddings,
    /// bos/eos token ids may sit at the top level.
    pub(super) nested: bool,
    /// Default of the top-level tie_word_embeddings of a nested config (Gemma3Config: True).
    pub(super) nested_tie_default: bool,
}

const ARCHS: [Arch; 6] = [
    Arch { name: "LlamaForCausalLM", model_type: "llama", rules: &LLAMA, nested: false, nested_tie_default: false },
    Arch {
        name: "MistralForCausalLM",
        model_type: "mistral",
        rules: &MISTRAL,
        nested: false,
        nested_tie_default: false,
    },
    Arch { name: "Qwen2ForCausalLM", model_type: "qwen2", rules: &QWEN2, nested: false, nested_tie_default: false },
    Arch { name: "Qwen3ForCausalLM", model_type: "qwen3", rules: &QWEN3, nested: false, nested_tie_default: false },
    Arch {
        name: "Gemma3ForCausalLM",
        model_type: "gemma3_text",
        rules: &GEMMA3,
        nested: false,
        nested_tie_default: false,
    },
    Arch {
        name: "Gemma3ForConditionalGeneration",
        model_type: "gemma3",
        rules: &GEMMA3,
        nested: true,
        nested_tie_default: true,
    },
];

/// Activation names (transformers' ACT2FN keys) and what they compute.
pub(super) const ACTIVATIONS: [(&str, Activation); 7] = [
    ("silu", Activation::Silu),
    ("swish", Activation::Silu),
    ("gelu_pytorch_tanh", Activation::GeluTanh),
    ("gelu_python_tanh", Activation::GeluTanh),
    ("gelu_new", Activation::GeluTanh),
    ("gelu_fast", Activation::GeluTanh),
    ("gelu_tanh", Activation::GeluTanh),
];

pub(super) fn find_arch(top: &Obj) -> R<&'static Arch> {
    let supported = || ARCHS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ");
    let declared = match top.get("architectures") {
        Some(Value::Array(a)) if !a.is_empty() => {
            Some(a[0].as_str().ok_or_else(|| top.err("architectures", format!("expected names, found {}", a[0])))?)
        }
        Some(Value::Array(_)) | None => None,
        Some(v) => return Err(top.err("architectures", format!("expected a list of names, found {v}"))),
    };
    if let Some(name) = declared {
        return ARCHS.iter().find(|a| a.name == name).ok_or_else(|| {
            top.err("architectures", format!("unsupported architecture '{name}' (supported: {})", supported()))
        });
    }
    let Some(mt) = top.get("model_type") else {
        return Err(top.err(
            "architectures",
            format!("neither 'architectures' nor 'model_type' is given (supported: {})", supported()),
        ));
    };
    let mt = mt.as_str().ok_or_else(|| top.err("model_type", format!("expected a string, found {mt}")))?;
    ARCHS.iter().find(|a| a.model_type == mt).ok_or_else(|| {
        let types: Vec<_> = ARCHS.iter().map(|a| a.model_type).collect();
        top.err(
            "model_type",
            format!(
                "no 'architectures', and model_type '{mt}' is not supported (supported: {}; architectures: {})",
                types.join(", "),
                supported()
            ),
        )
    })
}
