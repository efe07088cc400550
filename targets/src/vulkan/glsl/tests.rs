//! Every generated kernel compiles to SPIR-V that naga parses and validates; the GLSL of a representative set
//! is snapshot-tested so a change to a template shows in review.

use super::*;
use crate::vulkan::spirv;

const FORMATS: [WeightFormat; 5] =
    [WeightFormat::F32, WeightFormat::F16, WeightFormat::Bf16, WeightFormat::Q8_0, WeightFormat::Q4_0];

fn all_kernels() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for f in FORMATS {
        v.push((format!("embed_{f}"), embed(f, 96, 1.5)));
        v.push((format!("matmul_{f}"), matmul(f, false, 96, 20)));
        v.push((format!("matmul_bias_{f}"), matmul(f, true, 96, 20)));
    }
    v.push(("rms_norm".into(), rms_norm(64, 1e-6, false)));
    v.push(("rms_norm_unit".into(), rms_norm(16, 1e-5, true)));
    v.push(("rope".into(), rope(&[1.0, 0.1, 0.01, 0.001], 64, 8)));
    for op in
        [Elementwise::Add, Elementwise::GluSilu, Elementwise::GluGeluTanh, Elementwise::Scale, Elementwise::Softcap]
    {
        v.push((op.name().into(), elementwise(op, 96, 30.0)));
    }
    v.push(("select_rows".into(), select_rows(96)));
    v.push(("attention_f32".into(), attention(false, SHAPE)));
    v.push(("attention_windowed_f16".into(), attention(true, AttentionShape { window: Some(8), ..SHAPE })));
    v
}

const SHAPE: AttentionShape = AttentionShape { heads: 4, kv_heads: 2, head_dim: 16, window: None, scale: 0.25 };

fn validate(name: &str, words: &[u32]) {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let module = naga::front::spv::parse_u8_slice(&bytes, &naga::front::spv::Options::default())
        .unwrap_or_else(|e| panic!("{name}: naga cannot parse the SPIR-V: {e}"));
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: naga rejects the module: {e:?}"));
    assert_eq!(module.entry_points.len(), 1, "{name}");
    assert_eq!(module.entry_points[0].stage, naga::ShaderStage::Compute, "{name}");
}

#[test]
fn every_kernel_compiles_and_validates() {
    for (name, src) in all_kernels() {
        let words = spirv::compile(&name, &src).unwrap_or_else(|e| panic!("{e}\n{src}"));
        validate(&name, &words);
    }
}

#[test]
fn rope_carries_the_exact_bits_of_its_frequencies() {
    let f = [1.0f32, 0.123_456_79, 1e-7];
    let src = rope(&f, 64, 6);
    for x in f {
        assert!(src.contains(&format!("0x{:08x}u", x.to_bits())), "{x} missing from\n{src}");
    }
}

#[test]
fn snapshots() {
    insta::assert_snapshot!("matmul_q4_0", matmul(WeightFormat::Q4_0, false, 2048, 8192));
    insta::assert_snapshot!("matmul_bias_q8_0", matmul(WeightFormat::Q8_0, true, 896, 128));
    insta::assert_snapshot!("matmul_f16", matmul(WeightFormat::F16, false, 2048, 512));
    insta::assert_snapshot!("embed_bf16", embed(WeightFormat::Bf16, 2048, 1.0));
    insta::assert_snapshot!("rms_norm", rms_norm(128, 1e-6, false));
    insta::assert_snapshot!(
        "attention_f16",
        attention(true, AttentionShape { heads: 32, kv_heads: 8, head_dim: 64, window: None, scale: 0.125 })
    );
    insta::assert_snapshot!("glu_silu", elementwise(Elementwise::GluSilu, 8192, 0.0));
}
