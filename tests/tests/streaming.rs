//! Weight streaming in the compiler: a matrix is converted in blocks of about 4 MiB of source, 8 blocks at a
//! time on the pool, q8_0 / q4_0 ones repacked in interleaved groups of 8 rows with the last group padded with
//! zero rows. The plan must hold exactly what encoding the matrix row by row gives.

use std::collections::HashMap;
use unicorn_ir::container::{PlanFile, SectionKind};
use unicorn_ir::quant::{decode_row, deinterleave_row, encode_row, interleave_rows, WeightLayout, INTERLEAVE};
use unicorn_ir::{WeightFormat, WeightRole};
use unicorn_tests::*;

use unicorn_ir::rng::XorShift as Rng;

#[test]
fn a_matrix_of_many_blocks_is_stored_as_if_encoded_row_by_row() {
    // A tied f32 embedding of 33001 x 256: 33.8 MB of source, 9 blocks of 4096 rows (two batches of 8 blocks),
    // and 33001 = 8 * 4125 + 1 rows, so the last interleaved group holds 1 real row and 7 of padding. The MLP
    // matrices come in bf16, the rest in f32.
    let (vocab, hidden, inter) = (33_001usize, 256usize, 96usize);
    assert!(vocab * hidden * 4 > 8 * (4 << 20), "the embedding must span more than one batch of 8 blocks");
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 1,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "vocab_size": vocab, "tie_word_embeddings": true,
        "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2
    });
    let l = "model.layers.0";
    let shapes: Vec<(String, &str, Vec<usize>)> = [
        ("model.embed_tokens.weight".to_string(), "F32", vec![vocab, hidden]),
        (format!("{l}.input_layernorm.weight"), "F32", vec![hidden]),
        (format!("{l}.self_attn.q_proj.weight"), "F32", vec![hidden, hidden]),
        (format!("{l}.self_attn.k_proj.weight"), "F32", vec![128, hidden]),
        (format!("{l}.self_attn.v_proj.weight"), "F32", vec![128, hidden]),
        (format!("{l}.self_attn.o_proj.weight"), "F32", vec![hidden, hidden]),
        (format!("{l}.post_attention_layernorm.weight"), "F32", vec![hidden]),
        (format!("{l}.mlp.gate_proj.weight"), "BF16", vec![inter, hidden]),
        (format!("{l}.mlp.up_proj.weight"), "BF16", vec![inter, hidden]),
        (format!("{l}.mlp.down_proj.weight"), "BF16", vec![hidden, inter]),
        ("model.norm.weight".to_string(), "F32", vec![hidden]),
    ]
    .into_iter()
    .collect();

    // Values with a different magnitude per 32-block (and one all-zero row, whose q8_0 / q4_0 scale is 0), kept
    // as the f32 each source element stands for.
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut values: HashMap<String, Vec<f32>> = HashMap::new();
    let mut tensors = Vec::new();
    for (name, dtype, shape) in &shapes {
        let len: usize = shape.iter().product();
        let mut v: Vec<f32> = (0..len).map(|i| rng.f32() * [0.02, 1.0, 30.0, 0.5][(i / 32) % 4]).collect();
        if shape.len() == 2 {
            v[3 * shape[1]..4 * shape[1]].fill(0.0);
        }
        let bytes: Vec<u8> = match *dtype {
            "F32" => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            "BF16" => {
                // Truncate to bf16, and keep the value that truncation stands for.
                v.iter_mut().for_each(|x| *x = f32::from_bits(x.to_bits() & 0xffff_0000));
                v.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect()
            }
            _ => unreachable!(),
        };
        values.insert(name.clone(), v);
        tensors.push((name.as_str(), *dtype, shape.clone(), bytes));
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("synthetic");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    write_safetensors(&model.join("model.safetensors"), &tensors);

    for format in WeightFormat::ALL {
        let plan = compile_to(&model, dir.path(), format, None);
        let file = PlanFile::open(&plan).expect("plan opens");
        let section = file.section(SectionKind::Weights).unwrap();
        assert_eq!(file.header.weights.len(), shapes.len(), "{format}: the plan's weights");
        for w in &file.header.weights {
            let what = format!("{format} {}", w.name);
            let src = &values[&w.name];
            let cols = *w.shape.last().unwrap();
            let rows = src.len() / cols;
            // Norm scales stay f32; the matrices and the embedding take the requested format, interleaved when
            // quantized.
            let want_format = if w.role == WeightRole::Norm { WeightFormat::F32 } else { format };
            let interleaved = want_format.is_quantized();
            let want_layout = if interleaved { WeightLayout::Interleaved8 } else { WeightLayout::Rows };
            assert_eq!((w.format, w.layout), (want_format, want_layout), "{what}: format and layout");
            let rb = want_format.row_bytes(cols).unwrap();
            let mut want = Vec::with_capacity(rows * rb);
            for row in src.chunks(cols) {
                encode_row(want_format, row, &mut want);
            }
            let group = if interleaved { INTERLEAVE } else { 1 };
            if interleaved {
                want.resize(want.len().next_multiple_of(INTERLEAVE * rb), 0);
                let rows_major = std::mem::take(&mut want);
                for g in rows_major.chunks(INTERLEAVE * rb) {
                    interleave_rows(want_format, cols, g, &mut want);
                }
            }
            let got = &section[w.offset as usize..][..w.bytes as usize];
            assert_eq!(got.len(), want.len(), "{what}: stored bytes");
            if let Some(i) = got.chunks(group * rb).zip(want.chunks(group * rb)).position(|(a, b)| a != b) {
                panic!("{what}: rows {}..{} differ from their encoding", i * group, (i + 1) * group);
            }
            if interleaved && !rows.is_multiple_of(INTERLEAVE) {
                // The padding rows read back as zeros.
                let last = &got[got.len() - INTERLEAVE * rb..];
                let mut out = vec![f32::NAN; cols];
                for r in rows % INTERLEAVE..INTERLEAVE {
                    let mut row = Vec::new();
                    deinterleave_row(want_format, cols, last, r, &mut row);
                    decode_row(want_format, &row, &mut out);
                    assert!(out.iter().all(|&v| v == 0.0), "{what}: padding row {r} of the last group is not zero");
                }
            }
        }
    }
}
