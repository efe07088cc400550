//! RoPE frequencies against transformers: the inverse frequencies a plan rotates each layer's q and k by (and
//! the ModelSpec's `RopeSpec::inv_freq` they are made from) equal those of transformers' rotary embedding
//! module, which make_fixtures.py stores per layer (`rope_inv_freq` in expected.json). The llama3_mqa_tied
//! fixture's Llama 3 scaling puts its 16 frequencies in all three bands (kept, divided by the factor, blended),
//! so a misread low/high_freq_factor or original_max_position_embeddings moves some of them by far more than
//! the tolerance.

use unicorn_ir::spec::RopeScaling;
use unicorn_ir::WeightFormat;
use unicorn_runtime::Model;
use unicorn_tests::*;

/// transformers computes in f32 (`base ** (arange / dim)`, then the Llama 3 blend), the spec in f64 rounded once
/// to f32: measured worst case 1.2e-7 relative (one or two f32 ulps); llama3_mqa_tied alone 1.1e-7.
const TOL: f64 = 1e-6;

/// max over layers and frequencies of |plan - transformers| / transformers, and the same for the spec's.
fn worst(name: &str, dir: &std::path::Path) -> (f64, f64) {
    let exp = expected(name);
    let plan = compile_to(&fixtures_dir().join(name), dir, WeightFormat::F32, None);
    let model = Model::load(&plan).unwrap();
    let h = model.header();
    let want: Vec<Vec<f64>> = exp.json["rope_inv_freq"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: rope_inv_freq"))
        .iter()
        .map(|l| l.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    assert_eq!(want.len(), h.spec.layers.len(), "{name}: one table per layer");
    let rel = |got: &[f32], want: &[f64]| -> f64 {
        assert_eq!(got.len(), want.len(), "{name}: head_dim / 2 frequencies");
        got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs() / w.abs()).fold(0.0, f64::max)
    };
    let (mut plan_err, mut spec_err) = (0.0f64, 0.0f64);
    for (layer, want) in h.spec.layers.iter().zip(&want) {
        plan_err = plan_err.max(rel(&h.rope_inv_freq[layer.rope], want));
        spec_err = spec_err.max(rel(&h.spec.ropes[layer.rope].inv_freq(h.spec.head_dim), want));
    }
    (plan_err, spec_err)
}

#[test]
fn llama3_rope_frequencies_match_transformers() {
    let name = "llama3_mqa_tied";
    let dir = tempfile::tempdir().unwrap();
    let spec = Model::load(&compile_to(&fixtures_dir().join(name), dir.path(), WeightFormat::F32, None))
        .unwrap()
        .header()
        .spec
        .clone();
    assert!(matches!(spec.ropes[0].scaling, RopeScaling::Llama3 { .. }), "{name}: {:?}", spec.ropes);
    let (plan_err, spec_err) = worst(name, dir.path());
    println!("{name}: inv_freq max relative error: plan {plan_err:.1e}, spec {spec_err:.1e} (tolerance {TOL:.0e})");
    assert!(plan_err <= TOL && spec_err <= TOL, "{name}: plan {plan_err:.2e}, spec {spec_err:.2e} > {TOL}");
}

#[test]
fn every_fixture_rotates_by_transformers_frequencies() {
    let dir = tempfile::tempdir().unwrap();
    for name in fixtures() {
        let (plan_err, spec_err) = worst(&name, dir.path());
        println!("{name:32} inv_freq max relative error: plan {plan_err:.1e}, spec {spec_err:.1e}");
        assert!(plan_err <= TOL && spec_err <= TOL, "{name}: plan {plan_err:.2e}, spec {spec_err:.2e} > {TOL}");
    }
}
