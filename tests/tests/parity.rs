//! Parity with transformers: each fixture compiled in every weight format (with the default options, as users
//! compile), its prefill logits compared with what transformers computes from the same weights.
//!
//! The fixtures' matrices sit on a quantization grid with power-of-two block scales and their 1-D parameters
//! are multiples of 2^-6 (tests/fixtures/README.md), so f32, f16 and bf16 plans hold every weight bit for bit
//! and compute in f32, as transformers' float32 model does: their logits are held to [`FLOAT_TOL`] of the largest
//! one. (A plan's default f16 KV cache plays no part here: a one-pass prefill attends over its own f32 keys.)
//!
//! A q8_0 / q4_0 plan holds the weights exactly only on a fixture on its own grid (q4_0 blocks are not q8_0
//! blocks, nor the other way round); there it is compared with transformers' logits computed with every linear
//! layer's input quantized to q8 blocks exactly as the int8 kernels do (`logits_<format>.npy`), and held to
//! [`QUANT_TOL`]. A quantized format on the other grid re-quantizes lossily and is not judged here (decode.rs
//! and batch.rs still run it). The distance to the float logits is printed beside it.

use unicorn_ir::WeightFormat;
use unicorn_tests::*;

/// Float plans (f32, f16, bf16 weights; f32 arithmetic). Measured worst case over every fixture and format, with
/// the AVX2 and the portable kernels: 3.0e-6 (llama_sharded_bf16; different f32 summation orders from torch's).
/// FFN activations rounded to f16 cost 2e-4 to 4e-4, which the former 1e-3 let through.
const FLOAT_TOL: f32 = 1e-5;

/// Quantized plans against transformers with the same (exactly held) weights and the engine's activation
/// quantization (`logits_<format>.npy`). The int8 dot products are exact integers, so what remains is f32
/// rounding: measured worst case 5.6e-7 for q8_0 (gemma3_layer_types) and 5.7e-7 for q4_0 (llama3_mqa_tied,
/// portable kernels), the same as the float plans, so the float tolerance applies. No legitimate difference lies
/// between: one activation quant moved by one step (f32 order differences pushing x * 127 / amax across n + 1/2)
/// costs about 1e-2 here, above 1e-3 as much as above 1e-5, and the script keeps only fixtures whose quantized
/// activations have no exact tie and lie >= 1e-6 relative (~16 ulps) from every rounding boundary
/// (`stats.<grid>_reference.q8_activations`), so f32 order cannot move one. An activation scale rounded to f16
/// (GGML's block_q8_0) instead of kept in f32 costs 1.3e-2 to 3.8e-2.
const QUANT_TOL: f32 = 1e-5;

fn check(name: &str) {
    let exp = expected(name);
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures_dir().join(name);
    for format in WeightFormat::ALL {
        let plan = compile_to(&model, dir.path(), format, None);
        let got = prefill_logits(&plan, &exp.prompt_ids);
        let to_float = compare(&got, &exp.logits, exp.vocab);
        if !format.is_quantized() {
            println!(
                "{name:32} {format:5} max|dlogit|/max|logit| = {:.2e} (tolerance {FLOAT_TOL:.0e})  argmax agreement \
                 = {:.1}%",
                to_float.rel_err,
                to_float.argmax * 100.0
            );
            assert!(
                to_float.rel_err <= FLOAT_TOL,
                "{name} {format}: max|dlogit|/max|logit| = {:.2e} > {FLOAT_TOL}",
                to_float.rel_err
            );
            assert_eq!(to_float.argmax, 1.0, "{name} {format}: argmax differs from transformers'");
            continue;
        }
        let Some(want) = exp.quantized_logits(format) else {
            assert_ne!(format, exp.grid, "{name}: logits_{format}.npy is missing");
            println!(
                "{name:32} {format:5} not judged: the weights are on the {} grid, {format} re-quantizes them \
                 lossily (distance to the float logits {:.2e})",
                exp.grid, to_float.rel_err
            );
            continue;
        };
        assert_eq!(format, exp.grid, "{name}: a {format} reference for weights on the {} grid", exp.grid);
        let a = compare(&got, &want, exp.vocab);
        println!(
            "{name:32} {format:5} max|dlogit|/max|logit| = {:.2e} against transformers with {format} weights and \
             q8 activations (tolerance {QUANT_TOL:.0e}), argmax agreement {:.1}%; against the float logits {:.2e}, \
             argmax agreement {:.1}%",
            a.rel_err,
            a.argmax * 100.0,
            to_float.rel_err,
            to_float.argmax * 100.0
        );
        assert!(a.rel_err <= QUANT_TOL, "{name} {format}: max|dlogit|/max|logit| = {:.2e} > {QUANT_TOL}", a.rel_err);
    }
}

macro_rules! parity {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { check(stringify!($name)); } )*
        const COVERED: &[&str] = &[$(stringify!($name)),*];
    };
}

parity!(
    gemma3_layer_types,
    gemma3_multimodal,
    gemma3_multimodal_legacy_names,
    gemma3_multimodal_native_names,
    gemma3_text,
    llama3_mqa_tied,
    llama_gqa,
    llama_mha,
    llama_sharded_bf16,
    mistral_sliding,
    qwen2_bias,
    qwen3_qknorm,
);

#[test]
fn every_fixture_has_a_parity_test() {
    assert_eq!(fixtures(), COVERED.iter().map(|s| s.to_string()).collect::<Vec<_>>());
}

#[test]
fn each_quantized_format_is_judged_on_fixtures_of_its_own_grid() {
    // Both grids carry several fixtures, so neither q8_0 nor q4_0 goes unjudged.
    for format in [WeightFormat::Q8_0, WeightFormat::Q4_0] {
        let on: Vec<String> = fixtures().into_iter().filter(|n| expected(n).grid == format).collect();
        println!("{format} grid: {on:?}");
        assert!(on.len() >= 3, "only {on:?} on the {format} grid");
        for n in &on {
            assert!(expected(n).quantized_logits(format).is_some(), "{n}: no logits_{format}.npy");
        }
    }
}
