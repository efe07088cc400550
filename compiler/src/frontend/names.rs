//! Canonical (Llama-style) tensor names, and the exact set of tensors the text model reads.

use unicorn_ir::spec::ModelSpec;

/// Prefixes of tensors that are not part of the text model (Gemma 3's vision tower and projector): never indexed,
/// never validated.
const SKIPPED_PREFIXES: [&str; 4] =
    ["vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector."];

/// Prefix renamings onto the canonical names (multimodal Gemma 3 layouts).
const RENAMES: [(&str, &str); 3] =
    [("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."), ("model.language_model.", "model.")];

/// The canonical name of a tensor stored as `stored`, or `None` for a tensor the text model never uses.
pub fn canonical_name(stored: &str) -> Option<String> {
    if SKIPPED_PREFIXES.iter().any(|p| stored.starts_with(p)) {
        return None;
    }
    for (from, to) in RENAMES {
        if let Some(rest) = stored.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    Some(stored.to_string())
}

/// Every tensor the text model described by `spec` reads, with the shape the spec implies, in model order. A tied
/// lm_head is not listed (the embedding table serves as it).
pub fn text_model_tensors(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    let (v, h, f, hd) = (spec.vocab_size, spec.hidden_size, spec.intermediate_size, spec.head_dim);
    let (q, kv) = (spec.q_width(), spec.kv_width());
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for i in 0..spec.num_layers {
        let p = format!("model.layers.{i}");
        let mut add = |suffix: &str, shape: Vec<usize>| out.push((format!("{p}.{suffix}"), shape));
        add("input_layernorm.weight", vec![h]);
        for (proj, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            add(&format!("self_attn.{proj}.weight"), vec![rows, h]);
            if spec.qkv_bias {
                add(&format!("self_attn.{proj}.bias"), vec![rows]);
            }
        }
        if spec.qk_norm {
            add("self_attn.q_norm.weight", vec![hd]);
            add("self_attn.k_norm.weight", vec![hd]);
        }
        add("self_attn.o_proj.weight", vec![h, q]);
        if spec.o_bias {
            add("self_attn.o_proj.bias", vec![h]);
        }
        add("post_attention_layernorm.weight", vec![h]);
        if spec.sandwich_norms {
            add("pre_feedforward_layernorm.weight", vec![h]);
        }
        for (proj, shape, bias) in
            [("gate_proj", vec![f, h], f), ("up_proj", vec![f, h], f), ("down_proj", vec![h, f], h)]
        {
            add(&format!("mlp.{proj}.weight"), shape);
            if spec.mlp_bias {
                add(&format!("mlp.{proj}.bias"), vec![bias]);
            }
        }
        if spec.sandwich_norms {
            add("post_feedforward_layernorm.weight", vec![h]);
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !spec.tie_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        let c = |s: &str| canonical_name(s);
        assert_eq!(c("model.layers.0.mlp.up_proj.weight").as_deref(), Some("model.layers.0.mlp.up_proj.weight"));
        assert_eq!(c("language_model.model.norm.weight").as_deref(), Some("model.norm.weight"));
        assert_eq!(c("language_model.lm_head.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(c("model.language_model.embed_tokens.weight").as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(c("lm_head.weight").as_deref(), Some("lm_head.weight"));
        for skipped in [
            "vision_tower.vision_model.embeddings.patch_embedding.weight",
            "vision_tower.encoder.layers.0.mlp.fc1.weight",
            "multi_modal_projector.mm_input_projection_weight",
            "model.vision_tower.vision_model.post_layernorm.bias",
            "model.multi_modal_projector.mm_soft_emb_norm.weight",
        ] {
            assert_eq!(c(skipped), None, "{skipped}");
        }
    }
}
