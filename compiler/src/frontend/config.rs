//! config.json (+ generation_config.json) -> [`ModelSpec`].
//!
//! Every architecture-specific rule lives in [`FAMILIES`]: the defaults of transformers' config class (what a
//! published config may omit) and the switches that tell the families apart. The code below reads a config
//! through one family's rules and never tests the family itself.

use super::error::FrontendError;
use serde_json::{Map, Value};
use std::path::Path;
use unicorn_ir::spec::{Activation, Family, LayerSpec, ModelSpec, RopeScaling, RopeSpec};
use unicorn_ir::validate::limits::{MAX_CONTEXT, MAX_DIM, MAX_LAYERS};

/// Defaults of the family's transformers config class (transformers 5.23) for fields a config.json omits.
struct Defaults {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    /// `None`: equal to num_attention_heads.
    num_key_value_heads: Option<usize>,
    /// `None`: hidden_size / num_attention_heads. (An explicit `null` always means that.)
    head_dim: Option<usize>,
    activation: &'static str,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    tie_word_embeddings: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    /// RoPE base of the (global) layers when neither rope_parameters nor rope_theta gives one.
    rope_theta: f64,
    /// Gemma 3: RoPE base of the sliding layers (`rope_local_base_freq`).
    rope_local_theta: f64,
    /// `sliding_window` when absent (transformers' class default; configs usually set it, often to null).
    sliding_window: Option<usize>,
    /// Qwen: the first `max_window_layers` layers never slide.
    max_window_layers: usize,
    /// Gemma 3 old spelling: every `sliding_window_pattern`-th layer is global.
    sliding_window_pattern: usize,
    /// Gemma 3: attention scale = query_pre_attn_scalar^-0.5.
    query_pre_attn_scalar: f64,
}

/// Which projections carry biases.
#[derive(Clone, Copy)]
enum Biases {
    /// Never (Mistral and Qwen2's MLP hard-code bias=False).
    None,
    /// q, k, v always; o never (Qwen2).
    QkvAlways,
    /// `attention_bias` -> q, k, v and o (Llama, Qwen3, Gemma 3).
    AttentionBias,
}

/// Where sliding windows come from.
#[derive(Clone, Copy)]
enum Windows {
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
enum Ropes {
    /// One kind for every layer: `rope_parameters` (new) or `rope_theta` + `rope_scaling` (old).
    Single,
    /// One per layer type: `rope_parameters` keyed by layer type (new) or `rope_theta` + `rope_scaling` for the
    /// global layers and `rope_local_base_freq` for the sliding ones (old) (Gemma 3).
    PerLayerType,
}

struct Rules {
    family: Family,
    /// The config key holding the activation name.
    activation_field: &'static str,
    biases: Biases,
    /// Llama's `mlp_bias` switch is honoured.
    mlp_bias_field: bool,
    qk_norm: bool,
    sandwich_norms: bool,
    norm_unit_offset: bool,
    /// Embeddings multiplied by sqrt(hidden_size).
    embedding_scale: bool,
    /// Attention scale from `query_pre_attn_scalar` instead of head_dim.
    query_pre_attn_scalar: bool,
    /// `final_logit_softcapping` / `attn_logit_softcapping` exist.
    softcapping: bool,
    /// `use_bidirectional_attention` exists (must be false).
    bidirectional_field: bool,
    windows: Windows,
    ropes: Ropes,
    d: Defaults,
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
struct Arch {
    name: &'static str,
    /// The `model_type` that implies it when `architectures` is absent.
    model_type: &'static str,
    rules: &'static Rules,
    /// The text model's config is the nested `text_config` (multimodal checkpoints); tie_word_embeddings,
    /// bos/eos token ids may sit at the top level.
    nested: bool,
    /// Default of the top-level tie_word_embeddings of a nested config (Gemma3Config: True).
    nested_tie_default: bool,
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
const ACTIVATIONS: [(&str, Activation); 7] = [
    ("silu", Activation::Silu),
    ("swish", Activation::Silu),
    ("gelu_pytorch_tanh", Activation::GeluTanh),
    ("gelu_python_tanh", Activation::GeluTanh),
    ("gelu_new", Activation::GeluTanh),
    ("gelu_fast", Activation::GeluTanh),
    ("gelu_tanh", Activation::GeluTanh),
];

const ROPE_TYPES: &str = "default, linear, llama3";

/// One JSON object of a config, read with field names for errors (`prefix` is "text_config." when nested).
struct Obj<'a> {
    map: &'a Map<String, Value>,
    prefix: &'static str,
    path: &'a Path,
}

type R<T> = Result<T, FrontendError>;

impl<'a> Obj<'a> {
    fn field(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn err(&self, key: &str, msg: impl Into<String>) -> FrontendError {
        FrontendError::config(self.path, self.field(key), msg)
    }

    /// The value of `key` unless absent or null.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    fn uint_of(&self, key: &str, v: &Value) -> R<usize> {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e18).map(|f| f as u64))
            .and_then(|u| usize::try_from(u).ok())
            .ok_or_else(|| self.err(key, format!("expected a non-negative integer, found {v}")))
    }

    fn uint(&self, key: &str, default: usize) -> R<usize> {
        self.get(key).map_or(Ok(default), |v| self.uint_of(key, v))
    }

    /// absent -> `default`; null -> None.
    fn opt_uint(&self, key: &str, default: Option<usize>) -> R<Option<usize>> {
        match self.map.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => self.uint_of(key, v).map(Some),
        }
    }

    fn float(&self, key: &str, default: f64) -> R<f64> {
        self.opt_float(key).map(|f| f.unwrap_or(default))
    }

    fn opt_float(&self, key: &str) -> R<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.err(key, format!("expected a number, found {v}"))))
            .transpose()
    }

    fn boolean(&self, key: &str, default: bool) -> R<bool> {
        self.get(key).map_or(Ok(default), |v| {
            v.as_bool().ok_or_else(|| self.err(key, format!("expected true or false, found {v}")))
        })
    }

    fn string(&self, key: &str, default: &'a str) -> R<&'a str> {
        self.get(key)
            .map_or(Ok(default), |v| v.as_str().ok_or_else(|| self.err(key, format!("expected a string, found {v}"))))
    }

    fn object(&self, key: &str) -> R<Option<&'a Map<String, Value>>> {
        self.get(key)
            .map(|v| v.as_object().ok_or_else(|| self.err(key, format!("expected a JSON object, found {v}"))))
            .transpose()
    }

    /// `token_id` fields: an int, a list of ints or null.
    fn token_ids(&self, key: &str) -> R<Vec<u32>> {
        let one = |v: &Value| {
            v.as_u64()
                .and_then(|u| u32::try_from(u).ok())
                .ok_or_else(|| self.err(key, format!("expected a token id, found {v}")))
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a.iter().filter(|v| !v.is_null()).map(one).collect(),
            Some(v) => one(v).map(|id| vec![id]),
        }
    }
}

fn parse_json(path: &Path, text: &str) -> R<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(FrontendError::config(path, "(top level)", "not a JSON object")),
        Err(e) => Err(FrontendError::config(path, "(top level)", format!("not valid JSON ({e})"))),
    }
}

fn find_arch(top: &Obj) -> R<&'static Arch> {
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

/// Parse one RoPE parameter set. `label` names the object in errors; `theta_default` applies when it has no
/// `rope_theta`.
fn rope_from(
    o: &Obj,
    label: &str,
    params: &Map<String, Value>,
    theta_default: f64,
    original_max_default: usize,
) -> R<RopeSpec> {
    let f = |k: &str| format!("{label}.{k}");
    let err = |k: &str, msg: String| FrontendError::config(o.path, o.field(&f(k)), msg);
    let num = |k: &str| -> R<Option<f64>> {
        params
            .get(k)
            .filter(|v| !v.is_null())
            .map(|v| v.as_f64().ok_or_else(|| err(k, format!("expected a number, found {v}"))))
            .transpose()
    };
    let need = |k: &str, ty: &str| num(k)?.ok_or_else(|| err(k, format!("required by rope type '{ty}' but absent")));
    let (type_key, ty) = match (params.get("rope_type").filter(|v| !v.is_null()), params.get("type")) {
        (Some(v), _) => ("rope_type", v),
        (None, Some(v)) if !v.is_null() => ("type", v),
        _ => ("rope_type", &Value::Null),
    };
    let ty = match ty {
        Value::Null => "default",
        Value::String(s) => s.as_str(),
        v => return Err(err(type_key, format!("expected a string, found {v}"))),
    };
    if let Some(p) = num("partial_rotary_factor")? {
        if p != 1.0 {
            return Err(err("partial_rotary_factor", format!("{p} is not supported (only 1.0)")));
        }
    }
    let theta = num("rope_theta")?.unwrap_or(theta_default);
    if !(theta.is_finite() && theta > 0.0) {
        return Err(err("rope_theta", format!("must be positive, found {theta}")));
    }
    let positive = |k: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(err(k, format!("must be positive, found {v}")))
        }
    };
    let scaling = match ty {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: positive("factor", need("factor", ty)?)? },
        "llama3" => {
            let factor = positive("factor", need("factor", ty)?)?;
            let low = positive("low_freq_factor", need("low_freq_factor", ty)?)?;
            let high = positive("high_freq_factor", need("high_freq_factor", ty)?)?;
            if high <= low {
                return Err(err("high_freq_factor", format!("must exceed low_freq_factor ({high} <= {low})")));
            }
            let omp = num("original_max_position_embeddings")?.unwrap_or(original_max_default as f64);
            let omp = positive("original_max_position_embeddings", omp)?;
            RopeScaling::Llama3 { factor, low_freq_factor: low, high_freq_factor: high, original_max_position: omp }
        }
        other => {
            return Err(err(type_key, format!("unsupported rope type '{other}' (supported: {ROPE_TYPES})")));
        }
    };
    Ok(RopeSpec { theta, scaling })
}

const FULL: &str = "full_attention";
const SLIDING: &str = "sliding_attention";

/// The RoPE of global layers and of sliding layers.
fn ropes(o: &Obj, r: &Rules, max_pos: usize) -> R<(RopeSpec, RopeSpec)> {
    if let Some(p) = o.opt_float("partial_rotary_factor")? {
        if p != 1.0 {
            return Err(o.err("partial_rotary_factor", format!("{p} is not supported (only 1.0)")));
        }
    }
    // transformers gives a top-level original_max_position_embeddings priority over the one in the rope dict.
    let omp_top = o.opt_uint("original_max_position_embeddings", None)?;
    let rope_parameters = o.object("rope_parameters")?;
    let rope_scaling = o.object("rope_scaling")?.filter(|m| !m.is_empty());
    let empty = Map::new();
    let with_omp = |m: &Map<String, Value>| {
        let mut m = m.clone();
        if let Some(v) = omp_top {
            m.insert("original_max_position_embeddings".into(), v.into());
        }
        m
    };
    let is_nested = |m: &Map<String, Value>| m.contains_key(FULL) || m.contains_key(SLIDING);
    match r.ropes {
        Ropes::Single => {
            // transformers: rope_parameters = rope_scaling or rope_parameters; rope_theta fills a missing theta.
            let (label, params) = match (rope_scaling, rope_parameters) {
                (Some(s), _) => ("rope_scaling", s),
                (None, Some(p)) => ("rope_parameters", p),
                (None, None) => ("rope_parameters", &empty),
            };
            if is_nested(params) {
                return Err(o.err(label, "RoPE parameters keyed by layer type are only supported for Gemma 3"));
            }
            let theta = o.float("rope_theta", r.d.rope_theta)?;
            let rope = rope_from(o, label, &with_omp(params), theta, max_pos)?;
            Ok((rope.clone(), rope))
        }
        Ropes::PerLayerType => {
            let rp = rope_parameters.unwrap_or(&empty);
            if let Some(k) = rp.keys().find(|k| k.as_str() != FULL && k.as_str() != SLIDING) {
                return Err(o.err(
                    "rope_parameters",
                    format!("expected keys '{FULL}' and '{SLIDING}' (one RoPE per layer type), found '{k}'"),
                ));
            }
            let sub = |k: &str| -> R<Map<String, Value>> {
                match rp.get(k) {
                    None | Some(Value::Null) => Ok(Map::new()),
                    Some(Value::Object(m)) => Ok(m.clone()),
                    Some(v) => {
                        Err(o.err(&format!("rope_parameters.{k}"), format!("expected a JSON object, found {v}")))
                    }
                }
            };
            // Old spelling: rope_scaling applies to the global layers only.
            let mut full = sub(FULL)?;
            let full_label = if let Some(s) = rope_scaling {
                full.extend(s.iter().map(|(k, v)| (k.clone(), v.clone())));
                "rope_scaling".to_string()
            } else {
                format!("rope_parameters.{FULL}")
            };
            let full_theta = o.float("rope_theta", r.d.rope_theta)?;
            let full = rope_from(o, &full_label, &full, full_theta, max_pos)?;
            let local_theta = o.float("rope_local_base_freq", r.d.rope_local_theta)?;
            let sliding = rope_from(o, &format!("rope_parameters.{SLIDING}"), &sub(SLIDING)?, local_theta, max_pos)?;
            Ok((full, sliding))
        }
    }
}

/// Per layer: sliding or not (from `layer_types` or the family's older switches), and the window size.
fn windows(o: &Obj, r: &Rules, n: usize) -> R<Vec<Option<usize>>> {
    let layer_types = || -> R<Option<Vec<bool>>> {
        let Some(v) = o.get("layer_types") else { return Ok(None) };
        let a = v.as_array().ok_or_else(|| o.err("layer_types", format!("expected a list, found {v}")))?;
        if a.len() != n {
            return Err(o.err("layer_types", format!("has {} entries but num_hidden_layers is {n}", a.len())));
        }
        a.iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some(FULL) => Ok(false),
                Some(SLIDING) => Ok(true),
                _ => Err(o.err(
                    &format!("layer_types[{i}]"),
                    format!("unsupported layer type {t} (supported: {FULL}, {SLIDING})"),
                )),
            })
            .collect::<R<Vec<_>>>()
            .map(Some)
    };
    let (sliding, window): (Vec<bool>, Option<usize>) = match r.windows {
        Windows::Never => (vec![false; n], None),
        Windows::EveryLayer => {
            let w = o.opt_uint("sliding_window", r.d.sliding_window)?;
            (vec![w.is_some(); n], w)
        }
        Windows::Qwen => {
            let w = if o.boolean("use_sliding_window", false)? {
                o.opt_uint("sliding_window", r.d.sliding_window)?
            } else {
                None
            };
            let sliding = match layer_types()? {
                Some(s) => s,
                None => {
                    let first = o.uint("max_window_layers", r.d.max_window_layers)?;
                    (0..n).map(|i| w.is_some() && i >= first).collect()
                }
            };
            (sliding, w)
        }
        Windows::Gemma => {
            if o.boolean("use_bidirectional_attention", false)? && r.bidirectional_field {
                return Err(o.err("use_bidirectional_attention", "bidirectional attention is not supported"));
            }
            let sliding = match layer_types()? {
                Some(s) => s,
                None => {
                    // transformers reads the public key only; the private "_sliding_window_pattern" it writes is
                    // stale when layer_types is present.
                    let p = o.uint("sliding_window_pattern", r.d.sliding_window_pattern)?;
                    if p == 0 {
                        return Err(o.err("sliding_window_pattern", "must be positive"));
                    }
                    (0..n).map(|i| (i + 1) % p != 0).collect()
                }
            };
            (sliding, o.opt_uint("sliding_window", r.d.sliding_window)?)
        }
    };
    if window == Some(0) && sliding.iter().any(|&s| s) {
        return Err(o.err("sliding_window", "must be positive"));
    }
    sliding
        .iter()
        .enumerate()
        .map(|(i, &s)| match (s, window) {
            (false, _) => Ok(None),
            (true, Some(w)) => Ok(Some(w)),
            (true, None) => Err(o.err(
                "sliding_window",
                format!("layer {i} is a sliding_attention layer but the window is null (or use_sliding_window is off)"),
            )),
        })
        .collect()
}

/// The generation_config.json of a checkpoint: its path and text.
pub(crate) struct GenerationConfig<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

/// Build the normalized spec from config.json's text (and generation_config.json's, when present).
pub(crate) fn parse(
    config_path: &Path,
    config_text: &str,
    generation: Option<GenerationConfig>,
    max_context: Option<usize>,
) -> R<ModelSpec> {
    if max_context == Some(0) {
        return Err(FrontendError::MaxContext);
    }
    let top_map = parse_json(config_path, config_text)?;
    let top = Obj { map: &top_map, prefix: "", path: config_path };
    let arch = find_arch(&top)?;
    let r = arch.rules;
    let empty = Map::new();
    let o = if arch.nested {
        Obj { map: top.object("text_config")?.unwrap_or(&empty), prefix: "text_config.", path: config_path }
    } else {
        Obj { map: &top_map, prefix: "", path: config_path }
    };
    let d = &r.d;

    // Sizes are bounded here, before anything is allocated from them, by the limits a plan is validated against.
    let sized = |key: &str, v: usize, max: u64| {
        if v == 0 {
            Err(o.err(key, "must be positive"))
        } else if v as u64 > max {
            Err(o.err(key, format!("{v} is larger than this build supports ({max})")))
        } else {
            Ok(v)
        }
    };
    let positive = |key: &str, v: usize| sized(key, v, MAX_DIM);
    let vocab_size = positive("vocab_size", o.uint("vocab_size", d.vocab_size)?)?;
    let hidden_size = positive("hidden_size", o.uint("hidden_size", d.hidden_size)?)?;
    let intermediate_size = positive("intermediate_size", o.uint("intermediate_size", d.intermediate_size)?)?;
    let num_layers = sized("num_hidden_layers", o.uint("num_hidden_layers", d.num_hidden_layers)?, MAX_LAYERS)?;
    let num_heads = positive("num_attention_heads", o.uint("num_attention_heads", d.num_attention_heads)?)?;
    let num_kv_heads =
        positive("num_key_value_heads", o.uint("num_key_value_heads", d.num_key_value_heads.unwrap_or(num_heads))?)?;
    if num_heads % num_kv_heads != 0 {
        return Err(
            o.err("num_key_value_heads", format!("{num_kv_heads} does not divide num_attention_heads ({num_heads})"))
        );
    }
    let head_dim = match o.opt_uint("head_dim", d.head_dim)? {
        Some(hd) => hd,
        None => {
            if hidden_size % num_heads != 0 {
                return Err(o.err(
                    "head_dim",
                    format!(
                        "absent, and hidden_size ({hidden_size}) is not a multiple of num_attention_heads \
                         ({num_heads})"
                    ),
                ));
            }
            hidden_size / num_heads
        }
    };
    let head_dim = positive("head_dim", head_dim)?;
    if head_dim % 2 != 0 {
        return Err(o.err("head_dim", format!("must be even for RoPE, found {head_dim}")));
    }
    let eps = o.float("rms_norm_eps", d.rms_norm_eps)?;
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(o.err("rms_norm_eps", format!("must be a non-negative number, found {eps}")));
    }

    let act_name = o.string(r.activation_field, d.activation)?;
    let activation = ACTIVATIONS.iter().find(|(n, _)| *n == act_name).map(|(_, a)| *a).ok_or_else(|| {
        let names: Vec<_> = ACTIVATIONS.iter().map(|(n, _)| *n).collect();
        let why = if act_name == "gelu" { " (exact erf GELU; only the tanh approximation is implemented)" } else { "" };
        o.err(r.activation_field, format!("unsupported activation '{act_name}'{why} (supported: {})", names.join(", ")))
    })?;

    let (qkv_bias, o_bias) = match r.biases {
        Biases::None => (false, false),
        Biases::QkvAlways => (true, false),
        Biases::AttentionBias => {
            let b = o.boolean("attention_bias", false)?;
            (b, b)
        }
    };
    let mlp_bias = r.mlp_bias_field && o.boolean("mlp_bias", false)?;

    let attn_scale = if r.query_pre_attn_scalar {
        let s = o.float("query_pre_attn_scalar", d.query_pre_attn_scalar)?;
        if !(s.is_finite() && s > 0.0) {
            return Err(o.err("query_pre_attn_scalar", format!("must be positive, found {s}")));
        }
        s.powf(-0.5) as f32
    } else {
        (head_dim as f64).powf(-0.5) as f32
    };
    let final_logit_softcap = if r.softcapping {
        if let Some(v) = o.get("attn_logit_softcapping") {
            return Err(o.err("attn_logit_softcapping", format!("attention logit softcapping ({v}) is not supported")));
        }
        match o.opt_float("final_logit_softcapping")? {
            Some(c) if !(c.is_finite() && c > 0.0) => {
                return Err(o.err("final_logit_softcapping", format!("must be positive, found {c}")));
            }
            c => c.map(|c| c as f32),
        }
    } else {
        None
    };
    let embedding_scale = r.embedding_scale.then(|| (hidden_size as f64).sqrt() as f32);

    // tie_word_embeddings: for a nested (multimodal) config transformers reads the top-level one.
    let tie_embeddings = if arch.nested && top.has("tie_word_embeddings") {
        top.boolean("tie_word_embeddings", arch.nested_tie_default)?
    } else if arch.nested {
        o.boolean("tie_word_embeddings", arch.nested_tie_default)?
    } else {
        o.boolean("tie_word_embeddings", d.tie_word_embeddings)?
    };

    let max_pos = o.uint("max_position_embeddings", d.max_position_embeddings)?;
    let max_context = match max_context {
        Some(m) => m,
        None => sized("max_position_embeddings", max_pos, MAX_CONTEXT)?,
    };

    let (full_rope, sliding_rope) = ropes(&o, r, max_pos)?;
    let window = windows(&o, r, num_layers)?;
    let mut rope_list: Vec<RopeSpec> = Vec::new();
    let layers = window
        .into_iter()
        .map(|w| {
            let rope = if w.is_some() && matches!(r.ropes, Ropes::PerLayerType) { &sliding_rope } else { &full_rope };
            let idx = rope_list.iter().position(|x| x == rope).unwrap_or_else(|| {
                rope_list.push(rope.clone());
                rope_list.len() - 1
            });
            LayerSpec { window: w, rope: idx }
        })
        .collect();

    // Token ids: generation_config.json first, then config.json (top level, then the text config's, which may be
    // a class default).
    let config_token = |key: &str, default: Option<u32>| -> R<Vec<u32>> {
        if arch.nested && top.has(key) {
            return top.token_ids(key);
        }
        if o.has(key) {
            o.token_ids(key)
        } else {
            Ok(default.into_iter().collect())
        }
    };
    let gen_map = generation.as_ref().map(|g| parse_json(g.path, g.text)).transpose()?;
    let gen = generation.as_ref().zip(gen_map.as_ref()).map(|(g, m)| Obj { map: m, prefix: "", path: g.path });
    let gen_bos = gen.as_ref().map(|g| g.token_ids("bos_token_id")).transpose()?.unwrap_or_default();
    let bos_token_id = match gen_bos.first() {
        Some(&b) => Some(b),
        None => config_token("bos_token_id", d.bos_token_id)?.first().copied(),
    };
    let mut eos_token_ids: Vec<u32> = Vec::new();
    let gen_eos = gen.as_ref().map(|g| g.token_ids("eos_token_id")).transpose()?.unwrap_or_default();
    for id in gen_eos.into_iter().chain(config_token("eos_token_id", d.eos_token_id)?) {
        if !eos_token_ids.contains(&id) {
            eos_token_ids.push(id);
        }
    }

    let architecture = arch.name.to_string();
    Ok(ModelSpec {
        architecture,
        family: r.family,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        norm_eps: eps as f32,
        norm_unit_offset: r.norm_unit_offset,
        activation,
        qkv_bias,
        o_bias,
        mlp_bias,
        qk_norm: r.qk_norm,
        sandwich_norms: r.sandwich_norms,
        embedding_scale,
        attn_scale,
        final_logit_softcap,
        tie_embeddings,
        ropes: rope_list,
        layers,
        max_context,
        bos_token_id,
        eos_token_ids,
    })
}
