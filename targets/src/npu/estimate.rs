//! What one token (decode) or one prompt (prefill) of a Llama-shaped model would cost on the NPU with the
//! designs that exist: each layer's projections as GEMMs (prefill) or GEMVs (decode; bf16 weights, or int8 ones
//! with a bf16 scale per block of 32: [`decode_q8`]), its two RMSNorms and its
//! GLU, every design built, checked by the AIE2 rules, and counted — dispatches, bytes moved between host and
//! array, MACs — with the designs' time estimates summed, RoPE of q and k and the attention included (decode's
//! at [`DECODE_DEPTH`] cached positions). ESTIMATES on stated assumptions (the dispatch overhead and the host
//! bandwidth of [`super::model`]); the LM head is not NPU work in this count, and is said to be left out.

use super::attention::{attention, PrefillShape};
use super::design::RowOp;
use super::gemm::{gemm, gemm_bt_multi};
use super::gemv::{gemv_of, GemvWeights};
use super::model::ArrayModel;
use super::rows::rows;
use super::verify::verify;

/// A Llama-shaped decoder's dimensions.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub layers: u64,
    pub hidden: u64,
    pub ffn: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
}

/// Llama-3.2-1B.
pub const LLAMA_3_2_1B: Shape = Shape { layers: 16, hidden: 2048, ffn: 8192, heads: 32, kv_heads: 8, head_dim: 64 };

/// Llama-3.1-8B.
pub const LLAMA_3_1_8B: Shape = Shape { layers: 32, hidden: 4096, ffn: 14336, heads: 32, kv_heads: 8, head_dim: 128 };

/// The cached positions a decode step's attention is estimated at.
pub const DECODE_DEPTH: u64 = 512;

/// The sums over a phase's NPU designs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Estimate {
    pub dispatches: u64,
    pub host_bytes: u64,
    pub macs: u64,
    /// Seconds, from each design's estimate (a lower bound: each at its best).
    pub seconds: f64,
}

/// The NPU part of one execution of `tokens` rows (1: a decode step, its GEMVs reading bf16 weights) through
/// every layer of `s`, or the first design that breaks a rule.
pub fn phase(array: &ArrayModel, s: &Shape, tokens: u64) -> Result<Estimate, String> {
    layers(array, s, tokens, GemvWeights::Bf16)
}

/// The NPU part of a decode step through every layer of `s` with the projections' weights in int8 with a bf16
/// scale per block of 32 (the int8 GEMVs; the rest as [`phase`]), or the first design that breaks a rule.
pub fn decode_q8(array: &ArrayModel, s: &Shape) -> Result<Estimate, String> {
    layers(array, s, 1, GemvWeights::Q8)
}

/// [`phase`], a decode step's GEMVs reading weights stored as `weights`.
fn layers(array: &ArrayModel, s: &Shape, tokens: u64, weights: GemvWeights) -> Result<Estimate, String> {
    let mut e = Estimate::default();
    let mut add = |name: &str, design: &super::design::Design, macs: u64| -> Result<(), String> {
        let u = verify(design, array).map_err(|v| format!("{name}: {}", v[0]))?;
        e.dispatches += 1;
        e.host_bytes += u.host_bytes;
        e.macs += macs;
        e.seconds += array.estimate_seconds(u.host_bytes, macs);
        Ok(())
    };
    let q = s.heads * s.head_dim;
    let kv = s.kv_heads * s.head_dim;
    // q, k and v as one projection of their outputs together, o, gate and up together, down.
    let projections = [
        ("qkv", q + 2 * kv, s.hidden),
        ("o", s.hidden, q),
        ("gate_up", 2 * s.ffn, s.hidden),
        ("down", s.hidden, s.ffn),
    ];
    for _ in 0..s.layers {
        for (name, n, k) in projections {
            if tokens == 1 {
                let g = gemv_of(array, weights, n, k);
                add(name, &g.design, g.macs())?;
            } else {
                let g = gemm(array, tokens, k, n);
                add(name, &g.design, g.macs())?;
            }
        }
        for (name, op, width) in [
            ("input norm", RowOp::RmsNorm { eps: 1e-5 }, s.hidden),
            ("post-attention norm", RowOp::RmsNorm { eps: 1e-5 }, s.hidden),
            ("glu", RowOp::SiluGlu, s.ffn),
            ("q rope", RowOp::Rope { head_dim: s.head_dim }, q),
            ("k rope", RowOp::Rope { head_dim: s.head_dim }, kv),
        ] {
            let r = rows(array, op, tokens, width).ok_or_else(|| format!("{name}: no design for rows of {width}"))?;
            add(name, &r.design, 0)?;
        }
        // Attention: a prompt from position 0 over itself, or a decode step at depth DECODE_DEPTH over the cache,
        // each from a design over just the keys it sees.
        let q0 = if tokens == 1 { DECODE_DEPTH } else { 0 };
        let a = attention(array, attention_shape(s, tokens, q0 + tokens));
        add("attention", &a.design, a.macs(q0, q0 + tokens))?;
    }
    Ok(e)
}

/// The causal attention of `s` for `rows` query rows over `max_keys` keys, scaled by `1 / sqrt(head_dim)`.
fn attention_shape(s: &Shape, rows: u64, max_keys: u64) -> PrefillShape {
    PrefillShape {
        rows,
        max_keys,
        heads: s.heads,
        kv_heads: s.kv_heads,
        head_dim: s.head_dim,
        window: None,
        scale: (s.head_dim as f32).powf(-0.5),
    }
}

/// The NPU part of a `--target phoenix` plan's prefill chunk of `chunk` rows over a context of `context`
/// positions: each layer's projections as the weight-transposed GEMM designs the plan carries, those of one
/// operand in one dispatch — q / k / v, o, gate / up, down — and its attention as the one design over the
/// context the plan carries for every chunk (its keys [`unicorn_ir::npu::attention_max_keys`]; its host bytes the design's static key traffic, whatever the
/// chunk's position; its MACs those of the first chunk, at position 0): five dispatches a layer; the rest of
/// the plan runs on the CPU and is not counted.
pub fn plan_prefill(array: &ArrayModel, s: &Shape, chunk: u64, context: u64) -> Result<Estimate, String> {
    let max_keys = unicorn_ir::npu::attention_max_keys(context, chunk);
    let mut e = Estimate::default();
    let mut add = |name: &str, design: &super::design::Design, macs: u64| -> Result<(), String> {
        let u = verify(design, array).map_err(|v| format!("{name}: {}", v[0]))?;
        e.dispatches += s.layers;
        e.host_bytes += s.layers * u.host_bytes;
        e.macs += s.layers * macs;
        e.seconds += s.layers as f64 * array.estimate_seconds(u.host_bytes, macs);
        Ok(())
    };
    let (q, kv) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let layer: [(&str, u64, &[u64]); 4] = [
        ("q / k / v", s.hidden, &[q, kv, kv]),
        ("o", q, &[s.hidden]),
        ("gate / up", s.hidden, &[s.ffn, s.ffn]),
        ("down", s.ffn, &[s.hidden]),
    ];
    for (name, k, ns) in layer {
        let g = gemm_bt_multi(array, chunk, k, ns);
        add(name, &g.design, g.macs())?;
    }
    let a = attention(array, attention_shape(s, chunk, max_keys));
    add("attention", &a.design, a.macs(0, chunk))?;
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::super::model::NPU1;
    use super::*;

    /// A decode step's attention MACs: per head one round of four 4-row blocks (the column's cores), of which
    /// the one holding the row computes, over the DECODE_DEPTH + 1 keys in tiles of 32, QK^T and PV (the other
    /// three hold padding rows only, and skip their tiles).
    fn decode_attention(s: &Shape) -> u64 {
        s.layers * s.heads * (DECODE_DEPTH + 1).div_ceil(32) * 2 * 4 * 32 * s.head_dim
    }

    /// Every NPU design of the Llama-3.2-1B shape passes the rules in both phases; the counts follow from the
    /// shape (10 dispatches a layer), and decode moves every weight once in bf16, with the cache's keys and
    /// values beside them.
    #[test]
    fn the_llama_1b_designs_pass_and_are_counted() {
        let s = LLAMA_3_2_1B;
        let decode = phase(&NPU1, &s, 1).unwrap();
        let prefill = phase(&NPU1, &s, 512).unwrap();
        assert_eq!(decode.dispatches, 10 * 16);
        assert_eq!(prefill.dispatches, 10 * 16);
        let weights = s.layers * (s.hidden * (2048 + 2 * 512) + 2048 * s.hidden + 3 * s.ffn * s.hidden);
        assert_eq!(decode.macs, weights + decode_attention(&s));
        assert!(decode.host_bytes >= 2 * weights && decode.host_bytes < 2 * weights + weights / 10);
        // The projections' MACs, and the attention's: per head, a round of four 32-row blocks streams the keys
        // up to its last row in tiles of 32, and each block computes on those up to its own last row (QK^T and
        // PV, 64 dimensions): block s of round g, on 4g + s + 1.
        let tiles: u64 = (0..512u64 / 128).flat_map(|g| (0..4).map(move |s| 4 * g + s + 1)).sum();
        let attention = s.layers * s.heads * tiles * 2 * 32 * 32 * 64;
        assert_eq!(prefill.macs, 512 * weights + attention);
        println!("Llama-3.2-1B on npu1 (estimates): decode {decode:?}, prefill 512 {prefill:?}");
    }

    /// The int8 decode step at the Llama-3.2-1B and Llama-3.1-8B shapes: every design passes the rules, the
    /// dispatches and MACs are the bf16 step's, and the weights move at 34 bytes per 32 elements, so the step
    /// moves a little over half the bf16 step's bytes (the weights are almost all of them) and its estimate,
    /// less the dispatches' overhead, falls about as much.
    #[test]
    fn the_int8_decode_step_moves_half_the_bytes() {
        for (s, name) in [(LLAMA_3_2_1B, "Llama-3.2-1B"), (LLAMA_3_1_8B, "Llama-3.1-8B")] {
            let bf = phase(&NPU1, &s, 1).unwrap();
            let q = decode_q8(&NPU1, &s).unwrap();
            assert_eq!((q.dispatches, q.macs), (bf.dispatches, bf.macs), "{name}");
            let (qd, kv) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
            let weights = s.layers * (s.hidden * (qd + 2 * kv) + qd * s.hidden + 3 * s.ffn * s.hidden);
            // The bf16 step less half its weights' bytes, plus the scales (2 bytes per 32), give or take the x
            // each block of rows takes (its tiles differ).
            let want = bf.host_bytes - 2 * weights + weights * 34 / 32;
            assert!(q.host_bytes.abs_diff(want) < weights / 200, "{name}: {} vs {want}", q.host_bytes);
            // Beside the dispatches' overhead (the same in both), the time falls as the bytes do.
            let busy = |e: &Estimate| e.seconds - e.dispatches as f64 * NPU1.dispatch_overhead_s;
            assert!(busy(&q) < 0.6 * busy(&bf), "{name}: {} s vs {} s", q.seconds, bf.seconds);
            println!(
                "{name} decode at depth {DECODE_DEPTH} on npu1 (estimates): bf16 weights {:.2} GB, >= {:.0} ms; \
                 int8 weights {:.2} GB, >= {:.0} ms ({} dispatches, {:.2} GMAC)",
                bf.host_bytes as f64 / 1e9,
                bf.seconds * 1e3,
                q.host_bytes as f64 / 1e9,
                q.seconds * 1e3,
                q.dispatches,
                q.macs as f64 / 1e9
            );
        }
    }

    /// Every NPU design of the Llama-3.1-8B shape passes the rules too (4096-wide norm rows, 14,336-wide GLU
    /// rows taken in four pieces, 128-dimension heads).
    #[test]
    fn the_llama_8b_designs_pass_and_are_counted() {
        let s = LLAMA_3_1_8B;
        let decode = phase(&NPU1, &s, 1).unwrap();
        let prefill = phase(&NPU1, &s, 512).unwrap();
        assert_eq!((decode.dispatches, prefill.dispatches), (10 * 32, 10 * 32));
        let weights = s.layers * (s.hidden * (4096 + 2 * 1024) + 4096 * s.hidden + 3 * s.ffn * s.hidden);
        assert_eq!(decode.macs, weights + decode_attention(&s));
        println!("Llama-3.1-8B on npu1 (estimates): decode {decode:?}, prefill 512 {prefill:?}");
    }

    /// What a Phoenix plan puts on the NPU at the 1B and 8B shapes over a context of [`PLAN_CONTEXT`]: five
    /// dispatches a layer per prefill chunk (80 at 1B, 160 at 8B), every design within the rules, the MACs
    /// those of the projections and of the first chunk's attention, and the host transfers those of the
    /// phase's own estimate of q / k / v and gate / up as one projection each, plus the attention design's
    /// static key traffic over the whole context.
    #[test]
    fn the_phoenix_plans_npu_work_is_counted() {
        for (s, name, dispatches) in [(LLAMA_3_2_1B, "Llama-3.2-1B", 80), (LLAMA_3_1_8B, "Llama-3.1-8B", 160)] {
            let e = plan_prefill(&NPU1, &s, 512, PLAN_CONTEXT).unwrap();
            assert_eq!(e.dispatches, 5 * s.layers);
            assert_eq!(e.dispatches, dispatches);
            let (q, kv) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
            let per_row = s.layers * (s.hidden * (2 * q + 2 * kv) + 3 * s.ffn * s.hidden);
            let a = attention(&NPU1, attention_shape(&s, 512, unicorn_ir::npu::attention_max_keys(PLAN_CONTEXT, 512)));
            let attention_macs = a.macs(0, 512);
            assert!(attention_macs > 0 && attention_macs < 2 * 512 * 512 * q, "{name}: {attention_macs}");
            assert_eq!(
                e.macs,
                512 * per_row + s.layers * attention_macs,
                "{name}: the shapes divide into whole blocks"
            );
            let fused = [(q + 2 * kv, s.hidden), (s.hidden, q), (2 * s.ffn, s.hidden), (s.hidden, s.ffn)];
            let bytes: u64 = fused.iter().map(|&(n, k)| gemm(&NPU1, 512, k, n).host_bytes()).sum();
            let keys = verify(&a.design, &NPU1).unwrap().host_bytes;
            // The keys and values of the whole context (and a tile more) for every round of query blocks.
            assert!(keys > 2 * (PLAN_CONTEXT + 511) * kv * 2, "{name}: {keys}");
            assert_eq!(e.host_bytes, s.layers * (bytes + keys), "{name}");
            println!(
                "{name} phoenix plan, prefill chunk of 512 over a context of {PLAN_CONTEXT} on npu1 (estimates): {} \
                 dispatches, {:.2} GB host<->array ({:.2} GB of it attention's keys), {:.0} GMAC, >= {:.0} ms",
                e.dispatches,
                e.host_bytes as f64 / 1e9,
                (s.layers * keys) as f64 / 1e9,
                e.macs as f64 / 1e9,
                e.seconds * 1e3
            );
        }
    }

    /// A context both models' attention is placed on the NPU at in chunks of 512 (its design over
    /// `unicorn_ir::npu::attention_max_keys` = 1,535 keys; `unicorn_passes::npu_attention_covers`).
    const PLAN_CONTEXT: u64 = 1024;
}
