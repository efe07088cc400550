//! Forged plans: a header edited and its checksum recomputed, as an attacker would. Checksums catch accidents,
//! not edits, so each forged plan must be refused by validation with one line naming the field — or, if the
//! edit left a consistent plan, run without a crash. A hole in validation shows here as a panic, a segfault or
//! heap corruption of the test binary.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use unicorn_ir::WeightFormat;
use unicorn_runtime::{Model, Session};
use unicorn_tests::*;

struct Seed {
    _dir: tempfile::TempDir,
    plan: PathBuf,
}

fn seed(format: WeightFormat) -> Seed {
    let dir = tempfile::tempdir().unwrap();
    let plan = compile_to(&fixtures_dir().join("mistral_sliding"), dir.path(), format, None);
    Seed { _dir: dir, plan }
}

/// Load a plan and, if it loads, prefill 3 tokens and decode 2: the runtime's whole path over the header.
fn load_and_run(plan: &Path) -> Result<(), String> {
    let model = Model::load(plan).map_err(|e| e.to_string())?;
    let mut s = Session::new(&model, 8).map_err(|e| e.to_string())?;
    s.forward(&[1, 2, 3], false).map_err(|e| e.to_string())?;
    s.forward(&[4], false).map_err(|e| e.to_string())?;
    s.forward(&[5], false).map_err(|e| e.to_string())?;
    Ok(())
}

/// The forged plan is refused with one line that names `field`.
fn refused(seed: &Seed, field: &str, edit: impl FnOnce(&mut Value)) {
    let forged = seed.plan.with_extension("forged.ucp");
    edit_plan_header(&seed.plan, &forged, |h| edit(&mut h["plan"]));
    let err = match load_and_run(&forged) {
        Ok(()) => panic!("a plan forged at {field} was accepted"),
        Err(e) => e,
    };
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(field), "error does not name '{field}': {err}");
}

fn step_index(h: &Value, phase: usize, kernel_prefix: &str) -> usize {
    let kernels = h["kernels"].as_array().unwrap();
    h["phases"][phase]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .position(|st| {
            kernels[st["kernel"].as_u64().unwrap() as usize]["name"].as_str().unwrap().starts_with(kernel_prefix)
        })
        .unwrap()
}

/// The last argument of a step that binds an activation slot (its result).
fn last_act(st: &mut Value) -> &mut Value {
    st["args"].as_array_mut().unwrap().iter_mut().rev().find(|a| a.get("act").is_some()).unwrap()
}

#[test]
fn the_unforged_seed_runs() {
    load_and_run(&seed(WeightFormat::Q8_0).plan).unwrap();
}

#[test]
fn arenas_too_small_for_their_slots() {
    let s = seed(WeightFormat::Q8_0);
    refused(&s, "phases[0]", |h| h["phases"][0]["arenas"][0]["row_bytes"] = json!(0));
    refused(&s, "phases[0]", |h| h["phases"][0]["arenas"][0]["row_bytes"] = json!(4));
    refused(&s, "phases[1]", |h| h["phases"][1]["arenas"][0]["row_bytes"] = json!(4));
}

#[test]
fn offsets_far_outside_the_arena() {
    let s = seed(WeightFormat::Q8_0);
    refused(&s, "steps[3]", |h| last_act(&mut h["phases"][0]["steps"][3])["act"]["offset"] = json!(1u64 << 40));
    refused(&s, "result", |h| h["phases"][0]["result"]["offset"] = json!(1u64 << 40));
    refused(&s, "result", |h| h["phases"][1]["result"]["offset"] = json!(u64::MAX));
    refused(&s, "steps[2]", |h| last_act(&mut h["phases"][1]["steps"][2])["act"]["width"] = json!(1u64 << 40));
}

#[test]
fn spec_sizes_that_contradict_the_plan() {
    let s = seed(WeightFormat::Q8_0);
    refused(&s, "spec.layers", |h| h["spec"]["layers"] = json!([]));
    refused(&s, "spec.num_layers", |h| h["spec"]["num_layers"] = json!(0));
    refused(&s, "spec.layers", |h| h["spec"]["num_layers"] = json!(4));
    refused(&s, "embedding table", |h| {
        let v = h["spec"]["vocab_size"].as_u64().unwrap();
        h["spec"]["vocab_size"] = json!(v + 1)
    });
    refused(&s, "spec.num_kv_heads", |h| h["spec"]["num_kv_heads"] = json!(0));
    refused(&s, "kv_caches[0]", |h| {
        let v = h["spec"]["num_kv_heads"].as_u64().unwrap();
        h["spec"]["num_kv_heads"] = json!(v * 2)
    });
    refused(&s, "spec.hidden_size", |h| h["spec"]["hidden_size"] = json!(1u64 << 40));
    refused(&s, "spec.max_context", |h| h["spec"]["max_context"] = json!(1u64 << 40));
    refused(&s, "spec.head_dim", |h| h["spec"]["head_dim"] = json!(15));
    refused(&s, "rope_inv_freq", |h| h["rope_inv_freq"] = json!([]));
    refused(&s, "spec.layers[1].rope", |h| h["spec"]["layers"][1]["rope"] = json!(7));
}

#[test]
fn weight_shapes_formats_and_ranges() {
    let s = seed(WeightFormat::Q8_0);
    let matrix = |h: &Value| {
        h["weights"]
            .as_array()
            .unwrap()
            .iter()
            .position(|w| w["name"] == "model.layers.0.self_attn.o_proj.weight")
            .unwrap()
    };
    refused(&s, "o_proj", |h| {
        let i = matrix(h);
        h["weights"][i]["shape"] = json!([])
    });
    refused(&s, "o_proj", |h| {
        let i = matrix(h);
        h["weights"][i]["shape"] = json!([0, 64])
    });
    refused(&s, "o_proj", |h| {
        let i = matrix(h);
        h["weights"][i]["shape"] = json!([64, 0])
    });
    refused(&s, "o_proj", |h| {
        let i = matrix(h);
        h["weights"][i]["shape"] = json!([1u64 << 40, 64])
    });
    refused(&s, "o_proj", |h| {
        let i = matrix(h);
        h["weights"][i]["bytes"] = json!(1)
    });
    refused(&s, "o_proj", |h| {
        let i = matrix(h);
        h["weights"][i]["offset"] = json!(1u64 << 40)
    });
    refused(&s, "o_proj", |h| {
        let i = matrix(h);
        let off = h["weights"][i]["offset"].as_u64().unwrap();
        h["weights"][i]["offset"] = json!(off + 2)
    });
    refused(&s, "o_proj", |h| {
        let i = matrix(h);
        h["weights"][i]["format"] = json!("f32")
    });
    refused(&s, "input_layernorm", |h| {
        let i = h["weights"].as_array().unwrap().iter().position(|w| w["role"] == "norm").unwrap();
        h["weights"][i]["format"] = json!("f16")
    });
    let f = seed(WeightFormat::F32);
    refused(&f, "o_proj", |h| {
        let i = matrix(h);
        h["weights"][i]["layout"] = json!("interleaved8")
    });
}

#[test]
fn steps_with_wrong_arguments_kernels_or_aliasing() {
    let s = seed(WeightFormat::Q8_0);
    // Not an activation where one is expected (a null fails to parse at all).
    refused(&s, "steps[1]", |h| h["phases"][0]["steps"][1]["args"][0] = json!("tokens"));
    refused(&s, "does not parse", |h| h["phases"][0]["steps"][1]["args"][0] = Value::Null);
    refused(&s, "steps[1]", |h| h["phases"][0]["steps"][1]["args"].as_array_mut().unwrap().pop().map(|_| ()).unwrap());
    refused(&s, "kernel 99", |h| h["phases"][0]["steps"][0]["kernel"] = json!(99));
    refused(&s, "does not run kernel", |h| {
        let i = step_index(h, 0, "matmul");
        let rope = h["phases"][0]["steps"][step_index(h, 0, "rope")]["kernel"].clone();
        h["phases"][0]["steps"][i]["kernel"] = rope
    });
    // A result written over its own operand.
    refused(&s, "overlaps", |h| {
        let st = &mut h["phases"][0]["steps"][1];
        let x = st["args"][0].clone();
        *last_act(st) = x
    });
    // An operand no step wrote.
    refused(&s, "no earlier step wrote", |h| {
        let st = &mut h["phases"][0]["steps"][1];
        st["args"][0]["act"]["offset"] = json!(4)
    });
    refused(&s, "self_attn", |h| {
        let i = step_index(h, 1, "attention");
        h["phases"][1]["steps"][i]["ops"][0]["window"] = Value::Null
    });
    refused(&s, "self_attn", |h| {
        let i = step_index(h, 1, "attention");
        h["phases"][1]["steps"][i]["ops"][0]["layer"] = json!(9)
    });
    // A second op in a launch takes arguments of its own (a fused launch lists each unit's).
    refused(&s, "argument 3 (operand) is missing", |h| {
        let i = step_index(h, 0, "glu");
        let op = h["phases"][0]["steps"][i]["ops"][0].clone();
        h["phases"][0]["steps"][i]["ops"].as_array_mut().unwrap().push(op)
    });
    // Five units in one launch, each with its arguments: more than a launch fuses.
    refused(&s, "at most 4", |h| {
        let i = step_index(h, 0, "glu");
        let st = &mut h["phases"][0]["steps"][i];
        let (op, args) = (st["ops"][0].clone(), st["args"].as_array().unwrap().clone());
        for _ in 0..4 {
            st["ops"].as_array_mut().unwrap().push(op.clone());
            st["args"].as_array_mut().unwrap().extend(args.iter().cloned());
        }
    });
    refused(&s, "work[0]", |h| h["phases"][0]["steps"][0]["work"][0] = json!({"mul": [{"const": u64::MAX}, "s"]}));
}

#[test]
fn caches_chunks_and_phases() {
    let s = seed(WeightFormat::Q8_0);
    refused(&s, "kv_caches", |h| h["kv_caches"] = json!([]));
    refused(&s, "kv_caches[0]", |h| h["kv_caches"][0]["dtype"] = json!("bf16"));
    refused(&s, "kv_caches[1]", |h| h["kv_caches"][1]["capacity"] = json!("context"));
    refused(&s, "prefill_chunk", |h| h["prefill_chunk"] = json!(0));
    refused(&s, "prefill_chunk", |h| h["prefill_chunk"] = json!(1u64 << 40));
    refused(&s, "phases", |h| h["phases"].as_array_mut().unwrap().truncate(1));
    refused(&s, "phases", |h| h["phases"][1]["phase"] = json!("prefill"));
}

#[test]
fn forged_plans_are_refused_by_the_binary_in_one_line() {
    let s = seed(WeightFormat::Q8_0);
    let forged = s.plan.with_extension("forged.ucp");
    edit_plan_header(&s.plan, &forged, |h| h["plan"]["spec"]["num_kv_heads"] = json!(0));
    let out = run("unicorn-rt", &[forged.to_str().unwrap(), "--tokens", "1,2,3", "-n", "2"]);
    let err = assert_one_line_error(&out, "spec.num_kv_heads");
    assert!(err.contains(forged.to_str().unwrap()) && err.contains("invalid plan"), "{err}");
}

/// A small deterministic generator (xorshift64*), so every run tries the same edits.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// JSON pointers of every number, array and string in the header (but the rope tables' contents, which are
/// data, not structure).
fn edit_points(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, x)| edit_points(x, format!("{at}/{k}"), out)),
        Value::Array(a) => {
            out.push(at.clone());
            if !at.ends_with("rope_inv_freq") {
                a.iter().enumerate().for_each(|(i, x)| edit_points(x, format!("{at}/{i}"), out));
            }
        }
        Value::Number(_) | Value::String(_) => out.push(at),
        _ => {}
    }
}

#[test]
fn random_header_edits_are_refused_or_run() {
    let seeds = [seed(WeightFormat::Q8_0), seed(WeightFormat::F32)];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused_n) = (0, 0);
    for round in 0..300 {
        let s = &seeds[round % seeds.len()];
        let forged = s.plan.with_extension("random.ucp");
        let mut what = String::new();
        edit_plan_header(&s.plan, &forged, |h| {
            let mut points = Vec::new();
            edit_points(&h["plan"], "/plan".into(), &mut points);
            let at = points[rng.below(points.len())].clone();
            let target = h.pointer_mut(&at).unwrap();
            let n = target.as_u64().unwrap_or(1);
            let values = [
                json!(0),
                json!(1),
                json!(n.wrapping_add(1)),
                json!(n.wrapping_sub(1)),
                json!(n.wrapping_mul(2)),
                json!(1u64 << 31),
                json!(1u64 << 32),
                json!(1u64 << 40),
                json!(1u64 << 63),
                json!(u64::MAX),
                json!(-1),
                json!([]),
                Value::Null,
                json!("x"),
            ];
            let new = values[rng.below(values.len())].clone();
            what = format!("{at} = {new}");
            match target {
                Value::Array(a) if !a.is_empty() && rng.below(2) == 0 => {
                    // Drop or duplicate an element rather than replace the array.
                    let i = rng.below(a.len());
                    if rng.below(2) == 0 {
                        a.remove(i);
                        what = format!("{at}: element {i} removed");
                    } else {
                        let x = a[i].clone();
                        a.push(x);
                        what = format!("{at}: element {i} duplicated");
                    }
                }
                _ => *target = new,
            }
        });
        let result = std::panic::catch_unwind(|| load_and_run(&forged));
        match result {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(e)) => {
                assert_eq!(e.lines().count(), 1, "{what}: {e}");
                refused_n += 1;
            }
            Err(_) => panic!("the runtime panicked on a plan forged by {what}"),
        }
    }
    println!("300 random edits: {refused_n} refused, {accepted} ran");
    assert!(refused_n > 150, "most structural edits must be refused ({refused_n} were)");
}

/// A Vulkan plan's picking kernels (argmax, top-k) named by index: one outside the kernel table, or one with
/// another kernel's bindings, is refused before anything runs.
#[test]
fn picking_kernels_out_of_the_table_or_of_the_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixtures_dir().join("mistral_sliding");
    let plan = compile_for(unicorn_passes::Target::Vulkan, &fixture, dir.path(), WeightFormat::Q8_0, None);
    let seed = Seed { _dir: dir, plan };
    refused(&seed, "argmax", |h| h["argmax"] = json!(100000));
    refused(&seed, "top_k", |h| h["top_k"] = json!(100000));
    // Each with the other's kernel: two bindings where three are wanted, and three where two.
    refused(&seed, "top_k", |h| h["top_k"] = h["argmax"].clone());
    refused(&seed, "argmax", |h| h["argmax"] = h["top_k"].clone());
}
