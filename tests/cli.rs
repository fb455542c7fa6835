//! The binary's start-up contract: configuration errors name the variable, the documented
//! defaults are the real ones, and `schema` prints the checked-in SDL.

use std::collections::HashMap;
use std::process::Command;

use volcengine_ai_server::config::Config;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_volcengine-ai-server"));
    // No .env from the developer's working directory.
    c.current_dir(std::env::temp_dir());
    c
}

#[test]
fn invalid_configuration_stops_the_start_naming_the_variable() {
    for (var, value) in [
        ("PORT", "eighty"),
        ("AI_TIMEOUT", "soon"),
        ("LOG_FORMAT", "xml"),
        ("WORKER_CONCURRENCY", "0"),
    ] {
        let out = bin().arg("serve").env(var, value).output().expect("run");
        assert!(!out.status.success(), "{var}={value} must be rejected");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{var}: {err}");
    }
}

#[test]
fn schema_subcommand_prints_the_checked_in_sdl() {
    let out = bin().arg("schema").output().expect("run");
    assert!(out.status.success());
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql");
    assert_eq!(String::from_utf8_lossy(&out.stdout), file);
}

#[test]
fn config_example_documents_the_real_defaults() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.env.example"))
        .expect("config.env.example");
    let vars: HashMap<String, String> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    assert!(vars.len() >= 20, "only {} variables documented", vars.len());
    let from_example = Config::from_lookup(&|k| vars.get(k).cloned()).expect("example parses");
    assert_eq!(
        from_example,
        Config::default(),
        "config.env.example must show the defaults"
    );
    for documented_only_in_comments in [
        "VOLCENGINE_API_KEY",
        "MONGO_URL",
        "REDIS_URL",
        "PUBLIC_BASE_URL",
    ] {
        assert!(text.contains(documented_only_in_comments));
    }
}

#[test]
fn bench_pipeline_smoke_run() {
    let out = bin()
        .args([
            "bench",
            "pipeline",
            "--tasks",
            "5",
            "--ipm",
            "600",
            "--latency",
            "10ms",
            "--clients",
            "2",
        ])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("completed            5"), "{stdout}");
    assert!(stdout.contains("failed               0"), "{stdout}");
}

#[test]
fn bench_http_smoke_run() {
    let out = bin()
        .args(["bench", "http", "--requests", "20", "--connections", "2"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "HTTP floor",
        "store floor",
        "REST submit",
        "GraphQL submit",
        "REST poll",
        "GraphQL poll",
    ] {
        assert!(stdout.contains(row), "{row} missing: {stdout}");
    }
}

#[test]
fn bench_pipeline_without_a_limit_smoke_run() {
    let out = bin()
        .args([
            "bench",
            "pipeline",
            "--tasks",
            "20",
            "--ipm",
            "0",
            "--latency",
            "0s",
            "--clients",
            "4",
        ])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("completed            20"), "{stdout}");
    assert!(stdout.contains("failed               0"), "{stdout}");
    assert!(stdout.contains("tasks/s"), "{stdout}");
    assert!(stdout.contains("store floor"), "{stdout}");
}

#[test]
fn bench_http_with_preloaded_tasks_smoke_run() {
    let out = bin()
        .args([
            "bench",
            "http",
            "--requests",
            "20",
            "--connections",
            "2",
            "--preload",
            "50",
        ])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("50 tasks preloaded"), "{stdout}");
    assert!(stdout.contains("REST poll"), "{stdout}");
}

#[test]
fn bench_http_distributed_needs_its_urls() {
    let out = bin()
        .args(["bench", "http", "--backend", "distributed"])
        .env_remove("MONGO_URL")
        .env_remove("REDIS_URL")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--mongo-url"), "{err}");
}

#[test]
fn bench_subscribe_smoke_run() {
    let out = bin()
        .args([
            "bench",
            "subscribe",
            "--subscribers",
            "20",
            "--tasks",
            "5",
            "--latency",
            "2s",
        ])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every subscriber saw its task's terminal state, none of them before all were connected.
    assert!(
        stdout.contains("received COMPLETED     20 of 20"),
        "{stdout}"
    );
    assert!(stdout.contains("completed early        0"), "{stdout}");
    assert!(stdout.contains("per subscriber"), "{stdout}");
}
