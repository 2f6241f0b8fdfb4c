//! The `downsync plugin check|test` commands, run as a user would.

use std::path::PathBuf;
use std::process::{Command, Output};

use downsync_tests::plugins::plugin_path;
use downsync_tests::repo_root;

/// Builds the `downsync` binary (a no-op when it is fresh) and returns its path.
fn downsync_bin() -> PathBuf {
    let root = repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "-p", "downsync", "--bin", "downsync"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the downsync binary failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    target.join("debug").join("downsync")
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(downsync_bin()).args(args).env("XDG_CACHE_HOME", std::env::temp_dir()).output().expect("downsync runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn check_prints_kinds_scope_and_ignore_paths() {
    let wasm = plugin_path("downsync-plugin-service").expect("built");
    let out = run(&["plugin".as_ref(), "check".as_ref(), wasm.as_os_str()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("name:    service"), "{t}");
    assert!(t.contains("wit:     downsync:rules@0.2.0"), "{t}");
    assert!(t.contains("hooks:   transform, preserve, ignore-paths"), "{t}");
    assert!(t.contains("reads:   /spec\n"), "{t}");
    assert!(t.contains("  - Service (core)"), "{t}");
    assert!(t.contains("  - /spec/ports/*/nodePort"), "{t}");
    assert!(t.contains("ignore-paths:\n  Service: /spec/clusterIP"), "{t}");
}

#[test]
fn test_passes_good_fixtures_and_fails_wrong_ones_with_a_diff() {
    let wasm = plugin_path("downsync-plugin-service").expect("built");
    let good = repo_root().join("plugins/service/fixtures");
    let out = run(&["plugin".as_ref(), "test".as_ref(), wasm.as_os_str(), good.as_os_str()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("ok    nodeport-kept") && t.contains("0 failed"), "{t}");

    let bad = std::env::temp_dir().join(format!("downsync-cli-fixtures-{}", std::process::id()));
    let case = bad.join("wrong-ip");
    std::fs::create_dir_all(&case).expect("case dir");
    for file in ["existing.yaml", "desired.yaml", "expected.yaml"] {
        let src = std::fs::read_to_string(good.join("nodeport-kept").join(file)).expect("fixture");
        std::fs::write(case.join(file), src.replace("clusterIP: 10.96.0.17", "clusterIP: 10.96.0.99")).expect("write");
    }
    // Only expected.yaml should carry the wrong IP.
    std::fs::copy(good.join("nodeport-kept/existing.yaml"), case.join("existing.yaml")).expect("copy");
    let out = run(&["plugin".as_ref(), "test".as_ref(), wasm.as_os_str(), bad.as_os_str()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("FAIL  wrong-ip") && t.contains("~ /spec/clusterIP: expected \"10.96.0.99\", got \"10.96.0.17\""),
        "{t}"
    );
    let _ = std::fs::remove_dir_all(&bad);
}

#[test]
fn check_reports_a_panic_in_describe_as_an_error_and_exits_1() {
    let wasm = plugin_path("downsync-plugin-testing-describe-panic").expect("built");
    let out = run(&["plugin".as_ref(), "check".as_ref(), wasm.as_os_str()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "an error, not a host panic (101): {t}");
    assert!(t.contains("describe-panic plugin refuses to describe itself"), "the guest's panic message: {t}");
    assert!(!t.contains("panicked at host/") && !t.contains("Cannot start a runtime"), "{t}");
}

#[test]
fn check_and_test_take_the_budgets_the_plugin_will_run_with() {
    let wasm = plugin_path("downsync-plugin-service").expect("built");
    let good = repo_root().join("plugins/service/fixtures");
    let starved = run(&[
        "plugin".as_ref(),
        "test".as_ref(),
        wasm.as_os_str(),
        good.as_os_str(),
        "--fuel".as_ref(),
        "20000".as_ref(),
    ]);
    let t = text(&starved);
    assert!(!starved.status.success(), "{t}");
    assert!(t.contains("FAIL  nodeport-kept") && t.contains("(out_of_fuel)"), "{t}");
    assert!(!t.contains("wasm trap: wasm trap"), "{t}");
    let roomy = run(&[
        "plugin".as_ref(),
        "test".as_ref(),
        wasm.as_os_str(),
        good.as_os_str(),
        "--fuel".as_ref(),
        "5000000".as_ref(),
        "--memory".as_ref(),
        "16Mi".as_ref(),
    ]);
    assert!(roomy.status.success(), "{}", text(&roomy));
    let bad = run(&["plugin".as_ref(), "check".as_ref(), wasm.as_os_str(), "--memory".as_ref(), "12MB".as_ref()]);
    let t = text(&bad);
    assert!(!bad.status.success() && t.contains("use Ki, Mi or Gi"), "{t}");
}

#[test]
fn check_piped_into_head_exits_quietly_when_the_pipe_closes() {
    use std::os::unix::process::ExitStatusExt;
    let wasm = plugin_path("downsync-plugin-service").expect("built");
    let mut child = Command::new(downsync_bin())
        .args(["plugin".as_ref(), "check".as_ref(), wasm.as_os_str()])
        .env("XDG_CACHE_HOME", std::env::temp_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("downsync runs");
    // Closed before the first line is written, as `| head -1` closes it after the first.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("downsync ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    const SIGPIPE: i32 = 13;
    let quiet = out.status.code() == Some(0) || out.status.signal() == Some(SIGPIPE);
    assert!(quiet, "exit 0 or SIGPIPE (141 in a shell), not a panic's 101: {:?}", out.status);
}

#[test]
fn a_file_that_is_not_a_component_gets_a_one_line_error() {
    let dir = std::env::temp_dir().join(format!("downsync-cli-notwasm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let text = dir.join("notes.wasm");
    std::fs::write(&text, "hello, not wasm\n").expect("write");
    let out = run(&["plugin".as_ref(), "check".as_ref(), text.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("not a WebAssembly file"), "{stderr}");

    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let out = run(&["plugin".as_ref(), "check".as_ref(), core.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("a core WebAssembly module, not a component"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_file_says_its_os_error_once() {
    let missing = std::env::temp_dir().join("downsync-cli-no-such-plugin.wasm");
    let out = run(&["plugin".as_ref(), "check".as_ref(), missing.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
    let out = run(&["run".as_ref(), "--config".as_ref(), missing.with_extension("yaml").as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
}

#[test]
fn check_logs_no_compiler_chatter_at_info() {
    let wasm = plugin_path("downsync-plugin-service").expect("built");
    let out = Command::new(downsync_bin())
        .args(["plugin".as_ref(), "check".as_ref(), wasm.as_os_str()])
        .env("XDG_CACHE_HOME", std::env::temp_dir().join(format!("downsync-cli-quiet-{}", std::process::id())))
        .env_remove("RUST_LOG")
        .output()
        .expect("downsync runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("Cranelift") && !stderr.contains("INFO"), "{stderr}");
}

#[test]
fn version_names_the_commit() {
    let out = run(&["--version".as_ref()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let commit = t.split("(commit ").nth(1).and_then(|r| r.split(')').next()).unwrap_or_default();
    if let Some(given) = std::env::var("DOWNSYNC_COMMIT").ok().filter(|c| !c.trim().is_empty()) {
        assert_eq!(commit, given, "{t}");
        return;
    }
    let from_git = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(repo_root()).output();
    match from_git {
        Ok(o) if o.status.success() => assert_eq!(commit, String::from_utf8_lossy(&o.stdout).trim(), "{t}"),
        _ => assert_eq!(commit, "unknown", "no git here: {t}"),
    }
}

#[test]
fn a_component_over_the_size_limit_is_refused_before_it_is_read() {
    let dir = std::env::temp_dir().join(format!("downsync-cli-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let big = dir.join("big.wasm");
    // 1 GiB on paper (sparse): nothing is on disk, and nothing may be read.
    std::fs::File::create(&big).and_then(|f| f.set_len(1 << 30)).expect("sparse file");
    let bin = downsync_bin();
    let started = std::time::Instant::now();
    let out = Command::new(bin)
        .args(["plugin".as_ref(), "check".as_ref(), big.as_os_str()])
        .env("XDG_CACHE_HOME", std::env::temp_dir())
        .output()
        .expect("downsync runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "refused, not read");
    assert!(stderr.contains("is 1.0 GiB, over the limit of 64.0 MiB (the limit of a plugin file)"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_plugin_reading_metadata_is_sent_all_of_it_and_keeps_labels_and_annotations() {
    // Reads `/metadata`, a parent of the identity fields: it used to be sent name and namespace
    // only, and the merge then dropped every label and annotation.
    let wasm = plugin_path("downsync-plugin-testing-metadata-reader").expect("built");
    let fixtures = repo_root().join("plugins/testing/metadata-reader/fixtures");
    let out = run(&["plugin".as_ref(), "test".as_ref(), wasm.as_os_str(), fixtures.as_os_str()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("ok    labels-and-annotations-kept") && t.contains("1 passed, 0 failed"), "{t}");
}
