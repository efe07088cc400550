//! `unicorn-rt` as a process: version, help and device listing. Being an integration test of this package, it
//! also makes `cargo test` build the `unicorn-rt` binary from the current sources, which the workspace's
//! end-to-end tests (tests/) run; so does compiler/tests for `unicornc`. A test run therefore never judges a
//! stale binary, under `cargo test --workspace` and under cargo-mutants alike.

use std::process::Command;

fn rt(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_unicorn-rt")).args(args).output().expect("unicorn-rt runs")
}

#[test]
fn version_and_help_go_to_stdout() {
    let v = rt(&["--version"]);
    assert!(v.status.success());
    assert_eq!(String::from_utf8(v.stdout).unwrap().trim(), format!("unicorn-rt {}", env!("CARGO_PKG_VERSION")));
    let h = String::from_utf8(rt(&["--help"]).stdout).unwrap();
    for flag in ["--device", "--list-devices", "--prefill-chunk", "--logits-out", "--threads", "--bench"] {
        assert!(h.contains(flag), "--help does not mention {flag}");
    }
}

#[test]
fn the_device_list_names_the_kernels_in_use() {
    let out = rt(&["--list-devices"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let isa = unicorn_runtime::cpu::isa::Isa::detect().name();
    assert!(text.starts_with("cpu ") && text.contains(&format!("{isa} kernels")), "{text}");
    let forced = Command::new(env!("CARGO_BIN_EXE_unicorn-rt"))
        .env("UNICORN_CPU_ISA", "portable")
        .arg("--list-devices")
        .output()
        .unwrap();
    assert!(String::from_utf8(forced.stdout).unwrap().contains("portable kernels"));
}
