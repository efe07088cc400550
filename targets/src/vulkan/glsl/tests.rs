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
        let paths = [
            ("", MatPath::Tiled),
            ("_coop", MatPath::TiledCoop),
            ("_rows", MatPath::RowByRow),
            ("_rows_sg", MatPath::RowByRowSg),
            ("_rows_dot", MatPath::RowByRowDot),
        ];
        for (tag, path) in paths {
            v.push((format!("matmul_{f}{tag}"), matmul(f, false, 96, 20, path)));
            v.push((format!("matmul_bias_{f}{tag}"), matmul(f, true, 96, 20, path)));
            if path == MatPath::TiledCoop {
                // Tiles of 128 outputs, with a norm in front and a partial last tile of each member.
                let wide = [(6000, false), (200, true)].map(|(n, bias)| MatMember { format: f, bias, n });
                let norm = Some(NormPrologue { eps: 1e-6, unit_offset: false });
                v.push((format!("rms_norm+matmul2_{f}{tag}_wide"), matmul_group(&wide, 96, norm, false, path)));
            }
            let members = [(20, false), (8, true)].map(|(n, bias)| MatMember { format: f, bias, n });
            let norm = Some(NormPrologue { eps: 1e-6, unit_offset: true });
            v.push((format!("rms_norm+matmul2_{f}{tag}"), matmul_group(&members, 96, norm, false, path)));
            let pair = [MatMember { format: f, bias: false, n: 24 }; 2];
            if matches!(path, MatPath::RowByRow | MatPath::RowByRowSg) {
                let (silu, gelu) = (Activation::Silu, Activation::GeluTanh);
                v.push((format!("rms_norm+matmul2_{f}+glu_silu{tag}"), matmul_glu(pair, 96, norm, silu, path)));
                v.push((format!("matmul2_{f}+glu_gelutanh{tag}"), matmul_glu(pair, 96, None, gelu, path)));
            }
            let one = [MatMember { format: f, bias: true, n: 20 }];
            v.push((format!("matmul_bias_{f}+add{tag}"), matmul_group(&one, 96, None, true, path)));
        }
    }
    v.push(("rms_norm".into(), rms_norm(64, 1e-6, false)));
    v.push(("rms_norm_unit".into(), rms_norm(16, 1e-5, true)));
    v.push(("rope".into(), rope(&[1.0, 0.1, 0.01, 0.001], 64, 8)));
    v.push(("rope+rope".into(), rope_pair(&[1.0, 0.1, 0.01, 0.001], 64, 32, 8)));
    for op in
        [Elementwise::Add, Elementwise::GluSilu, Elementwise::GluGeluTanh, Elementwise::Scale, Elementwise::Softcap]
    {
        v.push((op.name().into(), elementwise(op, 96, 30.0)));
    }
    v.push(("select_rows".into(), select_rows(96)));
    v.push(("argmax".into(), argmax(1000)));
    v.push(("top_k".into(), top_k(1000)));
    v.push(("top_k_gemma".into(), top_k(262144)));
    v.push(("attention_f32".into(), attention(false, SHAPE, 0)));
    v.push(("attention_windowed_f16".into(), attention(true, AttentionShape { window: Some(8), ..SHAPE }, 0)));
    let inv: Vec<f32> = (0..8).map(|i| 0.5f32.powi(i)).collect();
    v.push(("rope+rope+attention_f32".into(), rope_attention(false, SHAPE, &inv, 0)));
    v.push(("rope+rope+attention_f32_sg".into(), rope_attention(false, SHAPE, &inv, 32)));
    v.push((
        "rope+rope+attention_windowed_f16".into(),
        rope_attention(true, AttentionShape { window: Some(8), ..SHAPE }, &inv, 8),
    ));
    v
}

const SHAPE: AttentionShape = AttentionShape { heads: 4, kv_heads: 2, head_dim: 16, window: None, scale: 0.25 };

/// naga parses and validates a module (it does not take cooperative matrices: those go to spirv-val alone).
/// naga refuses two variables of one binding, which Vulkan allows and the row-by-row path uses (the operand
/// read as floats and as 16-byte words, [`gemv_x`]; attention's cache read through a plain alias of its coherent
/// binding): where `aliased`, every check but that one.
fn validate(name: &str, words: &[u32], aliased: bool) {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let module = naga::front::spv::parse_u8_slice(&bytes, &naga::front::spv::Options::default())
        .unwrap_or_else(|e| panic!("{name}: naga cannot parse the SPIR-V: {e}"));
    let mut flags = naga::valid::ValidationFlags::all();
    if aliased {
        flags.remove(naga::valid::ValidationFlags::BINDINGS);
    }
    naga::valid::Validator::new(flags, naga::valid::Capabilities::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: naga rejects the module: {e:?}"));
    assert_eq!(module.entry_points.len(), 1, "{name}");
    assert_eq!(module.entry_points[0].stage, naga::ShaderStage::Compute, "{name}");
}

/// Run a SPIRV-Tools binary (Debian's spirv-tools, which .ci/deps installs) on a module; its stdout.
fn spirv_tool(tool: &str, args: &[&str], name: &str, words: &[u32]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.spv"));
    std::fs::write(&path, words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let out = std::process::Command::new(tool)
        .args(args)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (install spirv-tools: bash .ci/deps)"));
    assert!(out.status.success(), "{tool} rejects {name}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A SPIRV-Tools binary (`spirv-val`, `spirv-dis`) that knows SPV_KHR_cooperative_matrix and the integer-dot
/// forms (Debian's SPIRV-Tools 2023.1 does not): `$SPIRV_TOOLS/<tool>`, or the one `.ci/deps` builds from the
/// SPIRV-Tools shaderc vendors.
fn vendored(tool: &str) -> String {
    let dir = std::env::var("SPIRV_TOOLS").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/unicorn/spirv-tools-{}/bin", spirv::VENDORED_SPIRV_TOOLS)
    });
    let p = format!("{dir}/{tool}");
    assert!(std::path::Path::new(&p).exists(), "{p} is missing: run bash .ci/deps, or set SPIRV_TOOLS");
    p
}

#[test]
fn every_kernel_compiles_and_validates() {
    for (name, src) in all_kernels() {
        let words = spirv::compile(&name, &src).unwrap_or_else(|e| panic!("{e}\n{src}"));
        // naga takes neither cooperative matrices nor integer dot products; the vendored spirv-val does.
        if src.contains("GL_KHR_cooperative_matrix") || src.contains("GL_EXT_integer_dot_product") {
            spirv_tool(&vendored("spirv-val"), &["--target-env", "vulkan1.3"], &name, &words);
        } else {
            validate(&name, &words, src.contains(" x4[]") || src.contains(" kvr[]"));
            spirv_tool("spirv-val", &["--target-env", "vulkan1.2"], &name, &words);
        }
    }
}

/// The representative set of kernels at one model shape: the decode GEMV per weight format (subgroup
/// reductions; integer dot products for the quantized formats), the prefill GEMM on both paths (portable and
/// cooperative-matrix), a layer's norm fused into its q/k/v projections (both phases), the MLP's norm, gate/up
/// and GLU (decode), a residual add as an epilogue, attention (prefill and decode passes; prefill's portable and
/// blocked over subgroups) and decode attention
/// with the RoPE of q and k fused in, the plain RoPE and the norm.
fn representative(hidden: u64, heads: u64, head_dim: u64, ffn: u64) -> Vec<(String, String)> {
    let kv = 8 * head_dim;
    let shape = AttentionShape { heads, kv_heads: 8, head_dim, window: None, scale: (head_dim as f32).powf(-0.5) };
    let inv: Vec<f32> = (0..head_dim / 2).map(|i| 500000f32.powf(-(2.0 * i as f32) / head_dim as f32)).collect();
    let norm = Some(NormPrologue { eps: 1e-5, unit_offset: false });
    let mut v = Vec::new();
    for f in [WeightFormat::F16, WeightFormat::Bf16, WeightFormat::Q8_0, WeightFormat::Q4_0] {
        v.push((format!("gemv_{f}_sg"), matmul(f, false, hidden, hidden, MatPath::RowByRowSg)));
        if matches!(f, WeightFormat::Q8_0 | WeightFormat::Q4_0) {
            v.push((format!("gemv_{f}_dot"), matmul(f, false, hidden, hidden, MatPath::RowByRowDot)));
        }
    }
    for f in [WeightFormat::F16, WeightFormat::Q4_0] {
        v.push((format!("gemm_{f}"), matmul(f, false, hidden, ffn, MatPath::Tiled)));
        v.push((format!("gemm_{f}_coop"), matmul(f, false, hidden, ffn, MatPath::TiledCoop)));
    }
    let qkv = [hidden, kv, kv].map(|n| MatMember { format: WeightFormat::Q4_0, bias: false, n });
    v.push(("rms_norm+matmul3_q4_0_coop".into(), matmul_group(&qkv, hidden, norm, false, MatPath::TiledCoop)));
    v.push(("rms_norm+matmul3_q4_0_dot".into(), matmul_group(&qkv, hidden, norm, false, MatPath::RowByRowDot)));
    let gate_up = [MatMember { format: WeightFormat::Q4_0, bias: false, n: ffn }; 2];
    let silu = Activation::Silu;
    v.push((
        "rms_norm+matmul2_q4_0+glu_silu_dot".into(),
        matmul_glu(gate_up, hidden, norm, silu, MatPath::RowByRowDot),
    ));
    v.push(("rms_norm+matmul2_q4_0+glu_silu_coop".into(), matmul_glu(gate_up, hidden, norm, silu, MatPath::TiledCoop)));
    let down = [MatMember { format: WeightFormat::Q8_0, bias: false, n: hidden }];
    v.push(("matmul_q8_0+add_dot".into(), matmul_group(&down, ffn, None, true, MatPath::RowByRowDot)));
    v.push(("attention_f16".into(), attention(true, shape, 0)));
    v.push(("attention_f16_sg".into(), attention(true, shape, 32)));
    v.push(("rope+rope+attention_f16".into(), rope_attention(true, shape, &inv, 0)));
    v.push(("rope+rope+attention_f16_sg".into(), rope_attention(true, shape, &inv, 32)));
    v.push(("rope".into(), rope(&inv, hidden, head_dim)));
    v.push(("rms_norm".into(), rms_norm(hidden, 1e-6, false)));
    v
}

/// The GLSL of the representative set and its SPIR-V as spirv-dis disassembles it, at two model shapes (Llama
/// 3.2 1B: hidden 2048, 32 heads of 64 over 8 kv heads, MLP 8192; Qwen3 0.6B: hidden 1024, 16 heads of 128 over
/// 8, MLP 3072), so that a change to a template, or in what the shader compiler makes of one, shows in review.
#[test]
fn representative_snapshots() {
    for (tag, hidden, heads, head_dim, ffn) in [("llama1b", 2048, 32, 64, 8192), ("qwen06b", 1024, 16, 128, 3072)] {
        for (name, src) in representative(hidden, heads, head_dim, ffn) {
            let words = spirv::compile(&name, &src).unwrap_or_else(|e| panic!("{e}"));
            let dis = spirv_tool(&vendored("spirv-dis"), &["--no-header", "--no-color"], &name, &words);
            let key = name.replace('+', "_");
            insta::assert_snapshot!(format!("glsl_{key}_{tag}"), src);
            insta::assert_snapshot!(format!("spirv_{key}_{tag}"), dis);
        }
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
    insta::assert_snapshot!("matmul_q4_0", matmul(WeightFormat::Q4_0, false, 2048, 8192, MatPath::Tiled));
    insta::assert_snapshot!("matmul_q4_0_rows", matmul(WeightFormat::Q4_0, false, 8192, 2048, MatPath::RowByRow));
    insta::assert_snapshot!("matmul_bias_q8_0", matmul(WeightFormat::Q8_0, true, 896, 128, MatPath::Tiled));
    insta::assert_snapshot!("matmul_f16", matmul(WeightFormat::F16, false, 2048, 512, MatPath::Tiled));
    insta::assert_snapshot!("matmul_bf16_rows", matmul(WeightFormat::Bf16, false, 2048, 512, MatPath::RowByRow));
    // A down projection with the residual add behind it (Llama 3.2 1B, decode).
    let down = [MatMember { format: WeightFormat::Q8_0, bias: false, n: 2048 }];
    insta::assert_snapshot!("matmul_q8_0+add_rows", matmul_group(&down, 8192, None, true, MatPath::RowByRow));
    insta::assert_snapshot!("embed_bf16", embed(WeightFormat::Bf16, 2048, 1.0));
    insta::assert_snapshot!("rms_norm", rms_norm(128, 1e-6, false));
    insta::assert_snapshot!("glu_silu", elementwise(Elementwise::GluSilu, 8192, 0.0));
    insta::assert_snapshot!("argmax", argmax(128256));
    insta::assert_snapshot!("top_k", top_k(128256));
    // A layer's input norm fused in front of its q/k/v projections (Llama 3.2 1B).
    let qkv = [2048, 512, 512].map(|n| MatMember { format: WeightFormat::Q4_0, bias: false, n });
    let norm = Some(NormPrologue { eps: 1e-5, unit_offset: false });
    insta::assert_snapshot!("rms_norm_matmul3_q4_0", matmul_group(&qkv, 2048, norm, false, MatPath::Tiled));
    insta::assert_snapshot!("rms_norm_matmul3_q4_0_rows", matmul_group(&qkv, 2048, norm, false, MatPath::RowByRow));
    // The MLP's norm, gate/up and GLU in one decode launch (Llama 3.2 1B).
    let gate_up = [MatMember { format: WeightFormat::Q4_0, bias: false, n: 8192 }; 2];
    let silu = Activation::Silu;
    insta::assert_snapshot!("rms_norm_matmul2_q4_0_glu_silu", matmul_glu(gate_up, 2048, norm, silu, MatPath::RowByRow));
    // The same with subgroup reductions, and a residual add behind the cooperative-matrix GEMM of prefill.
    insta::assert_snapshot!(
        "rms_norm_matmul2_q4_0_glu_silu_sg",
        matmul_glu(gate_up, 2048, norm, silu, MatPath::RowByRowSg)
    );
    insta::assert_snapshot!("matmul_q8_0+add_rows_sg", matmul_group(&down, 8192, None, true, MatPath::RowByRowSg));
    insta::assert_snapshot!("matmul_q8_0+add_coop", matmul_group(&down, 8192, None, true, MatPath::TiledCoop));
    // Prefill's portable GEMM with the GLU behind it: each tile half gate's outputs, half up's.
    let gate_up16 = [MatMember { format: WeightFormat::F16, bias: false, n: 8192 }; 2];
    insta::assert_snapshot!("rms_norm_matmul2_f16_glu_silu", matmul_glu(gate_up16, 2048, norm, silu, MatPath::Tiled));
    // Decode's integer-dot path: the MLP's norm, gate/up and GLU (q8_0).
    let gate_up8 = [MatMember { format: WeightFormat::Q8_0, bias: false, n: 8192 }; 2];
    insta::assert_snapshot!(
        "rms_norm_matmul2_q8_0_glu_silu_dot",
        matmul_glu(gate_up8, 2048, norm, silu, MatPath::RowByRowDot)
    );
}

#[test]
fn matmul_kernels_are_named_for_the_kernel_they_run() {
    let q4 = |n| [MatMember { format: WeightFormat::Q4_0, bias: false, n }; 2];
    let f16 = [MatMember { format: WeightFormat::F16, bias: false, n: 8192 }];
    assert_eq!(matmul_family(&q4(2048), 2048, MatPath::RowByRowDot, false), ("gemv", "_dot"));
    // f16 weights take no integer dot products: the subgroup reduction of the same path.
    assert_eq!(matmul_family(&f16, 2048, MatPath::RowByRowDot, false), ("gemv", "_sg"));
    assert_eq!(matmul_family(&q4(2048), 2048, MatPath::RowByRow, false), ("gemv", ""));
    // Columns the row-by-row steps do not divide: the tiled kernel, whatever the phase.
    assert_eq!(matmul_family(&q4(2048), 2052, MatPath::RowByRowSg, false), ("gemm", ""));
    assert_eq!(matmul_family(&q4(8192), 2048, MatPath::TiledCoop, false), ("gemm", "_coop"));
    assert_eq!(matmul_family(&q4(8192), 2048, MatPath::Tiled, true), ("gemm", ""));
    // f32 weights keep f32 products: no cooperative matrices.
    let f32w = [MatMember { format: WeightFormat::F32, bias: false, n: 64 }];
    assert_eq!(matmul_family(&f32w, 64, MatPath::TiledCoop, false), ("gemm", ""));
}

#[test]
fn a_fused_glu_tile_covers_half_its_outputs_of_each_matrix() {
    let gate_up = |n| [MatMember { format: WeightFormat::Q4_0, bias: false, n }; 2];
    // Tiled: 64 outputs a tile (32 of gate, 32 of up), ragged at the end; cooperative matrices: 128 (64 + 64)
    // from 6144 outputs in all, else 64; row by row: as gate alone.
    assert_eq!(glu_work(&gate_up(8192), 2048, MatPath::Tiled), (256, 64));
    assert_eq!(glu_work(&gate_up(8200), 2048, MatPath::Tiled), (257, 64));
    assert_eq!(glu_work(&gate_up(8192), 2048, MatPath::TiledCoop), (128, COOP_TILE_ROWS));
    assert_eq!(glu_work(&gate_up(3071), 1024, MatPath::TiledCoop), (96, COOP_TILE_ROWS));
    assert_eq!(glu_work(&gate_up(3072), 1024, MatPath::TiledCoop), (48, COOP_TILE_ROWS));
    assert_eq!(
        glu_work(&gate_up(8192), 2048, MatPath::RowByRow),
        matmul_work(&gate_up(8192)[..1], 2048, MatPath::RowByRow)
    );
}

#[test]
fn decode_workgroups_take_more_groups_only_where_outputs_abound() {
    let m = |n| [MatMember { format: WeightFormat::Q4_0, bias: false, n }];
    // At least 256 workgroups whenever the outputs allow it.
    assert_eq!(gemv_groups(&m(2048)), 1);
    assert_eq!(gemv_groups(&m(4095)), 1);
    assert_eq!(gemv_groups(&m(4096)), 2);
    assert_eq!(gemv_groups(&m(16384)), 8);
    assert_eq!(gemv_groups(&m(128256)), 8);
    let qkv = [2048, 512, 512].map(|n| MatMember { format: WeightFormat::Q4_0, bias: false, n });
    assert_eq!(gemv_groups(&qkv), 1);
    assert_eq!(matmul_work(&m(16384), 2048, MatPath::RowByRow), (256, 8));
    assert_eq!(matmul_work(&m(2048), 2048, MatPath::RowByRow), (256, 8));
    assert_eq!(matmul_work(&m(2048), 2048, MatPath::Tiled), (32, 64));
}
