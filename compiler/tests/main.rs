//! The compiler's own integration tests: IR text snapshots and the verifier's rules on real graphs.

use std::path::Path;
use unicorn_compiler::build::build_module;
use unicorn_compiler::frontend::Checkpoint;
use unicorn_ir::graph::rows;
use unicorn_ir::print::{print_graph, print_module};
use unicorn_ir::spec::RopeScaling;
use unicorn_ir::{verify, Dim, Module, Op, Phase, WeightFormat};
use unicorn_passes::{pipeline, Options, Target};

fn fixture(name: &str) -> Checkpoint {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name);
    Checkpoint::open(&dir, None).expect("fixture opens")
}

fn compiled(name: &str, weights: WeightFormat) -> Module {
    let mut m = build_module(&fixture(name)).expect("builds");
    pipeline(&mut m, &Options { target: Target::Cpu, weights }).expect("passes");
    m
}

#[test]
fn qwen3_module_after_the_pipeline() {
    insta::assert_snapshot!(print_module(&compiled("qwen3_qknorm", WeightFormat::Q8_0)));
}

#[test]
fn gemma3_decode_graph_after_the_pipeline() {
    let m = compiled("gemma3_text", WeightFormat::Q4_0);
    insta::assert_snapshot!(print_graph(m.graph(Phase::Decode).unwrap()));
}

#[test]
fn canonicalize_folds_the_gemma_embedding_scale_into_the_lookup() {
    let ck = fixture("gemma3_text");
    let before = build_module(&ck).unwrap();
    let g = before.graph(Phase::Prefill).unwrap();
    assert_eq!(g.g.node_weights().filter(|n| matches!(n.op, Op::Scale { .. })).count(), 1);
    let after = compiled("gemma3_text", WeightFormat::F32);
    let g = after.graph(Phase::Prefill).unwrap();
    assert_eq!(g.g.node_weights().filter(|n| matches!(n.op, Op::Scale { .. })).count(), 0);
    let scale = g.g.node_weights().find_map(|n| match n.op {
        Op::Embed { scale, .. } => Some(scale),
        _ => None,
    });
    // sqrt(hidden_size) of the fixture's config.
    assert_eq!(scale, Some((ck.spec.hidden_size as f32).sqrt()));
}

#[test]
fn memory_plan_reuses_space_and_never_overlaps_live_values() {
    let m = compiled("llama_gqa", WeightFormat::Q8_0);
    for g in &m.graphs {
        let mem = g.memory.as_ref().unwrap();
        let pos: std::collections::HashMap<_, _> = mem.order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let live = |n| {
            let last = g.users(n).iter().map(|u| pos[u]).max().unwrap_or(pos[&n]);
            (pos[&n], last)
        };
        let values: Vec<_> =
            mem.order.iter().copied().filter(|&n| !matches!(g.g[n].op, Op::Tokens | Op::Output)).collect();
        for (i, &a) in values.iter().enumerate() {
            for &b in &values[i + 1..] {
                let ((a0, a1), (b0, b1)) = (live(a), live(b));
                let (sa, sb) = (mem.slot(a).unwrap(), mem.slot(b).unwrap());
                let overlap_time = a0 <= b1 && b0 <= a1;
                let overlap_space = sa.kept_rows == sb.kept_rows
                    && sa.offset < sb.offset + sb.width
                    && sb.offset < sa.offset + sa.width;
                assert!(
                    !(overlap_time && overlap_space),
                    "{} and {} share memory while both live",
                    g.g[a].label,
                    g.g[b].label
                );
            }
        }
        let naive: usize = values.iter().map(|&n| mem.slot(n).unwrap().width).sum();
        assert!(mem.arena_width * 4 < naive, "{}: arena {} vs {naive} without reuse", g.phase, mem.arena_width);
    }
}

#[test]
fn the_verifier_rejects_broken_graphs() {
    let good = compiled("llama_gqa", WeightFormat::F32);
    assert!(verify(&good, true).is_ok());

    // A matmul whose weight does not take the operand's width.
    let mut m = good.clone();
    let up = m.weights.iter().position(|w| w.name == "model.layers.0.mlp.up_proj.weight").unwrap();
    let g = &mut m.graphs[0];
    let n = g.g.node_indices().find(|&n| g.g[n].label == "model.layers.0.mlp.down_proj").unwrap();
    if let Op::MatMul { weight, .. } = &mut g.g[n].op {
        *weight = unicorn_ir::WeightId(up as u32);
    }
    let e = verify(&m, true).unwrap_err();
    assert!(e.message.contains("does not take width"), "{e}");

    // A declared type that disagrees with the op.
    let mut m = good.clone();
    let g = &mut m.graphs[1];
    let n = g.g.node_indices().find(|&n| g.g[n].label == "model.layers.1.self_attn").unwrap();
    g.g[n].ty = rows(Dim::Const(1), 3);
    assert!(verify(&m, true).unwrap_err().message.contains("declared type"));

    // An unplaced node after placement.
    let mut m = good.clone();
    let g = &mut m.graphs[0];
    let n = g.g.node_indices().next().unwrap();
    g.g[n].device = unicorn_ir::Device::Unplaced;
    assert!(verify(&m, true).unwrap_err().message.contains("not placed"));

    // A value nobody reads.
    let mut m = good.clone();
    let g = &mut m.graphs[0];
    let src = g.g.node_indices().find(|&n| matches!(g.g[n].op, Op::Embed { .. })).unwrap();
    let ty = g.g[src].ty.clone();
    let dead = g.add(Op::Scale { factor: 2.0 }, ty, "dead", &[src]);
    g.g[dead].device = unicorn_ir::Device::Cpu;
    assert!(verify(&m, true).unwrap_err().message.contains("never used"));

    // A cycle.
    let mut m = good;
    let g = &mut m.graphs[0];
    let a = g.g.node_indices().find(|&n| g.g[n].label == "model.layers.0.attn_residual").unwrap();
    let b = g.g.node_indices().find(|&n| g.g[n].label == "model.layers.0.self_attn.q_proj").unwrap();
    g.g.add_edge(a, b, 1);
    assert!(verify(&m, true).unwrap_err().message.contains("cycle"));
}

#[test]
fn the_verifier_rejects_memory_plans_that_overlap_live_values() {
    let good = compiled("llama_gqa", WeightFormat::F32);
    assert!(verify(&good, true).is_ok());
    // Put the k projection's result on the q projection's: both are live until attention reads them.
    let mut m = good.clone();
    let g = &mut m.graphs[0];
    let find = |g: &unicorn_ir::Graph, label: &str| g.g.node_indices().find(|&n| g.g[n].label == label).unwrap();
    let (q, k) = (find(g, "model.layers.0.self_attn.q_proj"), find(g, "model.layers.0.self_attn.k_proj"));
    let mem = g.memory.as_mut().unwrap();
    let q_slot = mem.slot(q).unwrap();
    mem.slots.get_mut(&(k.index() as u32)).unwrap().offset = q_slot.offset;
    let e = verify(&m, true).unwrap_err();
    assert!(e.message.contains("overlaps"), "{e}");
    // A slot past the end of its arena.
    let mut m = good.clone();
    let mem = m.graphs[1].memory.as_mut().unwrap();
    let width = mem.arena_width;
    mem.slots.values_mut().find(|s| !s.kept_rows).unwrap().offset = width;
    assert!(verify(&m, true).unwrap_err().message.contains("does not hold"));
}

/// What a fixture's config.json says the IR must hold, derived here from the JSON by hand, family by family.
struct FromConfig {
    gemma: bool,
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
    scale: f64,
    windows: Vec<Option<usize>>,
    /// Per layer: rope theta, and the rope type with its parameters.
    ropes: Vec<(f64, serde_json::Value)>,
}

fn from_config(name: &str, config: &serde_json::Value) -> FromConfig {
    // Multimodal Gemma 3 checkpoints nest the text model's settings.
    let t = config.get("text_config").unwrap_or(config);
    let num = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{name}: config.json has no number {k}"));
    let int = |k: &str| num(k) as usize;
    let arch = config["architectures"][0].as_str().unwrap_or("");
    let model_type = t["model_type"].as_str().unwrap_or_else(|| panic!("{name}: no model_type"));
    let gemma = model_type.starts_with("gemma3");
    let mistral = arch.starts_with("Mistral") || model_type == "mistral";
    let (layers, hidden, heads) = (int("num_hidden_layers"), int("hidden_size"), int("num_attention_heads"));
    let kv_heads = t.get("num_key_value_heads").map_or(heads, |v| v.as_u64().unwrap() as usize);
    let head_dim = t.get("head_dim").and_then(|v| v.as_u64()).map_or(hidden / heads, |v| v as usize);
    let scale = if gemma { num("query_pre_attn_scalar").powf(-0.5) } else { (head_dim as f64).powf(-0.5) };

    // Which layers slide: `layer_types` when given; else Gemma 3's old `sliding_window_pattern` (layer i slides
    // unless (i + 1) % pattern == 0); else Mistral's `sliding_window` on every layer; Qwen's sliding window is
    // off unless `use_sliding_window` (no fixture sets it).
    let window = t.get("sliding_window").and_then(|v| v.as_u64()).map(|w| w as usize);
    let sliding: Vec<bool> = if let Some(types) = t.get("layer_types").and_then(|v| v.as_array()) {
        types.iter().map(|s| s.as_str().unwrap() == "sliding_attention").collect()
    } else if gemma {
        let p = int("sliding_window_pattern");
        (0..layers).map(|i| (i + 1) % p != 0).collect()
    } else if mistral {
        vec![window.is_some(); layers]
    } else {
        assert!(t.get("use_sliding_window").is_none_or(|v| v == false), "{name}: a spelling this test does not know");
        vec![false; layers]
    };
    assert_eq!(sliding.len(), layers, "{name}: layer_types");
    let windows = sliding.iter().map(|&s| if s { Some(window.expect("sliding_window")) } else { None }).collect();

    // RoPE per layer: `rope_parameters` (flat, or per layer type), else the old `rope_theta` + `rope_scaling`,
    // with Gemma 3's sliding layers on `rope_local_base_freq` and no scaling.
    let default = || serde_json::json!({"rope_type": "default"});
    let ropes = (0..layers)
        .map(|i| match t.get("rope_parameters").filter(|v| !v.is_null()) {
            Some(p) if p.get("full_attention").is_some() => {
                let p = &p[if sliding[i] { "sliding_attention" } else { "full_attention" }];
                (p["rope_theta"].as_f64().unwrap(), p.clone())
            }
            Some(p) => (p["rope_theta"].as_f64().unwrap(), p.clone()),
            None if gemma && sliding[i] => {
                (t.get("rope_local_base_freq").map_or(10_000.0, |v| v.as_f64().unwrap()), default())
            }
            None => {
                let theta = t.get("rope_theta").map_or(10_000.0, |v| v.as_f64().unwrap());
                (theta, t.get("rope_scaling").filter(|v| !v.is_null()).cloned().unwrap_or_else(default))
            }
        })
        .collect();
    FromConfig { gemma, layers, hidden, heads, kv_heads, head_dim, eps: num("rms_norm_eps"), scale, windows, ropes }
}

/// `a` is `b` rounded to f32, give or take `ulps` units in the last place.
fn near(a: f32, b: f64, ulps: f64) -> bool {
    (f64::from(a) - b).abs() <= ulps * b.abs() * f64::from(f32::EPSILON)
}

#[test]
fn ir_numbers_match_each_fixture_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .expect("tests/fixtures")
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("config.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 10, "only {} fixtures under {}", names.len(), root.display());
    for name in &names {
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join(name).join("config.json")).unwrap()).unwrap();
        let want = from_config(name, &config);
        let m = compiled(name, WeightFormat::F32);
        // Norms: the two of every layer and the final one, plus q/k norms (Qwen 3, Gemma 3) and Gemma's
        // sandwich norms.
        let qk_norm = want.gemma || config["model_type"] == "qwen3";
        let norms = want.layers * (2 + if qk_norm { 2 } else { 0 } + if want.gemma { 2 } else { 0 }) + 1;
        for g in &m.graphs {
            let what = |s: &str| format!("{name} {}: {s}", g.phase);
            let mut seen_norms = 0;
            let mut seen_layers = vec![0; want.layers];
            let mut embeds = 0;
            for n in g.g.node_indices() {
                match g.g[n].op {
                    Op::RmsNorm { eps, unit_offset, .. } => {
                        seen_norms += 1;
                        assert!(
                            near(eps, want.eps, 0.5),
                            "{}",
                            what(&format!("{} eps {eps}, config {}", g.g[n].label, want.eps))
                        );
                        assert_eq!(unit_offset, want.gemma, "{}", what(&g.g[n].label));
                    }
                    Op::Embed { scale, .. } => {
                        embeds += 1;
                        let s = if want.gemma { (want.hidden as f64).sqrt() } else { 1.0 };
                        assert!(near(scale, s, 1.0), "{}", what(&format!("embedding scale {scale}, want {s}")));
                    }
                    Op::Attention { layer, num_heads, num_kv_heads, head_dim, window, scale } => {
                        seen_layers[layer] += 1;
                        let at = |s: &str| what(&format!("layer {layer} {s}"));
                        assert_eq!(
                            (num_heads, num_kv_heads, head_dim),
                            (want.heads, want.kv_heads, want.head_dim),
                            "{}",
                            at("heads")
                        );
                        assert!(near(scale, want.scale, 1.0), "{}", at(&format!("scale {scale}, want {}", want.scale)));
                        assert_eq!(window, want.windows[layer], "{}", at("window"));
                        // q and k come rotated by this layer's rope.
                        let ins = g.inputs(n);
                        for &r in &ins[..2] {
                            let Op::Rope { rope, head_dim: hd } = g.g[r].op else {
                                panic!("{}", at(&format!("reads {} unrotated", g.g[r].label)))
                            };
                            assert_eq!(hd, want.head_dim, "{}", at("rope head_dim"));
                            let (theta, params) = &want.ropes[layer];
                            let spec = &m.spec.ropes[rope];
                            assert_eq!(spec.theta, *theta, "{}", at("rope theta"));
                            let ty = params.get("rope_type").or(params.get("type")).and_then(|v| v.as_str()).unwrap();
                            let factor = match ty {
                                "default" => 1.0,
                                "linear" => params["factor"].as_f64().unwrap(),
                                // Banded: judged against transformers' own tables elsewhere.
                                "llama3" => {
                                    assert!(
                                        matches!(spec.scaling, RopeScaling::Llama3 { factor, .. } if factor == params["factor"].as_f64().unwrap()),
                                        "{}",
                                        at("rope scaling")
                                    );
                                    continue;
                                }
                                other => panic!("{}", at(&format!("rope type {other}: not known to this test"))),
                            };
                            let inv = spec.inv_freq(hd);
                            assert_eq!(inv.len(), hd / 2);
                            for (i, &f) in inv.iter().enumerate() {
                                let f64_ = theta.powf(-2.0 * i as f64 / hd as f64) / factor;
                                assert!(near(f, f64_, 1.0), "{}", at(&format!("inv_freq[{i}] {f}, want {f64_}")));
                            }
                        }
                    }
                    _ => {}
                }
            }
            assert_eq!(embeds, 1, "{}", what("embeddings"));
            assert_eq!(seen_norms, norms, "{}", what("rms norms"));
            assert!(
                seen_layers.iter().all(|&c| c == 1),
                "{}",
                what(&format!("attention ops per layer {seen_layers:?}"))
            );
        }
    }
}
