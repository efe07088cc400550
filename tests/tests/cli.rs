//! The command-line contract, through the real binaries.

use unicorn_ir::WeightFormat;
use unicorn_tests::*;

fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
}

#[test]
fn compile_then_logits_out_and_print_ids_match_transformers() {
    let name = "qwen3_qknorm";
    let exp = expected(name);
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("p.ucp");
    let model = fixtures_dir().join(name);
    let out = run("unicornc", &["compile", model.to_str().unwrap(), "-o", plan.to_str().unwrap(), "--weights", "f32"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let npy = dir.path().join("logits.npy");
    let tokens = ids_arg(&exp.prompt_ids);
    let out = run("unicorn-rt", &[plan.to_str().unwrap(), "--tokens", &tokens, "--logits-out", npy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (shape, logits) = read_npy_f32(&npy);
    assert_eq!(shape, vec![exp.prompt_ids.len(), exp.vocab]);
    let a = compare(&logits, &exp.logits, exp.vocab);
    assert!(a.rel_err <= 1e-5, "{}", a.rel_err);

    let n = exp.greedy_ids.len().to_string();
    let out = run(
        "unicorn-rt",
        &[plan.to_str().unwrap(), "--tokens", &tokens, "-n", &n, "--temperature", "0", "--print-ids"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.trim(), ids_arg(&exp.greedy_ids));
    assert_eq!(stdout.lines().count(), 1);

    // The plan mapped instead of read into memory gives the same ids.
    let out = run(
        "unicorn-rt",
        &[plan.to_str().unwrap(), "--mmap", "--tokens", &tokens, "-n", &n, "--temperature", "0", "--print-ids"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), ids_arg(&exp.greedy_ids));
}

#[test]
fn prompt_generation_streams_text_and_ends_with_stats() {
    let dir = tempfile::tempdir().unwrap();
    let plan = compile_to(&fixtures_dir().join("llama_gqa"), dir.path(), unicorn_ir::WeightFormat::Q8_0, None);
    let out = run("unicorn-rt", &[plan.to_str().unwrap(), "--prompt", "The lamp", "-n", "12", "--seed", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stats = stderr.lines().last().unwrap();
    assert!(stats.starts_with("prompt tokens: "), "{stats}");
    assert!(stats.contains("prefill:") && stats.contains("decode:") && stats.contains("tok/s"), "{stats}");
    assert!(!out.stdout.is_empty());
    // Same seed, same text.
    let again = run("unicorn-rt", &[plan.to_str().unwrap(), "--prompt", "The lamp", "-n", "12", "--seed", "3"]);
    assert_eq!(out.stdout, again.stdout);
}

#[test]
fn inspect_reports_architecture_phases_devices_formats_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let plan = compile_to(&fixtures_dir().join("gemma3_text"), dir.path(), unicorn_ir::WeightFormat::Q4_0, None);
    let out = run("unicornc", &["inspect", plan.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for want in ["Gemma3ForCausalLM", "prefill", "decode", "on cpu", "q4_0", "f32", "peak activations", "kv cache"] {
        assert!(text.contains(want), "inspect output lacks '{want}':\n{text}");
    }
}

#[test]
fn help_works_for_both_binaries() {
    for (bin, want) in [("unicornc", "compile"), ("unicorn-rt", "--logits-out")] {
        let out = run(bin, &["--help"]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains(want));
    }
    let out = run("unicornc", &["compile", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("--max-context"));
}

#[test]
fn a_failed_compile_leaves_no_plan_behind() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_fixture("llama_gqa", dir.path());
    // Pass-through of the damage: the shape check fails after the output file would have been opened.
    edit_safetensors_header(&model.join("model.safetensors"), |h| {
        h.remove("model.norm.weight");
    });
    let plan = dir.path().join("out.ucp");
    let out = run("unicornc", &["compile", model.to_str().unwrap(), "-o", plan.to_str().unwrap()]);
    assert!(!out.status.success());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "left behind: {left:?}");
}

#[test]
fn bench_json_reports_every_measure() {
    let dir = tempfile::tempdir().unwrap();
    let plan = compile_to(&fixtures_dir().join("llama_gqa"), dir.path(), unicorn_ir::WeightFormat::Q4_0, None);
    let out = run(
        "unicorn-rt",
        &[plan.to_str().unwrap(), "--bench", "--prompt-len", "16", "--gen", "4", "--repeat", "2", "--json"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(j["prompt_len"], 16);
    assert_eq!(j["gen"], 4);
    for k in ["prefill_tok_s", "decode_tok_s", "ttft_ms"] {
        let (lo, mid, hi) =
            (j[k]["min"].as_f64().unwrap(), j[k]["median"].as_f64().unwrap(), j[k]["max"].as_f64().unwrap());
        assert!(0.0 < lo && lo <= mid && mid <= hi, "{k}: {lo} {mid} {hi}");
    }
    assert!(j["peak_rss_mib"].as_f64().unwrap() > 1.0);
    // Decode bandwidth: the plan's weight bytes (summed here from its header) at the median decode speed.
    let file = unicorn_ir::container::PlanFile::open(&plan).unwrap();
    let bytes: u64 = file.header.weights.iter().map(|w| w.bytes).sum();
    assert_eq!(j["weight_bytes"].as_u64(), Some(bytes));
    let want = bytes as f64 * j["decode_tok_s"]["median"].as_f64().unwrap() / 1e9;
    let got = j["decode_weight_gb_s"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-9 * want, "{got} GB/s, want {want}");
    // The context limit applies to the benchmark too.
    let out = run("unicorn-rt", &[plan.to_str().unwrap(), "--bench", "--prompt-len", "300", "--gen", "300"]);
    assert_one_line_error(&out, "--prompt-len");
}

#[test]
fn streamed_text_is_the_decoding_of_the_generated_ids() {
    let dir = tempfile::tempdir().unwrap();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    let plan = compile_to(&model, dir.path(), unicorn_ir::WeightFormat::F32, None);
    let p = plan.to_str().unwrap();
    let prompt = "In the winter";
    let text = run("unicorn-rt", &[p, "--prompt", prompt, "-n", "30", "--temperature", "0"]);
    assert!(text.status.success());
    let loaded = unicorn_runtime::Model::load(&plan).unwrap();
    let tok = loaded.tokenizer().unwrap().expect("the demo has a tokenizer");
    let prompt_ids = tok.encode(prompt, true).unwrap().get_ids().to_vec();
    let ids =
        run("unicorn-rt", &[p, "--tokens", &ids_arg(&prompt_ids), "-n", "30", "--temperature", "0", "--print-ids"]);
    let generated: Vec<u32> =
        String::from_utf8(ids.stdout).unwrap().trim().split(',').map(|t| t.parse().unwrap()).collect();
    let eos = &loaded.header().spec.eos_token_ids;
    let continuation: Vec<u32> = generated.into_iter().filter(|t| !eos.contains(t)).collect();
    let all: Vec<u32> = prompt_ids.iter().copied().chain(continuation.iter().copied()).collect();
    let want = tok.decode(&all, true).unwrap();
    let got = String::from_utf8(text.stdout).unwrap();
    assert_eq!(got.trim_end(), want.trim_end());
    assert!(got.starts_with(prompt));
}

#[test]
fn every_kernel_family_matches_transformers() {
    // unicorn-rt picks AVX-512 VNNI, AVX2 or portable kernels at start-up; UNICORN_CPU_ISA forces a family, so
    // every family this CPU has runs end to end here, the portable instances of the elementwise and attention
    // kernels included. Gemma 3 covers the GELU, the (1+w) norms, q/k norms and sliding windows, through prefill
    // (logits) and decode (greedy ids). The int8 formats run under every family too, and each family's logits
    // agree with the portable kernels'.
    use unicorn_runtime::cpu::isa::Isa;
    let name = "gemma3_text";
    let exp = expected(name);
    let dir = tempfile::tempdir().unwrap();
    let (tokens, n) = (ids_arg(&exp.prompt_ids), exp.greedy_ids.len().to_string());
    let rt = |isa: &str, args: &[&str]| {
        let out = std::process::Command::new(bin("unicorn-rt")).env("UNICORN_CPU_ISA", isa).args(args).output();
        out.expect("unicorn-rt runs")
    };
    let families = Isa::available_all();
    eprintln!("kernel families on this CPU: {families:?}");
    for format in [WeightFormat::F32, WeightFormat::Q8_0, WeightFormat::Q4_0] {
        let plan = compile_to(&fixtures_dir().join(name), dir.path(), format, None);
        let p = plan.to_str().unwrap();
        let mut portable: Option<(Vec<f32>, String)> = None;
        for isa in &families {
            let npy = dir.path().join(format!("{}-{format}.npy", isa.name()));
            let out = rt(isa.name(), &[p, "--tokens", &tokens, "--logits-out", npy.to_str().unwrap()]);
            assert!(out.status.success(), "{}: {}", isa.name(), String::from_utf8_lossy(&out.stderr));
            let logits = read_npy_f32(&npy).1;
            let out = rt(isa.name(), &[p, "--tokens", &tokens, "-n", &n, "--temperature", "0", "--print-ids"]);
            assert!(out.status.success(), "{}: {}", isa.name(), String::from_utf8_lossy(&out.stderr));
            let ids = String::from_utf8(out.stdout).unwrap().trim().to_string();
            if format == WeightFormat::F32 {
                let a = compare(&logits, &exp.logits, exp.vocab);
                assert!(a.rel_err <= 1e-5 && a.argmax == 1.0, "{}: {a:?}", isa.name());
                assert_eq!(ids, ids_arg(&exp.greedy_ids), "{}", isa.name());
            }
            match &portable {
                None => portable = Some((logits, ids)),
                Some((want, _)) => {
                    // The families sum in different orders; with int8 weights a last-bit difference can move an
                    // activation across a q8 rounding boundary, which tiny models amplify (see tests/decode.rs).
                    let tol = if format.is_quantized() { 3e-2 } else { 1e-5 };
                    let a = compare(&logits, want, exp.vocab);
                    assert!(a.rel_err <= tol, "{} {format} against portable: {a:?}", isa.name());
                    eprintln!("{} {format} against portable: {:.1e}", isa.name(), a.rel_err);
                }
            }
        }
    }
    // A family this CPU lacks, or an unknown name, is an error naming the variable, never a quiet fallback.
    let plan = compile_to(&fixtures_dir().join(name), dir.path(), WeightFormat::Q8_0, None);
    let p = plan.to_str().unwrap();
    for isa in Isa::ALL.iter().filter(|i| !i.available()).map(|i| i.name()).chain(["avx9000"]) {
        let out = rt(isa, &[p, "--tokens", &tokens, "-n", "1"]);
        let err = assert_one_line_error(&out, "UNICORN_CPU_ISA");
        assert!(err.contains(isa), "{err}");
    }
    // How decode streams its weights (UNICORN_CPU_DECODE; by CPU vendor when unset) changes the order of loads,
    // never a sum: one stream and two streams prefetched ahead give the same logits, bit for bit. A one-token
    // prompt takes the decode GEMV (one activation row) through every matmul.
    let first = exp.prompt_ids[0].to_string();
    let plan = compile_to(&fixtures_dir().join(name), dir.path(), WeightFormat::Q4_0, None);
    let p = plan.to_str().unwrap();
    let logits_with = |streams: &str| {
        let npy = dir.path().join(format!("decode-{}.npy", streams.replace(':', "-")));
        let out = std::process::Command::new(bin("unicorn-rt"))
            .env("UNICORN_CPU_DECODE", streams)
            .args([p, "--tokens", &first, "--logits-out", npy.to_str().unwrap()])
            .output()
            .expect("unicorn-rt runs");
        assert!(out.status.success(), "{streams}: {}", String::from_utf8_lossy(&out.stderr));
        read_npy_f32(&npy).1
    };
    let one = logits_with("1:0");
    for streams in ["2:3072", "1:4096", "2:0"] {
        assert!(logits_with(streams) == one, "UNICORN_CPU_DECODE={streams} changed the logits");
    }
    for bad in ["3", "2:x", "1:1000000"] {
        let out = std::process::Command::new(bin("unicorn-rt"))
            .env("UNICORN_CPU_DECODE", bad)
            .args([p, "--tokens", &tokens, "-n", "1"])
            .output()
            .expect("unicorn-rt runs");
        let err = assert_one_line_error(&out, "UNICORN_CPU_DECODE");
        assert!(err.contains(bad), "{err}");
    }
}
