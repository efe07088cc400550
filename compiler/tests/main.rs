//! The compiler's own integration tests: IR text snapshots and the verifier's rules on real graphs.

use std::path::Path;
use unicorn_compiler::build::build_module;
use unicorn_compiler::frontend::Checkpoint;
use unicorn_ir::graph::rows;
use unicorn_ir::print::{print_graph, print_module};
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
