//! Prefill in chunks and the KV cache's precision: a prompt run chunk by chunk (each chunk attending over the
//! cache the earlier ones filled) gives the logits of one pass, including chunks that split a sliding window;
//! a prompt of the whole context runs in bounded memory; an f16 cache takes half the memory of an f32 one.

use std::path::{Path, PathBuf};
use unicorn_compiler::compile::{compile, CompileOptions};
use unicorn_ir::{DType, WeightFormat};
use unicorn_passes::{Options, Target};
use unicorn_runtime::{Model, Session};
use unicorn_tests::*;

fn plan(name: &str, dir: &Path, weights: WeightFormat, kv: Option<DType>, ctx: Option<usize>) -> PathBuf {
    let out = dir.join(format!("{name}.{weights}.{kv:?}.ucp"));
    let options = CompileOptions {
        passes: Options { target: Target::Cpu, weights },
        kv_cache: kv,
        max_context: ctx,
        device_profile: Default::default(),
        progress: false,
        emit_mlir: None,
    };
    compile(&fixtures_dir().join(name), &out, &options).unwrap();
    out
}

/// Logits of every row of `ids`, prefilled in chunks of `chunk` (`None`: the plan's).
fn logits(model: &Model, ids: &[u32], chunk: Option<usize>) -> Vec<f32> {
    let mut s = Session::new(model, ids.len()).unwrap();
    if let Some(c) = chunk {
        s.set_prefill_chunk(c).unwrap();
    }
    s.forward(ids, true).unwrap().to_vec()
}

#[test]
fn chunked_prefill_equals_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    // Mistral's window is 8 positions: chunks of 3 and 5 split it; Gemma 3 mixes sliding and global layers.
    for name in ["mistral_sliding", "gemma3_text", "llama_gqa", "qwen2_bias"] {
        let exp = expected(name);
        for (weights, tol) in [(WeightFormat::F32, 1e-5), (WeightFormat::Q8_0, 1e-5)] {
            // An f32 cache: the chunks read back exactly what one pass keeps in registers.
            let model = Model::load(&plan(name, dir.path(), weights, Some(DType::F32), None)).unwrap();
            let whole = logits(&model, &exp.prompt_ids, None);
            for chunk in [1, 3, 5, 16] {
                let a = compare(&logits(&model, &exp.prompt_ids, Some(chunk)), &whole, exp.vocab);
                println!("{name:16} {weights:5} chunk {chunk:2}: max|dlogit|/max|logit| = {:.2e}", a.rel_err);
                assert!(a.rel_err <= tol && a.argmax == 1.0, "{name} {weights} chunk {chunk}: {a:?}");
            }
        }
    }
}

#[test]
fn a_prompt_of_the_whole_context_runs_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = 96;
    let model = Model::load(&plan("mistral_sliding", dir.path(), WeightFormat::F32, None, Some(ctx))).unwrap();
    let h = model.header();
    assert_eq!(h.prefill_chunk as usize, ctx);
    let ids: Vec<u32> = (0..ctx as u32).map(|i| (i * 37 + 5) % h.spec.vocab_size as u32).collect();
    let whole = logits(&model, &ids, None);
    let chunked = logits(&model, &ids, Some(10));
    let a = compare(&chunked, &whole, h.spec.vocab_size);
    assert!(a.rel_err <= 1e-5, "{a:?}");
    // Nothing more fits.
    let mut s = Session::new(&model, ctx).unwrap();
    s.forward(&ids, false).unwrap();
    let err = s.forward(&[1], false).unwrap_err().to_string();
    assert!(err.contains("exceed the context"), "{err}");
}

#[test]
fn a_prompt_past_the_context_is_refused_before_any_of_it_runs() {
    // Chunks of 3 in a context of 8: the whole prompt is checked against the context before its first chunk
    // runs, so a refused prompt leaves the position and the cache as they were, at position 0 and later.
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(&plan("llama_gqa", dir.path(), WeightFormat::F32, Some(DType::F32), Some(16))).unwrap();
    let vocab = model.header().spec.vocab_size;
    let ids: Vec<u32> = (0..10u32).map(|i| (i * 37 + 5) % vocab as u32).collect();
    let mut s = Session::new(&model, 8).unwrap();
    s.set_prefill_chunk(3).unwrap();
    let err = s.forward(&ids, false).unwrap_err().to_string();
    assert!(err.contains("10 tokens at position 0 exceed the context of 8"), "{err}");
    assert_eq!(s.position(), 0);
    s.forward(&ids[..1], false).unwrap();
    let err = s.forward(&ids[1..9], false).unwrap_err().to_string();
    assert!(err.contains("8 tokens at position 1 exceed the context of 8"), "{err}");
    assert_eq!(s.position(), 1);
    // What was refused left no trace: the rest of a prompt that fits gives the logits of one pass.
    let rest = s.forward(&ids[1..8], false).unwrap().to_vec();
    assert_eq!(s.position(), 8);
    let mut one = Session::new(&model, 8).unwrap();
    let a = compare(&rest, one.forward(&ids[..8], false).unwrap(), vocab);
    assert!(a.rel_err <= 1e-5 && a.argmax == 1.0, "{a:?}");
}

#[test]
fn the_plan_bounds_activations_by_its_chunk_not_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(&plan("llama_gqa", dir.path(), WeightFormat::Q8_0, None, Some(4096))).unwrap();
    let h = model.header();
    assert_eq!(h.prefill_chunk, 512);
    let prefill = h.phase(unicorn_ir::Phase::Prefill).unwrap();
    assert_eq!(h.peak_activation_bytes, prefill.activation_bytes(512, 512).unwrap());
    let mut s = Session::new(&model, 8).unwrap();
    let err = s.set_prefill_chunk(513).unwrap_err().to_string();
    assert!(err.contains("--prefill-chunk 513") && err.contains("1..=512"), "{err}");
    // Both ends of the range are accepted, zero is not.
    s.set_prefill_chunk(512).unwrap();
    s.set_prefill_chunk(1).unwrap();
    assert!(s.set_prefill_chunk(0).unwrap_err().to_string().contains("--prefill-chunk 0"));
}

#[test]
fn the_profile_counts_every_launch_by_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(&plan("llama_gqa", dir.path(), WeightFormat::Q8_0, None, None)).unwrap();
    let layers = model.header().spec.num_layers;
    let mut s = Session::new(&model, 16).unwrap();
    assert!(s.profile().is_empty(), "nothing is recorded before profiling is enabled");
    s.enable_profile();
    s.forward(&[1, 2, 3, 4], false).unwrap();
    s.forward(&[5], false).unwrap();
    let p = s.profile();
    let calls = |name: &str| p.iter().find(|(n, ..)| n == name).map(|e| e.2);
    // Two executions (a prefill, a decode step), each one attention and two norms per layer plus the final norm.
    assert_eq!(calls("attention"), Some(2 * layers), "{p:?}");
    assert_eq!(calls("rms_norm"), Some(2 * (2 * layers + 1)), "{p:?}");
    assert!(p.iter().all(|(_, secs, n)| *secs > 0.0 && *n > 0), "{p:?}");
    assert!(p.windows(2).all(|w| w[0].1 >= w[1].1), "most expensive first: {p:?}");
}

#[test]
fn an_f16_cache_is_the_default_beside_reduced_weights_and_takes_half_the_memory() {
    let dir = tempfile::tempdir().unwrap();
    let name = "mistral_sliding";
    let exp = expected(name);
    let f16 = Model::load(&plan(name, dir.path(), WeightFormat::F16, None, None)).unwrap();
    let f32 = Model::load(&plan(name, dir.path(), WeightFormat::F16, Some(DType::F32), None)).unwrap();
    assert!(f16.header().kv_caches.iter().all(|c| c.dtype == DType::F16));
    let exact = Model::load(&plan(name, dir.path(), WeightFormat::F32, None, None)).unwrap();
    assert!(exact.header().kv_caches.iter().all(|c| c.dtype == DType::F32));
    let ctx = f16.header().spec.max_context as u64;
    assert_eq!(f16.header().kv_cache_bytes(ctx) * 2, f32.header().kv_cache_bytes(ctx));
    // Chunks of 3 read earlier positions back from the cache, rounded to f16 there.
    let a = compare(&logits(&f16, &exp.prompt_ids, Some(3)), &logits(&f32, &exp.prompt_ids, Some(3)), exp.vocab);
    println!("f16 cache vs f32 cache, chunks of 3: max|dlogit|/max|logit| = {:.2e}", a.rel_err);
    assert!(a.rel_err > 0.0, "the f16 cache rounds nothing: is it f16?");
    assert!(a.rel_err <= 2e-3 && a.argmax == 1.0, "{a:?}");
}
