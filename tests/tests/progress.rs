//! Progress of long work: `unicornc compile` shows its stages and a bar under the weights on a terminal, and
//! nothing but its result when stderr is a pipe (scripts and CI read results, not progress).

use std::process::Command;
use unicorn_tests::*;

#[test]
fn compile_shows_progress_on_a_terminal_and_stays_quiet_in_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures_dir().join("llama_gqa");
    let plan = dir.path().join("p.ucp");
    let args = ["compile", model.to_str().unwrap(), "-o", plan.to_str().unwrap()];
    let stages = ["reading the checkpoint", "running the passes", "generating kernels", "writing weights"];

    let piped = run("unicornc", &args);
    assert!(piped.status.success());
    let err = String::from_utf8_lossy(&piped.stderr);
    assert_eq!(err.lines().count(), 1, "only the result line: {err}");
    assert!(err.starts_with("wrote "), "{err}");
    assert!(!err.contains('\r') && !err.contains('\u{1b}'), "no terminal control in a pipe: {err:?}");

    // A pseudo-terminal (util-linux's script) for stderr: every stage is shown, and the weights' bar names
    // a tensor as it writes it.
    let cmd = format!("{} {}", bin("unicornc").display(), args.join(" "));
    let tty =
        Command::new("script").args(["-qec", &cmd, "/dev/null"]).env("TERM", "xterm").output().expect("script runs");
    assert!(tty.status.success(), "{}", String::from_utf8_lossy(&tty.stderr));
    let screen = String::from_utf8_lossy(&tty.stdout);
    for stage in stages {
        assert!(screen.contains(stage), "{stage} not shown: {screen}");
    }
    assert!(screen.contains("model.layers.0."), "no tensor named under the bar: {screen}");
    // -q: nothing at all.
    let quiet = Command::new("script").args(["-qec", &format!("{cmd} -q"), "/dev/null"]).output().expect("script runs");
    assert!(quiet.status.success());
    assert!(String::from_utf8_lossy(&quiet.stdout).trim().is_empty(), "{}", String::from_utf8_lossy(&quiet.stdout));
}
