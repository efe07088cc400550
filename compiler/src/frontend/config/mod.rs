//! config.json (+ generation_config.json) -> [`ModelSpec`]: [`parse`] assembles the spec.
//!
//! Every architecture-specific rule lives in [`families`]: the defaults of transformers' config class (what a
//! published config may omit) and the switches that tell the families apart. The code here and in [`rope`]
//! and [`layers`] reads a config through one family's rules and never tests the family itself; [`json`] reads
//! the fields, naming them in errors.

mod families;
mod json;
mod layers;
mod rope;

use super::error::FrontendError;
use families::{find_arch, Biases, Ropes, ACTIVATIONS};
use json::{parse_json, Obj, R};
use layers::windows;
use rope::ropes;
use serde_json::Map;
use std::path::Path;
use unicorn_ir::spec::{LayerSpec, ModelSpec, RopeSpec};
use unicorn_ir::validate::limits::{MAX_CONTEXT, MAX_DIM, MAX_LAYERS};

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

#[cfg(test)]
mod tests;
