//! What the benchmarks' smoke runs share: the binary, and checks on what it printed.

use std::process::Command;

/// The benchmark binary, run outside the developer's working directory (no `.env` from there).
pub fn bench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_volcengine-ai-bench"));
    c.current_dir(std::env::temp_dir());
    c
}

/// The output of a command that must have succeeded (the assertion shows both streams):
/// its stdout and stderr as text.
pub fn succeeded(out: std::process::Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// Asserts that `text` holds every one of `parts`.
pub fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part} missing: {text}");
    }
}
