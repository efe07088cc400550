//! Precision: choose each weight's storage format. A rule table maps (weight role, requested format) to the
//! stored format; the first matching rule wins.

use unicorn_ir::{DType, Module, WeightFormat, WeightRole};

pub struct PrecisionRule {
    pub role: WeightRole,
    /// `None` matches any requested format.
    pub requested: Option<WeightFormat>,
    /// `None` keeps the requested format.
    pub stored: Option<WeightFormat>,
    pub why: &'static str,
}

pub const PRECISION_RULES: &[PrecisionRule] = &[
    PrecisionRule {
        role: WeightRole::Norm,
        requested: None,
        stored: Some(WeightFormat::F32),
        why: "norm scales are tiny and precision-critical",
    },
    PrecisionRule {
        role: WeightRole::Bias,
        requested: None,
        stored: Some(WeightFormat::F32),
        why: "biases are tiny and added in f32",
    },
    PrecisionRule {
        role: WeightRole::Matrix,
        requested: None,
        stored: None,
        why: "projections take the requested format",
    },
    PrecisionRule {
        role: WeightRole::Embedding,
        requested: None,
        stored: None,
        why: "the embedding table is also the tied output projection",
    },
];

/// Format for a weight of `role` with rows of `cols` elements.
pub fn format_for(role: WeightRole, cols: usize, requested: WeightFormat) -> WeightFormat {
    let rule = PRECISION_RULES
        .iter()
        .find(|r| r.role == role && r.requested.is_none_or(|f| f == requested))
        .expect("every role has a rule");
    let f = rule.stored.unwrap_or(requested);
    // Block formats need whole 32-element blocks per row; such rows are rare, f16 keeps them compact.
    if f.row_bytes(cols).is_none() {
        WeightFormat::F16
    } else {
        f
    }
}

/// The KV cache's element type when the user does not choose: f32 beside f32 weights (a plan that computes
/// exactly in f32), f16 otherwise — half the memory, and its rounding is below what reduced-precision or
/// quantized weights already cost.
pub fn default_kv_cache(weights: WeightFormat) -> DType {
    match weights {
        WeightFormat::F32 => DType::F32,
        _ => DType::F16,
    }
}

pub fn precision(module: &mut Module, requested: WeightFormat) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for w in &mut module.weights {
        w.format = format_for(w.role, w.cols(), requested);
        *counts.entry(w.format.name()).or_insert(0usize) += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(f, n)| format!("{n} {f}")).collect();
    format!("weights: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_and_biases_stay_f32_matrices_take_the_request() {
        assert_eq!(format_for(WeightRole::Norm, 64, WeightFormat::Q4_0), WeightFormat::F32);
        assert_eq!(format_for(WeightRole::Bias, 64, WeightFormat::Q8_0), WeightFormat::F32);
        assert_eq!(format_for(WeightRole::Matrix, 64, WeightFormat::Q4_0), WeightFormat::Q4_0);
        assert_eq!(format_for(WeightRole::Embedding, 64, WeightFormat::Bf16), WeightFormat::Bf16);
    }

    #[test]
    fn rows_that_are_not_whole_blocks_fall_back_to_f16() {
        assert_eq!(format_for(WeightRole::Matrix, 48, WeightFormat::Q8_0), WeightFormat::F16);
        assert_eq!(format_for(WeightRole::Matrix, 48, WeightFormat::F32), WeightFormat::F32);
    }
}
