//! The runtime's generation loop ([`unicorn_runtime::generate::generate`], what `unicorn-rt` runs) against
//! transformers' greedy `model.generate(do_sample=False)` with each checkpoint's generation_config, and each of
//! its stop rules.

use unicorn_ir::WeightFormat;
use unicorn_runtime::generate::StopReason;
use unicorn_runtime::Model;
use unicorn_tests::*;

/// transformers generated at most this many tokens (`max_new_tokens` in make_fixtures.py).
const NEW_TOKENS: usize = 8;

fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
}

/// `unicorn-rt PLAN --tokens PROMPT -n N --temperature 0 --print-ids`: greedy ids on stdout, how it stopped on
/// stderr.
fn greedy_ids(plan: &std::path::Path, prompt: &[u32], n: usize) -> std::process::Output {
    let n = n.to_string();
    let args = [plan.to_str().unwrap(), "--tokens", &ids_arg(prompt), "-n", &n, "--temperature", "0", "--print-ids"];
    run("unicorn-rt", &args)
}

fn eos_list(v: &serde_json::Value) -> Vec<u32> {
    match v {
        serde_json::Value::Array(a) => a.iter().map(|t| t.as_u64().unwrap() as u32).collect(),
        serde_json::Value::Number(n) => vec![n.as_u64().unwrap() as u32],
        _ => vec![],
    }
}

/// Fixtures whose transformers generation ends on an eos id that only generation_config.json lists.
fn ends_on_generation_config_eos(exp: &Expected) -> bool {
    let gen_eos = eos_list(&exp.json["generation_config_eos_token_id"]);
    let cfg_eos = eos_list(&exp.json["config_eos_token_id"]);
    exp.generate_ids.last().is_some_and(|t| gen_eos.contains(t) && !cfg_eos.contains(t))
}

fn f32_plan(name: &str, dir: &std::path::Path) -> Model {
    Model::load(&compile_to(&fixtures_dir().join(name), dir, WeightFormat::F32, None)).unwrap()
}

#[test]
fn generate_matches_transformers_generate_on_every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let mut on_generation_config_eos = Vec::new();
    for name in fixtures() {
        let exp = expected(&name);
        let model = f32_plan(&name, dir.path());
        let p = exp.prompt_ids.len();
        let (ids, stats) = generate_greedy(&model, &exp.prompt_ids, NEW_TOKENS, p + NEW_TOKENS);
        assert_eq!(ids, exp.generate_ids, "{name}: generate() differs from transformers' generate()");
        // transformers stops after an eos id or at max_new_tokens; so must the loop, saying which.
        let want = if exp.generate_ids.len() < NEW_TOKENS { StopReason::EndToken } else { StopReason::Length };
        assert_eq!(stats.stop, want, "{name}");
        assert_eq!(stats.prompt_tokens, p, "{name}");
        if ends_on_generation_config_eos(&exp) {
            on_generation_config_eos.push(name);
        }
    }
    println!("ending on an eos id only generation_config.json lists: {on_generation_config_eos:?}");
    assert!(on_generation_config_eos.len() >= 2, "{on_generation_config_eos:?}");
}

#[test]
fn print_ids_stops_at_an_eos_id_only_generation_config_lists() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = fixtures().into_iter().filter(|n| ends_on_generation_config_eos(&expected(n))).collect();
    assert!(names.len() >= 2, "{names:?}");
    for name in names {
        let exp = expected(&name);
        let plan = compile_to(&fixtures_dir().join(&name), dir.path(), WeightFormat::F32, None);
        let out = greedy_ids(&plan, &exp.prompt_ids, 8);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), ids_arg(&exp.generate_ids), "{name}");
        assert!(stderr.contains("stopped: end token"), "{name}: {stderr}");
    }
}

/// A fixture whose 8 greedy tokens hold no eos id, so only the limit under test can stop the loop.
fn without_eos() -> (String, Expected) {
    let name = "qwen3_qknorm".to_string();
    let exp = expected(&name);
    assert_eq!(exp.generate_ids.len(), NEW_TOKENS, "{name} ends early: pick another fixture");
    (name, exp)
}

#[test]
fn generate_stops_at_the_length_limit() {
    let dir = tempfile::tempdir().unwrap();
    for (name, n) in [("llama_gqa", 2), ("llama_mha", 1), ("qwen3_qknorm", 5)] {
        let exp = expected(name);
        assert!(n < exp.generate_ids.len(), "{name}: the limit must bind before the eos");
        let model = f32_plan(name, dir.path());
        let p = exp.prompt_ids.len();
        let (ids, stats) = generate_greedy(&model, &exp.prompt_ids, n, p + NEW_TOKENS);
        assert_eq!(ids, exp.generate_ids[..n], "{name}");
        assert_eq!(stats.stop, StopReason::Length, "{name}");
    }
}

#[test]
fn generate_stops_when_the_context_is_full() {
    // A session of `ctx` positions holds the prompt and the tokens fed back; the token predicted from the last
    // position is emitted without being fed, so ctx - prompt + 1 tokens come out, the last at position ctx.
    let dir = tempfile::tempdir().unwrap();
    let (name, exp) = without_eos();
    let model = f32_plan(&name, dir.path());
    let p = exp.prompt_ids.len();
    for extra in [0, 1, 3] {
        let (ids, stats) = generate_greedy(&model, &exp.prompt_ids, NEW_TOKENS, p + extra);
        assert_eq!(ids, exp.generate_ids[..extra + 1], "{name}: context {}", p + extra);
        assert_eq!(stats.stop, StopReason::ContextFull, "{name}: context {}", p + extra);
    }
    // Through the binary: a plan compiled for a context of p + 2 tokens.
    let plan = compile_to(&fixtures_dir().join(&name), dir.path(), WeightFormat::F32, Some(p + 2));
    let out = greedy_ids(&plan, &exp.prompt_ids, 8);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), ids_arg(&exp.generate_ids[..3]));
    assert!(stderr.contains("stopped: context full"), "{stderr}");
}

#[test]
fn zero_new_tokens_generate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (name, exp) = without_eos();
    let model = f32_plan(&name, dir.path());
    let p = exp.prompt_ids.len();
    for ctx in [p, p + NEW_TOKENS] {
        let (ids, stats) = generate_greedy(&model, &exp.prompt_ids, 0, ctx);
        assert!(ids.is_empty(), "{name}: max_new 0 emitted {ids:?}");
        assert_eq!((stats.generated, stats.stop), (0, StopReason::Length), "{name}");
    }
    let plan = compile_to(&fixtures_dir().join(&name), dir.path(), WeightFormat::F32, None);
    let out =
        run("unicorn-rt", &[plan.to_str().unwrap(), "--tokens", &ids_arg(&exp.prompt_ids), "-n", "0", "--print-ids"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "", "-n 0 printed ids");
    assert!(stderr.contains("(0 tokens, stopped: length limit)"), "{stderr}");
}
