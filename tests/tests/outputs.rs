//! Outputs and resources as a user can get them wrong: an output that is an input, device nodes and FIFOs as
//! outputs, a stdout that fails or closes, sizes in config.json far beyond any model, absurd thread counts.
//!
//! The device-node tests make their own nodes (`mknod`, which needs root, as CI has) with the numbers of
//! /dev/null and /dev/full in a temporary folder: the real /dev/null is never an output of a test.

use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use unicorn_tests::*;

const FIXTURE: &str = "llama_gqa";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn plan(dir: &Path) -> PathBuf {
    compile_to(&fixtures_dir().join(FIXTURE), dir, unicorn_ir::WeightFormat::Q8_0, None)
}

/// A character device with the numbers of /dev/null (1, 3) or /dev/full (1, 7), made in `dir`.
fn char_device(dir: &Path, name: &str, minor: u32) -> PathBuf {
    let path = dir.join(name);
    let c = CString::new(s(&path)).unwrap();
    // SAFETY: a valid NUL-terminated path; mknod only creates a file system node.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {} failed ({}): these tests make their own device nodes and need root (CAP_MKNOD)",
        path.display(),
        std::io::Error::last_os_error()
    );
    path
}

fn mkfifo(path: &Path) {
    let c = CString::new(s(path)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

fn is_char_device(p: &Path) -> bool {
    std::fs::symlink_metadata(p).unwrap().file_type().is_char_device()
}

/// The names in `dir`, sorted: a failed or in-place write leaves no temporary file behind.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    listing(dir).into_iter().map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap())).collect()
}

#[test]
fn an_output_that_is_an_input_is_refused_and_the_input_kept() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_fixture(FIXTURE, dir.path());
    let before = snapshot(&model);
    std::fs::hard_link(model.join("model.safetensors"), dir.path().join("weights-link")).unwrap();
    let targets = [
        model.join("model.safetensors"),
        model.join("config.json"),
        model.join("tokenizer.json"),
        model.join("generation_config.json"),
        model.join(".").join("config.json"),
        dir.path().join("weights-link"),
    ];
    for given in [model.clone(), model.join("model.safetensors")] {
        for out in &targets {
            let r = run("unicornc", &["compile", s(&given), "-o", s(out), "-q"]);
            let err = assert_one_line_error(&r, s(out));
            assert!(err.contains("choose another output path"), "{err}");
        }
    }
    assert_eq!(snapshot(&model), before, "the checkpoint is untouched");

    let p = plan(dir.path());
    let plan_bytes = std::fs::read(&p).unwrap();
    let r = run("unicorn-rt", &[s(&p), "--tokens", "1,2,3", "--logits-out", s(&p)]);
    let err = assert_one_line_error(&r, "--logits-out");
    assert!(err.contains("choose another output path"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), plan_bytes, "the plan is untouched");
}

#[test]
fn device_nodes_are_written_in_place_and_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(dir.path());
    let nodes = tempfile::tempdir().unwrap();
    let null = char_device(nodes.path(), "null", 3);
    let full = char_device(nodes.path(), "full", 7);
    let model = fixtures_dir().join(FIXTURE);

    let r = run("unicornc", &["compile", s(&model), "-o", s(&null), "-q"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = run("unicorn-rt", &[s(&p), "--tokens", "1,2,3", "--logits-out", s(&null)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));

    let r = run("unicornc", &["compile", s(&model), "-o", s(&full), "-q"]);
    let err = assert_one_line_error(&r, s(&full));
    assert!(err.contains("No space left on device"), "{err}");
    let r = run("unicorn-rt", &[s(&p), "--tokens", "1,2,3", "--logits-out", s(&full)]);
    let err = assert_one_line_error(&r, "--logits-out");
    assert!(err.contains("No space left on device"), "{err}");

    assert!(is_char_device(&null) && is_char_device(&full), "the nodes are still device nodes");
    assert_eq!(listing(nodes.path()), ["full", "null"], "nothing else was created beside them");
}

#[test]
fn a_fifo_receives_the_logits_but_not_a_plan() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(dir.path());
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let r = run("unicornc", &["compile", s(&fixtures_dir().join(FIXTURE)), "-o", s(&fifo), "-q"]);
    let err = assert_one_line_error(&r, "is a FIFO");
    assert!(err.contains(s(&fifo)), "{err}");

    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let r = run("unicorn-rt", &[s(&p), "--tokens", "1,2,3", "--logits-out", s(&fifo)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let streamed = reader.join().unwrap();
    let file = dir.path().join("logits.npy");
    let r = run("unicorn-rt", &[s(&p), "--tokens", "1,2,3", "--logits-out", s(&file)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(streamed, std::fs::read(&file).unwrap(), "the FIFO got the same array as a file");
    let (shape, _) = read_npy_f32(&file);
    assert_eq!(shape[0], 3);
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn a_directory_as_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = run("unicornc", &["compile", s(&fixtures_dir().join(FIXTURE)), "-o", s(dir.path()), "-q"]);
    let err = assert_one_line_error(&r, "is a directory");
    assert!(err.contains(s(dir.path())), "{err}");
    assert!(listing(dir.path()).is_empty());
}

/// Run `args` with stdout on a /dev/full node: a one-line error that names stdout.
fn stdout_full(nodes: &Path, tool: &str, args: &[&str]) {
    let full = nodes.join("full");
    let out = Command::new(bin(tool))
        .args(args)
        .stdout(File::options().write(true).open(&full).unwrap())
        .stderr(Stdio::piped())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let err = assert_one_line_error(&out, "No space left on device");
    assert!(err.contains("stdout") || err.contains("writing the generated text"), "{args:?}: {err}");
    assert_eq!(out.status.code(), Some(1), "{args:?}");
}

/// Run `args` with stdout a pipe whose reader reads one line (or nothing) and closes: a quiet, successful end.
fn stdout_closed(tool: &str, args: &[&str], read_line: bool) {
    let mut child = Command::new(bin(tool))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_BACKTRACE")
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    if read_line {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
    } else {
        drop(stdout);
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
    for bad in ["panicked", "internal error", "Broken pipe"] {
        assert!(!err.contains(bad), "{args:?}: {err}");
    }
}

#[test]
fn a_failing_or_closed_stdout_ends_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(dir.path());
    let nodes = tempfile::tempdir().unwrap();
    char_device(nodes.path(), "full", 7);
    let p = s(&p);
    let bench = [p, "--bench", "--json", "--prompt-len", "4", "--gen", "2", "--repeat", "1"];
    stdout_full(nodes.path(), "unicornc", &["inspect", p]);
    stdout_full(nodes.path(), "unicornc", &["--help"]);
    stdout_full(nodes.path(), "unicorn-rt", &bench);
    stdout_full(nodes.path(), "unicorn-rt", &["--list-devices"]);
    stdout_full(nodes.path(), "unicorn-rt", &[p, "--tokens", "1,2,3", "-n", "8", "--print-ids"]);
    stdout_full(nodes.path(), "unicorn-rt", &[p, "--prompt", "hello", "-n", "8", "--temperature", "0"]);
    stdout_full(nodes.path(), "unicorn-rt", &[p, "--tokens", "1,2,3", "-n", "8", "--temperature", "0"]);

    stdout_closed("unicornc", &["inspect", p, "--steps"], true);
    stdout_closed("unicornc", &["inspect", p], false);
    stdout_closed("unicorn-rt", &bench, false);
    stdout_closed("unicorn-rt", &[p, "--tokens", "1,2,3", "-n", "40", "--temperature", "0", "--seed", "1"], false);
}

#[test]
fn thread_counts_beyond_the_limit_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(dir.path());
    for t in ["0", "10000", "18446744073709551616", "-1"] {
        let flag = format!("--threads={t}");
        let r = run("unicorn-rt", &[s(&p), "--tokens", "1,2", "-n", "1", &flag]);
        assert_one_line_error(&r, "--threads");
        assert_eq!(r.status.code(), Some(2));
    }
    let r = run("unicorn-rt", &[s(&p), "--tokens", "1,2", "-n", "2", "--print-ids", "--threads", "1024"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// Memory a `unicornc` run of [`compile_limited`] may map (heap and anonymous mappings): parsing a
/// million-entry list is the largest thing those runs may do, far below any weight allocation.
const COMPILE_DATA_LIMIT: u64 = 512 << 20;

/// Run unicornc on a checkpoint with its data segment limited to [`COMPILE_DATA_LIMIT`] (`RLIMIT_DATA`): an
/// allocation past it fails, and Rust aborts on that, which is no one-line error. (The child's own peak cannot
/// be read from here: a child spawned by a process this large reports the parent's peak as its own, since
/// exec records the high-water mark of the memory it replaces.)
fn compile_limited(model: &Path, out: &Path) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin("unicornc"));
    cmd.args(["compile", s(model), "-o", s(out), "-q"]).env_remove("RUST_BACKTRACE");
    let limit = libc::rlimit { rlim_cur: COMPILE_DATA_LIMIT, rlim_max: COMPILE_DATA_LIMIT };
    // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing but its own copy of `limit`.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    };
    cmd.output().unwrap()
}

#[test]
fn sizes_far_beyond_any_model_fail_before_allocating() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    // Qwen3 reads layer_types (Llama ignores it).
    let cases: Vec<(&str, &str, Edit)> = vec![
        (FIXTURE, "num_hidden_layers", Box::new(|c| c["num_hidden_layers"] = serde_json::json!(1_000_000_000u64))),
        (FIXTURE, "num_hidden_layers", Box::new(|c| c["num_hidden_layers"] = serde_json::json!(1u64 << 63))),
        (FIXTURE, "vocab_size", Box::new(|c| c["vocab_size"] = serde_json::json!(1u64 << 40))),
        (FIXTURE, "intermediate_size", Box::new(|c| c["intermediate_size"] = serde_json::json!(u64::MAX))),
        (
            FIXTURE,
            "max_position_embeddings",
            Box::new(|c| c["max_position_embeddings"] = serde_json::json!(1u64 << 50)),
        ),
        (
            "qwen3_qknorm",
            "layer_types",
            Box::new(|c| {
                c["layer_types"] = serde_json::Value::Array(vec![serde_json::json!("full_attention"); 1_000_000])
            }),
        ),
        (
            "qwen3_qknorm",
            "num_hidden_layers",
            Box::new(|c| {
                c["num_hidden_layers"] = serde_json::json!(1_000_000);
                c["layer_types"] = serde_json::Value::Array(vec![serde_json::json!("full_attention"); 1_000_000])
            }),
        ),
    ];
    for (fixture, field, edit) in cases {
        let dir = tempfile::tempdir().unwrap();
        let model = copy_fixture(fixture, dir.path());
        let cfg_path = model.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        edit(&mut cfg);
        std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
        let out = dir.path().join("out.ucp");
        let r = compile_limited(&model, &out);
        let err = assert_one_line_error(&r, field);
        assert!(err.contains("config.json"), "{err}");
        assert!(!out.exists());
    }
}
