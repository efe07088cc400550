//! RoPE parameters: one set per layer kind (global, sliding), in the new (`rope_parameters`) or old
//! (`rope_theta` + `rope_scaling`) spelling.

use super::families::{Ropes, Rules};
use super::json::{Obj, R};
use super::layers::{FULL, SLIDING};
use crate::frontend::error::FrontendError;
use serde_json::{Map, Value};
use unicorn_ir::spec::{RopeScaling, RopeSpec};

const ROPE_TYPES: &str = "default, linear, llama3";

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

/// The RoPE of global layers and of sliding layers.
pub(super) fn ropes(o: &Obj, r: &Rules, max_pos: usize) -> R<(RopeSpec, RopeSpec)> {
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
