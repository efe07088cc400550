//! Layer types: which layers use sliding-window attention, and the window size.

use super::families::{Rules, Windows};
use super::json::{Obj, R};

pub(super) const FULL: &str = "full_attention";
pub(super) const SLIDING: &str = "sliding_attention";

/// Per layer: sliding or not (from `layer_types` or the family's older switches), and the window size.
pub(super) fn windows(o: &Obj, r: &Rules, n: usize) -> R<Vec<Option<usize>>> {
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
