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
        "ADMIN_API_KEY",
        "MONGO_URL",
        "REDIS_URL",
        "PUBLIC_BASE_URL",
    ] {
        assert!(text.contains(documented_only_in_comments));
    }
}

/// Starts `serve` with `LOG_FORMAT=format`, reads its stdout and stderr until a line satisfies
/// `done` (or the patience runs out), kills it, and returns both as text.
fn start_until(format: &str, done: fn(&str) -> bool) -> (String, String) {
    use std::io::BufRead;
    use std::process::Stdio;
    use std::sync::mpsc;

    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = bin()
        .arg("serve")
        .env("PORT", port.to_string())
        .env("DATA_DIR", dir.path())
        .env("LOG_FORMAT", format)
        .env_remove("VOLCENGINE_API_KEY")
        .env_remove("ARK_API_KEY")
        .env_remove("MONGO_URL")
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    for (is_err, pipe) in [
        (false, Box::new(out) as Box<dyn std::io::Read + Send>),
        (true, Box::new(err)),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send((is_err, line)).is_err() {
                    break;
                }
            }
        });
    }
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Ok((is_err, line)) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let target = if is_err { &mut stderr } else { &mut stdout };
        target.push_str(&line);
        target.push('\n');
        if done(&line) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    (stdout, stderr)
}

#[test]
fn start_up_banner_goes_to_stderr_for_people() {
    let (_, stderr) = start_until("pretty", |l| l.trim_start().starts_with("auth"));
    for needle in [
        "serve (API + worker), embedded mode",
        "listening",
        "/docs",
        "/graphql/ws",
        "SQLite in",
        "sandbox",
        "pacing",
        "auth",
    ] {
        assert!(stderr.contains(needle), "{needle} missing: {stderr}");
    }
}

#[test]
fn with_json_logs_the_banner_is_one_structured_line() {
    let (stdout, stderr) = start_until("json", |l| l.contains("\"console\""));
    assert!(stderr.trim().is_empty(), "nothing but JSON logs: {stderr}");
    let mut found = false;
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("every line is JSON");
        if v.get("console").is_some() {
            found = true;
            assert_eq!(v["mode"], "embedded", "{line}");
            assert!(
                v["docs"].as_str().is_some_and(|d| d.contains("/docs")),
                "{line}"
            );
            assert!(
                v["storage"].as_str().is_some_and(|d| d.contains("SQLite")),
                "{line}"
            );
        }
    }
    assert!(found, "no banner line: {stdout}");
}
