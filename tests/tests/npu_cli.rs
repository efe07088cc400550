//! The NPU's command line, through the real binaries: `unicornc compile --target phoenix` (and `--emit-mlir`),
//! `unicornc build-npu` with and without mlir-aie's `aiecc` (a stand-in script here: no machine we test on has
//! mlir-aie), and `unicorn-rt` on a machine with no NPU: the automatic fallback to the emulator, and one-line
//! refusals where a device was asked for by name; and hybrid plans (`--target hybrid`), whose decode runs on a
//! Vulkan device.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use unicorn_tests::*;

/// Run a binary with `dirs` as its whole PATH (plus the system's, for the stand-in's shell tools).
fn run_with_path(name: &str, args: &[&str], dirs: &[&Path]) -> Output {
    run_with_env(name, args, dirs, &[])
}

/// [`run_with_path`] with `env` set (and mlir-aie's and Peano's variables only where `env` sets them).
fn run_with_env(name: &str, args: &[&str], dirs: &[&Path], env: &[(&str, &Path)]) -> Output {
    let mut path: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    path.extend(["/usr/bin", "/bin"].map(PathBuf::from));
    let mut cmd = Command::new(bin(name));
    cmd.args(args)
        .env("PATH", std::env::join_paths(path).unwrap())
        .env_remove("MLIR_AIE_INSTALL_DIR")
        .env_remove("PEANO_INSTALL_DIR")
        .env_remove("RUST_BACKTRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

/// A stand-in `aiecc` in `dir`: it checks the flags a real build needs (the open toolchain's: no xchesscc or
/// xbridge; Peano's folder where `PEANO_INSTALL_DIR` names one), logs its arguments to `$AIECC_LOG` where that
/// is set, and writes an xclbin and an instruction stream (or fails as aiecc does, with its error last on
/// stderr).
fn fake_aiecc(dir: &Path, fail: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let body = if fail {
        "echo 'error: design.mlir:3:5: unknown objectfifo' >&2; exit 1".to_string()
    } else {
        [
            "for a in --no-xchesscc --no-xbridge --aie-generate-xclbin --xclbin-name=design.xclbin \
             --aie-generate-npu-insts --npu-insts-name=insts.bin design.mlir; do",
            "  case \" $* \" in *\" $a \"*) ;; *) echo \"missing $a\" >&2; exit 2;; esac",
            "done",
            "if [ -n \"$PEANO_INSTALL_DIR\" ]; then",
            "  case \" $* \" in *\" --peano $PEANO_INSTALL_DIR \"*) ;; *) echo 'missing --peano' >&2; exit 4;; esac",
            "fi",
            "[ -z \"$AIECC_LOG\" ] || echo \"$*\" >> \"$AIECC_LOG\"",
            "grep -q aie.device design.mlir || { echo 'no aie.device' >&2; exit 3; }",
            "printf 'xclbin2-of-%s' \"$(wc -c < design.mlir)\" > design.xclbin",
            "printf '\\001\\000\\000\\000\\002\\000\\000\\000' > insts.bin",
        ]
        .join("\n")
    };
    let path = dir.join("aiecc");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn compile_for_phoenix_says_where_the_designs_stand_and_emits_their_mlir() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures_dir().join("llama_gqa");
    let (plan, mlir) = (dir.path().join("p.ucp"), dir.path().join("mlir"));
    let args = ["compile", model.to_str().unwrap(), "-o", plan.to_str().unwrap(), "--target", "phoenix"];
    let mut with_emit = args.to_vec();
    with_emit.extend(["--emit-mlir", mlir.to_str().unwrap()]);
    let out = run_with_path("unicornc", &with_emit, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let note: Vec<&str> = err.lines().filter(|l| l.contains("aiecc not found")).collect();
    assert_eq!(note.len(), 1, "one line says the designs stay MLIR: {err}");
    assert!(note[0].contains("build-npu"), "{}", note[0]);
    assert!(!err.contains("attention stays on the CPU"), "{err}");
    // A context past the attention design's key budget keeps attention on the CPU, and compile says why and
    // what context would place it: the note's context does.
    let long = dir.path().join("long.ucp");
    let mut past = vec!["compile", model.to_str().unwrap(), "-o", long.to_str().unwrap(), "--target", "phoenix"];
    past.extend(["--max-context", "8192"]);
    let out = run_with_path("unicornc", &past, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let note: Vec<&str> = err.lines().filter(|l| l.contains("attention stays on the CPU")).collect();
    assert_eq!(note.len(), 1, "{err}");
    assert!(note[0].contains("8703 keys") && note[0].contains("budget of 4096"), "{}", note[0]);
    let fits = note[0].rsplit("at most ").next().unwrap().split(' ').next().unwrap();
    let npu_attention = |plan: &std::path::Path| {
        let model = unicorn_runtime::Model::load(plan).unwrap();
        let h = model.header();
        let prefill = h.phase(unicorn_ir::Phase::Prefill).unwrap();
        prefill.steps.iter().any(|s| {
            h.kernels[s.kernel.0 as usize].backend == unicorn_ir::plan::Backend::Npu
                && matches!(s.ops[..], [unicorn_ir::Op::Attention { .. }])
        })
    };
    assert!(!npu_attention(&long));
    let at = dir.path().join("at.ucp");
    let mut within = vec!["compile", model.to_str().unwrap(), "-o", at.to_str().unwrap(), "--target", "phoenix"];
    within.extend(["--max-context", fits]);
    let out = run_with_path("unicornc", &within, &[]);
    assert!(out.status.success() && !stderr(&out).contains("attention stays"), "{}", stderr(&out));
    assert!(npu_attention(&at), "attention on the NPU at a context of {fits}");
    // One file per distinct design, each a whole module (the designs' own tests re-parse them with mlir-opt).
    let files: Vec<_> = std::fs::read_dir(&mlir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!files.is_empty());
    for f in &files {
        assert_eq!(f.extension().unwrap(), "mlir");
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.contains("aie.device") && text.contains("aie.objectfifo"), "{}", f.display());
    }
    // --emit-mlir belongs to the NPU target.
    let out = run(
        "unicornc",
        &[
            "compile",
            model.to_str().unwrap(),
            "-o",
            dir.path().join("q.ucp").to_str().unwrap(),
            "--emit-mlir",
            mlir.to_str().unwrap(),
        ],
    );
    assert_one_line_error(&out, "--emit-mlir");
    assert!(!dir.path().join("q.ucp").exists());
}

#[test]
fn build_npu_builds_with_aiecc_and_refuses_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures_dir().join("llama_gqa");
    let plan = dir.path().join("p.ucp");
    let out = run_with_path(
        "unicornc",
        &["compile", model.to_str().unwrap(), "-o", plan.to_str().unwrap(), "--target", "phoenix", "-q"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let before = std::fs::read(&plan).unwrap();

    // No aiecc: one line, the plan untouched.
    let out = run_with_path("unicornc", &["build-npu", plan.to_str().unwrap()], &[]);
    assert_one_line_error(&out, "aiecc not found");
    assert_eq!(std::fs::read(&plan).unwrap(), before);

    // An aiecc that fails: its last line, the plan untouched.
    let failing = dir.path().join("failing");
    fake_aiecc(&failing, true);
    let out = run_with_path("unicornc", &["build-npu", plan.to_str().unwrap(), "-q"], &[&failing]);
    assert_one_line_error(&out, "unknown objectfifo");
    assert_eq!(std::fs::read(&plan).unwrap(), before);

    // A working one: every design built and stored, into a new file first, then in place.
    let good = dir.path().join("good");
    fake_aiecc(&good, false);
    let built = dir.path().join("built.ucp");
    let out =
        run_with_path("unicornc", &["build-npu", plan.to_str().unwrap(), "-o", built.to_str().unwrap()], &[&good]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&plan).unwrap(), before, "-o leaves the plan as it was");
    let m = unicorn_runtime::Model::load(&built).unwrap();
    let kernels = unicorn_runtime::npu::plan_kernels(&m).unwrap();
    assert!(!kernels.iter().flatten().collect::<Vec<_>>().is_empty());
    for g in kernels.iter().flatten() {
        let b = g.kernel().built.as_ref().unwrap_or_else(|| panic!("{} not built", g.name()));
        assert_eq!(b.insts, [1, 2]);
        assert_eq!(b.xclbin, format!("xclbin2-of-{}", g.kernel().mlir.len()).into_bytes(), "{}", g.name());
    }
    let out = run_with_path("unicornc", &["build-npu", plan.to_str().unwrap(), "-q"], &[&good]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&plan).unwrap(), std::fs::read(&built).unwrap());
    // A built plan still runs on the emulator, and says what it holds.
    let out = run("unicornc", &["inspect", plan.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("designs, by aiecc"), "{text}");
    // Its 3 layers' q / k / v, attention, o, gate / up and down: one dispatch each.
    assert!(text.contains(" 15 dispatches per execution") && text.contains("(5 a layer)"), "{text}");
    // Decode runs on the CPU alone, and says so.
    assert!(text.contains("decode   no NPU steps (every step on the cpu)"), "{text}");
    // Each design on a line of its own, its dispatches and one dispatch's estimate, which add up to the
    // phase's.
    let ms = |l: &str| -> f64 { l.split("ESTIMATE >= ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap() };
    let phase = text.lines().find(|l| l.trim_start().starts_with("prefill") && l.contains("ESTIMATE")).unwrap();
    let mut total = 0.0;
    for g in kernels.iter().flatten() {
        let name = format!("{} (", g.name());
        let line = text.lines().find(|l| l.trim_start().starts_with(&name)).unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("(3 a prefill)"), "one dispatch a layer: {line}");
        total += 3.0 * ms(line);
    }
    assert!((total - ms(phase)).abs() <= 0.01, "designs' {total} ms against the phase's: {phase}");

    // A plan with nothing for the NPU.
    let cpu = compile_to(&model, dir.path(), unicorn_ir::WeightFormat::Q8_0, None);
    let out = run_with_path("unicornc", &["build-npu", cpu.to_str().unwrap()], &[&good]);
    assert_one_line_error(&out, "no NPU designs");
}

/// `unicorn-rt PLAN` on the fixture's prompt, greedy, on the default device of a machine without an NPU: one
/// note (XRT not found, the emulator taken) and transformers' greedy tokens. Returns the prompt, the count and
/// the tokens as the command line takes them.
fn greedy_on_the_emulator(p: &str, exp: &Expected) -> (String, String, String) {
    let tokens = exp.prompt_ids.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",");
    let n = exp.greedy_ids.len().to_string();
    let want = exp.greedy_ids.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",");
    let out = run("unicorn-rt", &[p, "--tokens", &tokens, "-n", &n, "--temperature", "0", "--print-ids"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let notes: Vec<&str> = err.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(notes.len(), 1, "{err}");
    assert!(notes[0].contains("XRT not found") && notes[0].contains("npu-emu"), "{}", notes[0]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
    (tokens, n, want)
}

#[test]
fn the_runtime_falls_back_to_the_emulator_and_refuses_missing_npus_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let name = "llama_gqa";
    let exp = expected(name);
    let plan = compile_for(
        unicorn_passes::Target::Phoenix,
        &fixtures_dir().join(name),
        dir.path(),
        unicorn_ir::WeightFormat::Bf16,
        None,
    );
    let p = plan.to_str().unwrap();
    // No NPU here: the default device says so in one line and runs the NPU steps on the emulator.
    let (tokens, n, want) = greedy_on_the_emulator(p, &exp);
    // Asked for by name, a missing NPU is an error, never a quiet fallback.
    let out = run("unicorn-rt", &[p, "--device", "npu", "--tokens", &tokens, "-n", "1"]);
    assert_one_line_error(&out, "XRT not found");
    // The emulator by name, and the CPU alone, give transformers' tokens too.
    for device in ["npu-emu", "cpu"] {
        let out = run(
            "unicorn-rt",
            &[p, "--device", device, "--tokens", &tokens, "-n", &n, "--temperature", "0", "--print-ids"],
        );
        assert!(out.status.success(), "{device}: {}", stderr(&out));
        assert!(!stderr(&out).contains("note:"), "{device}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "{device}");
    }
    // The NPU devices on a plan with no NPU steps.
    let cpu = compile_to(&fixtures_dir().join(name), dir.path(), unicorn_ir::WeightFormat::Q8_0, None);
    let out = run("unicorn-rt", &[cpu.to_str().unwrap(), "--device", "npu-emu", "--tokens", &tokens]);
    assert_one_line_error(&out, "--device npu-emu");
    // --list-devices names both.
    let out = run("unicorn-rt", &["--list-devices"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.lines().any(|l| l.starts_with("npu ") && l.contains("XRT not found")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("npu-emu ")), "{list}");
}

/// `unicorn-rt --bench` on a Phoenix plan says what the NPU did: in prefill one dispatch per NPU step of the
/// chunk, moving at least its weights' bf16 bytes and computing at least their multiply-adds for every prompt
/// token (padding and attention come on top); decode stays off the NPU, and the table says so.
#[test]
fn the_bench_counts_what_the_npu_did_a_token() {
    use unicorn_ir::plan::{Arg, Backend};
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures_dir().join("llama_gqa");
    let plan = compile_for(unicorn_passes::Target::Phoenix, &model, dir.path(), unicorn_ir::WeightFormat::Bf16, None);
    let h = unicorn_ir::container::PlanFile::open(&plan).unwrap().header;
    let steps = &h.phase(unicorn_ir::Phase::Prefill).unwrap().steps;
    let on_npu: Vec<_> = steps.iter().filter(|s| h.kernels[s.kernel.0 as usize].backend == Backend::Npu).collect();
    assert!(!on_npu.is_empty(), "the plan has NPU steps");
    let (mut weight_bytes, mut weight_macs) = (0u64, 0u64);
    for a in on_npu.iter().flat_map(|s| &s.args) {
        if let Arg::Weight(w) = a {
            let elems: usize = h.weights[w.0 as usize].shape.iter().product();
            (weight_bytes, weight_macs) = (weight_bytes + 2 * elems as u64, weight_macs + elems as u64);
        }
    }
    let (prompt, gen) = (8u64, 2u64);
    assert!(prompt <= h.prefill_chunk, "one chunk");
    let p = plan.to_str().unwrap();
    let args = [p, "--device", "npu-emu", "--bench", "--prompt-len", "8", "--gen", "2", "--repeat", "1"];
    let out = run("unicorn-rt", &[&args[..], &["--json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let (pre, dec) = (&j["npu"]["prefill"], &j["npu"]["decode"]);
    let field = |v: &serde_json::Value, f: &str| v[f].as_u64().unwrap_or_else(|| panic!("npu.{f}: {v}"));
    assert_eq!(field(pre, "dispatches"), on_npu.len() as u64, "one dispatch per NPU step: {pre}");
    assert_eq!(field(pre, "tokens"), prompt, "{pre}");
    assert!(field(pre, "host_bytes") >= weight_bytes, "every weight reaches the array: {pre}, {weight_bytes} B");
    assert!(field(pre, "macs") >= prompt * weight_macs, "every token meets every weight: {pre}, {weight_macs}");
    assert_eq!((field(dec, "dispatches"), field(dec, "host_bytes"), field(dec, "macs")), (0, 0, 0), "{dec}");
    assert_eq!(field(dec, "tokens"), gen, "{dec}");
    // The table: per token, and decode named as off the NPU.
    let out = run("unicorn-rt", &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let line =
        |name: &str| table.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{table}")).to_string();
    let per_token = field(pre, "dispatches") as f64 / prompt as f64;
    assert!(line("npu prefill").contains(&format!("{per_token:.2} dispatches a token")), "{table}");
    assert!(line("npu decode").contains("runs off the NPU"), "{table}");
}

/// `unicornc compile --target phoenix` builds the designs itself where mlir-aie is installed: `aiecc` found
/// under `$MLIR_AIE_INSTALL_DIR/bin` (not on PATH), given Peano's folder from `PEANO_INSTALL_DIR`, once per
/// design, and every design of the plan stored built.
#[test]
fn compile_builds_the_designs_with_the_installed_aiecc_and_peano() {
    let dir = tempfile::tempdir().unwrap();
    let install = dir.path().join("mlir-aie");
    fake_aiecc(&install.join("bin"), false);
    let (peano, log) = (dir.path().join("peano"), dir.path().join("aiecc.log"));
    let model = fixtures_dir().join("llama_gqa");
    let plan = dir.path().join("p.ucp");
    let args = ["compile", model.to_str().unwrap(), "-o", plan.to_str().unwrap(), "--target", "phoenix"];
    let env = [("MLIR_AIE_INSTALL_DIR", install.as_path()), ("PEANO_INSTALL_DIR", &peano), ("AIECC_LOG", &log)];
    let out = run_with_env("unicornc", &args, &[], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let aiecc = install.join("bin").join("aiecc");
    assert!(stderr(&out).contains(&format!("NPU designs with {}", aiecc.display())), "{}", stderr(&out));
    let m = unicorn_runtime::Model::load(&plan).unwrap();
    let kernels = unicorn_runtime::npu::plan_kernels(&m).unwrap();
    let designs: Vec<_> = kernels.iter().flatten().collect();
    assert!(!designs.is_empty());
    for g in &designs {
        let b = g.kernel().built.as_ref().unwrap_or_else(|| panic!("{} not built", g.name()));
        assert_eq!(b.xclbin, format!("xclbin2-of-{}", g.kernel().mlir.len()).into_bytes(), "{}", g.name());
    }
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls.lines().count(), designs.len(), "one aiecc run per design: {calls}");
    assert!(calls.lines().all(|l| l.contains(&format!("--peano {}", peano.display()))), "{calls}");
    // Without Peano's variable no --peano is passed (the stand-in would take one, but the real aiecc then
    // uses its own default).
    let out = run_with_env("unicornc", &args, &[], &[("MLIR_AIE_INSTALL_DIR", &install), ("AIECC_LOG", &log)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls.lines().filter(|l| !l.contains("--peano")).count(), designs.len(), "{calls}");
}

/// A hybrid plan through the binaries: compile reports each phase's devices, and `unicorn-rt` with no NPU notes
/// the emulator once, decodes on the GPU (lavapipe here) and gives transformers' greedy tokens; a Vulkan
/// device asked for by a number that is not there is a one-line error.
#[test]
fn a_hybrid_plan_runs_prefill_on_the_npu_and_decode_on_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let name = "llama_gqa";
    let exp = expected(name);
    let plan = dir.path().join("hybrid.ucp");
    let p = plan.to_str().unwrap();
    let model = fixtures_dir().join(name);
    let out = run("unicornc", &["compile", model.to_str().unwrap(), "--target", "hybrid", "-o", p, "-v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("on npu") && err.contains("on igpu (decode)"), "{err}");
    let out = run("unicornc", &["inspect", p]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("target:") && l.ends_with("hybrid")), "{text}");
    assert!(text.contains("on npu") && text.contains("on igpu"), "{text}");

    let (tokens, n, want) = greedy_on_the_emulator(p, &exp);
    // The bench names both devices it ran on.
    let out = run("unicorn-rt", &[p, "--device", "npu-emu", "--bench", "--prompt-len", "8", "--gen", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(all.contains("npu-emu (prefill) + vulkan:0 (decode)"), "{all}");
    let out = run("unicorn-rt", &[p, "--device", "vulkan:9", "--tokens", &tokens, "-n", "1"]);
    assert_one_line_error(&out, "vulkan");
    // With no Vulkan driver at all, decode falls back to the CPU with a line that says so.
    let missing = dir.path().join("no_such_icd.json");
    let out = std::process::Command::new(bin("unicorn-rt"))
        .args([p, "--device", "npu-emu", "--tokens", &tokens, "-n", &n, "--temperature", "0", "--print-ids"])
        .env("VK_ICD_FILENAMES", &missing)
        .env("VK_DRIVER_FILES", &missing)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.lines().any(|l| l.starts_with("note:") && l.ends_with("decoding on the CPU")), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
    // A hybrid plan whose prefill took no NPU design (q4_0 weights, attention past the key budget): the CPU and
    // the GPU without a word about the NPU, and the NPU devices by name refused in one line.
    let q4 = dir.path().join("hybrid_q4.ucp");
    let q = q4.to_str().unwrap();
    let args = ["compile", model.to_str().unwrap(), "--target", "hybrid", "--weights", "q4_0", "-q", "-o", q];
    let out = run("unicornc", &[&args[..], &["--max-context", "8192"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run("unicorn-rt", &[q, "--tokens", &tokens, "-n", "2", "--print-ids"]);
    assert!(out.status.success() && !stderr(&out).contains("note:"), "{}", stderr(&out));
    let out = run("unicorn-rt", &[q, "--device", "npu-emu", "--tokens", &tokens, "-n", "2"]);
    assert_one_line_error(&out, "no NPU steps");
}
